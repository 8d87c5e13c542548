"""The embedded server: start on first need, reuse across processes, stop, concurrent starts."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from pgtide_testing import Killable

from pgtide import embedded


def _start_and_report(home: str, out: str) -> None:
    server = embedded.ensure_running(Path(home))
    Path(out).write_text(f"{server.pid} {server.dsn}")


def test_concurrent_first_starts_share_one_server(
    tmp_path: Path, embedded_home: Path, killable: Killable
) -> None:
    home = embedded_home
    outs = [tmp_path / f"out{i}" for i in range(3)]
    procs = [killable.start(_start_and_report, str(home), str(out)) for out in outs]
    try:
        for proc in procs:
            proc.join(90)
            assert proc.exitcode == 0
        reports = {out.read_text() for out in outs}
        assert len(reports) == 1, reports  # one pid, one DSN
        pid, dsn = reports.pop().split(" ", 1)
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT pg_backend_pid() > 0").fetchone() == (True,)
        assert embedded.status(home).pid == int(pid)
    finally:
        embedded.stop(home)


def test_stop_start_and_status(embedded_home: Path) -> None:
    home = embedded_home
    assert not embedded.status(home).running
    first = embedded.ensure_running(home)
    try:
        assert first.running and embedded.ensure_running(home).pid == first.pid  # reused
        assert embedded.stop(home) is True
        assert not embedded.status(home).running
        assert embedded.stop(home) is False
        again = embedded.ensure_running(home)  # existing data directory: no initdb
        with psycopg.connect(again.dsn) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        embedded.stop(home)


def test_long_home_paths_use_a_short_socket_directory(embedded_home: Path) -> None:
    home = embedded_home / ("deep" * 30)
    server = embedded.ensure_running(home)
    try:
        assert server.socket_dir is not None and len(str(server.socket_dir)) < 100
        with psycopg.connect(server.dsn) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        embedded.stop(home)


def test_home_follows_pgtide_home(monkeypatch: object, tmp_path: Path) -> None:
    import os

    os.environ["PGTIDE_HOME"] = str(tmp_path / "x")
    assert embedded.home() == (tmp_path / "x").resolve()


def test_a_server_whose_binaries_were_deleted_is_restarted(
    embedded_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = embedded.ensure_running(embedded_home)
    assert not embedded._orphaned(first)
    # as if the environment that started it had been removed since
    monkeypatch.setattr(embedded, "_orphaned", lambda server: server.pid == first.pid)
    again = embedded.ensure_running(embedded_home)
    assert again.running and again.pid != first.pid
