"""The feed's one core, free of I/O: which queries to run, and what their rows mean.

Reading works as PgQ does. A position holds a snapshot; a step takes a newer snapshot (the
current one, or the stop position's), and the changes of the step are those whose transaction
is visible in the new snapshot and was not in the old one. A transaction becomes visible in
one snapshot and stays visible, so nothing is skipped when transactions commit out of id
order, and a transaction still open is delivered once it commits.

Both faces (blocking :mod:`pgtide.feed._sync`, asyncio :mod:`pgtide.feed._async`) drive the
same :data:`~pgtide.session.Io` generators through their session. The ``batches()`` loop
itself is :func:`plan`, which yields :class:`Run`, :class:`Wait` and :class:`Emit` steps for
the face to carry out.
"""

from __future__ import annotations

import functools
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from itertools import groupby, repeat
from operator import contains, itemgetter
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeAlias, overload

from psycopg import sql

from .. import schema
from ..errors import FeedError, InvalidPosition
from ..names import TableName
from ..session import Io, Query, one, query
from .backfill import BACKFILL_CHECK, pending_io
from .position import Position, Snapshot
from .retention import drop_consumer_io, position_of
from .rows import FINGERPRINT, MARK, Decode, RowTypes, instant
from .sleepers import Registration, Watch, registration
from .track import require_tracked
from .wal import follows_wal_io

Start: TypeAlias = "Literal['saved', 'beginning', 'end'] | Position | str"


@dataclass(frozen=True)
class Change:
    """One captured change: ``row`` is the new row (insert, update, read), ``old`` the old
    row (update, delete); a truncate has neither. ``op`` is "read" for a row emitted by a
    backfill. ``xid`` is the writing transaction. Frozen, its fields in slots: it has no
    ``__dict__`` (``dataclasses.asdict(change)`` gives its fields as a dict)."""

    # Slots, not a __dict__: a feed makes one Change per change read, and each one tracked
    # object fewer (no dict, no tuple of its captured rows) is garbage collection work fewer
    # (a third of the read path's time at 5,000-change batches). The three private ones hold
    # the rows as captured until they are typed (see _to_changes).
    __slots__ = ("_old_text", "_text", "_typing", "at", "id", "old", "op", "row", "table", "xid")

    OPS: ClassVar[tuple[str, ...]] = ("insert", "update", "delete", "truncate", "read")
    """Every ``op`` a change can carry."""

    id: int
    table: str
    op: str
    row: dict[str, Any] | None
    old: dict[str, Any] | None
    xid: int
    at: datetime

    def captured_json(self) -> tuple[str | None, str | None] | None:
        """The row and old row as their captured JSON text, when that text already says what
        the JSON of the typed rows says (numbers exact; see
        :meth:`~pgtide.feed.rows.RowTypes.plain`) and the rows were not typed yet; else None.
        A sink can send that text as it is instead of encoding the typed rows again."""
        me: Any = self  # the captured rows' slots are no fields
        try:
            if not me._typing.plain:
                return None
            row, old = me._text, me._old_text
        except AttributeError:  # made by its constructor, or typed already
            return None
        if (row is not None and MARK in row) or (old is not None and MARK in old):
            return None  # WAL capture marked a value it could not read: typed rows say so
        return row, old

    if not TYPE_CHECKING:  # typed statically as the fields above

        def __getattr__(self, name: str) -> Any:
            # Called for a slot not set. A change read by a feed types ``row`` and ``old``
            # from their captured JSON at their first use, with the other changes of its
            # table in its batch (see _Typing): code that never looks at them (a sink
            # sending that JSON as it is, a count) does not pay for it.
            if name not in ("row", "old"):
                raise AttributeError(name)
            try:
                typing: _Typing = _get(self, "_typing")
            except AttributeError:
                raise AttributeError(name) from None
            typing.type(self)
            return _get(self, name)

        def __getstate__(self) -> tuple[Any, ...]:
            # the typed rows travel (the decoder does not)
            return (self.id, self.table, self.op, self.row, self.old, self.xid, self.at)

        def __setstate__(self, state: tuple[Any, ...]) -> None:
            for setter, value in zip(_FIELD_SETTERS, state, strict=True):
                setter(self, value)


