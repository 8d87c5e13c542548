"""Capture: install and remove the triggers that append a table's changes to pgtide.changes.

INSERT and DELETE are captured by statement-level triggers reading transition tables (one
INSERT ... SELECT per statement, much faster than a trigger call per row); UPDATE by a
row-level trigger (old and new rows come paired, whatever the key) plus a statement-level
wake-up; TRUNCATE as one change. Everything happens in one transaction: a table is tracked
completely or not at all.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg import sql

from .. import schema
from ..connect import Resolved, connect
from ..errors import FeedError, UnknownTable
from ._names import TableName, existing

log = logging.getLogger("pgtide.feed")

OPS = ("insert", "update", "delete", "truncate")
TRIGGER_PREFIX = "pgtide_capture_"

_CREATE = {
    "insert": "CREATE TRIGGER {trigger} AFTER INSERT ON {table} REFERENCING NEW TABLE AS "
    "pgtide_new FOR EACH STATEMENT EXECUTE FUNCTION pgtide.capture_insert({name}, {notify})",
    "delete": "CREATE TRIGGER {trigger} AFTER DELETE ON {table} REFERENCING OLD TABLE AS "
    "pgtide_old FOR EACH STATEMENT EXECUTE FUNCTION pgtide.capture_delete({name}, {notify})",
    "update": "CREATE TRIGGER {trigger} AFTER UPDATE ON {table} FOR EACH ROW "
    "EXECUTE FUNCTION pgtide.capture_update({name}, {notify})",
    "update_wakeup": "CREATE TRIGGER {trigger} AFTER UPDATE ON {table} FOR EACH STATEMENT "
    "EXECUTE FUNCTION pgtide.capture_wakeup({name}, {notify})",
    "truncate": "CREATE TRIGGER {trigger} AFTER TRUNCATE ON {table} FOR EACH STATEMENT "
    "EXECUTE FUNCTION pgtide.capture_truncate({name}, {notify})",
}
_TRIGGERS = """
SELECT t.tgname FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s AND NOT t.tgisinternal AND t.tgname LIKE 'pgtide\\_%%'
"""
_TRACKED = "SELECT ops, notify FROM pgtide.tracked WHERE table_name = %s"
_SAVE = """
INSERT INTO pgtide.tracked (table_name, ops, notify) VALUES (%s, %s, %s)
ON CONFLICT (table_name) DO UPDATE SET ops = excluded.ops, notify = excluded.notify,
    tracked_at = now()
"""
_FORGET = "DELETE FROM pgtide.tracked WHERE table_name = %s"
_LIST = "SELECT table_name, ops, notify, tracked_at FROM pgtide.tracked ORDER BY table_name"


def _ops(ops: Iterable[str] | str) -> list[str]:
    chosen = [ops] if isinstance(ops, str) else list(ops)
    unknown = sorted({o for o in chosen if o not in OPS})
    if unknown or not chosen:
        raise FeedError(
            f"cannot track operations {unknown or chosen}; choose from {', '.join(OPS)}"
        )
    return [o for o in OPS if o in chosen]


def track(
    table: str,
    ops: Iterable[str] | str = OPS,
    *,
    notify: bool = True,
    dsn: str | Resolved | None = None,
    conn: psycopg.Connection[Any] | None = None,
) -> bool:
    """Capture ``table``'s changes into ``pgtide.changes``; return False if already so.

    ``ops`` chooses among insert, update, delete and truncate (all by default). ``notify=False``
    skips the wake-up NOTIFY (followers then poll): it saves a global lock at commit for
    tables written by many sessions at once. Tracking again with other options replaces the
    triggers, in one transaction.
    """
    chosen = _ops(ops)
    if conn is None:
        with connect(dsn) as own:
            return _track(own, table, chosen, notify)
    return _track(conn, table, chosen, notify)


def _track(conn: psycopg.Connection[Any], table: str, ops: list[str], notify: bool) -> bool:
    schema.ensure(conn)
    try:
        with conn.transaction():
            name = existing(conn, table)
            row = conn.execute(_TRACKED, (str(name),)).fetchone()
            if row is not None and list(row[0]) == ops and row[1] == notify:
                return False
            _drop_triggers(conn, name)
            for op in ops:
                _create(conn, name, op, notify)
                if op == "update":
                    _create(conn, name, "update_wakeup", notify)
            conn.execute(_SAVE, (str(name), ops, notify))
    except psycopg.errors.InsufficientPrivilege as exc:
        raise FeedError(
            f"cannot track {TableName.parse(table)}: {exc.diag.message_primary or exc}; "
            "the role needs to own the table (or hold the TRIGGER privilege on it) "
            "and to write schema pgtide"
        ) from None
    log.info("tracking %s (%s)", name, ", ".join(ops))
    return True


def _create(conn: psycopg.Connection[Any], name: TableName, op: str, notify: bool) -> None:
    statement = sql.SQL(_CREATE[op]).format(
        trigger=sql.Identifier(TRIGGER_PREFIX + op),
        table=name.identifier,
        name=sql.Literal(str(name)),
        notify=sql.Literal("notify" if notify else "quiet"),
    )
    conn.execute(statement)


def _drop_triggers(conn: psycopg.Connection[Any], name: TableName) -> None:
    for (trigger,) in conn.execute(_TRIGGERS, (name.schema, name.name)).fetchall():
        if trigger.startswith(TRIGGER_PREFIX):
            conn.execute(
                sql.SQL("DROP TRIGGER {} ON {}").format(sql.Identifier(trigger), name.identifier)
            )


def untrack(
    table: str,
    *,
    dsn: str | Resolved | None = None,
    conn: psycopg.Connection[Any] | None = None,
) -> bool:
    """Stop capturing ``table``; return False if it was not tracked. Its past changes stay."""
    if conn is None:
        with connect(dsn) as own:
            return _untrack(own, table)
    return _untrack(conn, table)


def _untrack(conn: psycopg.Connection[Any], table: str) -> bool:
    schema.ensure(conn)
    try:
        with conn.transaction():
            name = existing(conn, table)
            was = conn.execute(_FORGET, (str(name),)).rowcount > 0
            triggers = conn.execute(_TRIGGERS, (name.schema, name.name)).fetchall()
            _drop_triggers(conn, name)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise FeedError(
            f"cannot untrack {TableName.parse(table)}: {exc.diag.message_primary or exc}; "
            "run it as the table's owner"
        ) from None
    if was or triggers:
        log.info("no longer tracking %s", name)
    return was or bool(triggers)


def tracked(
    *, dsn: str | Resolved | None = None, conn: psycopg.Connection[Any] | None = None
) -> list[dict[str, Any]]:
    """The tracked tables: name, ops, notify and since when."""
    if conn is None:
        with connect(dsn) as own:
            return tracked(conn=own)
    schema.ensure(conn)
    return [
        {"table": t, "ops": list(o), "notify": n, "since": s}
        for t, o, n, s in conn.execute(_LIST).fetchall()
    ]


def require_tracked(conn: psycopg.Connection[Any], table: str) -> TableName:
    """The canonical name of ``table``, which must be tracked (a clear error otherwise)."""
    name = TableName.parse(table)
    if conn.execute(_TRACKED, (str(name),)).fetchone() is None:
        raise UnknownTable(f"table {name} is not tracked; run `pgtide track {name}` first")
    return name
