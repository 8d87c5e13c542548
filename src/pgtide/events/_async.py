"""The asyncio face: :class:`pgtide.aio.Events` (each method awaits one of the core's Io).

Its database work runs on an :class:`~pgtide.session.AsyncSession`: no blocking connection,
no thread. Its workers run on the caller's loop: the dispatcher is a task, async handlers
are tasks, and only plain handlers use a pool of threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import warnings
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import psycopg

from .._lifecycle import AsyncClosable
from ..connect import DsnLike, aconnect
from ..session import AsyncSession, Io, aresolve, arun, ausing
from . import _signatures as sig
from ._core import EventRecord, EventsBase, Schedule, _conninfo, _safety, _waker_for, _where
from ._worker import AsyncWorker, WorkerCore

T = TypeVar("T")
_CONN = "psycopg.AsyncConnection[Any] | None"
"""How ``conn`` shows in this face's signatures."""


class Events(EventsBase, AsyncClosable):
    """The asyncio face of :class:`pgtide.Events`: same handlers, same table, same options."""

    def _setup(self, dsn: DsnLike) -> None:
        self._session = AsyncSession(dsn, name="events", prepare=self._core.prepare)
        self._workers: list[tuple[AsyncWorker, asyncio.Task[None]]] = []
        self._ready: set[tuple[str, ...]] = set()

    async def _run(
        self, make: Callable[[], Io[T]], conn: psycopg.AsyncConnection[Any] | None = None
    ) -> T:
        """Run the core's work on our session, or on the caller's connection as it is."""
        if conn is None:
            return await self._session.run(make)
        async with ausing(conn=conn) as caller:  # a missing privilege is a PermissionDenied
            where = _where(caller)
            if where not in self._ready:  # in the caller's database, as the blocking face
                if not await arun(caller, self._core.schema_ready()):
                    async with await aconnect(await aresolve(_conninfo(caller))) as own:
                        await arun(own, self._core.prepare())
                await arun(caller, self._core.prepare_checked())
                self._ready.add(where)
            return await arun(caller, make())

    @sig.takes(sig.publish_args, conn=_CONN)
    async def publish(self, args: sig.PublishArgs) -> int:
        """As :meth:`pgtide.Events.publish`, with an optional async connection."""
        return await self._run(self._core.publish(args), args.on(psycopg.AsyncConnection))

    @sig.takes(sig.publish_many_args, conn=_CONN)
    async def publish_many(self, args: sig.PublishArgs) -> list[int]:
        """As :meth:`pgtide.Events.publish_many`."""
        return await self._run(self._core.publish_many(args), args.on(psycopg.AsyncConnection))

    async def cancel(self, id: int) -> str | None:
        """As :meth:`pgtide.Events.cancel`."""
        return await self._run(self._core.cancel(id))

    async def pause(self, name: str) -> None:
        """As :meth:`pgtide.Events.pause`."""
        await self._run(self._core.pause(name, True))

    async def resume(self, name: str) -> None:
        """As :meth:`pgtide.Events.resume`."""
        await self._run(self._core.pause(name, False))

    async def paused(self) -> list[str]:
        """As :meth:`pgtide.Events.paused`."""
        return await self._run(self._core.paused())

    async def wait(self, id: int, timeout: float | None = None) -> EventRecord:
        """As :meth:`pgtide.Events.wait`: woken by the NOTIFY sent when the event ends."""
        deadline = None if timeout is None else time.monotonic() + timeout
        waker = _waker_for(await self._session.resolved(), id)
        await asyncio.to_thread(waker.start)
        try:
            record = await self._run(self._core.watch(id))
            while record is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"event {id} did not end within {timeout} s")
                await waker.wait_async(_safety(left, waker.listening))
                record = await self._run(self._core.ended(id))
            return record
        finally:
            await asyncio.to_thread(waker.stop)

    async def retry_dead(self, name: str | None = None) -> int:
        """As :meth:`pgtide.Events.retry_dead`."""
        return await self._run(self._core.retry_dead(name))

    @sig.takes(sig.schedule_args)
    async def schedule(self, args: sig.ScheduleArgs) -> str:
        """As :meth:`pgtide.Events.schedule`."""
        return await self._run(self._core.schedule(args))

    async def unschedule(self, id: str) -> bool:
        """As :meth:`pgtide.Events.unschedule`."""
        return await self._run(self._core.unschedule(id))

    async def schedules(self) -> list[Schedule]:
        """As :meth:`pgtide.Events.schedules`."""
        return await self._run(self._core.schedules())

    async def status(self) -> dict[str, Any]:
        """As :meth:`pgtide.Events.status`."""
        return await self._run(self._core.status())

    async def unhandled(self) -> dict[str, int]:
        """As :meth:`pgtide.Events.unhandled`."""
        return await self._run(self._core.unhandled())

    async def get(self, id: int) -> EventRecord | None:
        """As :meth:`pgtide.Events.get`."""
        return await self._run(self._core.get(id))

    async def recent(
        self, *, state: str | None = None, name: str | None = None, limit: int = 50
    ) -> list[EventRecord]:
        """As :meth:`pgtide.Events.recent`."""
        return await self._run(self._core.recent(state, name, limit))

    async def purge(self, older_than: timedelta, *, dead: bool = False) -> int:
        """As :meth:`pgtide.Events.purge`."""
        return await self._run(self._core.purge(older_than, dead))

    async def retry(self, id: int) -> bool:
        """As :meth:`pgtide.Events.retry`."""
        return await self._run(self._core.retry(id))

    # -- workers -------------------------------------------------------------------------

    @sig.takes(sig.run_args)
    async def run(self, args: sig.RunArgs) -> None:
        """Run a worker until :meth:`stop` or cancellation, then stop gracefully."""
        worker = await self._new_worker(args)
        task = asyncio.ensure_future(worker.run())
        self._workers.append((worker, task))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            worker.stop()
            await asyncio.wait([task])  # running handlers finish first
            if not task.cancelled() and task.exception() is not None:
                raise task.exception() from None  # type: ignore[misc]
            raise
        finally:
            self._workers = [(w, t) for w, t in self._workers if w is not worker]

    @sig.takes(sig.run_args)
    async def start(self, args: sig.RunArgs) -> None:
        """Run a worker as a task on this loop; returns once it is serving."""
        worker = await self._new_worker(args)
        task = asyncio.ensure_future(worker.run())
        while not worker.running.is_set():
            if task.done():
                await task  # raises what stopped it
                return
            await asyncio.sleep(0.01)
        self._workers.append((worker, task))

    async def stop(self) -> None:
        """Stop every background worker: running handlers finish, the rest go back."""
        workers, self._workers = self._workers, []
        for worker, _ in workers:
            worker.stop()
        for _, task in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def close(self) -> None:
        """Stop background workers and close the connection."""
        await self.stop()
        await self._session.close()

    async def aclose(self) -> None:
        """Deprecated alias of :meth:`close` (``await events.close()``)."""
        warnings.warn(
            "aio.Events.aclose() is deprecated; use await events.close()",
            DeprecationWarning,
            stacklevel=2,
        )
        await self.close()

    async def _new_worker(self, args: sig.RunArgs) -> AsyncWorker:
        options = self._core.worker_options(self._handlers, args)
        await self._session.connection()  # schema and your table checked before it starts
        loop = asyncio.get_running_loop()
        core = WorkerCore(self._core.target(), self._handlers, options, lambda: loop, self._stats)
        return AsyncWorker(await self._session.resolved(), core)
