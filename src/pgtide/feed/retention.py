"""Retention and inspection: prune acknowledged changes, list consumers, the latest row, and
the feed's part of ``pgtide status`` (:func:`overview`)."""

from __future__ import annotations

from datetime import timedelta
from time import monotonic
from typing import Any

import psycopg
from psycopg import sql

from ..connect import DsnLike
from ..errors import FeedError
from ..names import TableName
from ..overview import Section
from ..session import Io, one, query, run
from .position import Position, Snapshot
from .rows import FINGERPRINT, RowTypes
from .track import call, require_tracked

# Whole partitions first (TRUNCATE: nothing for VACUUM, writers elsewhere unhindered): every
# one but the writers' own (migrations 014 and 019), then theirs, last, when all of it is
# acknowledged (an idle log); else, row by row, the acknowledged changes of the current id
# window only (writers are there, so its partition stays): at most one window's.
# Acknowledged changes of an older window sharing a partition with unacknowledged ones are
# left until the partition is acknowledged entirely and emptied whole: deleting them row by
# row slowed writers, and their space stayed until VACUUM anyway.
_TRUNCATE_ONE = (
    "SELECT pgtide.truncate_partition_acked(%(name)s, %(age)s::interval, %(wait)s::interval)"
)
_PAUSE = "SELECT pg_sleep(%s)"
_WINDOW = "SELECT last_value >> %s FROM pgtide.changes_id_seq"
WINDOW_BITS, PARTITIONS = 16, 16
"""The id windows of pgtide.changes (migration 014): 2**16 ids each, over 16 partitions."""
_PRUNE = """
WITH pruned AS (
DELETE FROM pgtide.changes c
WHERE ((c.id >> 16) & 15) = %(part)s AND c.id >= %(start)s
  AND c.xid < coalesce(
        (SELECT max(pg_snapshot_xmax(coalesce(target, snapshot))) FROM pgtide.consumers),
        pg_snapshot_xmax(pg_current_snapshot()))
  AND NOT EXISTS (SELECT 1 FROM pgtide.consumers k WHERE NOT (
        pg_visible_in_snapshot(c.xid, k.snapshot)
        OR coalesce(c.xid <= k.after_xid AND pg_visible_in_snapshot(c.xid, k.target), false)))
  AND (%(age)s::interval IS NULL OR c.at < now() - %(age)s::interval)
RETURNING 1)
SELECT count(*) FROM pruned
"""
LOCK_WAIT = timedelta(milliseconds=50)
"""How long prune waits for the lock of a partition to empty (else it tries next time)."""
_CONSUMERS = """
SELECT k.name, k.snapshot::text, k.target::text, k.after_xid::text, k.tables, k.acked_at,
       p.pending, p.oldest
FROM pgtide.consumers k
CROSS JOIN LATERAL (
    SELECT count(*) AS pending, min(c.at) AS oldest FROM pgtide.changes c
    WHERE (c.xid >= pg_snapshot_xmax(k.snapshot)
           OR c.xid = ANY(ARRAY(SELECT pg_snapshot_xip(k.snapshot))))
      AND NOT coalesce(c.xid <= k.after_xid AND pg_visible_in_snapshot(c.xid, k.target),
                       false)
      AND (k.tables IS NULL OR c.table_name = ANY(k.tables))) p
ORDER BY k.name
"""
_DROP_CONSUMER = "DELETE FROM pgtide.consumers WHERE name = %s RETURNING name"
# The newest transaction that set the table's rows, found at the end of the index by table
# (keyed by table and xid: its ids are not in it), then that transaction's last such change.
_OF_TABLE = (
    " FROM pgtide.changes WHERE hashtext(table_name) = hashtext(%(table)s) "
    "AND table_name = %(table)s AND op IN ('insert', 'update', 'read', 'truncate')"
)
_LATEST = sql.Composed(
    [
        sql.SQL("SELECT op, row::text, xid::text AS xid_text, id, "),
        FINGERPRINT,
        sql.SQL(_OF_TABLE),
        sql.SQL(" AND xid = (SELECT max(xid)"),
        sql.SQL(_OF_TABLE),
        sql.SQL(") ORDER BY id DESC LIMIT 1"),
    ]
)
# The size of every partition of pgtide.changes (the parent itself holds nothing).
_SIZE = """
SELECT count(*), (SELECT coalesce(sum(pg_total_relation_size(relid)), 0)::bigint
                  FROM pg_partition_tree('pgtide.changes')), min(at)
FROM pgtide.changes
"""
_INSTALLED = "SELECT to_regclass('pgtide.consumers') IS NOT NULL"


