"""A real PgBouncer in transaction pool mode in front of a test database (Debian's package;
.ci/run installs it)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
from pgtide_testing import missing
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgtide.embedded import SYSTEM_USER

PGBOUNCER = shutil.which("pgbouncer") or next(
    (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.path.exists(p)), None
)

_CONFIG = """
[databases]
{dbname} = {upstream}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {home}/users.txt
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 200
ignore_startup_parameters = extra_float_digits,options
pidfile = {home}/pgbouncer.pid
logfile = {home}/pgbouncer.log
"""


def _unprivileged() -> str:
    """A user for pgbouncer: the embedded server's (it reaches that server's socket)."""
    import pwd

    for name in (SYSTEM_USER, "postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name).pw_name
    raise AssertionError("no unprivileged user to run pgbouncer as")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def bouncer(dsn: str, pool_size: int = 2) -> Iterator[str]:
    """A DSN that reaches ``dsn``'s database through PgBouncer (transaction pooling, at most
    ``pool_size`` server connections, so that clients share them)."""
    if PGBOUNCER is None:
        missing("pgbouncer (apt-get install pgbouncer)")
    assert PGBOUNCER is not None
    params = conninfo_to_dict(dsn)
    dbname = str(params["dbname"])
    upstream = make_conninfo(
        host=params.get("host", "127.0.0.1"), port=params.get("port", 5432), dbname=dbname
    )
    port = _free_port()
    home = Path(tempfile.mkdtemp(prefix="pgtide-bouncer-"))
    home.chmod(0o777)  # pgbouncer runs as another user when the tests run as root
    (home / "users.txt").write_text(f'"{params.get("user", "postgres")}" ""\n')
    (home / "pgbouncer.ini").write_text(
        _CONFIG.format(dbname=dbname, upstream=upstream, port=port, home=home, pool_size=pool_size)
    )
    for f in home.iterdir():
        f.chmod(0o644)
    command = [PGBOUNCER, "-d", str(home / "pgbouncer.ini")]
    if os.geteuid() == 0:  # it refuses to run as root: as the embedded server's user
        command[1:1] = ["-u", _unprivileged()]
    subprocess.run(command, check=True, capture_output=True, timeout=30)
    through = make_conninfo(
        host="127.0.0.1", port=port, dbname=dbname, user=params.get("user", "postgres")
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with psycopg.connect(through, connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    log = home / "pgbouncer.log"
                    raise AssertionError(
                        f"pgbouncer did not come up: {log.read_text() if log.exists() else ''}"
                    ) from None
                time.sleep(0.05)
        yield through
    finally:
        pid = home / "pgbouncer.pid"
        if pid.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid.read_text().strip()), 15)
        shutil.rmtree(home, ignore_errors=True)
