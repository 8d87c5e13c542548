"""pgtide's schema: versioned, idempotent, safe to install concurrently, clear about rights."""

from __future__ import annotations

import threading
import uuid
from importlib import resources
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

import pgtide
from pgtide import schema


def test_install_creates_schema_and_version(bare_dsn: str) -> None:
    assert pgtide.install(dsn=bare_dsn) == schema.latest_version()
    with psycopg.connect(bare_dsn) as conn:
        rows = conn.execute("SELECT version, name FROM pgtide.schema_version ORDER BY 1").fetchall()
    assert [r[0] for r in rows] == [m.version for m in schema.migrations()]


def test_install_is_idempotent(bare_dsn: str) -> None:
    first = pgtide.install(dsn=bare_dsn)
    assert pgtide.install(dsn=bare_dsn) == first
    with psycopg.connect(bare_dsn) as conn:
        count = conn.execute("SELECT count(*) FROM pgtide.schema_version").fetchone()
    assert count == (len(schema.migrations()),)


def test_concurrent_installs_are_safe(bare_dsn: str) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def run() -> None:
        try:
            barrier.wait()
            pgtide.install(dsn=bare_dsn)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with psycopg.connect(bare_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM pgtide.schema_version").fetchone() == (
            len(schema.migrations()),
        )


def test_migrations_are_numbered_in_order() -> None:
    versions = [m.version for m in schema.migrations()]
    assert versions == sorted(set(versions)) and versions[0] == 1


def test_missing_create_right_is_named(bare_dsn: str) -> None:
    role = f"pgtide_norights_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(bare_dsn, autocommit=True) as admin:
        db = admin.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        admin.execute(
            sql.SQL("REVOKE CREATE ON DATABASE {} FROM PUBLIC").format(sql.Identifier(db))
        )
    try:
        with pytest.raises(pgtide.SchemaError) as info:
            pgtide.install(dsn=make_conninfo(bare_dsn, user=role))
        message = str(info.value)
        assert "CREATE" in message and role in message and "GRANT" in message
    finally:
        with psycopg.connect(bare_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_ensure_installs_when_missing(bare_dsn: str) -> None:
    with psycopg.connect(bare_dsn, autocommit=True) as conn:
        assert schema.installed_version(conn) == 0
        schema.ensure(conn)
        assert schema.installed_version(conn) == schema.latest_version()


def test_a_migration_missing_below_the_newest_is_still_applied(bare_dsn: str) -> None:
    pgtide.install(dsn=bare_dsn)
    first = schema.migrations()[0]
    with psycopg.connect(bare_dsn, autocommit=True) as conn:
        # As if newer migrations had been installed by a build that lacked the first one.
        conn.execute("DELETE FROM pgtide.schema_version WHERE version = %s", (first.version,))
        conn.execute("COMMENT ON SCHEMA pgtide IS NULL")
        schema.ensure(conn)
        versions = [r[0] for r in conn.execute("SELECT version FROM pgtide.schema_version")]
        comment = conn.execute("SELECT obj_description('pgtide'::regnamespace)").fetchone()
    assert sorted(versions) == [m.version for m in schema.migrations()]
    assert first.version == 1 and comment is not None and comment[0] is not None


def test_every_routine_change_comes_with_a_migration() -> None:
    """A routine's text is what the newest migration including it was written for: edited
    without a new migration, it would reach fresh databases and not upgraded ones."""
    newest = {name: (version, digest) for version, name, digest in schema.routine_includes()}
    shipped = {
        entry.name
        for entry in resources.files("pgtide").joinpath("sql", "routines").iterdir()
        if entry.name.endswith(".sql")
    }
    assert shipped == set(newest), "each routine file is included by a migration"
    for name, (version, digest) in newest.items():
        assert digest == schema.routine_digest(name), (
            f"routines/{name} changed after migration {version} included it: add a migration "
            f"with the line `-- routine: {name} {schema.routine_digest(name)}`"
        )


_CATALOG = {
    "functions": "SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc p "
    "WHERE p.pronamespace = 'pgtide'::regnamespace ORDER BY 1, 2",
    "columns": "SELECT table_name, column_name, data_type, column_default, is_nullable "
    "FROM information_schema.columns WHERE table_schema = 'pgtide' ORDER BY 1, 2",
    "indexes": "SELECT indexdef FROM pg_indexes WHERE schemaname = 'pgtide' ORDER BY 1",
}


def _catalog(conn: psycopg.Connection[Any]) -> dict[str, list[Any]]:
    return {part: conn.execute(q).fetchall() for part, q in _CATALOG.items()}


def test_a_database_upgraded_from_any_version_matches_a_fresh_install(bare_dsn: str) -> None:
    """Routines make older migrations install current function texts: whatever version a
    database stopped at, upgrading it ends with the schema a fresh install makes."""
    with psycopg.connect(bare_dsn, autocommit=True) as conn:
        schema.ensure(conn)
        fresh = _catalog(conn)
        for stop in [m.version for m in schema.migrations()][:-1]:
            conn.execute("DROP SCHEMA pgtide CASCADE")
            with conn.transaction():
                conn.execute(schema._PREAMBLE)
                for m in schema.migrations():
                    if m.version <= stop:
                        conn.execute(m.sql.encode())
                        conn.execute(schema._RECORD, (m.version, m.name))
            schema.ensure(conn)
            assert _catalog(conn) == fresh, f"upgraded from version {stop}"
