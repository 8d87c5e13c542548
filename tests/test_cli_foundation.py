"""The command line of the foundation: version, db, install, demo, and its error boundary."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from pgtide_testing import CliRunner

from pgtide import __version__

SECRET = "secret"


def test_version(cli: CliRunner) -> None:
    done = cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"pgtide {__version__}"


def test_unreachable_dsn_is_one_clear_line(cli: CliRunner) -> None:
    done = cli("install", env={"PGTIDE_DSN": f"postgresql://nobody:{SECRET}@127.0.0.1:1/x"})
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "PGTIDE_DSN" in lines[0] and "127.0.0.1:1" in lines[0]
    assert "Traceback" not in done.stderr
    assert SECRET not in done.stderr + done.stdout


def test_unreachable_env_file_is_one_clear_line(cli: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "pgtide.env").write_text(
        f"DATABASE_HOST=127.0.0.1\nDATABASE_PORT=1\nDATABASE_USERNAME=nobody\n"
        f"DATABASE_PASSWORD={SECRET}\nDATABASE_NAME=x\n"
    )
    done = cli("install")
    assert done.returncode == 2
    assert "pgtide.env" in done.stderr and "127.0.0.1:1" in done.stderr
    assert SECRET not in done.stderr + done.stdout and "Traceback" not in done.stderr


def test_db_url_masks_and_names_the_source(cli: CliRunner) -> None:
    done = cli("db", "url", env={"DATABASE_URL": f"postgresql://me:{SECRET}@db.example:5433/shop"})
    assert done.returncode == 0
    assert done.stdout == "postgresql://me:***@db.example:5433/shop\n"  # alone: $(pgtide db url)
    assert "DATABASE_URL" in done.stderr and SECRET not in done.stdout + done.stderr
    data = json.loads(cli("db", "url", "--json", env={"DATABASE_URL": "postgresql://h/db"}).stdout)
    assert data["source"] == "DATABASE_URL" and data["target"] == "h:5432/db"


def test_install_and_db_status_on_embedded(cli: CliRunner, dsn: str) -> None:
    done = cli("install", "--dsn", dsn, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["version"] >= 1
    status = json.loads(cli("db", "status", "--json").stdout)
    assert set(status) == {"running", "pid", "home", "dsn"}


def test_bad_dsn_is_a_config_error(cli: CliRunner) -> None:
    done = cli("install", "--dsn", "host=x password=hunter2 junk")
    assert done.returncode == 1
    assert "not hold a valid" in done.stderr and "hunter2" not in done.stderr


def test_status_reports_the_database(cli: CliRunner, dsn: str) -> None:
    done = cli("status", "--dsn", dsn, "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["database"][0]["schema_pgtide"] >= 1


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_status_watch_refreshes_until_stopped(
    dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    sig: signal.Signals,
) -> None:
    from pgtide.cli import status

    collected: list[int] = []
    real = status.collect

    def collect(conn: Any) -> Any:
        collected.append(1)
        if len(collected) == 3:
            os.kill(os.getpid(), sig)  # Ctrl-C, or a service manager's SIGTERM
        return real(conn)

    monkeypatch.setattr(status, "collect", collect)
    status.status(dsn=dsn, watch=True, interval=0.01)  # returns quietly when stopped
    assert len(collected) == 3
    assert "schema pgtide" in capsys.readouterr().out


def test_env_file_at_any_path(cli: CliRunner, tmp_path: Path) -> None:
    kept = tmp_path / "conf" / "jumbo.env"
    kept.parent.mkdir()
    kept.write_text("DATABASE_HOST=db.example\nDATABASE_NAME=lab\nDATABASE_USERNAME=me\n")
    by_option = cli("--env-file", str(kept), "db", "url")
    by_variable = cli("db", "url", env={"PGTIDE_ENV_FILE": str(kept)})
    for done in (by_option, by_variable):
        assert done.returncode == 0, done.stderr
        assert "db.example" in done.stdout and "jumbo.env" in done.stderr
    missing = cli("--env-file", str(tmp_path / "nope.env"), "db", "url")
    assert missing.returncode != 0 and "PGTIDE_ENV_FILE names" in missing.stderr


def _command_paths() -> list[list[str]]:
    import typer.main

    from pgtide.cli.app import app

    paths: list[list[str]] = []

    def walk(command: object, path: list[str]) -> None:
        paths.append(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return paths


def test_help_screens_speak_to_people() -> None:
    from typer.testing import CliRunner as InProcess

    from pgtide.cli.app import app

    runner = InProcess()
    paths = _command_paths()
    assert len(paths) > 20
    for path in paths:
        done = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "100"})
        assert done.exit_code == 0, (path, done.output)
        for raw in ("<bool>", "<str>", "<list", "<float", "<int", "{", "``"):
            assert raw not in done.output, (path, raw, done.output)


def test_db_psql_runs_on_the_chosen_database(cli: CliRunner, dsn: str) -> None:
    done = cli("db", "psql", "--dsn", dsn, "-At", "-c", "SELECT 40 + 2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "42"


def test_db_reset_drops_pgtide_and_demo_leftovers_only(cli: CliRunner, dsn: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE mine (x int)")
        conn.execute("CREATE TABLE pgtide_demo_orders_dead (x int)")
    refused = cli("db", "reset", "--dsn", dsn)
    assert refused.returncode == 1 and "--yes" in refused.stderr
    done = cli("db", "reset", "--dsn", dsn, "--yes", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["dropped"] == [
        "schema pgtide",
        "public.pgtide_demo_orders_dead",
    ]
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = {r[0] for r in conn.execute("SELECT relname FROM pg_class WHERE relkind = 'r'")}
        assert "mine" in tables and "pgtide_demo_orders_dead" not in tables
        assert conn.execute("SELECT to_regnamespace('pgtide')").fetchone() == (None,)
    again = cli("db", "reset", "--dsn", dsn, "--yes")
    assert again.returncode == 0 and "nothing to drop" in again.stdout


def test_db_status_exit_code_says_whether_it_runs(
    cli: CliRunner, embedded_home: Path, tmp_path: Path
) -> None:
    env = {"PGTIDE_HOME": str(embedded_home)}
    stopped = cli("db", "status", "--json", env=env)
    assert stopped.returncode == 3 and json.loads(stopped.stdout)["running"] is False
    assert cli("db", "start", "--json", env=env).returncode == 0
    running = cli("db", "status", "--json", env=env)
    assert running.returncode == 0 and json.loads(running.stdout)["running"] is True