def _slot(name: str) -> Any:
    """The setter of one of :class:`Change`'s slots (it is frozen: only the feed sets them)."""
    return Change.__dict__[name].__set__


_FIELD_SETTERS = tuple(_slot(n) for n in ("id", "table", "op", "row", "old", "xid", "at"))
_SETTERS = tuple(_slot(n) for n in ("id", "table", "op", "xid", "at", "_text", "_old_text"))
_set_row, _set_old = _slot("row"), _slot("old")
_set_typing = _slot("_typing")
_del_text, _del_old_text = (Change.__dict__[n].__delete__ for n in ("_text", "_old_text"))
_get = object.__getattribute__


class _Typing:
    """How the changes of one table in one batch are typed: its decoder, whether the captured
    text already says what the typed rows' JSON says
    (:meth:`~pgtide.feed.rows.RowTypes.plain`), and its changes still untyped.

    The first use of a row of one of them types them all, in one loop (a consumer that
    reads one row reads the others): each change's own first use would cost a call of
    ``Change.__getattr__`` (more than decoding its row). Once the feed has made the next
    batch it lets them go (:meth:`release`; each one left is then typed at its own first
    use), so that a batch never used holds no reference cycle."""

    __slots__ = ("_lock", "changes", "decode", "plain", "released")

    def __init__(self, decode: Decode, plain: bool) -> None:
        self.decode = decode
        self.plain = plain
        self.changes: list[Change] = []
        self.released = False
        self._lock = threading.Lock()  # a batch may be read from several threads

    def type(self, change: Change) -> None:
        """Type ``change``, and the others still held (those typed are let go)."""
        with self._lock:
            try:
                _get(change, "_text")
            except AttributeError:
                return  # typed meanwhile (in another thread)
            pending, self.changes = self.changes or [change], []
            decode = self.decode
            for i, each in enumerate(pending):
                me: Any = each
                text, old = me._text, me._old_text
                try:
                    row = None if text is None else decode(text)
                    old = None if old is None else decode(old)
                except BaseException:
                    self.changes = pending[i:]  # untyped still
                    raise
                _set_row(each, row)
                _set_old(each, old)
                _del_text(each)  # the typed rows are its own now
                _del_old_text(each)

    def release(self) -> None:
        """Let the changes go: each one left is typed at its own first use."""
        with self._lock:
            self.changes = []
            self.released = True


