"""The asyncio face: :class:`pgtide.aio.Events` (each method awaits one of the core's Io).

Its database work runs on an :class:`~pgtide.session.AsyncSession`: no blocking connection,
no thread. Its workers run on the caller's loop: the dispatcher is a task, async handlers
are tasks, and only plain handlers use a pool of threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import warnings
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar

import psycopg

from ..connect import DsnLike
from ..session import AsyncSession, Io, arun, ausing
from ._core import EventRecord, EventsBase
from ._worker import AsyncWorker

T = TypeVar("T")


class Events(EventsBase):
    """The asyncio face of :class:`pgtide.Events`: same handlers, same table, same options."""

    def _setup(self, dsn: DsnLike) -> None:
        self._session = AsyncSession(dsn, name="events", prepare=self._core.prepare)
        self._workers: list[tuple[AsyncWorker, asyncio.Task[None]]] = []

    async def _run(
        self, make: Callable[[], Io[T]], conn: psycopg.AsyncConnection[Any] | None = None
    ) -> T:
        """Run the core's work on our session, or on the caller's connection as it is."""
        if conn is None:
            return await self._session.run(make)
        await self._session.connection()  # the schema installed, your table checked
        async with ausing(conn=conn) as caller:  # a missing privilege is a PermissionDenied
            return await arun(caller, make())

    async def publish(
        self,
        name: str,
        payload: Any = None,
        *,
        conn: psycopg.AsyncConnection[Any] | None = None,
        run_at: datetime | timedelta | None = None,
        key: str | None = None,
    ) -> int:
        """As :meth:`pgtide.Events.publish`, with an optional async connection."""
        return await self._run(self._core.publish(name, payload, run_at, key), conn)

    async def publish_many(
        self,
        name: str,
        payloads: Iterable[Any],
        *,
        conn: psycopg.AsyncConnection[Any] | None = None,
        run_at: datetime | timedelta | None = None,
        key: str | None = None,
    ) -> list[int]:
        """As :meth:`pgtide.Events.publish_many`."""
        return await self._run(self._core.publish_many(name, payloads, run_at, key), conn)

    async def status(self) -> dict[str, int]:
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

    async def run(
        self,
        concurrency: int | None = None,
        *,
        poll_interval: float | None = None,
        stop_timeout: float = 30.0,
    ) -> None:
        """Run a worker until :meth:`stop` or cancellation, then stop gracefully."""
        worker = await self._new_worker(concurrency, poll_interval, stop_timeout)
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

    async def start(
        self,
        concurrency: int | None = None,
        *,
        poll_interval: float | None = None,
        stop_timeout: float = 30.0,
    ) -> None:
        """Run a worker as a task on this loop; returns once it is serving."""
        worker = await self._new_worker(concurrency, poll_interval, stop_timeout)
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

    async def __aenter__(self) -> Events:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _new_worker(
        self, concurrency: int | None, poll_interval: float | None, stop_timeout: float
    ) -> AsyncWorker:
        options = self._core.worker_options(
            self._handlers, concurrency, poll_interval, stop_timeout
        )
        await self._session.connection()  # schema and your table checked before it starts
        loop = asyncio.get_running_loop()
        return AsyncWorker(
            await self._session.resolved(),
            self._core.target(),
            self._handlers,
            options,
            lambda: loop,
        )
