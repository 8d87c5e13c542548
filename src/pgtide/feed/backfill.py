"""Backfill: a tracked table's existing rows, emitted as changes of op ``read``.

The rows are read in primary key order, in chunks. One chunk is ONE transaction that reads
the next rows ``FOR SHARE``, writes them to ``pgtide.changes`` as ``read`` changes and saves
the chunk's last key in ``pgtide.backfills``: a crash (``kill -9``) anywhere loses or
repeats no chunk, and the next runner goes on after the last saved key.

Consistency with concurrent writes (a consumer applying the feed in order ends equal to the
table) is what DBLog's and Debezium's watermarks give, obtained here from the chunk's own
transaction, since the change log lives in the same database:

- The chunk's ``read`` changes get ids when the chunk is read, and the chunk transaction
  holds share locks on its rows until it commits.
- A write to one of those rows before the chunk: the lock waits for the writer's commit
  and then reads the row as the writer left it; the writer's changes, drawn before the
  writer committed, have smaller ids and so come first in the feed (the feed orders the
  transactions of a step by their last change id, and a transaction committed earlier is in
  an earlier step or earlier in the same one).
- A write to one of those rows after the chunk waits for the chunk's commit: its change
  comes after the ``read``.
- A row deleted before the chunk is not read; a row inserted concurrently and not yet
  committed is not read, and its insert change is in the feed anyway.

With WAL capture, the relay writes a source transaction's changes after it committed, so a
``read`` may come before changes that the row already holds; these changes are then applied
again, in commit order, up to the last one, and the copy ends equal all the same.

Who runs it: any Feed process of the database (a thread, under an advisory lock, as the
relay), ``pgtide capture``, or ``track(..., backfill=True, wait=True)`` itself, which waits
for the lock: so a backfill started by a short-lived ``pgtide track`` goes on in the
consumers' processes, and a crash of one runner is taken over by the next.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from ..connect import DsnLike, Resolved, needs_session
from ..errors import FeedError
from ..names import TableName
from ..overview import Section
from ..session import RETRY_NOW, Io, Query, Session, Stopped, one, query, using
from ._worker import WorkerThread
from .track import call, qualified

log = logging.getLogger("pgtide.feed")

CHUNK_ROWS = 10000
"""Rows per backfill chunk (one transaction each)."""
BACKFILL_CHECK = 2.0
"""Seconds between two looks for backfills to run, by a runner that keeps looking (feeds,
``pgtide capture``), or while another runner holds the lock."""
_LOCK_KEY = (0x70677469, 0x42464C)  # advisory lock: one backfill runner per database

_PRIMARY_KEY = """
SELECT a.attname FROM pg_index i
JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE n.nspname = %s AND c.relname = %s AND i.indisprimary ORDER BY k.ord
"""
_START = """
INSERT INTO pgtide.backfills (table_name, key_columns) VALUES (%s, %s)
ON CONFLICT (table_name) DO UPDATE SET key_columns = excluded.key_columns, last_key = NULL,
    rows = 0, chunks = 0, started_at = now(), updated_at = NULL, done_at = NULL,
    paused_at = NULL