_CURRENT = "SELECT pg_current_snapshot()::text"
# The xid column is returned as bigint under another name, so that ORDER BY xid sorts by
# the indexed xid8 column (an ordered index scan that stops at the LIMIT). The time comes in
# its binary form (8 bytes: microseconds since 2000-01-01), the cheapest to write and read:
# one transaction's changes share it, and it is made a datetime once per transaction
# (parsing a timestamptz per row cost more than the rest of the row; computing the
# microseconds as a number, through extract's numeric, a quarter of the server's time). The
# last column is the fingerprint of the known tables' columns (computed once per query):
# rows are typed with the column types it vouches for.
_COLUMNS = sql.Composed(
    [
        sql.SQL(
            "SELECT id, xid::text::bigint AS txid, table_name, op, row::text, old::text, "
            "timestamptz_send(at), "
        ),
        FINGERPRINT,
    ]
)
_ALL = sql.SQL(" FROM pgtide.changes WHERE ")
# A consumer of some tables reads each table's changes through the index by table (a hash
# of its name), merged in read order: its reads cost its own tables' changes, not the log's.
# The name itself is checked too (two names may share a hash), in a form the planner
# estimates as keeping nearly every row: written `table_name = name`, its selectivity
# multiplied the hash's (the same condition twice), the planner expected a table's
# changes to be ~100 times fewer than they are and sorted all of them (bitmap scan, then
# top-N sort) instead of walking the index in xid order up to the batch's LIMIT, so that a
# read cost the table's whole remaining backlog.
_TABLE = sql.SQL(
    "SELECT * FROM pgtide.changes WHERE hashtext(table_name) = hashtext({name}) "
    "AND (CASE WHEN table_name = {name} THEN 1 END) IS NOT NULL"
)
_STEP = sql.SQL(
    "xid >= %(lower)s::text::xid8 AND xid < %(target_xmax)s::text::xid8 "
    "AND (xid >= %(base_xmax)s::text::xid8 OR xid = ANY(%(base_xip)s::text[]::xid8[])) "
    "AND pg_visible_in_snapshot(xid, %(target)s::text::pg_snapshot)"
)
_AFTER = sql.SQL("xid > %(after)s::text::xid8")
_UPPER = sql.SQL("xid <= %(upper)s::text::xid8")
_CUT = sql.SQL("xid <= %(cut)s::text::xid8")
_ORDER = sql.SQL(" ORDER BY xid, id LIMIT %(limit)s")
_SUMMARY = sql.SQL("SELECT xid::text::bigint, max(id), count(*)::int")
_SAVED = """
SELECT snapshot::text, target::text, after_xid::text FROM pgtide.consumers WHERE name = %s
"""
_REGISTER = """
INSERT INTO pgtide.consumers (name, snapshot, target, after_xid, tables)
VALUES (%s, %s::pg_snapshot, %s::pg_snapshot, %s::xid8, %s)
ON CONFLICT (name) DO NOTHING
"""
_SAVE = """
INSERT INTO pgtide.consumers (name, snapshot, target, after_xid, tables)
VALUES (%s, %s::pg_snapshot, %s::pg_snapshot, %s::xid8, %s)
ON CONFLICT (name) DO UPDATE SET snapshot = excluded.snapshot, target = excluded.target,
    after_xid = excluded.after_xid, tables = excluded.tables, acked_at = now()
"""
# The same, committed without waiting for the WAL flush: for acknowledgements whose loss
# in a server crash only brings batches again that a sink recognises (see Core.save).
_SAVE_LAZY = """
WITH lazy AS (SELECT set_config('synchronous_commit', 'off', true))
INSERT INTO pgtide.consumers (name, snapshot, target, after_xid, tables)
SELECT %s, %s::pg_snapshot, %s::pg_snapshot, %s::xid8, %s FROM lazy
ON CONFLICT (name) DO UPDATE SET snapshot = excluded.snapshot, target = excluded.target,
    after_xid = excluded.after_xid, tables = excluded.tables, acked_at = now()
"""
_LOCK = (
    "SELECT snapshot::text, target::text, after_xid::text FROM pgtide.consumers "
    "WHERE name = %s FOR UPDATE"
)


def _save_params(consumer: str, pos: Position, tables: list[str] | None) -> tuple[Any, ...]:
    return (
        consumer,
        str(pos.snapshot),
        None if pos.target is None else str(pos.target),
        None if pos.after is None else str(pos.after),
        tables,
    )


def current() -> Io[Position]:
    """The current snapshot, as a complete position."""
    row = yield from one(_CURRENT)
    assert row is not None
    return Position(Snapshot.parse(row[0]))


def _to_changes(rows: list[tuple[Any, ...]], types: RowTypes) -> Io[tuple[Changes, list[_Typing]]]:
    """The changes of ``rows``, made at their first use (see :class:`Changes`), typed
    (looking column types up only when they changed); and how each table's are typed."""
    if not rows:
        return Changes.none(types.zone), []
    yield from types.update(set(map(_NAME, rows)), rows[0][7])
    # each table's decoder and zone as they are now: the changes are typed with the column
    # types this read vouches for, whenever they are made
    typings = {t: _Typing(types.decoder(t), types.plain(t)) for t in set(map(_NAME, rows))}
    return Changes(rows, typings, types.zone), list(typings.values())


