"""Test helpers: servers, fresh databases, killable subprocesses and the real CLI."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pgtide import embedded, schema

LIBPQ_ENV = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "PGSERVICE")

# A test server trades durability for speed; the fault tests restart it cleanly.
TEST_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
}


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@dataclass
class TestServer:
    """The session's PostgreSQL and a template database with pgtide installed."""

    admin_dsn: str
    home: Path
    kind: str
    template: str = ""
    _file_copy: bool = False

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.admin_dsn, autocommit=True)

    def _create(self, name: str, template: str) -> None:
        strategy = sql.SQL(" STRATEGY FILE_COPY") if self._file_copy else sql.SQL("")
        with self.admin() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}{}").format(
                    sql.Identifier(name), sql.Identifier(template), strategy
                )
            )

    def _drop(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def dsn_for(self, name: str) -> str:
        return make_conninfo(self.admin_dsn, dbname=name)

    @contextmanager
    def database(self, *, installed: bool) -> Iterator[str]:
        name = _unique("pgtide_t")
        self._create(name, self.template if installed else "template0")
        try:
            yield self.dsn_for(name)
        finally:
            self._drop(name)

    def close(self) -> None:
        if self.template:
            self._drop(self.template)
        embedded.stop(self.home, mode="fast")


def start_test_server(home: Path, external: str | None) -> TestServer:
    if external:
        server = TestServer(external, home, "external")
    else:
        started = embedded.ensure_running(home, settings=TEST_SETTINGS)
        server = TestServer(started.dsn, home, "embedded")
    with server.admin() as conn:
        server._file_copy = conn.info.server_version >= 150000
    server.template = _unique("pgtide_tmpl")
    server._create(server.template, "template0")
    schema.install(dsn=server.dsn_for(server.template))
    return server


class RestartableServer:
    """A private embedded server that a fault test may stop and start at will."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.dsn = self.start()

    def start(self) -> str:
        return embedded.ensure_running(self.home, settings=TEST_SETTINGS).dsn

    def stop(self, mode: str = "fast") -> None:
        embedded.stop(self.home, mode=mode)

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def destroy(self) -> None:
        embedded.stop(self.home, mode="immediate")
        shutil.rmtree(self.home, ignore_errors=True)


@dataclass
class Killable:
    """Starts functions in fresh interpreters (spawn) so that a test can SIGKILL them."""

    processes: list[BaseProcess] = field(default_factory=list)

    def start(self, target: Callable[..., Any], *args: Any, **kwargs: Any) -> BaseProcess:
        process = multiprocessing.get_context("spawn").Process(
            target=target, args=args, kwargs=kwargs, daemon=True
        )
        process.start()
        self.processes.append(process)
        return process

    @staticmethod
    def kill(process: BaseProcess) -> None:
        process.kill()
        process.join(10)

    def kill_all(self) -> None:
        for process in self.processes:
            if process.is_alive():
                self.kill(process)


@dataclass
class CliRunner:
    """Runs ``python -m pgtide`` with the test's current environment and working directory."""

    cwd: Path

    def __call__(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 60, input: str = ""
    ) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, **(env or {}), "COLUMNS": "200"}
        return subprocess.run(
            [sys.executable, "-m", "pgtide", *args],
            capture_output=True,
            text=True,
            cwd=self.cwd,
            env=full_env,
            timeout=timeout,
            input=input,
        )


def missing(what: str) -> None:
    """A test's outside program is missing: skip on a laptop, fail in CI (where .ci/run
    installs or starts it), so that CI never passes by skipping."""
    import os

    import pytest

    if os.environ.get("CI"):
        pytest.fail(f"CI must provide {what}; see .ci/run")
    pytest.skip(f"needs {what}", allow_module_level=True)


_GATE_HOLDERS = (
    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = %s AND objid = %s "
    "AND objsubid = 2 AND mode = 'ShareLock' AND granted AND database = "
    "(SELECT oid FROM pg_database WHERE datname = current_database())"
)


def gate_holders(dsn: str, gate: tuple[int, int]) -> set[int]:
    """The backends of this database that hold a wake gate (pgtide.channel._gate): the
    waiting feeds' or workers' connections."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return {int(r[0]) for r in conn.execute(_GATE_HOLDERS, gate)}


def gate_holders_besides(
    dsn: str, gate: tuple[int, int], besides: set[int] | frozenset[int] = frozenset()
) -> Callable[[], set[int] | None]:
    """A condition: the holders of ``gate`` when some hold it and none is in ``besides``."""

    def holders() -> set[int] | None:
        held = gate_holders(dsn, gate)
        return held if held and not held & besides else None

    return holders


def terminate(dsn: str, pid: int) -> None:
    """End a backend as an administrator would (``pg_terminate_backend``)."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
