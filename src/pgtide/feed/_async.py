"""The asyncio face of the change feed: the same core and settings as the blocking face, with
``await`` on an asyncio connection (only the waker's LISTEN runs in a thread of its own)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg

from .._lifecycle import AsyncClosable
from ..session import AsyncSession, arun, arun_after
from . import _face
from ._core import Emit, Run, Start, Wait
from ._face import BatchBase, BatchInterrupted, FeedBase, ReadAhead
from .position import Position
from .retention import prune_io

log = logging.getLogger("pgtide.feed")


class Batch(BatchBase["Feed"]):
    """Whole transactions of changes; ``await batch.ack()`` or ``async with
    batch.transaction() as conn``."""

    async def ack(self) -> None:
        """Save the consumer's position after this batch (at-least-once delivery)."""
        await self._feed._save(self.position)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """Your writes and this batch's acknowledgement commit together (exactly once); a
        lost connection is a :class:`~pgtide.FeedError` and the batch comes again."""
        conn = await self._feed._session.connection()
        try:
            async with conn.transaction():
                yield conn
                await arun(conn, self._feed._core.save_once(self.start, self.position))
        except Exception as exc:
            raise self._feed._lost(exc, conn.closed, self)  # noqa: B904 (its cause is set)
        await self._feed._after_ack()