class Changes(Sequence[Change]):
    """A batch's changes, made from its rows (as read) at their first use: a sink that sends
    the captured JSON as it is (:meth:`captured`) makes no :class:`Change` at all.

    Thousands of objects fewer per batch: each Change is an object the garbage collector
    tracks, and a batch's changes live through two reads (read ahead of a delivery), long
    enough to be moved to the oldest generation, whose collections walk every object of the
    process (a row tuple of plain values is let go at its first collection). Made, they are
    the same objects on every use, from any thread."""

    __slots__ = ("_list", "_lock", "_rows", "_typings", "_zone")

    def __init__(
        self,
        rows: list[tuple[Any, ...]],
        typings: dict[str, _Typing],
        zone: tzinfo,
    ) -> None:
        self._rows = rows
        self._typings = typings
        self._zone = zone
        self._list: list[Change] | None = None
        self._lock = threading.Lock()

    @classmethod
    def none(cls, zone: tzinfo = UTC) -> Changes:
        """No changes (a read that found nothing)."""
        return cls([], {}, zone)

    @property
    def made(self) -> list[Change] | None:
        """The changes if they were made, else None."""
        return self._list

    def make(self) -> list[Change]:
        """The changes (made at the first call)."""
        made = self._list
        if made is None:
            with self._lock:
                made = self._list
                if made is None:
                    made = self._list = _make(self._rows, self._typings, self._zone)
        return made

    def captured(self) -> list[tuple[Any, ...]] | None:
        """The rows of the changes, each ``(id, xid, table, op, row, old, at, _)`` with
        ``row`` and ``old`` their captured JSON text and ``at`` the time as
        ``timestamptz_send`` writes it, when that JSON already says what the JSON of the typed
        rows says (see :meth:`Change.captured_json`) for every one of them; else None."""
        if not all(t.plain for t in self._typings.values()):
            return None
        rows = self._rows
        for column in (_ROW, _OLD):  # a loop in C: no Python code per row
            if any(map(contains, filter(None, map(column, rows)), repeat(MARK))):
                return None  # WAL capture marked a value it could not read: typed rows say so
        return rows

    def instant(self, stamp: bytes) -> datetime:
        """The ``at`` of a change from its row's time (as :meth:`captured` gives it)."""
        return instant(stamp, self._zone)

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, index: int) -> Change: ...
    @overload
    def __getitem__(self, index: slice) -> list[Change]: ...
    def __getitem__(self, index: int | slice) -> Change | list[Change]:
        return self.make()[index]

    def __iter__(self) -> Iterator[Change]:
        return iter(self.make())

    def __repr__(self) -> str:
        return f"<Changes: {len(self)}>"


def _make(
    rows: list[tuple[Any, ...]],
    typings: dict[str, _Typing],
    zone: tzinfo,
) -> list[Change]:
    """The changes of ``rows``, untyped: rows come as JSON text, typed (numbers exact) when
    first used (see _Typing)."""
    # Each Change is made without its frozen __init__ (a call of object.__setattr__ per
    # field, with checks): its slots are set directly. A batch is mostly runs of one table
    # and of one transaction (one time): each is looked up once a run.
    changes: list[Change] = []
    append, new = changes.append, object.__new__
    set_id, set_table, set_op, set_xid, set_at, set_text, set_old_text = _SETTERS
    set_typing = _set_typing
    current: str | None = None
    typing: Any = None
    add: Callable[[Change], None] = append
    moment: bytes | None = None
    at: datetime | None = None
    for id_, xid, table, op, row, old, micros, _ in rows:
        if table != current:
            current, typing = table, typings[table]
            # a batch let go (the next one was read) types each change at its first use
            add = typing.changes.append if not typing.released else _ignore
        if micros != moment:
            moment, at = micros, instant(micros, zone)
        change = new(Change)
        set_id(change, id_)
        set_table(change, table)
        set_op(change, op)
        set_xid(change, xid)
        set_at(change, at)
        set_text(change, row)
        set_old_text(change, old)
        set_typing(change, typing)
        append(change)
        add(change)
    return changes


