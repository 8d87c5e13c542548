"""Capture: install and remove the triggers that append a table's changes to pgtide.changes.

INSERT, UPDATE and DELETE are captured by statement-level triggers reading transition tables
(one INSERT ... SELECT per statement, much faster than a trigger call per row; an update's
old and new rows are paired by their position in the two tables, whatever the key: see
migration 017); TRUNCATE as one change. Everything happens in one transaction: a table is tracked
completely or not at all.

Table names are read by :mod:`pgtide.names`; a name without a schema is found through the
connection's ``search_path`` (``orders`` is ``public.orders`` on a default path), and pgtide
stores the schema-qualified name.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from .. import schema
from ..connect import DsnLike
from ..errors import FeedError, UnknownTable
from ..names import TABLE_KINDS, TableName, lookup
from ..session import Io, Query, one, query, run, using

log = logging.getLogger("pgtide.feed")
T = TypeVar("T")

OPS = ("insert", "update", "delete", "truncate")
"""The operations pgtide can capture, in the order it reports them."""
TRIGGER_PREFIX = "pgtide_capture_"

_CREATE = {
    "insert": "CREATE TRIGGER {trigger} AFTER INSERT ON {table} REFERENCING NEW TABLE AS "
    "pgtide_new FOR EACH STATEMENT EXECUTE FUNCTION pgtide.capture_rows({name}, {notify})",
    "delete": "CREATE TRIGGER {trigger} AFTER DELETE ON {table} REFERENCING OLD TABLE AS "
    "pgtide_old FOR EACH STATEMENT EXECUTE FUNCTION pgtide.capture_rows({name}, {notify})",
    "update": "CREATE TRIGGER {trigger} AFTER UPDATE ON {table} REFERENCING OLD TABLE AS "
    "pgtide_old NEW TABLE AS pgtide_new FOR EACH STATEMENT "
    "EXECUTE FUNCTION pgtide.capture_rows({name}, {notify})",
    "truncate": "CREATE TRIGGER {trigger} AFTER TRUNCATE ON {table} FOR EACH STATEMENT "
    "EXECUTE FUNCTION pgtide.capture_statement({name}, {notify})",
}
_DROP_TRIGGER = "DROP TRIGGER {} ON {}"
_TRIGGERS = """
SELECT t.tgname FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s AND NOT t.tgisinternal AND t.tgname LIKE 'pgtide\\_%%'
"""
_CURRENT_SCHEMA = "SELECT current_schema()"
_TRACKED = "SELECT ops, notify FROM pgtide.tracked WHERE table_name = %s"
_SAVE = """
INSERT INTO pgtide.tracked (table_name, ops, notify) VALUES (%s, %s, %s)
ON CONFLICT (table_name) DO UPDATE SET ops = excluded.ops, notify = excluded.notify,
    capture = 'trigger', old_full = false, tracked_at = now()
