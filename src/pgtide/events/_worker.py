"""The worker: claims events in batches, runs their handlers on a fixed pool, records outcomes.

One dispatcher thread owns the database connection: it claims (``FOR UPDATE SKIP LOCKED``, id
order), writes results and failures in batches, and extends the leases of everything it holds
(heartbeat). A fixed pool of ``concurrency`` threads runs the handlers; async handlers run on
an event loop supplied by the face. A worker that dies stops heartbeating, its leases expire,
and other workers claim its events again; outcomes are fenced by owner and attempt, so a
worker that lost a lease cannot overwrite the event's newer state.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from .. import schema
from ..connect import Backoff, Resolved, connect
from . import _sql
from ._model import Event, HandlerSpec, retry_delay, to_json
from ._wake import make_waker

log = logging.getLogger("pgtide.events")

CATCH_UP = 30.0
"""With NOTIFY, a user's table is scanned whole this often (and at start and after a gap);
in between, each notified id is mirrored alone. Polling only, it is scanned every poll."""

MAX_NOTIFIED = 1000
"""Notified ids kept for one round; past that, one whole scan is cheaper."""

AsyncRunner = Callable[[Coroutine[Any, Any, Any]], Any]
"""Runs a coroutine to completion from a pool thread and returns its result (or raises)."""


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker runs. Leases last ``lease`` seconds and are renewed every third of it."""

    concurrency: int = 8
    batch_size: int = 100
    poll_interval: float = 1.0
    lease: float = 30.0
    stop_timeout: float = 30.0
    listen: bool = True
    retry_delay: float = 1.0
    max_retry_delay: float = 300.0


@dataclass(frozen=True)
class Target:
    """What a worker serves: a source key, and for a user's table the SQL that mirrors it."""

    source: str
    mirror: sql.Composed | None
    channels: Sequence[str]
    source_channel: str | None
    mirror_one: sql.Composed | None = None