"""
_PENDING = (
    "SELECT table_name, key_columns, last_key::text FROM pgtide.backfills "
    "WHERE done_at IS NULL AND paused_at IS NULL ORDER BY started_at, table_name"
)
_ANY_PENDING = "SELECT to_regclass('pgtide.backfills') IS NOT NULL AND EXISTS (" + (
    "SELECT 1 FROM pgtide.backfills WHERE done_at IS NULL AND paused_at IS NULL "
    "AND table_name = ANY(%s))"
)
_ANY_PENDING_ALL = "SELECT to_regclass('pgtide.backfills') IS NOT NULL AND EXISTS (" + (
    "SELECT 1 FROM pgtide.backfills WHERE done_at IS NULL AND paused_at IS NULL)"
)
_STATUS = (
    "SELECT table_name, rows, chunks, started_at, updated_at, done_at, paused_at "
    "FROM pgtide.backfills ORDER BY table_name"
)
_INSTALLED = "SELECT to_regclass('pgtide.backfills') IS NOT NULL"
_STILL_WANTED = (
    "SELECT done_at IS NULL AND paused_at IS NULL FROM pgtide.backfills WHERE table_name = %s"
)
_PAUSE = """
UPDATE pgtide.backfills SET paused_at = coalesce(paused_at, now())
WHERE table_name = %s AND done_at IS NULL RETURNING 1
"""
_RESUME = """
UPDATE pgtide.backfills SET paused_at = NULL
WHERE table_name = %s AND done_at IS NULL RETURNING 1
"""
_KNOWN = "SELECT 1 FROM pgtide.backfills WHERE table_name = %s"
_FORGET = "DELETE FROM pgtide.backfills WHERE table_name = %s"
_TRY_LOCK = "SELECT pg_try_advisory_lock(%s, %s)"
_LOCK = "SELECT pg_advisory_lock(%s, %s)"
_UNLOCK = "SELECT pg_advisory_unlock(%s, %s)"
_NOTIFY = "SELECT pg_notify('pgtide_changes', %s)"

# One chunk: read the next rows FOR SHARE, write them as 'read' changes, save the last key,
# all in one statement (one snapshot) of the chunk's transaction. The last key is built from
# the last row only (a jsonb_build_object per row, sorted, cost a fifth of the chunk), and the
# rows are counted from the chunk (no RETURNING rows to collect).
_CHUNK = """
WITH chunk AS (
    SELECT * FROM {table} AS t {where} ORDER BY {keys} LIMIT %(n)s FOR SHARE
), written AS (
    INSERT INTO pgtide.changes (table_name, op, row)
    SELECT %(name)s, 'read', to_json(c) FROM chunk AS c ORDER BY {ckeys}
), last AS (
    SELECT jsonb_build_object({pairs}) AS k
    FROM (SELECT * FROM chunk AS c ORDER BY {ckeys} DESC LIMIT 1) AS c
), counted AS (
    SELECT count(*) AS n FROM chunk
)
UPDATE pgtide.backfills SET last_key = coalesce((SELECT k FROM last), last_key),
    rows = rows + (SELECT n FROM counted), chunks = chunks + 1, updated_at = now(),
    done_at = CASE WHEN (SELECT n FROM counted) < %(n)s THEN now() END