class Feed(FeedBase[AsyncSession], AsyncClosable):
    """The asyncio :class:`pgtide.Feed`: ``async for batch in feed.batches(): ...``."""

    _face = "aio.Feed"
    _session_class = AsyncSession
    _before_wait: Callable[[], Awaitable[None]] | None = None
    """What a read-ahead ``run()`` does before the feed waits for changes, and at its end:
    settle the batch in flight."""
    _deferred: Position | None = None
    """As :attr:`pgtide.Feed._deferred`: an acknowledgement that goes with the next read."""

    async def batches(
        self,
        start: Start = "saved",
        stop: Start | None = None,
        max_changes: int = 1000,
        timeout: float | None = None,
    ) -> AsyncIterator[Batch]:
        """As :meth:`pgtide.Feed.batches`, with ``async for``."""
        steps = self._plan(start, stop, max_changes, timeout)
        try:
            reply: Any = None
            while (step := self._advance(steps, reply)) is not None:
                if isinstance(step, Emit):
                    yield Batch(self, step)
                    reply = None
                else:
                    reply = await self._carry_out(step)
            if self._before_wait is not None:
                await self._before_wait()  # the end: settle while the connection is still open
        finally:
            await self._end()

    def __aiter__(self) -> AsyncIterator[Batch]:
        return self.batches()

    async def run(
        self,
        fn: Callable[[Batch], Awaitable[Any] | Any],
        *,
        start: Start = "saved",
        stop: Start | None = None,
        max_changes: int | None = None,
        timeout: float | None = None,
    ) -> None:
        """As :meth:`pgtide.Feed.run`; ``fn`` may be plain or async; :meth:`stop` or
        :meth:`close` from another task ends it. With a sink (or its ``send``), the next
        batch is read while the sink delivers the one before, as the blocking face does."""
        max_changes = _face.batch_size(fn, max_changes)
        asubmit = _asubmit(fn)
        if asubmit is not None:
            await self._pipelined(asubmit, start, stop, max_changes, timeout)
            return
        while True:
            try:
                async for batch in self.batches(start, stop, max_changes, timeout):
                    if inspect.isawaitable(result := fn(batch)):
                        await result
                    await batch.ack()
                return
            except BatchInterrupted as lost:
                log.warning("%s; retrying the batch", lost)
                start = await self._session.run(functools.partial(self._core.resume, lost.start))

    async def _pipelined(
        self,
        asubmit: Callable[[Batch], asyncio.Future[Any]],
        start: Start,
        stop: Start | None,
        max_changes: int,
        timeout: float | None,
    ) -> None:
        """``run()`` with a sink: the next batch is read while the one before is being
        delivered (see :class:`ReadAhead`)."""
        ahead: ReadAhead[Batch, asyncio.Future[Any]] = ReadAhead()

        async def carry_out(
            steps: Iterator[_face.Handover[Batch, asyncio.Future[Any]]], later: bool = False
        ) -> None:
            for step in steps:
                if isinstance(step, _face.Confirm):
                    await step.delivery
                elif isinstance(step, _face.Submit):
                    ahead.sent(step.batch, asubmit(step.batch))
                elif later:  # the feed reads next: the acknowledgement goes with that read
                    self._deferred = step.batch.position
                else:  # its sink's message ids make a repeat harmless: see Core.save
                    self._deferred = None  # a later position: it covers the one deferred
                    await self._save(step.batch.position, durable=False)

        self._before_wait = lambda: carry_out(ahead.settle())
        try:
            async for batch in self.batches(start, stop, max_changes, timeout):
                await carry_out(ahead.take(batch), later=True)
            await carry_out(ahead.settle())
        finally:
            self._before_wait = None
            self._deferred = None  # a failed feed: that delivery comes again, harmlessly
            left = ahead.abandon()
            if left is not None:  # the feed failed: let the delivery end, acknowledge nothing
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await left

    async def position(self) -> Position:
        """As :meth:`pgtide.Feed.position`."""
        known = self._cursor.position
        return known if known is not None else await self._session.run(self._core.position)

    async def seek(self, position: Start) -> Position:
        """As :meth:`pgtide.Feed.seek`."""
        return await self._session.run(lambda: self._core.seek(position))

    async def saved(self) -> Position | None:
        """As :meth:`pgtide.Feed.saved`."""
        return await self._session.run(self._core.saved)

    async def drop(self) -> bool:
        """As :meth:`pgtide.Feed.drop`."""
        return await self._session.run(self._core.drop)

    async def close(self) -> None:
        """Close the feed's connections (a later call reopens them); a :meth:`run` in
        another task ends, after the batch in hand, and closes them itself."""
        if self._closing():
            await self._stop_waker()
            await self._session.close()

    # -- the face's I/O ---------------------------------------------------------------------
    async def _carry_out(self, step: Run | Wait) -> Any:
        if isinstance(step, Wait):
            return await self._sleep(step.seconds)
        acked, self._deferred = self._deferred, None
        if acked is None:
            done = await self._session.run(step.make)
        else:  # one round trip for the acknowledgement and the read
            save = functools.partial(self._core.save, acked, False)

            async def work(conn: psycopg.AsyncConnection[Any]) -> Any:
                return await arun_after(conn, save(), step.make())

            done = await self._session.call(work)
            await self._after_ack()
        self._relay_check(await self._session.resolved())
        return done

    @staticmethod
    def _me() -> object:
        return asyncio.current_task()

    async def _sleep(self, seconds: float | None) -> bool:
        if self._before_wait is not None:
            await self._before_wait()
        if self._waker is None:
            self._waker = self._new_waker(await self._session.resolved() if self._listens else None)
            if self._listens:  # only waits for the waker's own LISTEN thread to be ready
                await asyncio.to_thread(self._waker.start)
            self._started()
        also = self._session.fileno()
        return await self._waker.wait_async(self._pace(seconds, self._waker), also)

    async def _save(self, position: Position, durable: bool = True) -> None:
        await self._session.run(functools.partial(self._core.save, position, durable))
        await self._after_ack()

    async def _after_ack(self) -> None:
        if self._prune_due():
            await self._session.run(prune_io)

    async def _stop_waker(self) -> None:
        waker = self._release_waker()
        if waker is not None:
            await asyncio.to_thread(waker.stop)

    async def _end(self) -> None:
        await asyncio.to_thread(self._relay_stop)
        await self._stop_waker()
        if self._ended():
            await self._session.close()


def _asubmit(fn: Any) -> Callable[[Batch], asyncio.Future[Any]] | None:
    """The ``asubmit`` of a sink given as ``fn``, or whose bound ``send`` is ``fn``."""
    found = getattr(fn, "asubmit", None)
    if found is None:
        owner = getattr(fn, "__self__", None)
        if owner is not None and getattr(owner, "send", None) == fn:
            found = getattr(owner, "asubmit", None)
    return found if callable(found) else None
