"""The events feature's one core: configuration, the handler registry, and every statement.

Each query method is written once, here, as an :data:`~pgtide.session.Io` generator;
:class:`pgtide.Events` (blocking) and :class:`pgtide.aio.Events` (asyncio) only run them on
their :class:`~pgtide.session.Session` / :class:`~pgtide.session.AsyncSession`, or on the
caller's connection. The worker's core lives in :mod:`._worker`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from croniter import croniter
from psycopg.conninfo import make_conninfo

from .. import schema
from .._compat import positional_dsn
from ..channel import Waker
from ..connect import DsnLike, Resolved, pooled
from ..errors import ConfigError, PgtideError
from ..overview import Section
from ..session import Io, Query, atomic, one, query
from . import _sql, _tracing
from ._model import ENDED, STATES, Handler, HandlerSpec, check_name, encode_array, to_json
from ._signatures import PublishArgs, RunArgs, ScheduleArgs
from ._source import Source, check, env_float, source_from
from ._stats import WorkerStats
from ._worker import Target, WorkerOptions

F = TypeVar("F", bound=Handler)
T = TypeVar("T")

Work: TypeAlias = Callable[[], Io[T]]
"""Database work ready to run (again from the start after an outage): ``session.run(work)``."""

LIVE_WINDOW = 60.0
"""A worker seen within this many seconds counts as live (for "unhandled" counts)."""


@dataclass(frozen=True)
class EventRecord:
    """One row of pgtide.events, as ``get``, ``recent`` and ``pgtide events ls`` show it."""

    id: int
    name: str
    state: str
    attempts: int
    payload: Any
    result: Any
    error: str | None
    key: str | None
    source_id: str | None
    run_after: datetime
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    priority: int = 0
    dedupe_key: str | None = None
    after: list[int] | None = None


@dataclass(frozen=True)
class Schedule:
    """A cron schedule: each tick enqueues one event ``name`` with ``payload``."""

    id: str
    name: str
    cron: str
    tz: str
    payload: Any
    next_at: datetime
    last_at: datetime | None


class Core:
    """What both faces share: the options, the user's table once checked, and the work."""

    def __init__(
        self,
        *,
        table: str | None,
        id_column: str | None,
        name_column: str | None,
        payload_column: str | None,
        channel: str | None,
        poll_interval: float | None,
        lease: float,
        batch_size: int,
        retry_delay: float,
        max_retry_delay: float,
        listen: bool,
        keep_done: timedelta | None = None,
    ) -> None:
        self.source = source_from(table, id_column, name_column, payload_column, channel)
        self.checked: Source | None = None
        if not lease > 0 or batch_size < 1 or not retry_delay > 0 or max_retry_delay < 0:
            raise ConfigError(
                "lease and retry_delay must be positive seconds and batch_size at least 1"
            )
        self.options = WorkerOptions(
            concurrency=8,  # run()/start() set it (and stop_timeout) for each worker
            stop_timeout=30.0,
            poll_interval=env_float("poll_interval", poll_interval, 1.0),
            lease=lease,
            batch_size=batch_size,
            listen=listen and not pooled(),  # behind a transaction pooler: poll, hold no gate
            retry_delay=retry_delay,
            max_retry_delay=max_retry_delay,
            keep_done=_seconds(keep_done),
        )
        if keep_done is not None and self.source is not None:
            raise ConfigError("keep_done is for pgtide's own events table, not a table of yours")

    # -- preparing a connection ------------------------------------------------------------

    def prepare(self) -> Io[None]:
        """Install the schema, and check the user's table the first time (a session's prepare)."""
        yield from schema.ensure_io()
        if self.source is not None and self.checked is None:
            self.checked = yield from check(self.source)

    def schema_ready(self) -> Io[bool]:
        """Whether every migration of this package is installed (read only: safe inside the
        caller's transaction)."""
        row = yield from one(_sql.SCHEMA_EXISTS)
        if not row or not row[0]:
            return False
        applied = {r[0] for r in (yield from query(_sql.SCHEMA_APPLIED))}
        return all(m.version in applied for m in schema.migrations())

    def prepare_checked(self) -> Io[None]:
        """Check the user's table the first time (catalog reads only)."""
        if self.source is not None and self.checked is None:
            self.checked = yield from check(self.source)

    @property
    def source_key(self) -> str:
        return self.checked.key if self.checked else ""

    # -- publishing ------------------------------------------------------------------------
    # Each method checks its arguments at once (before any connection) and returns the work,
    # which a session may run again from the start after an outage.

    def publish(self, args: PublishArgs) -> Work[int]:
        """Insert one event and wake the workers in one statement; its id (or the id of the
        unfinished event that holds ``dedupe_key``: then nothing is inserted)."""
        name, payload, key, priority, dedupe_key = (
            args.name,
            args.payload,
            args.key,
            args.priority,
            args.dedupe_key,
        )
        run_at = args.run_at
        check_name(name)
        encoded = to_json(payload, f"the payload of event {name!r}")
        when = _when(run_at)
        _check_key(key)
        _check_key(dedupe_key, "dedupe_key")
        _check_priority(priority)
        after = _after(args.after, dedupe_key)
        if after:
            array = encode_array([payload], name)

            def work(trace: str | None) -> Io[int]:
                ids = yield from self._publish_after(
                    name, array, when, key, priority, after, 1, trace
                )
                return ids[0]

            return _traced(name, 1, work, lambda id_: [id_])
        return _traced(
            name,
            1,
            lambda trace: self._publish(name, encoded, when, key, priority, dedupe_key, trace),
            lambda id_: [id_],
        )

    def _publish(
        self,
        name: str,
        encoded: str,
        when: datetime | None,
        key: str | None,
        priority: int,
        dedupe_key: str | None,
        trace: str | None = None,
    ) -> Io[int]:
        src = self.checked
        if src is None:
            params = (name, encoded, when, key, priority, dedupe_key, trace)
            for _ in range(10):  # the key's holder may end between the two statements
                row = yield from one(_sql.PUBLISH, params)
                if row is None and dedupe_key is not None:
                    row = yield from one(_sql.DEDUPED, (dedupe_key,))
                if row is not None:
                    return int(row[0])
            raise PgtideError(f"could not publish {name!r} with dedupe_key {dedupe_key!r}")
        if when is not None or key is not None or priority or dedupe_key is not None:
            raise ConfigError(
                "run_at, key, priority and dedupe_key need pgtide's own events table; your "
                f"table {src.key} has no such columns"
            )
        if src.payload_column is None and encoded != "null":
            raise ConfigError(
                f"your events table {src.key} has no payload column: publish with "
                "payload=None, or set payload_column= (or PGTIDE_EVENTS_PAYLOAD_COLUMN)"
            )
        statement = _sql.publish_own(src.table, src.id_column, src.name_column, src.payload_column)
        own = {"name": name, "payload": encoded, "channel": src.channel}
        row = yield from one(statement, own)
        assert row is not None
        return int(row[0])

    def _publish_after(
        self,
        name: str,
        array: str,
        when: datetime | None,
        key: str | None,
        priority: int,
        after: list[int],
        count: int,
        trace: str | None = None,
    ) -> Io[list[int]]:
        """Insert the events of ``array`` to run after the events ``after`` (one statement:
        see :data:`_sql.PUBLISH_AFTER`); their ids."""
        if self.checked is not None:
            raise ConfigError(
                "after= needs pgtide's own events table; your table "
                f"{self.checked.key} has no such column"
            )
        params = {
            "after": after,
            "name": name,
            "run_at": when,
            "key": key,
            "priority": priority,
            "payloads": array,
            "trace": trace,
        }
        row = yield from one(_sql.PUBLISH_AFTER, params)
        assert row is not None
        if row[0] != len(after):
            missing = yield from one(_sql.MISSING_EVENTS, (after,))
            unknown = ", ".join(map(str, (missing or [None])[0] or after))
            raise ConfigError(
                f"after= names no event {unknown}: give ids that publish() returned (finished "
                "events are purged after keep_done)"
            )
        ids = list(map(int, row[1].split(","))) if row[1] else []
        assert len(ids) == count
        return ids

    def publish_many(self, args: PublishArgs) -> Work[list[int]]:
        """Insert many events called ``name`` in one statement (one wake-up); their ids, one
        per payload. ``dedupe_key``: one key for all (one event at most), or one per payload
        (None for none)."""
        name, key, priority, dedupe_key = args.name, args.key, args.priority, args.dedupe_key
        run_at = args.run_at
        check_name(name)
        values = list(args.payload)
        _check_key(key)
        _check_priority(priority)
        when = _when(run_at)
        keys: list[str | None] | None
        if dedupe_key is None:
            keys = None
        elif isinstance(dedupe_key, str):
            keys = [dedupe_key] * len(values)
        else:
            keys = list(dedupe_key)
            if len(keys) != len(values):
                raise ConfigError(
                    f"dedupe_key has {len(keys)} keys for {len(values)} payloads: give one "
                    "key per payload (None for none), or one string for all"
                )
        for k in keys or ():
            _check_key(k, "dedupe_key")
        after = _after(args.after, dedupe_key)
        array = encode_array(values, name)  # one value to encode, send and parse

        def work(trace: str | None) -> Io[list[int]]:
            if self.checked is not None:
                raise ConfigError(
                    "publish_many is for pgtide's own events table; with your own table, insert "
                    "the rows yourself (your trigger wakes the workers) or call publish() per "
                    "event"
                )
            if not values:
                return []
            if after:
                return (
                    yield from self._publish_after(
                        name, array, when, key, priority, after, len(values), trace
                    )
                )
            if keys is None:
                params = (name, when, key, priority, trace, array)
                row = yield from one(_sql.PUBLISH_MANY_PLAIN, params)
                return list(map(int, row[0].split(","))) if row and row[0] else []
            params2 = (name, when, key, priority, trace, array, keys)
            rows = yield from query(_sql.PUBLISH_MANY, params2)
            by_key = {k: int(i) for i, k in rows if k is not None}
            plain = sorted(int(i) for i, k in rows if k is None)
            missing = sorted({k for k in keys if k is not None and k not in by_key})
            if missing:
                found = yield from query(_sql.DEDUPED_MANY, (missing,))
                by_key.update({k: int(i) for k, i in found})
            ids: list[int] = []
            plain_at = 0
            for k, payload in zip(keys, values, strict=True):
                if k is None:
                    ids.append(plain[plain_at])
                    plain_at += 1
                elif k in by_key:
                    ids.append(by_key[k])
                else:  # its holder ended meanwhile: publish it alone
                    encoded = to_json(payload, f"the payload of event {name!r}")
                    by_key[k] = yield from self._publish(
                        name, encoded, when, key, priority, k, trace
                    )
                    ids.append(by_key[k])
            return ids

        return _traced(name, len(values), work, lambda ids: ids)

    # -- control ---------------------------------------------------------------------------

    def cancel(self, id: int) -> Work[str | None]:
        """Cancel an event: its state after (``cancelled``, or ``running`` while its handler
        is being asked to stop), or None when it had already ended or does not exist."""

        def work() -> Io[str | None]:
            row = yield from one(_sql.CANCEL, (id,))
            return None if row is None else str(row[0])

        return work

    def pause(self, name: str, paused: bool) -> Work[None]:
        """Pause (or resume) every worker's claims of events called ``name``."""
        check_name(name)

        def work() -> Io[None]:
            yield Query(_sql.QUEUE_PAUSE, (self.source_key, name, paused))
            if not paused:
                yield Query(_sql.WAKE, (_sql.CHANNEL,))

        return work

    def paused(self) -> Work[list[str]]:
        """The paused event names."""

        def work() -> Io[list[str]]:
            return [str(r[0]) for r in (yield from query(_sql.PAUSED, (self.source_key,)))]

        return work

    def watch(self, id: int) -> Work[EventRecord | None]:
        """Ask for the end of ``id`` to be notified; the record if it has already ended."""

        def work() -> Io[EventRecord | None]:
            row = yield from one(_sql.WATCH, {"id": id, "channel": _sql.CHANNEL})
            if row is None:
                raise ConfigError(f"there is no event {id}")
            return (yield from self._ended(id)) if row[0] in ENDED else None

        return work

    def ended(self, id: int) -> Work[EventRecord | None]:
        """The record of ``id`` if it has ended (done, dead or cancelled), else None."""
        return lambda: self._ended(id)

    def _ended(self, id: int) -> Io[EventRecord | None]:
        found = yield from one(_sql.GET, (id,))
        if found is None:
            raise ConfigError(f"there is no event {id} (purged?)")
        record = EventRecord(*found)
        return record if record.state in ENDED else None

    def retry_dead(self, name: str | None) -> Work[int]:
        """Dead events (of ``name``, or all) back to pending; how many."""
        if name is not None:
            check_name(name)

        def work() -> Io[int]:
            rows = yield from query(_sql.RETRY_DEAD, {"source": self.source_key, "name": name})
            yield Query(_sql.WAKE, (_sql.CHANNEL,))
            return int(rows[0][0]) if rows else 0

        return lambda: atomic(work())

    # -- schedules -------------------------------------------------------------------------

    def schedule(self, args: ScheduleArgs) -> Work[str]:
        """Create or replace the schedule ``id`` (default: ``name``); its id."""
        name, cron, payload, tz, id = args
        if self.source is not None:
            raise ConfigError("schedules are for pgtide's own events table")
        check_name(name)
        ident = name if id is None else id
        if not isinstance(ident, str) or not ident.strip():
            raise ConfigError(f"a schedule id must be a non-empty string, not {ident!r}")
        encoded = to_json(payload, f"the payload of schedule {ident!r}")
        first = next_tick(cron, tz, datetime.now(UTC))

        def work() -> Io[str]:
            yield Query(_sql.SCHEDULE_SET, (ident, name, cron, tz, encoded, first))
            yield Query(_sql.WAKE_SCHEDULES, (_sql.CHANNEL,))
            return ident

        return lambda: atomic(work())

    def unschedule(self, id: str) -> Work[bool]:
        """Remove a schedule; False if there was none."""

        def work() -> Io[bool]:
            return (yield from one(_sql.UNSCHEDULE, (id,))) is not None

        return work

    def schedules(self) -> Work[list[Schedule]]:
        """Every schedule, by id."""

        def work() -> Io[list[Schedule]]:
            return [Schedule(*r) for r in (yield from query(_sql.SCHEDULES))]

        return work

    # -- inspection ------------------------------------------------------------------------

    def status(self) -> Work[dict[str, Any]]:
        """Events by state, ``unhandled``, and ``paused`` (the paused names, a list)."""
        return self._status

    def _status(self) -> Io[dict[str, Any]]:
        counts: dict[str, Any] = dict.fromkeys(STATES, 0)
        rows = yield from query(_sql.COUNTS, (self.source_key,))
        counts.update({str(state): int(n) for state, n in rows})
        counts["unhandled"] = sum((yield from self._unhandled()).values())
        counts["paused"] = [str(r[0]) for r in (yield from query(_sql.PAUSED, (self.source_key,)))]
        return counts

    def unhandled(self) -> Work[dict[str, int]]:
        """Waiting events whose name no live worker handles, counted by name."""
        return self._unhandled

    def _unhandled(self) -> Io[dict[str, int]]:
        rows = yield from query(_sql.UNHANDLED, {"source": self.source_key, "window": LIVE_WINDOW})
        return {str(name): int(n) for name, n in rows}

    def get(self, id: int) -> Work[EventRecord | None]:
        """One event by pgtide id, or None."""

        def work() -> Io[EventRecord | None]:
            row = yield from one(_sql.GET, (id,))
            return EventRecord(*row) if row else None

        return work

    def recent(self, state: str | None, name: str | None, limit: int) -> Work[list[EventRecord]]:
        """The newest events (optionally of one state or name), newest first."""
        if state is not None and state not in STATES:
            raise ConfigError(f"unknown event state {state!r}; use one of {', '.join(STATES)}")

        def work() -> Io[list[EventRecord]]:
            params = {"source": self.source_key, "state": state, "name": name, "limit": limit}
            return [EventRecord(*r) for r in (yield from query(_sql.LIST, params))]

        return work

    # -- maintenance -----------------------------------------------------------------------

    def purge(self, older_than: timedelta, dead: bool) -> Work[int]:
        """Delete finished events older than ``older_than``; how many."""
        if self.source is not None:
            raise ConfigError(
                "purge is for pgtide's own events table: with your own table, pgtide keeps one "
                "row of state per row of yours, so that no row of yours ever runs twice"
            )
        if not isinstance(older_than, timedelta) or older_than.total_seconds() < 0:
            raise ConfigError("older_than must be a timedelta of zero or more")
        params = (["done", "dead"] if dead else ["done"], older_than.total_seconds())

        def work() -> Io[int]:
            rows = yield from query(_sql.PURGE_COUNTED, params)
            return int(rows[0][0]) if rows else 0

        return work

    def retry(self, id: int) -> Work[bool]:
        """Make a finished event pending again and wake the workers, in one transaction."""

        def work() -> Io[bool]:
            row = yield from one(_sql.RETRY, (id,))
            yield Query(_sql.WAKE, (_sql.CHANNEL,))
            return row is not None

        return lambda: atomic(work())

    # -- workers ---------------------------------------------------------------------------

    def target(self) -> Target:
        """What a worker serves (after :meth:`prepare` checked the user's table)."""
        src = self.checked
        if src is None:
            return Target("", None, [_sql.CHANNEL, _sql.CANCEL_CHANNEL], None)
        columns = (src.table, src.id_column, src.name_column, src.payload_column)
        return Target(
            src.key,
            _sql.mirror(*columns),
            [_sql.CHANNEL, _sql.CANCEL_CHANNEL, src.channel],
            src.channel,
            _sql.mirror(*columns, one=True),
        )

    def worker_options(self, handlers: dict[str, HandlerSpec], args: RunArgs) -> WorkerOptions:
        """The options of a new worker, checked."""
        concurrency, poll_interval = args.concurrency, args.poll_interval
        if not handlers:
            raise ConfigError(
                "no handlers registered: add one with @events.handler('name') or "
                "events.register('name', fn) before running a worker"
            )
        concurrency = 8 if concurrency is None else concurrency
        if concurrency < 1:
            raise ConfigError(f"concurrency must be 1 or more, not {concurrency}")
        if poll_interval is not None and not poll_interval > 0:
            raise ConfigError(f"poll_interval must be positive seconds, not {poll_interval}")
        return replace(
            self.options,
            concurrency=concurrency,
            poll_interval=poll_interval or self.options.poll_interval,
            stop_timeout=args.stop_timeout,
        )