WHERE table_name = %(name)s AND last_key IS NOT DISTINCT FROM %(last)s::jsonb
RETURNING (SELECT n FROM counted), done_at IS NOT NULL, last_key::text
"""
_AFTER = "WHERE ({keys}) > (SELECT {keys} FROM jsonb_populate_record(NULL::{table}, %(last)s))"


def primary_key_io(table: TableName) -> Io[list[str]]:
    """The primary key columns of ``table``; a clear error if it has none."""
    rows = yield from query(_PRIMARY_KEY, (table.schema, table.name))
    if not rows:
        raise FeedError(
            f"cannot backfill {table}: it has no primary key, and a backfill reads the table "
            "in primary key order (chunks resumable after a crash); add a primary key, or "
            "track it without backfill"
        )
    return [r[0] for r in rows]


def start_io(table: TableName) -> Io[None]:
    """Record a backfill of ``table`` (from its first row; an earlier one starts over)."""
    keys = yield from primary_key_io(table)
    yield Query(_START, (str(table), keys))
    log.info("backfill of %s recorded (key %s)", table, ", ".join(keys))


def pending_io(tables: list[str] | None) -> Io[bool]:
    """Whether a backfill of one of ``tables`` (None: any) is still to run."""
    if tables is None:
        row = yield from one(_ANY_PENDING_ALL)
    else:
        row = yield from one(_ANY_PENDING, (tables,))
    return bool(row and row[0])


def status_io() -> Io[list[dict[str, Any]]]:
    """Each backfill: table, state (running, paused or done), rows emitted, chunks, and when
    it started, last wrote a chunk, ended and was paused."""
    installed = yield from one(_INSTALLED)
    if not installed or not installed[0]:
        return []
    rows = yield from query(_STATUS)
    keys = ("table", "rows", "chunks", "started_at", "updated_at", "done_at", "paused_at")
    found = [dict(zip(keys, row, strict=True)) for row in rows]
    return [{**b, "state": _state(b)} for b in found]


def _state(backfill: dict[str, Any]) -> str:
    if backfill["done_at"] is not None:
        return "done"
    return "paused" if backfill["paused_at"] is not None else "running"


def overview_io() -> Io[list[Section]]:
    """The "backfills" section of ``pgtide status`` (none when no backfill was recorded)."""
    found = yield from status_io()
    columns = ["table", "state", "rows", "chunks", "started at", "updated at"]
    rows = [
        [b["table"], b["state"], b["rows"], b["chunks"], b["started_at"], b["updated_at"]]
        for b in found
    ]
    return [Section("backfills", columns, rows)] if rows else []


def backfills(
    *, dsn: DsnLike = None, conn: psycopg.Connection[Any] | None = None
) -> list[dict[str, Any]]:
    """Every recorded backfill: table, ``state`` ("running", "paused" or "done"), rows
    emitted, chunks, and when it started, last wrote a chunk, ended (``done_at``) and was
    paused (``paused_at``; None while it may run)."""
    return call(dsn, conn, status_io())


def pause_backfill(
    table: str, *, dsn: DsnLike = None, conn: psycopg.Connection[Any] | None = None
) -> bool:
    """Pause the backfill of ``table``: its progress stays, and the process running it
    leaves it after its current chunk (one transaction) and runs no other chunk of it until
    :func:`resume_backfill`. False if it was done already; an error if none was recorded."""
    return call(dsn, conn, _named(table, pause_io))


def resume_backfill(
    table: str,
    *,
    wait: bool = False,
    dsn: DsnLike = None,
    conn: psycopg.Connection[Any] | None = None,
) -> bool:
    """Resume the paused backfill of ``table`` from its last chunk: runners take it up as a
    backfill just recorded by ``track(..., backfill=True)`` (a Feed that follows the table,
    ``pgtide capture``); ``wait=True`` runs it here and returns when it is done. False if it
    was done already; an error if none was recorded."""
    resumed = call(dsn, conn, _named(table, resume_io))
    if resumed and wait:
        with using(dsn, conn) as c:
            Backfiller(dsn).run_pending(c, wait=True)
    return resumed


def _named(table: str, io: Callable[[TableName], Io[bool]]) -> Io[bool]:
    name = yield from qualified(TableName.parse(table))
    return (yield from io(name))


def pause_io(table: TableName) -> Io[bool]:
    """Pause the backfill of ``table`` (True), or say why not (an error naming the fix)."""
    if (yield from one(_PAUSE, (str(table),))) is not None:
        return True
    return (yield from _not_running(table, "pause"))


def resume_io(table: TableName) -> Io[bool]:
    """Resume the paused backfill of ``table`` (True), or say why not."""
    if (yield from one(_RESUME, (str(table),))) is not None:
        return True
    return (yield from _not_running(table, "resume"))


def _not_running(table: TableName, verb: str) -> Io[bool]:
    known = yield from one(_KNOWN, (str(table),))
    if known is None:
        raise FeedError(
            f"cannot {verb} the backfill of {table}: none was recorded; start one with "
            f"pgtide.track({str(table)!r}, backfill=True) (pgtide track {table} --backfill)"
        )
    return False  # done already: nothing to pause or resume


def forget_io(table: TableName) -> Io[None]:
    yield Query(_FORGET, (str(table),))


def _chunk_sql(table: TableName, keys: list[str], first: bool) -> sql.Composed:
    cols = sql.SQL(", ").join(sql.Identifier(k) for k in keys)
    ccols = sql.SQL(", ").join(sql.Identifier("c", k) for k in keys)
    pairs = sql.SQL(", ").join(
        sql.SQL("{}, {}").format(sql.Literal(k), sql.Identifier("c", k)) for k in keys
    )
    where = sql.SQL("") if first else sql.SQL(_AFTER).format(keys=cols, table=table.identifier)
    return sql.SQL(_CHUNK).format(
        table=table.identifier, where=where, keys=cols, ckeys=ccols, pairs=pairs
    )


@dataclass
class Backfiller:
    """Runs the database's pending backfills, one chunk per transaction, under an advisory
    lock (one runner per database; another one waits, or does something else)."""

    dsn: DsnLike = None
    chunk_rows: int = CHUNK_ROWS
    name: str = "backfill"
    emitted: int = 0
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    def run_pending(self, conn: psycopg.Connection[Any], *, wait: bool = False) -> bool:
        """Run every pending backfill to its end on ``conn`` (autocommit). Returns False
        when another runner holds the lock (``wait``: wait for it, then go on)."""
        if wait:
            conn.execute(_LOCK, _LOCK_KEY)
        else:
            row = conn.execute(_TRY_LOCK, _LOCK_KEY).fetchone()
            if row is None or not row[0]:
                return False
        try:
            while not self._stop.is_set():
                pending = conn.execute(_PENDING).fetchall()
                if not pending:
                    return True
                name, keys, last = pending[0]
                self._table(conn, TableName.parse(name), list(keys), last)
            return True
        finally:
            if not conn.closed:
                conn.execute(_UNLOCK, _LOCK_KEY)

    def _table(
        self, conn: psycopg.Connection[Any], table: TableName, keys: list[str], last: str | None
    ) -> None:
        first, after = _chunk_sql(table, keys, True), _chunk_sql(table, keys, False)
        n = self.chunk_rows
        while not self._stop.is_set():
            wanted = conn.execute(_STILL_WANTED, (str(table),)).fetchone()
            if wanted is None or not wanted[0]:  # paused (or forgotten) meanwhile
                log.info("backfill of %s paused: left after its last chunk", table)
                return
            try:
                row = self._chunk(conn, table, first if last is None else after, n, last)
            except RETRY_NOW:  # the chunk's row locks met a writer's: nothing kept, again
                log.debug("backfill of %s: chunk rolled back (deadlock); running it again", table)
                continue
            count, done, last = row
            self.emitted += count
            if done:
                log.info("backfill of %s done", table)
                return

    @staticmethod
    def _chunk(
        conn: psycopg.Connection[Any],
        table: TableName,
        statement: sql.Composed,
        n: int,
        last: str | None,
    ) -> tuple[int, bool, str | None]:
        """One chunk in one transaction: (rows emitted, whether the table is done, its last
        key)."""
        with conn.transaction():
            try:
                row = conn.execute(statement, {"n": n, "name": str(table), "last": last}).fetchone()
            except psycopg.errors.UndefinedTable:
                raise FeedError(f"cannot backfill {table}: the table is gone; untrack it") from None
            if row is None:
                raise FeedError(f"another backfill of {table} moved on meanwhile")
            count, done, last = row
            if count:
                conn.execute(_NOTIFY, (str(table),))
        return count, done, last

    def run(self, stop: threading.Event | None = None, *, until_idle: bool = True) -> None:
        """Run pending backfills (reconnecting after an outage) until none is left; with
        ``until_idle=False``, also those recorded or resumed later, until stopped (looking
        for them every ``BACKFILL_CHECK`` seconds)."""
        needs_session("a backfill runner (it holds the database's backfill lock)")
        if stop is not None:
            self._stop = stop
        session = Session(self.dsn, name=f"pgtide {self.name}", application_name="pgtide backfill")
        session._stop = self._stop
        try:
            while not self._stop.is_set():
                try:
                    if session.call(self.run_pending) and until_idle:
                        return
                except Stopped:
                    return
                # another runner holds the lock, or (until_idle=False) none is left
                self._stop.wait(BACKFILL_CHECK)
        finally:
            session.close()

    def stop(self) -> None:
        self._stop.set()


class BackfillThread(WorkerThread[Backfiller]):
    """Pending backfills run inside a Feed process (:class:`~._worker.WorkerThread`): the
    thread ends when none is left."""

    def __init__(self, resolved: Resolved, consumer: str) -> None:
        super().__init__(
            Backfiller(resolved, name=f"backfill of feed {consumer}"), "pgtide-backfill"
        )