"""
_FORGET = "DELETE FROM pgtide.tracked WHERE table_name = %s RETURNING table_name"
_LIST = (
    "SELECT table_name, ops, notify, tracked_at, capture, old_full FROM pgtide.tracked "
    "ORDER BY table_name"
)
CAPTURES = ("trigger", "wal")
"""How a table's changes are captured: pgtide's triggers, or the write-ahead log."""


def call(
    dsn: DsnLike, conn: psycopg.Connection[Any] | None, io: Io[T], *, atomic: bool = False
) -> T:
    """Run ``io`` on the caller's connection (or one of ours) once the schema is there;
    ``atomic``: in one transaction (a savepoint inside the caller's open transaction)."""
    with using(dsn, conn) as c:
        run(c, schema.ensure_io())
        if not atomic:
            return run(c, io)
        with c.transaction():
            return run(c, io)


def _ops(ops: Iterable[str] | str) -> list[str]:
    chosen = [ops] if isinstance(ops, str) else list(ops)
    unknown = sorted({o for o in chosen if o not in OPS})
    if unknown or not chosen:
        raise FeedError(
            f"cannot track operations {unknown or chosen}; choose from {', '.join(OPS)}"
        )
    return [o for o in OPS if o in chosen]


def qualified(name: TableName) -> Io[TableName]:
    """``name`` with its schema: the table the search_path finds, else the current schema."""
    if name.schema is not None:
        return name
    found = yield from lookup(name)
    if found is not None:
        return found[0]
    row = yield from one(_CURRENT_SCHEMA)
    return TableName(row[0] if row and row[0] else "public", name.name)


def existing(name: TableName) -> Io[TableName]:
    """The schema-qualified name of table ``name``, which must exist as a table."""
    found = yield from lookup(name)
    if found is None:
        shown = yield from qualified(name)
        raise UnknownTable(
            f"table {shown} does not exist; create it first, or check the spelling "
            "(names are case-sensitive; write 'schema.table' outside schema public)"
        )
    table, kind = found
    if kind not in TABLE_KINDS:
        raise UnknownTable(f"{table} is not a table (relkind {kind!r}); only tables can be tracked")
    return table


def require_tracked(name: TableName) -> Io[TableName]:
    """The schema-qualified name of ``name``, which must be tracked (a clear error otherwise)."""
    table = yield from qualified(name)
    if (yield from one(_TRACKED, (str(table),))) is None:
        raise UnknownTable(f"table {table} is not tracked; run `pgtide track {table}` first")
    return table


def track_io(table: TableName, ops: list[str], notify: bool) -> Io[bool]:
    """Install the capture triggers of ``table`` (run it in one transaction: :func:`call`)."""
    from .wal import leave_publication_io, was_wal_io

    shown = table
    try:
        name = shown = yield from existing(table)
        row = yield from one(_TRACKED, (str(name),))
        from_wal = yield from was_wal_io(name)
        settled = row is not None and list(row[0]) == ops and row[1] == notify
        if from_wal is None and settled and (yield from _installed(name)) == _expected(ops):
            return False  # a table dropped and created again has lost its triggers: not here
        if from_wal is not None:
            yield from leave_publication_io(name, from_wal)
        yield from _drop_triggers(name)
        for op in ops:
            yield _create(name, op, notify)
        yield Query(_SAVE, (str(name), ops, notify))
    except psycopg.errors.InsufficientPrivilege as exc:
        raise FeedError(
            f"cannot track {shown}: {exc.diag.message_primary or exc}; "
            "the role needs to own the table (or hold the TRIGGER privilege on it) "
            "and to write schema pgtide"
        ) from None
    log.info("tracking %s (%s)", name, ", ".join(ops))
    return True


def untrack_io(table: TableName) -> Io[bool]:
    """Remove the capture triggers of ``table`` (in one transaction: :func:`call`)."""
    from .wal import leave_publication_io, was_wal_io

    shown = table
    try:
        name = shown = yield from existing(table)
        from_wal = yield from was_wal_io(name)
        if from_wal is not None:
            yield from leave_publication_io(name, from_wal)
        was = bool((yield from query(_FORGET, (str(name),))))
        dropped = yield from _drop_triggers(name)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise FeedError(
            f"cannot untrack {shown}: {exc.diag.message_primary or exc}; "
            "run it as the table's owner"
        ) from None
    if was or dropped:
        log.info("no longer tracking %s", name)
    return was or dropped


def _create(name: TableName, op: str, notify: bool) -> Query:
    return Query(
        sql.SQL(_CREATE[op]).format(
            trigger=sql.Identifier(TRIGGER_PREFIX + op),
            table=name.identifier,
            name=sql.Literal(str(name)),
            notify=sql.Literal("notify" if notify else "quiet"),
        )
    )


def _expected(ops: list[str]) -> set[str]:
    """The names of the capture triggers ``ops`` need (one per operation: a table tracked
    before migration 017 also has an ``update_wakeup`` one, and is tracked again)."""
    return {TRIGGER_PREFIX + op for op in ops}


def _installed(name: TableName) -> Io[set[str]]:
    """The names of pgtide's capture triggers on ``name`` now."""
    rows = yield from query(_TRIGGERS, (name.schema, name.name))
    return {t for (t,) in rows if t.startswith(TRIGGER_PREFIX)}


def _drop_triggers(name: TableName) -> Io[bool]:
    """Drop pgtide's triggers on ``name``; return whether there were any."""
    rows = yield from query(_TRIGGERS, (name.schema, name.name))
    for (trigger,) in rows:
        if trigger.startswith(TRIGGER_PREFIX):
            yield Query(sql.SQL(_DROP_TRIGGER).format(sql.Identifier(trigger), name.identifier))
    return bool(rows)


def tracked_io() -> Io[list[dict[str, Any]]]:
    """The tracked tables: name, ops, notify and since when."""
    rows = yield from query(_LIST)
    return [
        {"table": t, "ops": list(o), "notify": n, "since": s, "capture": c, "old": old}
        for t, o, n, s, c, f in rows
        for old in ["full" if f else "default"]
    ]


def track(
    table: str,
    ops: Iterable[str] | str = OPS,
    *,
    notify: bool = True,
    capture: str = "trigger",
    old: str | None = None,
    backfill: bool = False,
    wait: bool = False,
    dsn: DsnLike = None,
    conn: psycopg.Connection[Any] | None = None,
) -> bool:
    """Capture ``table``'s changes into ``pgtide.changes``; return False if already so.

    ``ops`` chooses among insert, update, delete and truncate (all by default). ``notify=False``
    skips the wake-up NOTIFY (followers then poll): it saves a global lock at commit for
    tables written by many sessions at once. Tracking again with other options replaces the
    triggers, in one transaction. A name without a schema is found through the search_path.

    ``capture="wal"`` captures from the write-ahead log instead of triggers (nothing added
    to the writers' transactions; the relay decodes on the server): the table joins the
    publication read through the database's replication slot, which a relay drains into
    the change log (``pgtide capture``, or any Feed that follows the table). It needs
    ``wal_level = logical``; the first one creates the slot, so it runs outside a
    transaction. ``old="full"`` (WAL capture) sets ``REPLICA IDENTITY FULL``, so that
    updates and deletes carry the whole old row (else only its key).

    ``backfill=True`` also emits the table's existing rows as changes of op "read" (in
    primary key chunks, resumable, consistent with concurrent writes; the table needs a
    primary key). Any Feed process of the database that follows the table runs it, as
    does ``pgtide capture``; ``wait=True`` runs it here and returns when it is done (or
    waits for the process running it). A backfill recorded again starts over.
    """
    chosen, name = _ops(ops), TableName.parse(table)
    if capture not in CAPTURES:
        raise FeedError(f"capture must be 'trigger' or 'wal', not {capture!r}")
    if old not in (None, "full", "default"):
        raise FeedError(f"old must be None, 'default' or 'full', not {old!r}")
    if capture == "trigger":
        if old == "full":
            raise FeedError("old='full' is for capture='wal' (triggers always see the old row)")
        changed = call(
            dsn, conn, _and_backfill(track_io(name, chosen, notify), name, backfill), atomic=True
        )
        _drop_unused_slot(dsn, conn)
    else:
        changed = _track_wal(name, chosen, notify, old == "full", backfill, dsn, conn)
    if backfill and wait:
        from .backfill import Backfiller

        with using(dsn, conn) as c:
            Backfiller(dsn).run_pending(c, wait=True)
    return changed


def _and_backfill(io: Io[bool], table: TableName, backfill: bool) -> Io[bool]:
    """``io``, then (``backfill``) the record of a backfill of ``table``."""
    from .backfill import start_io

    changed = yield from io
    if backfill:
        yield from start_io((yield from existing(table)))
    return changed or backfill


def _track_wal(
    name: TableName,
    chosen: list[str],
    notify: bool,
    old_full: bool,
    backfill: bool,
    dsn: DsnLike,
    conn: psycopg.Connection[Any] | None,
) -> bool:
    from .wal import track_wal

    with using(dsn, conn) as c:
        run(c, schema.ensure_io())
        try:
            changed = track_wal(c, name, chosen, notify, old_full)
            if backfill:
                with c.transaction():
                    run(c, _and_backfill(_nothing(), name, backfill))
            return changed or backfill
        except psycopg.errors.InsufficientPrivilege as exc:
            raise FeedError(
                f"cannot track {name} from the WAL: {exc.diag.message_primary or exc}; the "
                "role needs to own the table, and the REPLICATION attribute (or to be a "
                "superuser) to create the database's replication slot"
            ) from None


def _nothing() -> Io[bool]:
    return False
    yield  # a generator


def _drop_unused_slot(dsn: DsnLike, conn: psycopg.Connection[Any] | None) -> None:
    """Drop the replication slot once no table is captured from the WAL (outside any
    transaction of the caller's: then the next call of ours does it)."""
    from .wal import drop_slot_if_unused_io, wal_in_use_io

    with using(dsn, conn) as c:
        if c.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            return
        if run(c, wal_in_use_io()):
            run(c, drop_slot_if_unused_io())


def untrack(
    table: str, *, dsn: DsnLike = None, conn: psycopg.Connection[Any] | None = None
) -> bool:
    """Stop capturing ``table``; return False if it was not tracked. Its past changes stay.
    Untracking the last table captured from the WAL drops the replication slot."""
    changed = call(dsn, conn, untrack_io(TableName.parse(table)), atomic=True)
    _drop_unused_slot(dsn, conn)
    return changed


def tracked(
    *, dsn: DsnLike = None, conn: psycopg.Connection[Any] | None = None
) -> list[dict[str, Any]]:
    """The tracked tables: name, ops, notify, since when, capture ("trigger" or "wal") and
    old ("full" when REPLICA IDENTITY FULL was set by pgtide, else "default")."""
    return call(dsn, conn, tracked_io())
