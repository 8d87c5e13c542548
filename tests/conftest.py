"""Every test talks to a real PostgreSQL.

By default the session starts its own embedded server in a temporary ``PGTIDE_HOME``; with
``PGTIDE_TEST_DSN`` set, tests run against that server instead. Either way each test that
asks for ``dsn`` gets a fresh database cloned from a template with pgtide's schema installed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pgtide_testing import (
    LIBPQ_ENV,
    CliRunner,
    Killable,
    RestartableServer,
    TestServer,
    start_test_server,
)
from sink_servers import nats_server, receiver, redis_server, unique  # noqa: F401 (fixtures)

from pgtide import embedded

# Read before any test can change the environment.
_EXTERNAL = os.environ.get("PGTIDE_TEST_DSN")


def _private_dir(prefix: str) -> Path:
    """A directory of our own (pytest prunes its numbered temp dirs while other runs use them)."""
    return Path(tempfile.mkdtemp(prefix=prefix))


@pytest.fixture(scope="session")
def pg_server() -> Iterator[TestServer]:
    """The session's server: embedded in a temporary home, or the one in PGTIDE_TEST_DSN."""
    home = _private_dir("pgtide-test-")
    server = start_test_server(home, _EXTERNAL)
    try:
        yield server
    finally:
        server.close()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pg_server: TestServer) -> None:
    """No configuration leaks in: a clean environment, an empty working directory, and a
    PGTIDE_HOME that holds the session's embedded server (when there is one)."""
    for name in ("PGTIDE_DSN", "DATABASE_URL", "PGTIDE_HOME", *LIBPQ_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PGTIDE_HOME", str(pg_server.home))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def dsn(pg_server: TestServer) -> Iterator[str]:
    """A fresh database with pgtide's schema installed, dropped after the test."""
    with pg_server.database(installed=True) as url:
        yield url


@pytest.fixture
def bare_dsn(pg_server: TestServer) -> Iterator[str]:
    """A fresh database without pgtide's schema."""
    with pg_server.database(installed=False) as url:
        yield url


@pytest.fixture
def embedded_home() -> Iterator[Path]:
    """An empty home for an embedded server of the test's own; stopped and removed after.

    Not under pytest's tmp_path: when pgtide runs as root, PostgreSQL runs as another user
    that must traverse the path, and pytest resets its own temp root to mode 0700.
    """
    home = _private_dir("pgtide-home-")
    try:
        yield home / "home"
    finally:
        embedded.stop(home / "home", mode="immediate")
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def restartable() -> Iterator[RestartableServer]:
    """A private embedded server that the test may stop, start and restart."""
    server = RestartableServer(_private_dir("pgtide-restartable-"))
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def killable() -> Iterator[Killable]:
    """Run functions in subprocesses that the test may SIGKILL; all are killed at the end."""
    runner = Killable()
    try:
        yield runner
    finally:
        runner.kill_all()


@pytest.fixture
def cli(tmp_path: Path) -> CliRunner:
    """Run the real ``pgtide`` command in a subprocess with the test's environment."""
    return CliRunner(cwd=tmp_path)