class EventsBase(ABC):
    """What both faces share: the constructor, the handler registry and the core.

    A face sets up its session in :meth:`_setup`; nothing resolves or connects here.
    """

    def __init__(
        self,
        _dsn: DsnLike = None,
        /,
        *,
        dsn: DsnLike = None,
        table: str | None = None,
        id_column: str | None = None,
        name_column: str | None = None,
        payload_column: str | None = None,
        channel: str | None = None,
        poll_interval: float | None = None,
        lease: float = 30.0,
        batch_size: int = 100,
        retry_delay: float = 1.0,
        max_retry_delay: float = 300.0,
        listen: bool = True,
        keep_done: timedelta | None = None,
    ) -> None:
        self._core = Core(
            table=table,
            id_column=id_column,
            name_column=name_column,
            payload_column=payload_column,
            channel=channel,
            poll_interval=poll_interval,
            lease=lease,
            batch_size=batch_size,
            retry_delay=retry_delay,
            max_retry_delay=max_retry_delay,
            listen=listen,
            keep_done=keep_done,
        )
        self._handlers: dict[str, HandlerSpec] = {}
        self._stats = WorkerStats()
        self._setup(positional_dsn(_dsn, dsn, "Events"))

    _workers: list[Any]
    """The workers this object runs now (with their thread or task), set by the face."""

    def worker_stats(self) -> dict[str, Any]:
        """What the workers of this object did in this process (no query; a plain method in
        both faces): ``workers`` running now, handlers ``running`` now, handler runs that
        ended ``done``, ``failed`` (will retry), ``dead`` and ``cancelled`` in all and
        ``by_name``, and ``durations``: a :class:`~pgtide.events.Histogram` of handler
        seconds per event name. The counts only grow while the object lives, across
        ``start``/``stop``; :class:`pgtide.web.metrics.EventsCollector` exports them."""
        workers = list(self._workers)
        return self._stats.snapshot(len(workers), sum(w.core.running for w, _ in workers))

    @abstractmethod
    def _setup(self, dsn: DsnLike) -> None:
        """Set up the face's session (nothing connects here)."""

    def __repr__(self) -> str:
        where = self._core.source.table if self._core.source else "pgtide.events"
        return f"<{type(self).__name__} {where} handlers={sorted(self._handlers)}>"

    def handler(
        self,
        name: str,
        *,
        retries: int = 5,
        timeout: float | None = 30.0,
        concurrency: int | None = None,
        rate: str | None = None,
    ) -> Callable[[F], F]:
        """Decorate a plain or async function to handle events called ``name``.

        ``retries``: attempts after the first before the event goes dead; ``timeout``:
        seconds an attempt may take. Global limits, across every worker on every machine
        (enforced in the claim): ``concurrency``: at most this many running at once;
        ``rate``: at most so many starts per period (``"100/s"``, ``"10/m"``, ``"5/2s"``).
        """

        def decorate(fn: F) -> F:
            self.register(
                name, fn, retries=retries, timeout=timeout, concurrency=concurrency, rate=rate
            )
            return fn

        return decorate

    def register(
        self,
        name: str,
        fn: Handler,
        *,
        retries: int = 5,
        timeout: float | None = 30.0,
        concurrency: int | None = None,
        rate: str | None = None,
    ) -> None:
        """Register ``fn`` for events called ``name`` (replacing an earlier handler)."""
        check_name(name)
        if not callable(fn):
            raise ConfigError(f"the handler for {name!r} must be callable, not {fn!r}")
        spec = HandlerSpec(name, fn, retries, timeout, concurrency, rate)
        if spec.limited and self._core.source is not None:
            raise ConfigError("global limits (concurrency=, rate=) need pgtide's own events table")
        self._handlers[name] = spec

    @property
    def handlers(self) -> dict[str, HandlerSpec]:
        """The registered handlers by event name (a copy)."""
        return dict(self._handlers)


