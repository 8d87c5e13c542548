"""The blocking face: :class:`pgtide.Events` (each method runs one of the core's Io)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import psycopg

from .._lifecycle import Closable
from .._signals import stop_on_signals
from ..connect import DsnLike, connect, resolve
from ..errors import ConfigError
from ..session import Io, Session, run, using
from . import _signatures as sig
from ._core import EventRecord, EventsBase, Schedule, _conninfo, _safety, _waker_for, _where
from ._worker import Worker, WorkerCore

T = TypeVar("T")
_CONN = "psycopg.Connection[Any] | None"
"""How ``conn`` shows in this face's signatures."""


class Events(EventsBase, Closable):
    """Events dispatched to handlers by name, with results, retries and many workers.

    ``Events(dsn=None)`` uses pgtide's own table ``pgtide.events``; ``table=`` (and
    ``id_column=``, ``name_column=``, ``payload_column=``, ``channel=``, or the
    ``PGTIDE_EVENTS_*`` environment variables) points it at a table of yours instead.
    ``poll_interval``: seconds between polls when no NOTIFY arrives; ``listen=False`` polls
    only. ``lease``: seconds a claim lasts without a heartbeat. ``batch_size``: events
    claimed at once. ``retry_delay`` and ``max_retry_delay``: the exponential backoff between
    attempts. Nothing connects until first use.
    """

    def _setup(self, dsn: DsnLike) -> None:
        self._session = Session(dsn, name="events", prepare=self._core.prepare)
        self._lock = threading.Lock()
        self._workers: list[tuple[Worker, threading.Thread]] = []
        self._loop: _LoopThread | None = None
        self._ready: set[tuple[str, ...]] = set()

    def _run(self, make: Callable[[], Io[T]], conn: psycopg.Connection[Any] | None = None) -> T:
        """Run the core's work on our session, or on the caller's connection as it is."""
        if conn is None:
            return self._session.run(make)
        with using(conn=conn) as caller:  # a missing privilege is a PermissionDenied
            self._ready_on(caller)
            return run(caller, make())

    def _ready_on(self, conn: psycopg.Connection[Any]) -> None:
        """The schema installed in the caller's database (never another one), their table
        checked: read on their connection; an install runs on a connection of ours to the
        same database, outside their transaction."""
        where = _where(conn)
        if where in self._ready:
            return
        if not run(conn, self._core.schema_ready()):
            with connect(resolve(_conninfo(conn))) as own:
                run(own, self._core.prepare())
        run(conn, self._core.prepare_checked())
        self._ready.add(where)

    # -- publishing ----------------------------------------------------------------------

    @sig.takes(sig.publish_args, conn=_CONN)
    def publish(self, args: sig.PublishArgs) -> int:
        """Insert one event and wake the workers, in one transaction; return its id.

        With ``conn``, both happen inside the caller's transaction: a rollback leaves no
        event and wakes nobody. ``run_at`` delays it; events with the same ``key`` run one
        at a time, in order. Smaller ``priority`` runs first (equal ones in id order). While
        an event with the same ``dedupe_key`` is pending, failed or running, nothing is
        inserted and that event's id is returned. ``after`` (an id or ids): it waits until
        those events are done, and ends cancelled if one ends dead or cancelled.
        """
        return self._run(self._core.publish(args), args.on(psycopg.Connection))

    @sig.takes(sig.publish_many_args, conn=_CONN)
    def publish_many(self, args: sig.PublishArgs) -> list[int]:
        """Insert many events called ``name`` in one statement (one wake-up); return their
        ids, one per payload. ``dedupe_key``: one per payload (None for none), or one string
        for all; a payload whose key an unfinished event holds gets that event's id.
        ``after``: as for :meth:`publish`, the same events for every payload."""
        return self._run(self._core.publish_many(args), args.on(psycopg.Connection))

    # -- control -------------------------------------------------------------------------

    def cancel(self, id: int) -> str | None:
        """Cancel event ``id``: pending, failed or waiting, it ends ``cancelled`` at once;
        running, its handler is asked to stop (``event.cancelled`` turns True; an async
        handler's task is cancelled) and it ends ``cancelled``, never retried. Returns the
        state after (``cancelled`` or ``running``), or None if it had already ended or does
        not exist."""
        return self._run(self._core.cancel(id))

    def pause(self, name: str) -> None:
        """No worker claims events called ``name`` until :meth:`resume` (running ones finish)."""
        self._run(self._core.pause(name, True))

    def resume(self, name: str) -> None:
        """Workers claim events called ``name`` again."""
        self._run(self._core.pause(name, False))

    def paused(self) -> list[str]:
        """The paused event names."""
        return self._run(self._core.paused())

    def wait(self, id: int, timeout: float | None = None) -> EventRecord:
        """Block until event ``id`` ends (done, dead or cancelled); return its record.

        Woken by a NOTIFY sent when it ends (no polling); raises :class:`TimeoutError` after
        ``timeout`` seconds (None: no limit).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        waker = _waker_for(self._session.resolved, id)
        waker.start()
        try:
            record = self._run(self._core.watch(id))
            while record is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"event {id} did not end within {timeout} s")
                waker.wait(_safety(left, waker.listening))
                record = self._run(self._core.ended(id))
            return record
        finally:
            waker.stop()

    def retry_dead(self, name: str | None = None) -> int:
        """Dead events (of ``name``, or every name) back to pending from attempt 1; how many."""
        return self._run(self._core.retry_dead(name))

    # -- schedules -----------------------------------------------------------------------

    @sig.takes(sig.schedule_args)
    def schedule(self, args: sig.ScheduleArgs) -> str:
        """Publish ``name`` with ``payload`` at each tick of ``cron`` (in time zone ``tz``),
        once per tick whatever the number of workers; after downtime, a missed tick is
        published once. ``id`` (default: ``name``) names the schedule; setting it again
        replaces it. Returns the id."""
        return self._run(self._core.schedule(args))

    def unschedule(self, id: str) -> bool:
        """Remove schedule ``id``; False if there was none."""
        return self._run(self._core.unschedule(id))

    def schedules(self) -> list[Schedule]:
        """Every schedule, by id."""
        return self._run(self._core.schedules())

    # -- inspection ----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Events by state, ``unhandled`` (waiting events no live worker has a handler for)
        and ``paused`` (the paused names)."""
        return self._run(self._core.status())

    def unhandled(self) -> dict[str, int]:
        """Waiting events whose name no live worker handles, counted by name."""
        return self._run(self._core.unhandled())

    def get(self, id: int) -> EventRecord | None:
        """One event by pgtide id, or None."""
        return self._run(self._core.get(id))

    def recent(
        self, *, state: str | None = None, name: str | None = None, limit: int = 50
    ) -> list[EventRecord]:
        """The newest events (optionally of one state or name), newest first."""
        return self._run(self._core.recent(state, name, limit))

    def purge(self, older_than: timedelta, *, dead: bool = False) -> int:
        """Delete done (and, with ``dead``, dead) events finished before ``older_than`` ago.

        Returns how many were deleted. pgtide never deletes events by itself.
        """
        return self._run(self._core.purge(older_than, dead))

    def retry(self, id: int) -> bool:
        """Run a done, failed or dead event again from attempt 1; False if there is none."""
        return self._run(self._core.retry(id))

    # -- workers -------------------------------------------------------------------------

    @sig.takes(sig.run_args)
    def run(self, args: sig.RunArgs) -> None:
        """Run a worker in this thread until :meth:`stop`, then stop gracefully.

        In the main thread, SIGTERM and Ctrl-C (SIGINT) stop it the same way: no new claims,
        running handlers finish (up to ``stop_timeout`` seconds), claimed events not started
        and handlers still running then are given back at once; ``run()`` then returns.
        """
        worker = self._new_worker(args)
        with self._lock:
            self._workers.append((worker, threading.current_thread()))
        try:
            with stop_on_signals(worker.stop, "events worker"):
                worker.run()
        except KeyboardInterrupt:  # a second Ctrl-C while stopping, or a signal elsewhere
            worker.stop()
        finally:
            with self._lock:
                self._workers = [(w, t) for w, t in self._workers if w is not worker]

    @sig.takes(sig.run_args)
    def start(self, args: sig.RunArgs) -> None:
        """Run a worker in a background thread; returns once it is serving."""
        worker = self._new_worker(args)
        thread = threading.Thread(target=worker.run, name="pgtide-events-worker", daemon=True)
        failure = worker.failure
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

    def close(self) -> None:
        """Stop background workers and close the connection."""
        self.stop()
        self._session.close()
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            loop.close()

    def _new_worker(self, args: sig.RunArgs) -> Worker:
        options = self._core.worker_options(self._handlers, args)
        self._session.connection()  # schema and your table checked before the worker starts
        core = WorkerCore(
            self._core.target(), self._handlers, options, self._event_loop, self._stats
        )
        return Worker(self._session.resolved, core)

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        """The loop async handlers run on (a daemon thread, started on first use)."""
        with self._lock:
            if self._loop is None:
                self._loop = _LoopThread()
            return self._loop.loop


class _LoopThread:
    """An event loop in a daemon thread, for async handlers under the blocking face."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="pgtide-events-loop", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
