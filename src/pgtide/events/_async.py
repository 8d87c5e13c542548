"""The asyncio face: :class:`pgtide.aio.Events`.

Publishing and inspection use an async connection and the core's statements; workers are
the core's worker, run in a thread, with async handlers scheduled on the caller's loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

import psycopg

from .. import schema
from .._blocking import run_in_thread
from ..connect import aconnect, connect
from . import _sql
from ._core import LIVE_WINDOW, EventRecord, EventsBase, record
from ._worker import Worker


class Events(EventsBase):
    """The asyncio face of :class:`pgtide.Events`: same handlers, same table, same options."""

    def _setup(self) -> None:
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._alock = asyncio.Lock()
        self._workers: list[tuple[Worker, asyncio.Task[None]]] = []

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        async with self._alock:
            if self._conn is None or self._conn.closed:
                await asyncio.to_thread(self._prepare)
                self._conn = await aconnect(self._resolve())
            return self._conn

    def _prepare(self) -> None:
        """Install the schema and check the user's table (once, on a short blocking connection)."""
        with connect(self._resolve()) as conn:
            schema.ensure(conn)
            if self._source is not None and self._checked is None:
                self._checked = self._source.checked(conn)

    async def aclose(self) -> None:
        """Stop background workers and close the publishing connection."""
        await self.stop()
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def __aenter__(self) -> Events:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

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
        own = await self._connection()
        statement, params = self._publish_statement(name, payload, run_at, key)
        cursor = await (conn or own).execute(statement, params)
        row = await cursor.fetchone()
        assert row is not None
        if self._checked is not None:
            await (conn or own).execute(_sql.WAKE_ROW, (self._checked.channel, str(row[0])))
        return int(row[0])

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
        own = await self._connection()
        statement, params = self._publish_many_statement(name, payloads, run_at, key)
        if not params[-1]:
            return []
        cursor = await (conn or own).execute(statement, params)
        return [int(r[0]) for r in await cursor.fetchall()]

    async def run(
        self,
        concurrency: int | None = None,
        *,
        poll_interval: float | None = None,
        stop_timeout: float = 30.0,
    ) -> None:
        """Run a worker until :meth:`stop` or cancellation, then stop gracefully."""
        worker = await self._new_worker(concurrency, poll_interval, stop_timeout)
        await run_in_thread(worker.run, worker.stop)

    async def start(
        self,
        concurrency: int | None = None,
        *,
        poll_interval: float | None = None,
        stop_timeout: float = 30.0,
    ) -> None:
        """Run a worker in the background; returns once it is serving."""
        worker = await self._new_worker(concurrency, poll_interval, stop_timeout)
        task: asyncio.Task[None] = asyncio.ensure_future(asyncio.to_thread(worker.run))
        while not worker.running.is_set():
            if task.done():
                await task  # raises what stopped it
            await asyncio.sleep(0.01)
        self._workers.append((worker, task))

    async def _new_worker(
        self, concurrency: int | None, poll_interval: float | None, stop_timeout: float
    ) -> Worker:
        """A worker whose async handlers run on the running loop (awaited from pool threads)."""
        await self._connection()
        loop = asyncio.get_running_loop()

        def run_async(coro: Coroutine[Any, Any, Any]) -> Any:
            return asyncio.run_coroutine_threadsafe(coro, loop).result()

        return self._worker(run_async, concurrency, poll_interval, stop_timeout)

    async def stop(self) -> None:
        """Stop every background worker: running handlers finish, the rest go back."""
        workers, self._workers = self._workers, []
        for worker, _ in workers:
            worker.stop()
        for _, task in workers:
            await task

    async def status(self) -> dict[str, int]:
        """As :meth:`pgtide.Events.status`."""
        conn = await self._connection()
        rows = await (await conn.execute(_sql.COUNTS, (self._source_key,))).fetchall()
        unhandled = await (
            await conn.execute(_sql.UNHANDLED, {"source": self._source_key, "window": LIVE_WINDOW})
        ).fetchall()
        return self._counts(rows, unhandled)

    async def get(self, id: int) -> EventRecord | None:
        """As :meth:`pgtide.Events.get`."""
        conn = await self._connection()
        row = await (await conn.execute(_sql.GET, (id,))).fetchone()
        return record(row) if row else None

    async def recent(
        self, *, state: str | None = None, name: str | None = None, limit: int = 50
    ) -> list[EventRecord]:
        """As :meth:`pgtide.Events.recent`."""
        self._check_state(state)
        conn = await self._connection()
        cursor = await conn.execute(
            _sql.LIST, {"source": self._source_key, "state": state, "name": name, "limit": limit}
        )
        return [record(r) for r in await cursor.fetchall()]

    async def purge(self, older_than: timedelta, *, dead: bool = False) -> int:
        """As :meth:`pgtide.Events.purge`."""
        states, seconds = self._purge_params(older_than, dead)
        conn = await self._connection()
        return (await conn.execute(_sql.PURGE, (states, seconds))).rowcount

    async def retry(self, id: int) -> bool:
        """As :meth:`pgtide.Events.retry`."""
        conn = await self._connection()
        async with conn.transaction():
            row = await (await conn.execute(_sql.RETRY, (id,))).fetchone()
            await conn.execute(_sql.WAKE, (_sql.CHANNEL,))
        return row is not None
