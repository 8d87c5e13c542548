"""Retention and inspection: prune acknowledged changes, list consumers, the latest row."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg

from .. import schema
from ..connect import Resolved, connect
from ..errors import FeedError
from ._core import _position
from .track import require_tracked

_PRUNE = """
DELETE FROM pgtide.changes c
WHERE c.xid < coalesce(
        (SELECT max(pg_snapshot_xmax(coalesce(target, snapshot))) FROM pgtide.consumers),
        pg_snapshot_xmax(pg_current_snapshot()))
  AND NOT EXISTS (SELECT 1 FROM pgtide.consumers k WHERE NOT (
        pg_visible_in_snapshot(c.xid, k.snapshot)
        OR coalesce(c.xid <= k.after_xid AND pg_visible_in_snapshot(c.xid, k.target), false)))
  AND (%(age)s::interval IS NULL OR c.at < now() - %(age)s::interval)
"""
_CONSUMERS = """
SELECT k.name, k.snapshot::text, k.target::text, k.after_xid::text, k.tables, k.acked_at,
       (SELECT count(*) FROM pgtide.changes c
        WHERE (c.xid >= pg_snapshot_xmax(k.snapshot)
               OR c.xid = ANY(ARRAY(SELECT pg_snapshot_xip(k.snapshot))))
          AND NOT coalesce(c.xid <= k.after_xid AND pg_visible_in_snapshot(c.xid, k.target),
                           false)
          AND (k.tables IS NULL OR c.table_name = ANY(k.tables))) AS pending
FROM pgtide.consumers k ORDER BY k.name
"""
_LATEST = """
SELECT op, row FROM pgtide.changes
WHERE table_name = %s AND op IN ('insert', 'update', 'truncate')
ORDER BY xid DESC, id DESC LIMIT 1
"""
_SIZE = """
SELECT count(*), pg_total_relation_size('pgtide.changes'), min(at) FROM pgtide.changes
"""


def _age(older_than: float | timedelta | None) -> timedelta | None:
    if older_than is None:
        return None
    age = older_than if isinstance(older_than, timedelta) else timedelta(seconds=older_than)
    if age < timedelta(0):
        raise FeedError(f"older_than must be a positive age, not {older_than}")
    return age


def prune(
    older_than: float | timedelta | None = None,
    *,
    dsn: str | Resolved | None = None,
    conn: psycopg.Connection[Any] | None = None,
) -> int:
    """Delete the changes every registered consumer has acknowledged (and, with
    ``older_than`` seconds or a timedelta, only those older than that); return how many.

    A consumer is registered from its first ``batches()`` until it is dropped, so prune never
    removes a change it has not acknowledged. With no consumer registered, every committed
    change counts as acknowledged.
    """
    age = _age(older_than)
    if conn is None:
        with connect(dsn) as own:
            return prune(older_than, conn=own)
    schema.ensure(conn)
    return conn.execute(_PRUNE, {"age": age}).rowcount


def consumers(
    *, dsn: str | Resolved | None = None, conn: psycopg.Connection[Any] | None = None
) -> list[dict[str, Any]]:
    """Every registered consumer: name, position, tables, acked_at, and pending (lag in
    changes not yet acknowledged)."""
    if conn is None:
        with connect(dsn) as own:
            return consumers(conn=own)
    schema.ensure(conn)
    found = []
    for name, snap, target, after, tables, acked_at, pending in conn.execute(_CONSUMERS):
        found.append(
            {
                "name": name,
                "position": _position((snap, target, after)),
                "tables": tables,
                "acked_at": acked_at,
                "pending": pending,
            }
        )
    return found


def drop_consumer(
    name: str, *, dsn: str | Resolved | None = None, conn: psycopg.Connection[Any] | None = None
) -> bool:
    """Forget consumer ``name`` (prune stops waiting for it); False if there was none."""
    if conn is None:
        with connect(dsn) as own:
            return drop_consumer(name, conn=own)
    schema.ensure(conn)
    return conn.execute("DELETE FROM pgtide.consumers WHERE name = %s", (name,)).rowcount > 0


def latest(
    table: str, *, dsn: str | Resolved | None = None, conn: psycopg.Connection[Any] | None = None
) -> dict[str, Any] | None:
    """The newest row written to tracked ``table`` (the last insert or update of the newest
    transaction that wrote it), or None when it has none or was truncated since. Read from
    pgtide.changes, so no write is ever missed the way a single-row audit table misses them."""
    if conn is None:
        with connect(dsn) as own:
            return latest(table, conn=own)
    schema.ensure(conn)
    name = require_tracked(conn, table)
    row = conn.execute(_LATEST, (str(name),)).fetchone()
    if row is None or row[0] == "truncate":
        return None
    found: dict[str, Any] = row[1]
    return found


def size(conn: psycopg.Connection[Any]) -> tuple[int, int, Any]:
    """Rows in pgtide.changes, its size on disk in bytes, and its oldest change's time."""
    row = conn.execute(_SIZE).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), row[2]
