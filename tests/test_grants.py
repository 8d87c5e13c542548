"""A least-privilege role: clear errors naming the GRANTs, and ``pgtide grant`` giving them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from pgtide_testing import CliRunner
from psycopg import sql
from psycopg.conninfo import make_conninfo

import pgtide


@pytest.fixture
def plain_role(dsn: str) -> Iterator[str]:
    """A login role that owns table public.t in a database where a superuser installed pgtide."""
    role = f"pgtide_plain_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        admin.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        admin.execute(sql.SQL("ALTER TABLE t OWNER TO {}").format(sql.Identifier(role)))
        admin.execute("CREATE TABLE lines (v text)")
        admin.execute(sql.SQL("GRANT INSERT, SELECT ON lines TO {}").format(sql.Identifier(role)))
    try:
        yield role
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("DROP TABLE IF EXISTS t, lines")
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _denied(role: str, call: object) -> None:
    assert callable(call)
    with pytest.raises(pgtide.PermissionDenied) as info:
        call()
    message = str(info.value)
    assert f"pgtide grant {role}" in message and "Traceback" not in message


def test_plain_role_gets_the_grants_named_then_works(
    dsn: str, plain_role: str, cli: CliRunner, tmp_path: Path
) -> None:
    as_role = make_conninfo(dsn, user=plain_role)
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.txt").write_text("one\ntwo\n")

    _denied(plain_role, lambda: pgtide.track("t", dsn=as_role))
    _denied(plain_role, lambda: pgtide.Events(dsn=as_role).publish("hello", {"n": 1}))
    _denied(
        plain_role,
        lambda: pgtide.FileWatcher(folder, table="lines", dsn=as_role, name="g").catch_up(),
    )

    done = cli("grant", plain_role, "--dsn", dsn)
    assert done.returncode == 0, done.stderr
    assert "GRANT USAGE ON SCHEMA pgtide" in done.stdout

    pgtide.track("t", dsn=as_role)
    with psycopg.connect(as_role, autocommit=True) as conn:
        conn.execute("INSERT INTO t VALUES (1, 'x')")
    with pgtide.Feed("plain", ["t"], dsn=as_role) as feed:
        batch = next(iter(feed.batches(timeout=5)))
        assert [c.op for c in batch] == ["insert"]
        batch.ack()
    assert pgtide.Events(dsn=as_role).publish("hello", {"n": 1}) > 0
    assert pgtide.FileWatcher(folder, table="lines", dsn=as_role, name="g").catch_up() == 2


def test_grant_dry_run_and_features(cli: CliRunner, dsn: str) -> None:
    done = cli("grant", "someone", "--feature", "listen", "--dry-run", "--json", "--dsn", dsn)
    assert done.returncode == 0, done.stderr
    assert '"granted": false' in done.stdout and "pgtide.changes" not in done.stdout
    bad = cli("grant", "someone", "--feature", "nope", "--dsn", dsn)
    assert bad.returncode == 1 and "unknown feature nope" in bad.stderr


def test_every_table_of_schema_pgtide_belongs_to_a_feature(dsn: str) -> None:
    from pgtide.grants import FEATURE_TABLES

    with psycopg.connect(dsn) as conn:
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = 'pgtide' AND c.relkind IN ('r', 'p')"
                " AND NOT c.relispartition"
            )
        }
    granted = {t for names in FEATURE_TABLES.values() for t in names}
    assert tables - {"schema_version"} == granted


def test_the_events_grants_are_enough_to_publish_from_sql(
    dsn: str, plain_role: str, cli: CliRunner
) -> None:
    as_role = make_conninfo(dsn, user=plain_role)
    events = pgtide.Events(dsn=dsn)
    events.status()  # installed by the superuser
    done = cli("grant", plain_role, "--feature", "events", "--dsn", dsn)
    assert done.returncode == 0, done.stderr
    publish = "SELECT pgtide.publish('from-sql', '{\"n\": 1}')"
    with psycopg.connect(as_role, autocommit=True) as conn:
        (id_,) = conn.execute(publish).fetchone()  # type: ignore[misc]
    assert events.get(id_).payload == {"n": 1}  # type: ignore[union-attr]
    events.close()