def _ignore(_change: Change) -> None:
    pass


@dataclass
class Cursor:
    """Where a running feed stands (shared with the face so that position() can read it)."""

    position: Position | None = None
    stop: Position | None = None


@dataclass
class Core:
    """What one consumer does, as queries: prepare, resolve a start, read a step, save.

    ``tables`` are the followed tables as given (None: every table); :meth:`prepare` makes
    them schema-qualified, found through the search_path, and checks that they are tracked.
    """

    consumer: str
    tables: list[str] | None = None
    cursor: Cursor = field(default_factory=Cursor)
    types: RowTypes = field(default_factory=RowTypes)
    wal: bool = False  # a followed table is captured from the WAL: the feed may relay
    backfill: bool = False  # a followed table has a backfill to run: the feed may run it
    runs_backfills: bool = True  # the feed runs backfills (relay=True): it looks for new ones
    # the rest of a step delivered in several batches: its transactions, by position key
    _summary: dict[tuple[Any, ...], Summary] = field(default_factory=dict, repr=False)
    # the connection's registration as a waiting feed (see pgtide.feed.sleepers)
    sleeper: Registration = field(default_factory=registration, repr=False)
    # how the last batch's changes are typed, by table (released at the next batch)
    _typings: list[_Typing] = field(default_factory=list, repr=False)

    def prepare(self) -> Io[None]:
        """Run on each new connection: install the schema, check the followed tables."""
        self.sleeper = registration()  # a new connection holds no registration
        yield from schema.ensure_io()
        if self.tables is not None:
            found: set[str] = set()
            for table in self.tables:
                found.add(str((yield from require_tracked(TableName.parse(table)))))
            self.tables = sorted(found)
        self.wal = yield from follows_wal_io(self.tables)
        self.backfill = yield from pending_io(self.tables)

    def check_backfills(self) -> Io[bool]:
        """Look again whether a followed table has a backfill to run (one recorded or
        resumed since the feed connected)."""
        self.backfill = yield from pending_io(self.tables)
        return self.backfill

    def start_waiting(self) -> Io[bool]:
        """Register this connection as a waiting feed (see :mod:`pgtide.feed.sleepers`)."""
        return (yield from self.sleeper.register())

    def stop_waiting(self) -> Io[None]:
        """No longer waiting: the capture triggers stop notifying for this feed."""
        yield from self.sleeper.unregister()

    def wants(self, _channel: str, table: str) -> bool:
        """Whether a wake-up NOTIFY for ``table`` concerns this feed."""
        return self.tables is None or table in self.tables

    def saved(self) -> Io[Position | None]:
        """The consumer's saved position, or None."""
        return position_of((yield from one(_SAVED, (self.consumer,))))

    def resolve(self, where: Start, *, saved_default: str = "beginning") -> Io[Position]:
        """Turn "saved", "beginning", "end", a Position or its string into a Position."""
        if isinstance(where, Position):
            return where
        if where == "beginning":
            return Position.beginning()
        if where == "end":
            return (yield from current())
        if where == "saved":
            found = yield from self.saved()
            if found is not None:
                return found
            return (yield from self.resolve(saved_default))
        if isinstance(where, str):
            return Position.parse(where)
        raise InvalidPosition(
            f"cannot start or stop at {where!r}; use 'saved', 'beginning', 'end' or a Position"
        )

    def position(self) -> Io[Position]:
        """The consumer's saved position (the beginning for a new consumer)."""
        return (yield from self.resolve("saved"))

    def register(self, pos: Position) -> Io[None]:
        """Record the consumer (at ``pos``) if it is new, so that prune keeps its changes."""
        yield Query(_REGISTER, _save_params(self.consumer, pos, self.tables))

    def save(self, pos: Position, durable: bool = True) -> Io[None]:
        """Acknowledge: the consumer's saved position becomes ``pos``. Not ``durable``: the
        commit does not wait for the WAL flush (a server crash may forget the last such
        acknowledgements, so that their batches come again), for ``run()`` with a sink,
        whose message ids make a repeat harmless: one disk flush less per batch."""
        text = _SAVE if durable else _SAVE_LAZY
        yield Query(text, _save_params(self.consumer, pos, self.tables))

    def seek(self, where: Start) -> Io[Position]:
        """Save ``where`` as the consumer's position; the feed goes on from there."""
        chosen = yield from self.resolve(where)
        yield from self.save(chosen)
        self.cursor.position = chosen
        return chosen

    def save_once(self, start: Position, pos: Position) -> Io[None]:
        """Save ``pos`` inside the caller's transaction, refusing if another process of this
        consumer already acknowledged past ``start`` (its effects would then be doubled)."""
        saved = position_of((yield from one(_LOCK, (self.consumer,))))
        if saved is not None and saved > start:
            raise FeedError(
                f"consumer {self.consumer!r} already acknowledged up to {saved}, past this "
                f"batch's start {start}; another process runs this consumer, or the feed "
                "was started behind its saved position (start='saved' avoids that)"
            )
        yield from self.save(pos)

    def resume(self, start: Position) -> Io[Position]:
        """Where to go on after a batch from ``start`` was interrupted: the saved position
        if the batch (or more) was acknowledged after all, else ``start`` (it comes again)."""
        saved = yield from self.saved()
        return saved if saved is not None and saved > start else start

    def drop(self) -> Io[bool]:
        """Forget this consumer."""
        return (yield from drop_consumer_io(self.consumer))

    def _from(self, parts: list[sql.Composable], first: bool = False) -> sql.Composable:
        """FROM the changes of the followed tables, WHERE ``parts`` all hold; ``first``:
        only the first ones in read order that the query's LIMIT can take."""
        where = sql.SQL(" AND ").join(parts)
        if self.tables is None:
            return sql.Composed([_ALL, where])
        # each table's conditions (and LIMIT) inside its branch: each branch walks its
        # index in read order and stops, and the merge of the branches takes the first
        tables = sql.SQL(" UNION ALL ").join(
            sql.Composed(
                [
                    sql.SQL("("),
                    _TABLE.format(name=sql.Placeholder(f"t{i}")),
                    sql.SQL(" AND "),
                    where,
                    _ORDER if first else sql.SQL(""),
                    sql.SQL(")"),
                ]
            )
            for i in range(len(self.tables))
        )
        return sql.Composed([sql.SQL(" FROM ("), tables, sql.SQL(") AS c")])

    def read(
        self, pos: Position, stop: Position | None, max_changes: int
    ) -> Io[tuple[Changes, Position]]:
        """One step from ``pos``: returns (changes, new position). Whole transactions only,
        in commit order (see :func:`_commit_order`)."""
        base, after = pos.snapshot, pos.after
        upper: int | None = None
        if pos.target is not None:
            target: Snapshot = pos.target
        elif stop is None:
            target = (yield from current()).snapshot
        elif stop.target is not None and stop.snapshot != base:
            target = stop.snapshot
        else:
            target = stop.target or stop.snapshot
        if stop is not None and stop.target == target and stop.snapshot == base:
            upper = stop.after
        if target == base:
            return Changes.none(), Position(target)
        if target._key < base._key:
            return Changes.none(), pos
        params: dict[str, Any] = {
            "lower": str(min(base.xip, default=base.xmax)),
            "base_xmax": str(base.xmax),
            "base_xip": [str(x) for x in base.xip],
            "target_xmax": str(target.xmax),
            "target": str(target),
            **{f"t{i}": t for i, t in enumerate(self.tables or ())},
            "limit": max_changes + 1,
            **self.types.params(),
        }
        where: list[sql.Composable] = [_STEP]
        if after is not None:
            where.append(_AFTER)
            params["after"] = str(after)
        if upper is not None:
            where.append(_UPPER)
            params["upper"] = str(upper)
        done = Position(target) if upper is None else Position(base, target, upper)
        # A step larger than a batch is delivered in whole transactions, in commit order, up
        # to a cut that a position can say ("every transaction of the step up to xid
        # `cut`"), chosen from the step's summary; its rest is kept for the next batches.
        key = (str(base), str(target), after, upper, tuple(self.tables or ()))
        summary = self._summary.get(key)
        rows: list[tuple[Any, ...]] = []
        if summary is None:
            rows = yield from query(
                sql.Composed([_COLUMNS, self._from(where, first=True), _ORDER]), params
            )
            if len(rows) <= max_changes:
                return (yield from self._changes(rows)), done
            found = yield from query(
                sql.Composed([_SUMMARY, self._from(where), sql.SQL(" GROUP BY xid")]), params
            )
            summary = sorted(((last, xid, n) for xid, last, n in found), key=lambda s: s[0])
        cut, rest = choose_cut(summary, max_changes)
        self._summary = {(str(base), str(target), cut, upper, key[4]): rest} if rest else {}
        if rows and rows[-1][1] > cut:
            # the rows in hand, in (xid, id) order, hold every change up to the cut
            rows = rows[: bisect_right(rows, cut, key=_XID)]
        else:
            params["cut"] = str(cut)  # in no order: _commit_order sorts them
            rows = yield from query(sql.Composed([_COLUMNS, self._from([*where, _CUT])]), params)
        changes = yield from self._changes(rows)
        return changes, (Position(base, target, cut) if rest else done)

    def _changes(self, rows: list[tuple[Any, ...]]) -> Io[Changes]:
        """The changes of whole transactions' rows (in any order), in commit order; the
        changes of the batch before, still untyped, are let go (see :class:`_Typing`)."""
        changes, typings = yield from _to_changes(_commit_order(rows), self.types)
        for typing in self._typings:
            typing.release()
        self._typings = typings
        return changes


