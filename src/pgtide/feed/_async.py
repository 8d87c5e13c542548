"""The asyncio face of the change feed: the same core as :mod:`pgtide.feed._sync`,
driven with ``await``."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import psycopg

from .. import schema
from ..connect import Backoff, Resolved, aconnect, connect, resolve
from ..errors import ConnectionFailed
from ._core import BatchBase, Core, Cursor, Emit, Io, Run, Start, Wait, plan
from ._feedconf import FeedConfig
from ._listen import WakeupSource
from ._wakeup import Signal
from .position import Position

log = logging.getLogger("pgtide.feed")


async def run_io(conn: psycopg.AsyncConnection[Any], io: Io) -> Any:
    """Carry out one core generator on an asyncio connection."""
    try:
        query = next(io)
        while True:
            cur = await conn.execute(query.statement, query.params)
            query = io.send(await cur.fetchall() if cur.description else [])
    except StopIteration as done:
        return done.value


class Batch(BatchBase):
    """Whole transactions of changes; ``await batch.ack()`` or ``async with
    batch.transaction() as conn``."""

    def __init__(self, feed: Feed, emit: Emit) -> None:
        super().__init__(emit.changes, emit.start, emit.end)
        self._feed = feed

    async def ack(self) -> None:
        """Save the consumer's position after this batch (at-least-once delivery)."""
        await self._feed._run(lambda: self._feed._core.save(self.position))
        await self._feed._after_ack()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """Your writes and this batch's acknowledgement commit together (exactly once)."""
        conn = await self._feed._connection()
        async with conn.transaction():
            yield conn
            await run_io(conn, self._feed._core.save_once(self.start, self.position))
        await self._feed._after_ack()


class Feed:
    """The asyncio :class:`pgtide.Feed`: ``async for batch in feed.batches(): ...``."""

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
        self._dsn = dsn
        self._resolved: Resolved | None = dsn if isinstance(dsn, Resolved) else None
        self._core = Core(consumer, self._config.tables)
        self._cursor = Cursor()
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._signal = Signal()
        self._connected_once = False
        self._wakeup: WakeupSource | None = None
        self._last_prune = time.monotonic()

    @property
    def consumer(self) -> str:
        """The consumer's name, under which its position is saved."""
        return self._config.consumer

    async def _resolve(self) -> Resolved:
        if self._resolved is None:
            self._resolved = await asyncio.to_thread(resolve, self._dsn)
        return self._resolved

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            resolved = await self._resolve()
            await asyncio.to_thread(self._prepare, resolved)
            self._conn = await aconnect(resolved)
            self._connected_once = True
        return self._conn

    def _prepare(self, resolved: Resolved) -> None:
        # schema.ensure and the table checks are blocking helpers; run once per connection
        with connect(resolved) as conn:
            schema.ensure(conn)
            self._config.check_tables(conn)

    async def _run(self, make: Callable[[], Io]) -> Any:
        backoff = Backoff()
        while True:
            try:
                return await run_io(await self._connection(), make())
            except (psycopg.OperationalError, psycopg.InterfaceError, ConnectionFailed) as exc:
                conn = self._conn
                if conn is not None and not conn.closed and not conn.broken:
                    raise
                if isinstance(exc, ConnectionFailed) and not self._connected_once:
                    raise  # never reached: a configuration error, not an outage
                await self._drop_connection()
                delay = backoff.next()
                log.warning(
                    "feed %s: connection lost (%s); retrying in %.2fs",
                    self.consumer,
                    type(exc).__name__,
                    delay,
                )
                await asyncio.sleep(delay)
                self._signal.set()

    async def _drop_connection(self) -> None:
        if self._conn is not None:
            await self._conn.close()
        self._conn = None

    async def close(self) -> None:
        await self._stop_wakeup()
        await self._drop_connection()

    async def __aenter__(self) -> Feed:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _start_wakeup(self) -> None:
        resolved = await self._resolve()
        self._wakeup = await asyncio.to_thread(self._config.start_wakeup, resolved, self._signal)

    async def _stop_wakeup(self) -> None:
        if self._wakeup is not None:
            await asyncio.to_thread(self._wakeup.stop)
            self._wakeup = None

    async def batches(
        self,
        start: Start = "saved",
        stop: Start | None = None,
        max_changes: int = 1000,
        timeout: float | None = None,
    ) -> AsyncIterator[Batch]:
        """As :meth:`pgtide.Feed.batches`, with ``async for``."""
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
                    reply = await self._run(step.make)
                elif isinstance(step, Wait):
                    if wake:  # LISTEN from the first wait on: a first read needs none
                        wake = False
                        await self._start_wakeup()
                    wait = self._config.wait_for(step.seconds, self._wakeup is not None)
                    reply = await self._signal.await_(wait)
                else:
                    reply = None
                    yield Batch(self, step)
        finally:
            await self._stop_wakeup()

    def __aiter__(self) -> AsyncIterator[Batch]:
        return self.batches()

    async def run(
        self,
        fn: Callable[[Batch], Awaitable[Any] | Any],
        *,
        start: Start = "saved",
        stop: Start | None = None,
        max_changes: int = 1000,
        timeout: float | None = None,
    ) -> None:
        """Call ``fn(batch)`` (plain or async) for each batch; ack once it returns."""
        async for batch in self.batches(start, stop, max_changes, timeout):
            result = fn(batch)
            if inspect.isawaitable(result):
                await result
            await batch.ack()

    async def position(self) -> Position:
        if self._cursor.position is not None:
            return self._cursor.position
        found: Position = await self._run(lambda: self._core.resolve("saved"))
        return found

    async def seek(self, position: Start) -> Position:
        chosen: Position = await self._run(lambda: self._core.resolve(position))
        await self._run(lambda: self._core.save(chosen))
        self._cursor.position = chosen
        return chosen

    async def saved(self) -> Position | None:
        found: Position | None = await self._run(self._core.saved)
        return found

    async def drop(self) -> bool:
        return bool(await self._run(self._core.drop))

    async def _after_ack(self) -> None:
        every = self._config.auto_prune
        if every is not None and time.monotonic() - self._last_prune >= every:
            from .retention import prune

            self._last_prune = time.monotonic()
            await asyncio.to_thread(prune, conn=None, dsn=await self._resolve())

    def __repr__(self) -> str:
        return f"<aio.Feed consumer={self.consumer!r} tables={self._config.tables!r}>"