def overview() -> Io[list[Section]]:
    """``pgtide status``'s "events" section: events by state for each source (``pgtide.events``
    for pgtide's own), waiting events no live worker handles, and live workers.

    Empty when pgtide's schema holds no events table yet. Run it with
    :func:`pgtide.session.run` (or ``arun``) on any connection.
    """
    installed = yield from one(_sql.EVENTS_INSTALLED)
    if not installed or not installed[0]:
        return []
    unhandled: dict[str, int] = dict((yield from query(_sql.UNHANDLED_BY_SOURCE, (LIVE_WINDOW,))))
    workers: dict[str, int] = dict((yield from query(_sql.LIVE_WORKERS, (LIVE_WINDOW,))))
    section = Section("events", ["table", *STATES, "unhandled", "workers"])
    for source, *counts in (yield from query(_sql.BY_SOURCE)):
        section.rows.append(
            [source or "pgtide.events", *counts, unhandled.get(source, 0), workers.get(source, 0)]
        )
    if not section.rows:
        section.rows.append(["pgtide.events", *([0] * len(STATES)), 0, workers.get("", 0)])
    return [section]


def _conninfo(conn: psycopg.BaseConnection[Any]) -> str:
    """Where the caller's connection goes (its password included), to install the schema in
    that same database."""
    password = conn.info.password
    return make_conninfo(conn.info.dsn, **({"password": password} if password else {}))