Summary: TypeAlias = "list[tuple[int, int, int]]"
"""A step's transactions as (last change id, xid, number of changes), by last change id."""


def choose_cut(summary: Summary, max_changes: int) -> tuple[int, Summary]:
    """Where to end a batch of a step larger than ``max_changes``: returns (cut, rest).

    The batch is the first transactions in commit order (by last change id) and must be
    "every transaction of the step with xid <= cut" (what a position can say), so a cut
    is possible only where the transactions taken so far are the ones of smallest xids.
    The largest such batch of at most ``max_changes`` changes is taken, else the smallest
    possible (a large transaction, or one interleaved with many, comes whole)."""
    xids = sorted(s[1] for s in summary)
    best: int | None = None
    taken = highest = 0
    for k, (_last, xid, n) in enumerate(summary, 1):
        taken += n
        highest = max(highest, xid)
        if highest != xids[k - 1]:
            continue  # a transaction of a smaller xid is still to come
        if taken <= max_changes or best is None:
            best = highest
        if taken >= max_changes:
            break
    assert best is not None
    return best, [s for s in summary if s[1] > best]


def _commit_order(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Rows of whole transactions, in any order, in commit order: transactions by their
    last change id, each one's changes by id.

    Two transactions that wrote the same row committed in the order of their last change
    ids: the second one's write waited for the first one's commit (a row lock), so it, and
    its last change, come after every change of the first. Xid order does not say that (a
    transaction draws its xid at its first write, wherever that is).

    Sorted here rather than by the query: the server compares xid8 values through a
    function call each, and a batch's rows come nearly in id order (the order they were
    written), which Python's sort takes in about one pass."""
    ordered = sorted(rows, key=_ID)
    xids = list(map(_XID, ordered))
    last = dict(zip(xids, map(_ID, ordered), strict=True))  # each one's last id
    if len(last) > 1 and len(last) < sum(1 for _ in groupby(xids)):  # some interleave
        ordered.sort(key=lambda row: last[row[1]])  # stable: each one's changes stay by id
    return ordered


