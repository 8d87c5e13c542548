"""The blocking face: :class:`pgtide.Events`."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

import psycopg

from .. import schema
from ..connect import connect
from ..errors import ConfigError
from . import _sql
from ._core import LIVE_WINDOW, EventRecord, EventsBase, record
from ._worker import Worker


class Events(EventsBase):
    """Events dispatched to handlers by name, with results, retries and many workers.

    ``Events(dsn=None)`` uses pgtide's own table ``pgtide.events``; ``table=`` (and
    ``id_column=``, ``name_column=``, ``payload_column=``, ``channel=``, or the
    ``PGTIDE_EVENTS_*`` environment variables) points it at a table of yours instead.
    """

    def _setup(self) -> None:
        self._conn: psycopg.Connection[Any] | None = None
        self._workers: list[tuple[Worker, threading.Thread]] = []
        self._loop: _LoopThread | None = None

    # -- connections ---------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        with self._lock:
            if self._conn is None or self._conn.closed:
                conn = connect(self._resolve())
                schema.ensure(conn)
                if self._source is not None and self._checked is None:
                    self._checked = self._source.checked(conn)
                self._conn = conn
            return self._conn

    def close(self) -> None:
        """Stop background workers and close the publishing connection."""
        self.stop()
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._loop is not None:
                self._loop.close()
                self._loop = None

    def __enter__(self) -> Events:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- publishing ----------------------------------------------------------------------

    def publish(
        self,
        name: str,
        payload: Any = None,
        *,
        conn: psycopg.Connection[Any] | None = None,
        run_at: datetime | timedelta | None = None,
        key: str | None = None,
    ) -> int:
        """Insert one event and wake the workers, in one transaction; return its id.

        With ``conn``, both happen inside the caller's transaction: a rollback leaves no
        event and wakes nobody. ``run_at`` delays it; events with the same ``key`` run one
        at a time, in order.
        """
        own = self._connection()
        statement, params = self._publish_statement(name, payload, run_at, key)
        row = (conn or own).execute(statement, params).fetchone()
        assert row is not None
        if self._checked is not None:
            (conn or own).execute(_sql.WAKE_ROW, (self._checked.channel, str(row[0])))
        return int(row[0])

    def publish_many(
        self,
        name: str,
        payloads: Iterable[Any],
        *,
        conn: psycopg.Connection[Any] | None = None,
        run_at: datetime | timedelta | None = None,
        key: str | None = None,
    ) -> list[int]:
        """Insert many events called ``name`` in one statement (one wake-up); return ids."""
        own = self._connection()
        statement, params = self._publish_many_statement(name, payloads, run_at, key)
        if not params[-1]:
            return []
        return [int(r[0]) for r in (conn or own).execute(statement, params).fetchall()]

    # -- workers -------------------------------------------------------------------------

    def run(
        self,
        concurrency: int | None = None,
        *,
        poll_interval: float | None = None,
        stop_timeout: float = 30.0,
    ) -> None:
        """Run a worker in this thread until :meth:`stop` or Ctrl-C, then stop gracefully."""
        worker = self._new_worker(concurrency, poll_interval, stop_timeout)
        with self._lock:
            self._workers.append((worker, threading.current_thread()))
        try:
            worker.run()
        except KeyboardInterrupt:
            worker.stop()
        finally:
            with self._lock:
                self._workers = [(w, t) for w, t in self._workers if w is not worker]

    def start(
        self,
        concurrency: int | None = None,
        *,
        poll_interval: float | None = None,
        stop_timeout: float = 30.0,
    ) -> None:
        """Run a worker in a background thread; returns once it is serving."""
        worker = self._new_worker(concurrency, poll_interval, stop_timeout)
        failure: list[BaseException] = []

        def serve() -> None:
            try:
                worker.run()
            except BaseException as exc:
                failure.append(exc)
                raise

        thread = threading.Thread(target=serve, name="pgtide-events-worker", daemon=True)
        thread.start()
        while not worker.running.wait(0.05):
            if not thread.is_alive():
                raise failure[0] if failure else ConfigError("the events worker did not start")
        with self._lock:
            self._workers.append((worker, thread))

    def stop(self, timeout: float | None = None) -> None:
        """Stop every worker of this object: running handlers finish, the rest go back."""
        with self._lock:
            workers, self._workers = self._workers, []
        for worker, _ in workers:
            worker.stop()
        for _, thread in workers:
            if thread is not threading.current_thread():
                thread.join(timeout)

    def _new_worker(
        self, concurrency: int | None, poll_interval: float | None, stop_timeout: float
    ) -> Worker:
        self._connection()  # schema and source checked before the worker starts
        return self._worker(self._run_async, concurrency, poll_interval, stop_timeout)

    def _run_async(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run an async handler on this object's event loop thread (started on first use)."""
        with self._lock:
            if self._loop is None:
                self._loop = _LoopThread()
            loop = self._loop
        return loop.run(coro)

    # -- inspection ----------------------------------------------------------------------

    def status(self) -> dict[str, int]:
        """Events by state, plus ``unhandled``: waiting events no live worker has a handler for."""
        conn = self._connection()
        rows = conn.execute(_sql.COUNTS, (self._source_key,)).fetchall()
        unhandled = conn.execute(
            _sql.UNHANDLED, {"source": self._source_key, "window": LIVE_WINDOW}
        ).fetchall()
        return self._counts(rows, unhandled)

    def unhandled(self) -> dict[str, int]:
        """Waiting events whose name no live worker handles, counted by name."""
        rows = (
            self._connection()
            .execute(_sql.UNHANDLED, {"source": self._source_key, "window": LIVE_WINDOW})
            .fetchall()
        )
        return {str(name): int(n) for name, n in rows}

    def get(self, id: int) -> EventRecord | None:
        """One event by pgtide id, or None."""
        row = self._connection().execute(_sql.GET, (id,)).fetchone()
        return record(row) if row else None

    def recent(
        self, *, state: str | None = None, name: str | None = None, limit: int = 50
    ) -> list[EventRecord]:
        """The newest events (optionally of one state or name), newest first."""
        self._check_state(state)
        rows = (
            self._connection()
            .execute(
                _sql.LIST,
                {"source": self._source_key, "state": state, "name": name, "limit": limit},
            )
            .fetchall()
        )
        return [record(r) for r in rows]

    def purge(self, older_than: timedelta, *, dead: bool = False) -> int:
        """Delete done (and, with ``dead``, dead) events finished before ``older_than`` ago.

        Returns how many were deleted. pgtide never deletes events by itself.
        """
        states, seconds = self._purge_params(older_than, dead)
        return self._connection().execute(_sql.PURGE, (states, seconds)).rowcount

    def retry(self, id: int) -> bool:
        """Run a done, failed or dead event again from attempt 1; False if there is none."""
        conn = self._connection()
        with conn.transaction():
            row = conn.execute(_sql.RETRY, (id,)).fetchone()
            conn.execute(_sql.WAKE, (_sql.CHANNEL,))
        return row is not None


class _LoopThread:
    """An event loop in a daemon thread, for async handlers under the blocking face."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="pgtide-events-loop", daemon=True
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