def _where(conn: psycopg.BaseConnection[Any]) -> tuple[str, ...]:
    info = conn.info
    return (info.host, str(info.port), info.dbname, info.user)


def _safety(left: float | None, listening: bool) -> float:
    """How long a waiter sleeps before looking again although no NOTIFY came: a safety net
    (a long one while LISTENing), or the poll when the wake-up connection is down."""
    step = 5.0 if listening else 0.5
    return step if left is None else max(0.0, min(left, step))


def _waker_for(resolved: Resolved, id: int) -> Waker:
    """A waker woken when event ``id`` ends (the worker notifies ``pgtide_events_done``)."""
    wanted = str(id)

    def mine(_channel: str, payload: str) -> bool:
        return payload == "" or wanted in payload.split(",")

    return Waker(
        resolved, [_sql.DONE_CHANNEL], on_notify=mine, application_name="pgtide-events-wait"
    )


def _check_key(key: object, what: str = "key") -> None:
    if key is not None and not isinstance(key, str):
        raise ConfigError(f"{what} must be a string or None, not {type(key).__name__}")
    if key is not None and "\x00" in key:
        raise ConfigError(f"bad {what} {key!r}: it cannot hold a NUL character (\\x00)")


def _traced(
    name: str,
    count: int,
    make: Callable[[str | None], Io[T]],
    ids: Callable[[T], list[int]],
) -> Work[T]:
    """The work of a publish, in a span when the program traces (see :mod:`._tracing`):
    ``make`` gets the span's context to store with the events (None when it does not)."""
    if not _tracing.on():
        return lambda: make(None)

    def work() -> Io[T]:
        with _tracing.publishing(name, count) as (carrier, span):
            result = yield from make(carrier)
            _tracing.published(span, ids(result))
            return result

    return work