_ID, _XID, _NAME, _ROW, _OLD = map(itemgetter, (0, 1, 2, 4, 5))


@dataclass(frozen=True)
class Run:
    """Carry out an :data:`Io` generator (made afresh by ``make`` on each retry)."""

    make: Callable[[], Io[Any]]


@dataclass(frozen=True)
class Wait:
    """Wait for a wake-up for at most ``seconds`` (None: no limit)."""

    seconds: float | None


@dataclass(frozen=True)
class Emit:
    """Give a batch to the user: changes between ``start`` and ``end``."""

    changes: Changes
    start: Position
    end: Position


Step: TypeAlias = Run | Wait | Emit


def plan(
    core: Core,
    start: Start,
    stop: Start | None,
    max_changes: int,
    timeout: float | None,
    stopped: Callable[[], bool] = lambda: False,
    clock: Callable[[], float] = time.monotonic,
    listening: Callable[[], bool] = lambda: False,
    poll: float = 1.0,
) -> Generator[Step, Any, None]:
    """The ``batches()`` loop: resolve start and stop, read steps, emit batches, wait.

    ``stopped()`` is asked before each read: True ends the loop (``Feed.stop()``). A
    running consumer (no ``stop``) looks for new backfills of its tables every
    :data:`~.backfill.BACKFILL_CHECK` seconds (one small query).
    ``listening()`` says whether a NOTIFY can wake the wait (the face's waker LISTENs): the
    feed then registers as waiting while it waits (:mod:`pgtide.feed.sleepers`), and reads
    again on a backoff up to ``poll`` seconds while a writer may have skipped its NOTIFY."""
    if max_changes < 1:
        raise FeedError(f"max_changes must be at least 1, not {max_changes}")
    if timeout is not None and timeout < 0:
        raise FeedError(f"timeout must be None or >= 0 seconds, not {timeout}")
    cursor = core.cursor
    pos: Position = yield Run(functools.partial(core.resolve, start))
    if stop is None:
        # a running consumer holds its changes from now on; a bounded range is a replay
        yield Run(functools.partial(core.register, pos))
    cursor.position = pos
    end: Position | None = None
    if stop is not None:
        end = yield Run(lambda: core.resolve(stop, saved_default="end"))
    cursor.stop = end
    idle_since = backfills_checked = clock()
    watch = Watch(cap=poll)
    woken = False  # the read follows a wait
    while not stopped():
        if end is not None and pos >= end:
            break
        if stop is None and core.runs_backfills and clock() - backfills_checked >= BACKFILL_CHECK:
            yield Run(core.check_backfills)  # recorded or resumed since: the feed may run it
            backfills_checked = clock()
        here = pos
        changes, pos = yield Run(functools.partial(core.read, here, end, max_changes))
        cursor.position = pos
        after_wait, woken = woken, False
        if changes:
            if core.sleeper.registered and not after_wait:
                # changes again without a wait: busy, writers need not wake this feed (a
                # feed woken by a NOTIFY stays registered: at a light load the writers'
                # NOTIFY costs little, and registering again costs the feed round trips)
                yield Run(core.stop_waiting)
            yield Emit(changes, here, pos)
            idle_since = clock()
            continue
        if pos.partial and pos != here:
            continue  # the rest of a step split by max_changes: read on before waiting
        if end is not None:
            if pos >= end or pos == here:
                break
            continue
        left = None if timeout is None else timeout - (clock() - idle_since)
        if left is not None and left <= 0:
            break
        recheck: float | None = None
        if not listening():
            if core.sleeper.registered:  # nobody hears a NOTIFY now: spare the writers
                yield Run(core.stop_waiting)
        elif not core.sleeper.registered:
            if (yield Run(core.start_waiting)):
                watch.start()
                continue  # read with a snapshot taken after registering
            recheck = watch.retry()  # the lock was busy this instant
        else:
            recheck = watch.seen(pos.snapshot.xip)
        if recheck is not None:
            left = recheck if left is None else min(left, recheck)
        yield Wait(left)
        woken = True
    if core.sleeper.registered:
        yield Run(core.stop_waiting)
