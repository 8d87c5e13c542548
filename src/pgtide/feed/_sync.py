"""The blocking face of the change feed: :class:`Feed` and :class:`Batch`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from .. import schema
from ..connect import Backoff, Resolved, connect, resolve
from ..errors import ConnectionFailed
from ._core import (
    BatchBase,
    Core,
    Cursor,
    Emit,
    Io,
    Run,
    Start,
    Wait,
    plan,
)
from ._feedconf import FeedConfig
from ._wakeup import Signal
from .position import Position

log = logging.getLogger("pgtide.feed")


def run_io(conn: psycopg.Connection[Any], io: Io) -> Any:
    """Carry out one core generator on a blocking connection."""
    try:
        query = next(io)
        while True:
            cur = conn.execute(query.statement, query.params)
            query = io.send(cur.fetchall() if cur.description else [])
    except StopIteration as done:
        return done.value


class Batch(BatchBase):
    """Whole transactions of changes. Iterate it; then :meth:`ack` or use :meth:`transaction`."""

    def __init__(self, feed: Feed, emit: Emit) -> None:
        super().__init__(emit.changes, emit.start, emit.end)
        self._feed = feed

    def ack(self) -> None:
        """Save the consumer's position after this batch (at-least-once delivery)."""
        self._feed._run(lambda: self._feed._core.save(self.position))
        self._feed._after_ack()

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection in a transaction that also saves this batch's position: your writes
        and the acknowledgement commit together, or neither does (exactly-once effects)."""
        conn = self._feed._connection()
        with conn.transaction():
            yield conn
            run_io(conn, self._feed._core.save_once(self.start, self.position))
        self._feed._after_ack()


class Feed:
    """A consumer's view of the change feed of some tracked tables (all when ``tables`` is
    None). See :meth:`batches`. ``wakeup="poll"`` reads every ``poll_interval`` seconds
    without LISTEN, for servers behind a transaction-pooling proxy."""

    def __init__(
        self,
        consumer: str,
        tables: list[str] | None = None,
        *,
        dsn: str | Resolved | None = None,
        wakeup: str = "notify",
        poll_interval: float | None = None,
        auto_prune: float | None = None,
    ) -> None:
        self._config = FeedConfig.make(consumer, tables, wakeup, poll_interval, auto_prune)
        self._resolved = resolve(dsn)
        self._core = Core(consumer, self._config.tables)
        self._cursor = Cursor()
        self._conn: psycopg.Connection[Any] | None = None
        self._signal = Signal()
        self._connected_once = False
        self._wakeup: Any = None
        self._last_prune = time.monotonic()

    @property
    def consumer(self) -> str:
        """The consumer's name, under which its position is saved."""
        return self._config.consumer

    # -- connections ------------------------------------------------------------------------
    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            conn = connect(self._resolved)
            try:
                schema.ensure(conn)
                self._config.check_tables(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            self._connected_once = True
        return self._conn

    def _run(self, make: Callable[[], Io]) -> Any:
        """Run a core generator, reconnecting with backoff while the server is away."""
        backoff = Backoff()
        while True:
            try:
                return run_io(self._connection(), make())
            except (psycopg.OperationalError, psycopg.InterfaceError, ConnectionFailed) as exc:
                conn = self._conn
                if conn is not None and not conn.closed and not conn.broken:
                    raise
                if isinstance(exc, ConnectionFailed) and not self._connected_once:
                    raise  # never reached: a configuration error, not an outage
                self._drop_connection()
                delay = backoff.next()
                log.warning(
                    "feed %s: connection lost (%s); retrying in %.2fs",
                    self.consumer,
                    type(exc).__name__,
                    delay,
                )
                time.sleep(delay)
                self._signal.set()  # a gap may have happened: read at once when back

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    def close(self) -> None:
        """Close the feed's connections (a later call reopens them)."""
        self._stop_wakeup()
        self._drop_connection()

    def __enter__(self) -> Feed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- wake-up ----------------------------------------------------------------------------
    def _start_wakeup(self) -> None:
        self._wakeup = self._config.start_wakeup(self._resolved, self._signal)

    def _stop_wakeup(self) -> None:
        if self._wakeup is not None:
            self._wakeup.stop()
            self._wakeup = None

    # -- reading ----------------------------------------------------------------------------
    def batches(
        self,
        start: Start = "saved",
        stop: Start | None = None,
        max_changes: int = 1000,
        timeout: float | None = None,
    ) -> Generator[Batch, None, None]:
        """Yield batches of whole transactions, in commit-visibility order.

        ``start``: "saved" (the consumer's acknowledged position; the beginning for a new
        consumer), "beginning", "end", or a Position. ``stop``: a Position (or "end": now) at
        which the feed ends; without it the feed waits for new changes forever, or until
        ``timeout`` idle seconds pass. A transaction larger than ``max_changes`` comes whole.
        """
        steps = plan(self._core, self._cursor, start, stop, max_changes, timeout)
        wake = stop is None and self._config.wakeup == "notify"
        try:
            reply: Any = None
            while True:
                try:
                    step = steps.send(reply)
                except StopIteration:
                    return
                if isinstance(step, Run):
                    reply = self._run(step.make)
                elif isinstance(step, Wait):
                    if wake:  # LISTEN from the first wait on: a first read needs none
                        wake = False
                        self._start_wakeup()
                    reply = self._signal.wait(
                        self._config.wait_for(step.seconds, self._wakeup is not None)
                    )
                else:
                    reply = None
                    yield Batch(self, step)
        finally:
            self._stop_wakeup()

    def __iter__(self) -> Iterator[Batch]:
        return self.batches()

    def run(
        self,
        fn: Callable[[Batch], Any],
        *,
        start: Start = "saved",
        stop: Start | None = None,
        max_changes: int = 1000,
        timeout: float | None = None,
    ) -> None:
        """Call ``fn(batch)`` for each batch and acknowledge it once ``fn`` returns."""
        for batch in self.batches(start, stop, max_changes, timeout):
            fn(batch)
            batch.ack()

    # -- positions --------------------------------------------------------------------------
    def position(self) -> Position:
        """Where the feed stands: after the last batch given, else the saved position (the
        beginning for a new consumer)."""
        if self._cursor.position is not None:
            return self._cursor.position
        return self._run(lambda: self._core.resolve("saved"))  # type: ignore[no-any-return]

    def seek(self, position: Start) -> Position:
        """Move the consumer: save ``position`` ("beginning", "end", a Position or its
        string) as its acknowledged position. The next ``batches()`` starts there."""
        chosen: Position = self._run(lambda: self._core.resolve(position))
        self._run(lambda: self._core.save(chosen))
        self._cursor.position = chosen
        return chosen

    def saved(self) -> Position | None:
        """The consumer's acknowledged position, or None for a consumer never saved."""
        return self._run(self._core.saved)  # type: ignore[no-any-return]

    def drop(self) -> bool:
        """Forget this consumer: its position goes, and prune no longer waits for it."""
        return self._run(self._core.drop)  # type: ignore[no-any-return]

    def _after_ack(self) -> None:
        every = self._config.auto_prune
        if every is not None and time.monotonic() - self._last_prune >= every:
            from .retention import prune

            self._last_prune = time.monotonic()
            prune(conn=self._connection())

    def __repr__(self) -> str:
        return f"<Feed consumer={self.consumer!r} tables={self._config.tables!r}>"