def position_of(row: tuple[Any, ...] | None) -> Position | None:
    """A position from its stored columns (snapshot, target, after_xid as text), or None."""
    if row is None:
        return None
    snap, target, after = row
    if target is None:
        return Position(Snapshot.parse(snap))
    return Position(Snapshot.parse(snap), Snapshot.parse(target), int(after))


def _age(older_than: float | timedelta | None) -> timedelta | None:
    if older_than is None:
        return None
    age = older_than if isinstance(older_than, timedelta) else timedelta(seconds=older_than)
    if age < timedelta(0):
        raise FeedError(f"older_than must be a positive age, not {older_than}")
    return age


PRUNE_DUTY = 0.5
"""The share of its time prune spends emptying partitions: after each one it pauses as long
as emptying it took. Emptying is mostly the kernel freeing the files' pages, which slowed
writers by a fifth while prune of 1M changes ran unpaced; paced, they keep their rate
(docs/feed.md, Retention)."""


def _pause(spent: float) -> Io[None]:
    """Rest ``spent`` seconds' worth of pace (on the server: the faces share this Io)."""
    yield from query(_PAUSE, (spent * (1 - PRUNE_DUTY) / PRUNE_DUTY,))


def prune_io(age: timedelta | None = None) -> Io[int]:
    """Delete the acknowledged changes (older than ``age``, if given) as :func:`prune`
    describes; return how many."""
    window = yield from one(_WINDOW, (WINDOW_BITS,))
    assert window is not None
    part, start = int(window[0]) % PARTITIONS, int(window[0]) << WINDOW_BITS
    removed = 0
    # one transaction each, so each is locked only while it is emptied: from the partition
    # writers left the longest ago to the one they enter next (migration 019), then the
    # writers' own (if they moved on meanwhile, it is simply one more they left)
    for k in range(PARTITIONS):
        name = f"changes_{(part + PARTITIONS - 1 - k) % PARTITIONS}"
        began = monotonic()
        row = yield from one(_TRUNCATE_ONE, {"name": name, "age": age, "wait": LOCK_WAIT})
        emptied = int(row[0]) if row else 0
        if emptied:
            removed += emptied
            if k < PARTITIONS - 1:
                yield from _pause(monotonic() - began)
    row = yield from one(_PRUNE, {"age": age, "part": part, "start": start})
    return removed + (int(row[0]) if row else 0)


def consumers_io() -> Io[list[dict[str, Any]]]:
    """Every registered consumer, as :func:`consumers` describes."""
    rows = yield from query(_CONSUMERS)
    return [
        {
            "name": name,
            "position": position_of((snap, target, after)),
            "tables": tables,
            "acked_at": acked_at,
            "pending": pending,
            "oldest_pending": oldest,
        }
        for name, snap, target, after, tables, acked_at, pending, oldest in rows
    ]


def drop_consumer_io(name: str) -> Io[bool]:
    """Forget consumer ``name``; False if there was none."""
    return bool((yield from query(_DROP_CONSUMER, (name,))))


def latest_io(table: TableName) -> Io[dict[str, Any] | None]:
    """The newest row written to tracked ``table``, as :func:`latest` describes."""
    return (yield from newest_io(table))[1]


