"""The events feature's one core: configuration, the handler registry, and every statement.

Each query method is written once, here, as an :data:`~pgtide.session.Io` generator;
:class:`pgtide.Events` (blocking) and :class:`pgtide.aio.Events` (asyncio) only run them on
their :class:`~pgtide.session.Session` / :class:`~pgtide.session.AsyncSession`, or on the
caller's connection. The worker's core lives in :mod:`._worker`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeAlias, TypeVar

from .. import schema
from ..connect import DsnLike
from ..errors import ConfigError
from ..overview import Section
from ..session import Io, Query, atomic, one, query
from . import _sql
from ._model import STATES, Handler, HandlerSpec, check_name, to_json
from ._source import Source, check, env_float, source_from
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


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


UNSET: Final = _Unset()


def dsn_argument(positional: DsnLike | _Unset, dsn: DsnLike, cls: str) -> DsnLike:
    """The ``dsn`` keyword, or (deprecated for one release) the positional one."""
    if isinstance(positional, _Unset):
        return dsn
    warnings.warn(
        f"passing the dsn to {cls}() by position is deprecated; write {cls}(dsn=...)",
        DeprecationWarning,
        stacklevel=4,
    )
    if dsn is not None:
        raise ConfigError(f"{cls}() got the dsn both by position and by keyword")
    return positional


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
    ) -> None:
        self.source = source_from(table, id_column, name_column, payload_column, channel)
        self.checked: Source | None = None
        if not lease > 0 or batch_size < 1 or not retry_delay > 0 or max_retry_delay < 0:
            raise ConfigError(
                "lease and retry_delay must be positive seconds and batch_size at least 1"
            )
        self.options = WorkerOptions(
            poll_interval=env_float("poll_interval", poll_interval, 1.0),
            lease=lease,
            batch_size=batch_size,
            listen=listen,
            retry_delay=retry_delay,
            max_retry_delay=max_retry_delay,
        )

    # -- preparing a connection ------------------------------------------------------------

    def prepare(self) -> Io[None]:
        """Install the schema, and check the user's table the first time (a session's prepare)."""
        yield from schema.ensure_io()
        if self.source is not None and self.checked is None:
            self.checked = yield from check(self.source)

    @property
    def source_key(self) -> str:
        return self.checked.key if self.checked else ""

    # -- publishing ------------------------------------------------------------------------
    # Each method checks its arguments at once (before any connection) and returns the work,
    # which a session may run again from the start after an outage.

    def publish(
        self, name: str, payload: Any, run_at: datetime | timedelta | None, key: str | None
    ) -> Work[int]:
        """Insert one event and wake the workers in one statement; its id."""
        check_name(name)
        encoded = to_json(payload, f"the payload of event {name!r}")
        when = _when(run_at)
        _check_key(key)
        return lambda: self._publish(name, encoded, when, key)

    def _publish(self, name: str, encoded: str, when: datetime | None, key: str | None) -> Io[int]:
        src = self.checked
        if src is None:
            row = yield from one(_sql.PUBLISH, (name, encoded, when, key))
        else:
            if when is not None or key is not None:
                raise ConfigError(
                    "run_at and key need pgtide's own events table; your table "
                    f"{src.key} has no such columns"
                )
            if src.payload_column is None and encoded != "null":
                raise ConfigError(
                    f"your events table {src.key} has no payload column: publish with "
                    "payload=None, or set payload_column= (or PGTIDE_EVENTS_PAYLOAD_COLUMN)"
                )
            statement = _sql.publish_own(
                src.table, src.id_column, src.name_column, src.payload_column
            )
            params = {"name": name, "payload": encoded, "channel": src.channel}
            row = yield from one(statement, params)
        assert row is not None
        return int(row[0])

    def publish_many(
        self,
        name: str,
        payloads: Iterable[Any],
        run_at: datetime | timedelta | None,
        key: str | None,
    ) -> Work[list[int]]:
        """Insert many events called ``name`` in one statement (one wake-up); their ids."""
        check_name(name)
        encoded = [to_json(p, f"payload #{i} of event {name!r}") for i, p in enumerate(payloads)]
        _check_key(key)
        when = _when(run_at)

        def work() -> Io[list[int]]:
            if self.checked is not None:
                raise ConfigError(
                    "publish_many is for pgtide's own events table; with your own table, insert "
                    "the rows yourself (your trigger wakes the workers) or call publish() per "
                    "event"
                )
            if not encoded:
                return []
            rows = yield from query(_sql.PUBLISH_MANY, (name, when, key, encoded))
            return [int(r[0]) for r in rows]

        return work

    # -- inspection ------------------------------------------------------------------------

    def status(self) -> Work[dict[str, int]]:
        """Events by state, plus ``unhandled``."""
        return self._status

    def _status(self) -> Io[dict[str, int]]:
        counts = dict.fromkeys(STATES, 0)
        rows = yield from query(_sql.COUNTS, (self.source_key,))
        counts.update({str(state): int(n) for state, n in rows})
        counts["unhandled"] = sum((yield from self._unhandled()).values())
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
            return Target("", None, [_sql.CHANNEL], None)
        columns = (src.table, src.id_column, src.name_column, src.payload_column)
        return Target(
            src.key,
            _sql.mirror(*columns),
            [_sql.CHANNEL, src.channel],
            src.channel,
            _sql.mirror(*columns, one=True),
        )

    def worker_options(
        self,
        handlers: dict[str, HandlerSpec],
        concurrency: int | None,
        poll_interval: float | None,
        stop_timeout: float,
    ) -> WorkerOptions:
        """The options of a new worker, checked."""
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
            stop_timeout=stop_timeout,
        )


class EventsBase:
    """What both faces share: the constructor, the handler registry and the core.

    A face sets up its session in :meth:`_setup`; nothing resolves or connects here.
    """

    def __init__(
        self,
        _dsn: DsnLike | _Unset = UNSET,
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
        )
        self._handlers: dict[str, HandlerSpec] = {}
        self._setup(dsn_argument(_dsn, dsn, "Events"))

    def _setup(self, dsn: DsnLike) -> None:
        raise NotImplementedError

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
    ) -> Callable[[F], F]:
        """Decorate a plain or async function to handle events called ``name``.

        ``retries``: attempts after the first before the event goes dead; ``timeout``:
        seconds an attempt may take; ``concurrency``: at most this many at once per worker.
        """

        def decorate(fn: F) -> F:
            self.register(name, fn, retries=retries, timeout=timeout, concurrency=concurrency)
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
    ) -> None:
        """Register ``fn`` for events called ``name`` (replacing an earlier handler)."""
        check_name(name)
        if not callable(fn):
            raise ConfigError(f"the handler for {name!r} must be callable, not {fn!r}")
        self._handlers[name] = HandlerSpec(name, fn, retries, timeout, concurrency)

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


def _check_key(key: object) -> None:
    if key is not None and not isinstance(key, str):
        raise ConfigError(f"key must be a string or None, not {type(key).__name__}")
    if key is not None and "\x00" in key:
        raise ConfigError(f"bad key {key!r}: a key cannot hold a NUL character (\\x00)")


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
