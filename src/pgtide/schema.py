"""Install and upgrade pgtide's own schema (``pgtide``).

Migrations are the numbered ``sql/NNN_name.sql`` files shipped in the package. They run in
order, each recorded in ``pgtide.schema_version``, all in one transaction under an advisory
lock, so installing is idempotent and safe when several processes do it at once.

A function that migrations define again as it changes lives once, in ``sql/routines/``: a
migration installs its current text with a line ``-- routine: NAME.sql DIGEST``, the digest
being that of the text it was written for. Changing a routine therefore takes a new
migration that includes it (``tests/test_schema.py`` checks the newest digest), so every
database, fresh or upgraded, ends with the same text; an older migration that includes it
installs the current text too, which later migrations do not call while they run.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql

from ._compat import now_keyword_only
from .connect import DsnLike
from .errors import SchemaError
from .overview import Section
from .session import Io, Query, atomic, one, query, run, using

SCHEMA = "pgtide"
LOCK_KEY = 0x7067_7469_6465  # "pgtide": one advisory lock for every installer
_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
_ROUTINE = re.compile(r"^-- routine: ([a-z0-9_]+\.sql) ([0-9a-f]{12})$", re.MULTILINE)

_PREAMBLE = """
CREATE SCHEMA IF NOT EXISTS pgtide;
CREATE TABLE IF NOT EXISTS pgtide.schema_version (
    version      integer PRIMARY KEY,
    name         text NOT NULL,
    installed_at timestamptz NOT NULL DEFAULT now()
);
"""
_CURRENT = "SELECT coalesce(max(version), 0) FROM pgtide.schema_version"
_APPLIED = "SELECT version FROM pgtide.schema_version"
_RECORD = "INSERT INTO pgtide.schema_version (version, name) VALUES (%s, %s)"
_PRIVILEGE = """
SELECT current_user, current_database(),
       has_database_privilege(current_database(), 'CREATE') AS can_create,
       EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'pgtide') AS schema_exists
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Every migration shipped with this version of pgtide, in order, routines included."""
    return list(_migrations())


@functools.cache
def _migrations() -> tuple[Migration, ...]:
    """Read once a process: every session's :func:`ensure_io` asks (reading the files each
    time cost about a millisecond per connection)."""
    return tuple(
        Migration(version, name, _ROUTINE.sub(lambda m: routine(m[1]), text))
        for version, name, text in _shipped()
    )


def _shipped() -> list[tuple[int, str, str]]:
    """(version, name, text as written) of each migration file, in order."""
    found = []
    for entry in resources.files("pgtide").joinpath("sql").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append((int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    return sorted(found)


def routine(name: str) -> str:
    """The current text of ``sql/routines/<name>``."""
    return resources.files("pgtide").joinpath("sql", "routines", name).read_text(encoding="utf-8")


def routine_includes() -> list[tuple[int, str, str]]:
    """(migration version, routine file, digest written) of each include line, in order."""
    return [
        (version, m[1], m[2]) for version, _, text in _shipped() for m in _ROUTINE.finditer(text)
    ]


def routine_digest(name: str) -> str:
    """The digest an include line gives for the current text of routine ``name``."""
    return hashlib.sha256(routine(name).encode()).hexdigest()[:12]


def latest_version() -> int:
    return migrations()[-1].version


def installed_version_io() -> Io[int]:
    """The schema version in the database, 0 when pgtide was never installed there."""
    if not (yield from _versioned()):
        return 0
    row = yield from one(_CURRENT)
    return int(row[0]) if row else 0


def installed_version(conn: psycopg.Connection[Any]) -> int:
    """The schema version in the database, 0 when pgtide was never installed there."""
    return run(conn, installed_version_io())


@now_keyword_only(0, "dsn")
def install(*, dsn: DsnLike = None, conn: psycopg.Connection[Any] | None = None) -> int:
    """Create or upgrade schema ``pgtide``; return the installed version. Idempotent."""
    with using(dsn, conn) as c:
        return run(c, install_io())


def install_io() -> Io[int]:
    """Install or upgrade, in one transaction under the installers' advisory lock."""
    yield from _check_rights()
    try:
        return (yield from atomic(_migrate()))
    except psycopg.errors.InsufficientPrivilege as exc:
        raise SchemaError(
            f"cannot install schema pgtide: {exc.diag.message_primary or exc}; "
            "run `pgtide install` once as the schema's owner or a superuser"
        ) from None


def _migrate() -> Io[int]:
    yield Query("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
    yield Query(_PREAMBLE)
    applied = {row[0] for row in (yield from query(_APPLIED))}
    for migration in migrations():
        if migration.version not in applied:
            yield Query(migration.sql.encode())  # a shipped file, no user input
            yield Query(_RECORD, (migration.version, migration.name))
    return (yield from installed_version_io())


def _check_rights() -> Io[None]:
    row = yield from one(_PRIVILEGE)
    assert row is not None
    user, database, can_create, exists = row
    if not exists and not can_create:
        raise SchemaError(
            f"role {user!r} lacks the CREATE privilege on database {database!r}, which "
            f'installing schema pgtide needs; run `GRANT CREATE ON DATABASE "{database}" '
            f'TO "{user}"` as a superuser, or install once as the database owner'
        )


DEMO_TABLES = "pgtide_demo_%"
"""Tables ``pgtide demo`` creates (and removes, unless it was killed)."""

_LEFTOVERS = (
    "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE c.relkind IN ('r', 'p') AND c.relname LIKE %s AND n.nspname <> 'pgtide'"
)


def uninstall_io() -> Io[list[str]]:
    """Drop schema pgtide (its tables, and the capture triggers on tracked tables, through
    their functions) and what ``pgtide demo`` left behind; return what was dropped."""
    dropped: list[str] = []

    def work() -> Io[None]:
        for nspname, relname in (yield from query(_LEFTOVERS, (DEMO_TABLES,))):
            yield Query(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(nspname, relname)))
            dropped.append(f"{nspname}.{relname}")
        exists = yield from one("SELECT to_regnamespace('pgtide') IS NOT NULL")
        if exists and exists[0]:
            yield Query("DROP SCHEMA pgtide CASCADE")
            dropped.insert(0, "schema pgtide")

    yield from atomic(work())
    return dropped


def ensure_io() -> Io[None]:
    """Install or upgrade the schema when it is missing or older than this package.

    Every feature's session runs this on a new connection, so ``pgtide.install()`` is never
    a forgotten step.
    """
    if not (yield from _complete()):
        yield from install_io()


def ensure(conn: psycopg.Connection[Any]) -> None:
    """:func:`ensure_io` on a blocking connection."""
    run(conn, ensure_io())


def _versioned() -> Io[bool]:
    """Whether the table of installed versions exists."""
    row = yield from one("SELECT to_regclass('pgtide.schema_version') IS NOT NULL")
    return bool(row and row[0])


def _complete() -> Io[bool]:
    """Whether every shipped migration is recorded (one may land below the newest one): two
    round trips on every new connection of every feature."""
    if not (yield from _versioned()):
        return False
    applied = {row[0] for row in (yield from query(_APPLIED))}
    return all(m.version in applied for m in migrations())


def overview() -> Io[list[Section]]:
    """The "database" section of ``pgtide status``: server, schema version, LISTEN connections."""
    from .channel import connections

    server = yield from one("SHOW server_version")
    version = yield from installed_version_io()
    listeners = yield from connections()
    return [
        Section(
            "database",
            ["server", "schema pgtide", "listener connections"],
            [[server[0] if server else None, version or None, len(listeners)]],
        )
    ]