def newest_io(
    table: TableName, types: RowTypes | None = None
) -> Io[tuple[tuple[str, int] | None, dict[str, Any] | None]]:
    """The newest change that set ``table``'s newest row, as (its (xid, id), the row); the
    row is None when there is none or a truncate came last. ``types``: the column types
    known from an earlier call (looked up again only when the table changed)."""
    types = RowTypes() if types is None else types
    name = str((yield from require_tracked(table)))
    found = yield from one(_LATEST, {"table": name, **types.params()})
    if found is None:
        return None, None
    op, row, xid, id_, fingerprint = found
    if op == "truncate":
        return (xid, id_), None
    yield from types.update([name], fingerprint)
    return (xid, id_), types.decode(name, row)


def size_io() -> Io[tuple[int, int, Any]]:
    """Rows in pgtide.changes, its size on disk in bytes, and its oldest change's time."""
    row = yield from one(_SIZE)
    assert row is not None
    return int(row[0]), int(row[1]), row[2]


def overview() -> Io[list[Section]]:
    """The feed's sections of ``pgtide status``: "consumers" (each consumer's lag),
    "changes" (the size of pgtide.changes, which prune keeps in check), "capture" (the WAL
    relay's slot, if any) and "backfills" (if any). Empty when the feed's tables are not
    installed."""
    installed = yield from one(_INSTALLED)
    if not installed or not installed[0]:
        return []
    listed = Section("consumers", ["consumer", "pending changes", "acked at", "tables"])
    for c in (yield from consumers_io()):
        listed.rows.append(
            [c["name"], c["pending"], c["acked_at"], ", ".join(c["tables"] or ["all"])]
        )
    rows, bytes_, oldest = yield from size_io()
    changes = Section("changes", ["rows", "kB", "oldest"], [[rows, bytes_ // 1024, oldest]])
    from .backfill import overview_io as backfills
    from .wal import overview_io

    return [listed, changes, *(yield from overview_io()), *(yield from backfills())]


def prune(
    older_than: float | timedelta | None = None,
    *,
    dsn: DsnLike = None,
    conn: psycopg.Connection[Any] | None = None,
) -> int:
    """Delete the changes every registered consumer has acknowledged (and, with
    ``older_than`` seconds or a timedelta, only those older than that); return how many.

    Whole partitions go at once (TRUNCATE); acknowledged changes are deleted row by row only
    in the id window writers are filling. Acknowledged changes sharing a partition with
    unacknowledged ones of another window (writers came back to it a ring later), or in a
    partition another session holds, stay until a later prune empties the partition whole:
    they are not counted until then.

    A consumer is registered from its first ``batches()`` until it is dropped, so prune never
    removes a change it has not acknowledged. With no consumer registered, every committed
    change counts as acknowledged.
    """
    return call(dsn, conn, prune_io(_age(older_than)))


def consumers(
    *, dsn: DsnLike = None, conn: psycopg.Connection[Any] | None = None
) -> list[dict[str, Any]]:
    """Every registered consumer: name, position, tables, acked_at, pending (lag in
    changes not yet acknowledged) and oldest_pending (when the oldest of them was written, or
    None: the consumer's lag in time is ``now - oldest_pending``)."""
    return call(dsn, conn, consumers_io())


def drop_consumer(
    name: str, *, dsn: DsnLike = None, conn: psycopg.Connection[Any] | None = None
) -> bool:
    """Forget consumer ``name`` (prune stops waiting for it); False if there was none."""
    return call(dsn, conn, drop_consumer_io(name))


def latest(
    table: str, *, dsn: DsnLike = None, conn: psycopg.Connection[Any] | None = None
) -> dict[str, Any] | None:
    """The newest row written to tracked ``table`` (the last insert or update of the newest
    transaction that wrote it), or None when it has none or was truncated since. Read from
    pgtide.changes, so no write is ever missed the way a single-row audit table misses them."""
    return call(dsn, conn, latest_io(TableName.parse(table)))


def size(conn: psycopg.Connection[Any]) -> tuple[int, int, Any]:
    """Rows in pgtide.changes, its size on disk in bytes, and its oldest change's time."""
    return run(conn, size_io())