class Worker:
    """One worker: ``run()`` blocks until ``stop()``; both are thread-safe."""

    def __init__(
        self,
        resolved: Resolved,
        target: Target,
        handlers: dict[str, HandlerSpec],
        options: WorkerOptions,
        run_async: AsyncRunner,
    ) -> None:
        self._resolved = resolved
        self._target = target
        self._handlers = dict(handlers)
        self._options = options
        self._run_async = run_async
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._signal = threading.Event()
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[Event | None] = queue.SimpleQueue()
        self._done: list[tuple[Event, str | None]] = []
        self._failed: list[tuple[Event, str, float, bool]] = []
        self._unstarted: list[int] = []
        self._inflight = 0
        self._max_inflight = options.concurrency + options.batch_size
        self._low_water = self._max_inflight // 2
        self._flush_at = max(1, options.batch_size // 2)
        self._mirror_due = True
        self._notified: list[str] = []
        self._limits = {
            name: threading.BoundedSemaphore(spec.concurrency)
            for name, spec in handlers.items()
            if spec.concurrency is not None
        }
        self.running = threading.Event()

    # -- control -------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the worker to stop: no new claims; running handlers finish; the rest go back."""
        self._stop.set()
        self._signal.set()

    def run(self) -> None:
        """Serve until :meth:`stop`; then finish running handlers (bounded) and release."""
        pool = [
            threading.Thread(target=self._serve, name=f"pgtide-events-{i}", daemon=True)
            for i in range(self._options.concurrency)
        ]
        conn = self._connect()
        waker = None
        if self._options.listen:
            waker = make_waker(self._resolved, self._target.channels, self._on_wake, self._on_gap)
        try:
            self._register(conn)
            for thread in pool:
                thread.start()
            if waker is not None:
                waker.start()  # LISTENing before the first claim: no wake-up falls between
            self.running.set()
            log.info(
                "events worker %s serving %s with concurrency %d",
                self.owner,
                ", ".join(sorted(self._handlers)),
                self._options.concurrency,
            )
            conn = self._dispatch(conn)
        finally:
            self._stop.set()
            if waker is not None:
                waker.stop()
            self._shutdown(conn, pool)
            self.running.clear()

    # -- wake-ups --------------------------------------------------------------------------

    def _on_wake(self, channel: str, payload: str) -> None:
        if channel == self._target.source_channel:
            with self._lock:
                if payload and len(self._notified) < MAX_NOTIFIED:
                    self._notified.append(payload)
                else:
                    self._mirror_due = True
        self._signal.set()

    def _on_gap(self) -> None:
        self._mirror_due = True
        self._signal.set()

    # -- the dispatcher ----------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        conn = connect(self._resolved)
        schema.ensure(conn)
        conn.execute(_sql.WORKER_SESSION)
        return conn

    def _register(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            conn.execute(_sql.WORKERS_PRUNE)
            conn.execute(
                _sql.WORKER_REGISTER,
                (
                    self.owner,
                    self._target.source,
                    sorted(self._handlers),
                    socket.gethostname(),
                    os.getpid(),
                ),
            )

    def _dispatch(self, conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
        backoff = Backoff(initial=0.1, maximum=5.0)
        next_beat = time.monotonic() + self._options.lease / 3
        next_poll = time.monotonic() + self._options.poll_interval
        every = self._options.poll_interval
        catch_up_every = max(every, CATCH_UP) if self._options.listen else every
        next_catch_up = time.monotonic() + catch_up_every
        while not self._stop.is_set():
            self._signal.clear()
            try:
                self._flush(conn)
                now = time.monotonic()
                if now >= next_beat:
                    self._heartbeat(conn)
                    next_beat = now + self._options.lease / 3
                if now >= next_poll:
                    next_poll = now + every
                if now >= next_catch_up:
                    self._mirror_due = True
                    next_catch_up = now + catch_up_every
                self._mirror(conn)
                more = self._claim(conn)
                backoff.reset()
            except psycopg.OperationalError as exc:
                delay = backoff.next()
                log.warning(
                    "events worker lost its connection (%s); retrying in %.1f s", exc, delay
                )
                conn.close()
                self._stop.wait(delay)
                try:
                    conn = self._connect()
                    self._register(conn)
                except Exception as again:  # the server is still away: try again later
                    log.warning("events worker cannot reconnect yet: %s", again)
                continue
            if more:
                continue
            with self._lock:
                busy = self._inflight > 0
            timeout = 0.01 if busy else max(0.0, next_poll - time.monotonic())
            self._signal.wait(min(timeout, self._options.lease / 3))
        return conn

    def _mirror(self, conn: psycopg.Connection[Any]) -> None:
        """Copy new rows of the user's table into pgtide.events (bring your own table)."""
        target = self._target
        if target.mirror is None or target.mirror_one is None:
            return
        with self._lock:
            full, self._mirror_due = self._mirror_due, False
            ids, self._notified = self._notified, []
        try:
            if full:
                conn.execute(target.mirror, {"source": target.source})
                return
            for id_ in dict.fromkeys(ids):
                try:
                    conn.execute(target.mirror_one, {"source": target.source, "id": id_})
                except psycopg.DataError:  # not an id of that table: a wake-up all the same
                    log.debug("notified payload %r is not an id; scanning the table", id_)
                    self._mirror_due = True
        except BaseException:
            with self._lock:  # not mirrored yet: scan the whole table next time
                self._mirror_due = True
            raise

    def _claim(self, conn: psycopg.Connection[Any]) -> bool:
        """Claim what fits; True when the batch came back full (more may be waiting)."""
        with self._lock:
            inflight = self._inflight
        if inflight > self._low_water:
            return False
        asked = min(self._max_inflight - inflight, self._options.batch_size)
        rows = conn.execute(
            _sql.CLAIM,
            {
                "source": self._target.source,
                "names": list(self._handlers),
                "limit": asked,
                "owner": self.owner,
                "lease": self._options.lease,
            },
        ).fetchall()
        if not rows:
            return False
        rows.sort(key=lambda r: r[0])
        with self._lock:
            self._inflight += len(rows)
        for id_, name, payload, attempt, created_at, key, source_id in rows:
            self._queue.put(Event(id_, name, payload, attempt, created_at, key, source_id))
        return len(rows) == asked

    def _flush(self, conn: psycopg.Connection[Any]) -> None:
        with self._lock:
            done, self._done = self._done, []
            failed, self._failed = self._failed, []
        if not done and not failed:
            return
        try:
            with conn.transaction():
                if done:
                    conn.execute(
                        _sql.COMPLETE,
                        {
                            "ids": [e.id for e, _ in done],
                            "attempts": [e.attempt for e, _ in done],
                            "results": [r for _, r in done],
                            "owner": self.owner,
                        },
                    )
                for event, error, delay, dead in failed:
                    conn.execute(
                        _sql.FAIL,
                        {
                            "state": "dead" if dead else "failed",
                            "error": error,
                            "delay": delay,
                            "id": event.id,
                            "attempt": event.attempt,
                            "owner": self.owner,
                        },
                    )
        except BaseException:
            with self._lock:  # keep them for the next flush
                self._done[:0] = done
                self._failed[:0] = failed
            raise

    def _heartbeat(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            conn.execute(_sql.HEARTBEAT, {"owner": self.owner, "lease": self._options.lease})
            conn.execute(_sql.WORKER_SEEN, (self.owner,))

    def _shutdown(self, conn: psycopg.Connection[Any], pool: list[threading.Thread]) -> None:
        """Release unstarted events, let running handlers finish (bounded), record outcomes."""
        while True:
            try:
                event = self._queue.get_nowait()
            except queue.Empty:
                break
            if event is not None:
                with self._lock:
                    self._unstarted.append(event.id)
                    self._inflight -= 1
        for _ in pool:
            self._queue.put(None)
        deadline = time.monotonic() + self._options.stop_timeout
        next_beat = time.monotonic() + self._options.lease / 3
        try:
            while any(t.is_alive() for t in pool) and time.monotonic() < deadline:
                self._release(conn)
                self._flush(conn)
                if time.monotonic() >= next_beat:
                    self._heartbeat(conn)
                    next_beat = time.monotonic() + self._options.lease / 3
                for thread in pool:
                    thread.join(0.02)
            self._release(conn)
            self._flush(conn)
            still = sum(t.is_alive() for t in pool)
            if still:
                log.warning(
                    "events worker %s stopped with %d handler(s) still running after %.1f s; "
                    "their events will run again when the lease expires",
                    self.owner,
                    still,
                    self._options.stop_timeout,
                )
            conn.execute(_sql.WORKER_FORGET, (self.owner,))
        except psycopg.Error as exc:
            log.warning("events worker %s could not record its last outcomes: %s", self.owner, exc)
        finally:
            conn.close()
        log.info("events worker %s stopped", self.owner)

    def _release(self, conn: psycopg.Connection[Any]) -> None:
        with self._lock:
            ids, self._unstarted = self._unstarted, []
        if ids:
            with conn.transaction():
                conn.execute(_sql.RELEASE, {"ids": ids, "owner": self.owner})
                conn.execute(_sql.WAKE, (_sql.CHANNEL,))

    # -- the pool --------------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            limit = self._limits.get(event.name)
            if not self._acquire(limit):
                with self._lock:
                    self._unstarted.append(event.id)
                    self._inflight -= 1
                continue
            try:
                self._handle(event)
            finally:
                if limit is not None:
                    limit.release()

    def _acquire(self, limit: threading.BoundedSemaphore | None) -> bool:
        """Wait for a handler's concurrency slot; False when stopping before it started."""
        while not self._stop.is_set():
            if limit is None or limit.acquire(timeout=0.05):
                return True
        return False

    def _handle(self, event: Event) -> None:
        spec = self._handlers[event.name]
        began = time.perf_counter()
        outcome = "done"
        try:
            if spec.is_async:
                coro = spec.fn(event)
                assert asyncio.iscoroutine(coro)
                result = self._run_async(_bounded(coro, spec.timeout))
            else:
                result = spec.fn(event)
                elapsed = time.perf_counter() - began
                if spec.timeout is not None and elapsed > spec.timeout:
                    raise TimeoutError(
                        f"handler {spec.name!r} ran {elapsed:.2f} s, over its {spec.timeout} s "
                        "timeout (a plain function cannot be interrupted; its result was dropped)"
                    )
            encoded = None if result is None else to_json(result, f"result of {spec.name!r}")
        except BaseException:  # even SystemExit or a stray cancellation: a failed attempt
            error = traceback.format_exc()
            dead = event.attempt >= spec.max_attempts
            outcome = "dead" if dead else "failed"
            delay = retry_delay(
                event.attempt, self._options.retry_delay, self._options.max_retry_delay
            )
            self._record(event, outcome, began, failure=(error, delay, dead))
            return
        self._record(event, outcome, began, result=encoded)

    def _record(
        self,
        event: Event,
        outcome: str,
        began: float,
        *,
        result: str | None = None,
        failure: tuple[str, float, bool] | None = None,
    ) -> None:
        with self._lock:
            if failure is None:
                self._done.append((event, result))
            else:
                self._failed.append((event, *failure))
            self._inflight -= 1
            if (
                failure is not None
                or self._inflight in (0, self._low_water)
                or len(self._done) >= self._flush_at
            ):
                self._signal.set()
        if log.isEnabledFor(logging.INFO):
            ms = (time.perf_counter() - began) * 1000
            level = logging.INFO if failure is None else logging.WARNING
            log.log(
                level,
                "event name=%s id=%d attempt=%d outcome=%s duration_ms=%.1f",
                event.name,
                event.id,
                event.attempt,
                outcome,
                ms,
                extra={
                    "event_name": event.name,
                    "event_id": event.id,
                    "attempt": event.attempt,
                    "outcome": outcome,
                    "duration_ms": ms,
                },
            )


async def _bounded(coro: Coroutine[Any, Any, Any], timeout: float | None) -> Any:
    if timeout is None:
        return await coro
    return await asyncio.wait_for(coro, timeout)
