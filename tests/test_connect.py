"""Where the database is (DESIGN section 6): every source, their order, masking, clear errors."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

import pgtide
from pgtide.connect import Backoff, Resolved, connect, mask_dsn, resolve

SECRET = "s3cr3t-pw"
UNREACHABLE = f"postgresql://nobody:{SECRET}@127.0.0.1:1/x"


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def test_explicit_argument_wins_over_everything(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PGTIDE_DSN", "postgresql://a@h1/db1")
    monkeypatch.setenv("DATABASE_URL", "postgresql://b@h2/db2")
    monkeypatch.setenv("PGHOST", "h3")
    _write(tmp_path / "pgtide.env", "PGTIDE_DSN=postgresql://c@h4/db4\n")
    chosen = resolve("postgresql://z@h0/db0")
    assert (chosen.dsn, chosen.source) == ("postgresql://z@h0/db0", "dsn argument")


@pytest.mark.parametrize(
    ("present", "expected_source", "expected_dsn"),
    [
        (
            {"PGTIDE_DSN", "DATABASE_URL", "PG", "pgtide.env", ".env"},
            "PGTIDE_DSN",
            "postgresql://a@h1/db1",
        ),
        ({"DATABASE_URL", "PG", "pgtide.env", ".env"}, "DATABASE_URL", "postgresql://b@h2/db2"),
        ({"PG", "pgtide.env", ".env"}, "PG* environment variables", ""),
        ({"pgtide.env", ".env"}, "pgtide.env", "postgresql://c@h4/db4"),
        ({".env"}, ".env", "postgresql://d@h5/db5"),
    ],
)
def test_precedence(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    present: set[str],
    expected_source: str,
    expected_dsn: str,
) -> None:
    if "PGTIDE_DSN" in present:
        monkeypatch.setenv("PGTIDE_DSN", "postgresql://a@h1/db1")
    if "DATABASE_URL" in present:
        monkeypatch.setenv("DATABASE_URL", "postgresql://b@h2/db2")
    if "PG" in present:
        monkeypatch.setenv("PGHOST", "h3")
        monkeypatch.setenv("PGDATABASE", "db3")
    if "pgtide.env" in present:
        _write(tmp_path / "pgtide.env", "PGTIDE_DSN=postgresql://c@h4/db4\n")
    if ".env" in present:
        _write(tmp_path / ".env", "DATABASE_URL=postgresql://d@h5/db5\n")
    chosen = resolve()
    assert chosen.source == expected_source
    assert chosen.dsn == expected_dsn


def test_pg_variables_need_host_or_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGUSER", "someone")  # alone it does not pick the libpq environment
    assert resolve().source == "embedded"
    monkeypatch.setenv("PGDATABASE", "mine")
    chosen = resolve()
    assert chosen.source == "PG* environment variables"
    assert chosen.target.endswith("/mine")


def test_env_file_with_jumbo_style_keys(tmp_path: Path) -> None:
    _write(
        tmp_path / "pgtide.env",
        "DATABASE_HOST = db.example.com\nDATABASE_USERNAME = me\n"
        f"DATABASE_PASSWORD = {SECRET}\nDATABASE_PORT = 6543\nDATABASE_NAME = shop\n",
    )
    chosen = resolve()
    assert chosen.source == "pgtide.env"
    assert chosen.detail == "DATABASE_* keys"
    params = psycopg.conninfo.conninfo_to_dict(chosen.dsn)
    assert params == {
        "host": "db.example.com",
        "user": "me",
        "password": SECRET,
        "port": "6543",
        "dbname": "shop",
    }
    assert chosen.target == "db.example.com:6543/shop"
    assert SECRET not in repr(chosen) and SECRET not in str(chosen) and SECRET not in chosen.masked


def test_env_file_without_database_keys_is_ignored(tmp_path: Path) -> None:
    _write(tmp_path / ".env", "UNRELATED=1\n")
    assert resolve().source == "embedded"


def test_nothing_configured_means_embedded(pg_server: object) -> None:
    chosen = resolve()
    assert chosen.source == "embedded"
    with psycopg.connect(pgtide.dsn()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        (f"postgresql://u:{SECRET}@h:5432/db", "postgresql://u:***@h:5432/db"),
        (f"postgres://u:{SECRET}@h/db?sslmode=require", "postgres://u:***@h/db?sslmode=require"),
        (f"postgresql://u@h/db?password={SECRET}&x=1", "postgresql://u@h/db?password=***&x=1"),
        (f"host=h user=u password={SECRET} dbname=d", "host=h user=u password=*** dbname=d"),
        ("host=h password='a b\\' c' dbname=d", "host=h password=*** dbname=d"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
    ],
)
def test_mask_dsn(raw: str, masked: str) -> None:
    assert mask_dsn(raw) == masked


def test_malformed_dsn_is_a_config_error_without_the_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PGTIDE_DSN", f"host=h password={SECRET} nonsense")
    with pytest.raises(pgtide.ConfigError) as info:
        resolve()
    assert "PGTIDE_DSN" in str(info.value)
    assert SECRET not in str(info.value)


def test_unreachable_server_names_source_and_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGTIDE_DSN", UNREACHABLE)
    with pytest.raises(pgtide.ConnectionFailed) as info:
        connect()
    message = str(info.value)
    assert "PGTIDE_DSN" in message and "127.0.0.1:1" in message
    assert SECRET not in message and SECRET not in repr(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_unreachable_server_never_falls_back_to_embedded(tmp_path: Path) -> None:
    _write(
        tmp_path / ".env",
        f"DATABASE_HOST=127.0.0.1\nDATABASE_PORT=1\nDATABASE_NAME=x\nDATABASE_PASSWORD={SECRET}\n",
    )
    with pytest.raises(pgtide.ConnectionFailed) as info:
        connect()
    assert ".env" in str(info.value) and "127.0.0.1:1" in str(info.value)
    assert SECRET not in str(info.value)


async def _aconnect_fails() -> str:
    from pgtide.connect import aconnect

    try:
        await aconnect(UNREACHABLE)
    except pgtide.ConnectionFailed as exc:
        return str(exc)
    raise AssertionError("connected to an unreachable server")


def test_async_connect_has_the_same_errors() -> None:
    import asyncio

    message = asyncio.run(_aconnect_fails())
    assert "dsn argument" in message and SECRET not in message


def test_connect_works_and_resolved_passes_through(dsn: str) -> None:
    chosen = resolve(dsn)
    assert resolve(chosen) is chosen
    with connect(chosen) as conn:
        assert conn.autocommit
        assert conn.execute("SELECT current_setting('application_name')").fetchone() == ("pgtide",)


def test_resolved_repr_masks() -> None:
    chosen = Resolved(f"postgresql://u:{SECRET}@h/db", "PGTIDE_DSN")
    assert SECRET not in repr(chosen) and SECRET not in f"{chosen}"


def test_backoff_grows_to_a_ceiling_with_jitter() -> None:
    backoff = Backoff(initial=0.1, maximum=1.0)
    delays = [backoff.next() for _ in range(8)]
    assert 0.05 <= delays[0] <= 0.1
    assert all(d <= 1.0 for d in delays) and delays[-1] >= 0.5
    backoff.reset()
    assert backoff.next() <= 0.1