def _after(after: object, dedupe_key: object) -> list[int] | None:
    """The ids an event is to run after, checked (sorted, each once), or None."""
    if after is None:
        return None
    ids = [after] if isinstance(after, int) else after
    try:
        found = sorted(set(ids))  # type: ignore[call-overload]
    except TypeError:
        found = None
    if (
        found is None
        or not found
        or not all(isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in found)
    ):
        raise ConfigError(
            f"after= takes an event id or a list of event ids (as publish() returns them), "
            f"not {after!r}"
        )
    if dedupe_key is not None:
        raise ConfigError(
            "after= and dedupe_key= cannot be combined: a waiting event holds no dedupe key; "
            "publish the dependent event once (keep its id), or dedupe its parents"
        )
    return found


def _check_priority(priority: object) -> None:
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise ConfigError(f"priority must be an integer, not {priority!r}")
    if not -(2**31) <= priority < 2**31:
        raise ConfigError(f"priority {priority} is out of range (a 32-bit integer)")


def _seconds(delta: timedelta | None) -> float | None:
    if delta is None:
        return None
    if not isinstance(delta, timedelta) or delta.total_seconds() < 0:
        raise ConfigError("keep_done must be a timedelta of zero or more, or None")
    return delta.total_seconds()


def next_tick(cron: str, tz: str, after: datetime) -> datetime:
    """The first tick of ``cron`` in time zone ``tz`` strictly after ``after`` (aware, UTC)."""
    if not isinstance(cron, str) or not croniter.is_valid(cron):
        raise ConfigError(
            f"bad cron expression {cron!r}: five fields (minute hour day month weekday), or "
            "six with seconds last, e.g. '0 3 * * *'"
        )
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ConfigError(
            f"unknown time zone {tz!r}: use an IANA name such as 'Europe/Paris'"
        ) from None
    tick = croniter(cron, after.astimezone(zone)).get_next(datetime)
    assert isinstance(tick, datetime)
    return tick.astimezone(UTC)


def _when(run_at: datetime | timedelta | None) -> datetime | None:
    if run_at is None:
        return None
    if isinstance(run_at, timedelta):
        return datetime.now(UTC) + run_at
    if isinstance(run_at, datetime):
        if run_at.tzinfo is None:
            raise ConfigError(
                "run_at must be timezone-aware (e.g. datetime.now(timezone.utc) + ...) "
                "or a timedelta from now"
            )
        return run_at
    raise ConfigError(f"run_at must be a datetime or a timedelta, not {type(run_at).__name__}")
