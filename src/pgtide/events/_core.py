"""The events feature's one core: configuration, the handler registry, and the statements.

:class:`EventsBase` holds everything both faces share; :class:`pgtide.Events` (blocking) and
:class:`pgtide.aio.Events` (asyncio) only execute its statements with their own connections.
The worker itself (:mod:`._worker`) is shared as is: the asyncio face runs it in a thread and
hands it the running event loop for async handlers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from psycopg import sql

from ..connect import Resolved, resolve
from ..errors import ConfigError
from . import _sql
from ._model import STATES, Handler, HandlerSpec, check_name, to_json
from ._source import Source, env_float, source_from
from ._worker import AsyncRunner, Target, Worker, WorkerOptions

F = TypeVar("F", bound=Handler)

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


Statement = tuple[str | sql.Composed, tuple[Any, ...]]


class EventsBase:
    """Configuration and handlers shared by the blocking and the asyncio face.

    ``dsn``: the database (None: resolved as everywhere in pgtide). ``table``,
    ``id_column``, ``name_column``, ``payload_column``, ``channel``: serve a table of yours
    instead of pgtide.events (or set ``PGTIDE_EVENTS_*``). ``poll_interval``: seconds between
    polls when no NOTIFY arrives; ``listen=False`` polls only. ``lease``: seconds a claim
    lasts without a heartbeat. ``batch_size``: events claimed at once. ``retry_delay`` and
    ``max_retry_delay``: the exponential backoff between attempts.
    """

    def __init__(
        self,
        dsn: str | Resolved | None = None,
        *,
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
        self._dsn = dsn
        self._resolved: Resolved | None = dsn if isinstance(dsn, Resolved) else None
        self._source = source_from(table, id_column, name_column, payload_column, channel)
        self._checked: Source | None = None
        self._handlers: dict[str, HandlerSpec] = {}
        if not lease > 0 or batch_size < 1 or not retry_delay > 0 or max_retry_delay < 0:
            raise ConfigError(
                "lease and retry_delay must be positive seconds and batch_size at least 1"
            )
        self._base_options = WorkerOptions(
            poll_interval=env_float("poll_interval", poll_interval, 1.0),
            lease=lease,
            batch_size=batch_size,
            listen=listen,
            retry_delay=retry_delay,
            max_retry_delay=max_retry_delay,
        )
        self._lock = threading.Lock()
        self._setup()

    def _setup(self) -> None:
        """Initialise what a face needs (its connection, its workers)."""

    def __repr__(self) -> str:
        where = self._source.table if self._source else "pgtide.events"
        return f"<{type(self).__name__} {where} handlers={sorted(self._handlers)}>"

    # -- the registry --------------------------------------------------------------------

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

    # -- what the faces execute ------------------------------------------------------------

    def _resolve(self) -> Resolved:
        if self._resolved is None:
            self._resolved = resolve(self._dsn if isinstance(self._dsn, str) else None)
        return self._resolved

    @property
    def _source_key(self) -> str:
        return self._checked.key if self._checked else ""

    def _publish_statement(
        self, name: str, payload: Any, run_at: datetime | timedelta | None, key: str | None
    ) -> Statement:
        check_name(name)
        encoded = to_json(payload, f"the payload of event {name!r}")
        when = _when(run_at)
        if key is not None and not isinstance(key, str):
            raise ConfigError(f"key must be a string or None, not {type(key).__name__}")
        if self._checked is not None:
            return self._own_table_statement(name, encoded, when, key)
        return _sql.PUBLISH, (name, encoded, when, key)

    def _publish_many_statement(
        self,
        name: str,
        payloads: Iterable[Any],
        run_at: datetime | timedelta | None,
        key: str | None,
    ) -> Statement:
        check_name(name)
        encoded = [to_json(p, f"payload #{i} of event {name!r}") for i, p in enumerate(payloads)]
        if key is not None and not isinstance(key, str):
            raise ConfigError(f"key must be a string or None, not {type(key).__name__}")
        if self._checked is not None:
            raise ConfigError(
                "publish_many is for pgtide's own events table; with your own table, insert "
                "the rows yourself (your trigger wakes the workers) or call publish() per event"
            )
        return _sql.PUBLISH_MANY, (name, _when(run_at), key, encoded)

    def _own_table_statement(
        self, name: str, encoded: str, when: datetime | None, key: str | None
    ) -> Statement:
        src = self._checked
        assert src is not None
        if when is not None or key is not None:
            raise ConfigError(
                "run_at and key need pgtide's own events table; your table "
                f"{src.key} has no such columns"
            )
        if src.payload_column is None and encoded != "null":
            raise ConfigError(
                f"your events table {src.key} has no payload column: publish with payload=None, "
                "or set payload_column= (or PGTIDE_EVENTS_PAYLOAD_COLUMN)"
            )
        statement = _sql.insert_own(
            src.schema, src.table, src.id_column, src.name_column, src.payload_column
        )
        params: tuple[Any, ...] = (name, encoded) if src.payload_column else (name,)
        return statement, params

    def _target(self) -> Target:
        src = self._checked
        if src is None:
            return Target("", None, [_sql.CHANNEL], None)
        columns = (src.schema, src.table, src.id_column, src.name_column, src.payload_column)
        return Target(
            src.key,
            _sql.mirror(*columns),
            [_sql.CHANNEL, src.channel],
            src.channel,
            _sql.mirror(*columns, one=True),
        )

    def _worker(
        self,
        run_async: AsyncRunner,
        concurrency: int | None,
        poll_interval: float | None,
        stop_timeout: float,
    ) -> Worker:
        if not self._handlers:
            raise ConfigError(
                "no handlers registered: add one with @events.handler('name') or "
                "events.register('name', fn) before running a worker"
            )
        concurrency = 8 if concurrency is None else concurrency
        if concurrency < 1:
            raise ConfigError(f"concurrency must be 1 or more, not {concurrency}")
        if poll_interval is not None and not poll_interval > 0:
            raise ConfigError(f"poll_interval must be positive seconds, not {poll_interval}")
        options = replace(
            self._base_options,
            concurrency=concurrency,
            poll_interval=poll_interval or self._base_options.poll_interval,
            stop_timeout=stop_timeout,
        )
        return Worker(self._resolve(), self._target(), self._handlers, options, run_async)

    @staticmethod
    def _counts(
        rows: Iterable[tuple[Any, ...]], unhandled: Iterable[tuple[Any, ...]]
    ) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        counts.update({str(state): int(n) for state, n in rows})
        counts["unhandled"] = sum(int(n) for _, n in unhandled)
        return counts

    def _purge_params(self, older_than: timedelta, dead: bool) -> tuple[list[str], float]:
        if self._source is not None:
            raise ConfigError(
                "purge is for pgtide's own events table: with your own table, pgtide keeps one "
                "row of state per row of yours, so that no row of yours ever runs twice"
            )
        if not isinstance(older_than, timedelta) or older_than.total_seconds() < 0:
            raise ConfigError("older_than must be a timedelta of zero or more")
        return (["done", "dead"] if dead else ["done"]), older_than.total_seconds()

    @staticmethod
    def _check_state(state: str | None) -> None:
        if state is not None and state not in STATES:
            raise ConfigError(f"unknown event state {state!r}; use one of {', '.join(STATES)}")


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


def record(row: tuple[Any, ...]) -> EventRecord:
    return EventRecord(*row)
