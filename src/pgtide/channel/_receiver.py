"""The connection thread: one connection, live LISTEN/UNLISTEN, reading, probing, reconnecting.

The thread owns its connection and drives libpq without blocking: it waits (poll) on the
socket and on a wake-up pipe, so registrations from other threads are applied at once on the
open connection, and ``stop()`` is prompt. LISTEN/UNLISTEN and the liveness probe are sent as
asynchronous queries whose results are read in the same loop as the notifications, so no
notification on another channel waits or is lost while a channel is added or removed.

A dead connection is noticed at once when the server closes it (restart,
``pg_terminate_backend``), and within seconds when the network silently drops it (TCP
keepalives, plus a ``SELECT 1`` probe after ``probe_interval`` seconds without traffic that
must be answered within ``probe_timeout``). Then it reconnects with jittered backoff, LISTENs
again on every active channel, and queues the "reconnected" marker for ``on_reconnect``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import psycopg
from psycopg import conninfo as _conninfo
from psycopg import pq, sql

from ..connect import Backoff, Resolved, connect
from ..errors import PgtideError
from ._queue import RECONNECTED, Batch, Item, Marker
from ._registry import Registry
from ._stats import Stats

logger = logging.getLogger("pgtide.channel")

KEEPALIVES = {
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "3",
    "tcp_user_timeout": "10000",
}
"""libpq settings that make a silently dropped TCP connection fail within seconds."""

PROBE_SQL = b"SELECT 1"
BATCH = 4096
"""At most so many notifications are read into one batch before it is handed over."""
_POLLIN = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP


class Sink(Protocol):
    """Where the receiver hands what it reads: a listener's queue, or a waker."""

    def offer(self, batch: Batch) -> Batch | None: ...

    def put_marker(self, marker: Marker) -> None: ...

    def set_on_room(self, on_room: Callable[[], None] | None) -> None: ...


class _Dead(Exception):
    """The connection is gone or unresponsive."""


class _Restart(Exception):
    """``restart()`` asked for a new connection."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(".") if text else type(exc).__name__


@dataclass(slots=True)
class _Query:
    deadline: float
    version: int = -1
    target: frozenset[str] | None = None
    error: str | None = None


class Receiver:
    """Runs the connection thread of one listener."""

    def __init__(
        self,
        resolved: Resolved,
        registry: Registry,
        queue: Sink,
        stats: Stats,
        *,
        application_name: str,
        probe_interval: float,
        probe_timeout: float,
    ) -> None:
        self._resolved = resolved
        self._registry = registry
        self._queue = queue
        self._stats = stats
        self._probe_interval = probe_interval
        self._probe_timeout = probe_timeout
        self._connect_kwargs = self._kwargs(resolved, application_name)
        self._backoff = Backoff()
        self._stopping = False
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._lock = threading.Lock()
        self._applied = -1
        self._waiters: list[tuple[int, Callable[[], None]]] = []
        self._outbox: deque[Item] = deque()  # what the full queue could not take yet
        self._generation = 0  # connections opened so far
        self._restart = False
        self._restarted: list[tuple[int, Callable[[], None]]] = []
        queue.set_on_room(self.wake)
        self._thread = threading.Thread(target=self._run, name="pgtide-listen-conn", daemon=True)

    @staticmethod
    def _kwargs(resolved: Resolved, application_name: str) -> dict[str, Any]:
        params = dict(resolved.params) or _conninfo.conninfo_to_dict(resolved.dsn)
        kwargs: dict[str, Any] = {k: v for k, v in KEEPALIVES.items() if k not in params}
        kwargs["application_name"] = application_name
        if "connect_timeout" not in params:
            kwargs["connect_timeout"] = 5
        return kwargs

    # -- control (any thread) -------------------------------------------------------------

    def start(self) -> None:
        """Start the thread; return once every active channel is LISTENed, or raise."""
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            self._close_pipe()
            raise self._startup_error

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        self.wake()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self._close_pipe()

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # already awake (pipe full), or closed
            os.write(self._wake_w, b"!")

    def when_applied(self, version: int, callback: Callable[[], None]) -> bool:
        """Call ``callback`` once the LISTEN set of ``version`` is on the server.

        Returns False (and never calls it) when there is nothing to wait for: already applied,
        or not connected (the set is applied on reconnection, and ``on_reconnect`` follows).
        """
        with self._lock:
            if self._applied >= version or not self._stats.connected or self._stopping:
                return False
            self._waiters.append((version, callback))
        self.wake()
        return True

    def restart(self, on_ready: Callable[[], None]) -> bool:
        """Close the connection and open a new one now (LISTEN again, then "reconnected").

        ``on_ready`` is called once a connection opened after this call LISTENs; returns
        False (and never calls it) when the receiver is not running.
        """
        with self._lock:
            if self._stopping or not self._thread.is_alive():
                return False
            self._restart = True
            self._restarted.append((self._generation, on_ready))
        self.wake()
        return True

    def _restarts_done(self, generation: int | None) -> None:
        """Call the restart waiters that a connection of ``generation`` satisfies (all: None)."""
        with self._lock:
            due = [w for w in self._restarted if generation is None or w[0] < generation]
            self._restarted = [w for w in self._restarted if w not in due]
        for _, callback in due:
            callback()

    def _release(self, version: int | None) -> None:
        with self._lock:
            if version is not None:
                self._applied = max(self._applied, version)
            due = [w for w in self._waiters if version is None or w[0] <= version]
            self._waiters = [w for w in self._waiters if w not in due]
        for _, callback in due:
            callback()

    def _close_pipe(self) -> None:
        fds, (self._wake_r, self._wake_w) = (self._wake_r, self._wake_w), (-1, -1)
        for fd in fds:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    # -- the thread -----------------------------------------------------------------------

    def _run(self) -> None:
        first = True
        delay = 0.0
        failures = 0
        said = ""  # the reason last logged as a warning, so that an outage is not a flood
        lost_at = 0.0
        try:
            while not self._stopping:
                if delay and self._sleep(delay):
                    break
                with self._lock:
                    self._generation += 1
                    self._restart = False
                try:
                    conn = connect(self._resolved, **self._connect_kwargs)
                except (PgtideError, psycopg.Error) as exc:
                    if first:
                        self._startup_error = exc
                        return
                    self._stats.last_error = str(exc)
                    failures += 1
                    delay = self._backoff.next()
                    reason = self._reason(exc)
                    if reason != said:  # the first failure, or a new reason: say it whole
                        said = reason
                        logger.warning(
                            "The listener cannot reconnect to %s yet (%s); it tries again in "
                            "%.1f s, and keeps trying with a growing delay.",
                            self._resolved.target,
                            reason,
                            delay,
                        )
                    else:
                        logger.info(
                            "The listener still cannot reconnect (attempt %d failed the same "
                            "way); next attempt in %.1f s.",
                            failures,
                            delay,
                        )
                    continue
                try:
                    self._serve(conn, first, lost_at, failures)
                except _Restart:
                    logger.info("The listener reopens its connection, as restart() asked.")
                    delay = 0.0
                except (_Dead, psycopg.Error, OSError) as exc:
                    reason = _first_line(exc)
                    self._stats.last_error = reason
                    if not self._ready.is_set():
                        self._startup_error = PgtideError(f"listener could not LISTEN: {reason}")
                        return
                    if not self._stopping:
                        logger.warning(
                            "The listener lost its connection to %s (%s); it reconnects with "
                            "backoff and calls on_reconnect once it listens again.",
                            self._resolved.target,
                            reason,
                        )
                    delay = self._backoff.next()
                finally:
                    self._disconnected()
                    conn.close()
                first = False
                failures, said, lost_at = 0, "", time.monotonic()
        finally:
            self._ready.set()
            self._release(None)
            self._restarts_done(None)

    def _reason(self, exc: BaseException) -> str:
        """Why a connection attempt failed, in one line, without the advice or a password."""
        cause = exc.__context__ if isinstance(exc.__context__, psycopg.Error) else exc
        reason = _first_line(cause)
        for secret in self._resolved.secrets:
            if secret:
                reason = reason.replace(secret, "***")
        return reason

    def _sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` or until woken; True if the listener is stopping."""
        deadline = time.monotonic() + seconds
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        while not self._stopping and not self._restart:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if poller.poll(math.ceil(left * 1000)):
                self._clear_wake()
            self._flush_outbox()
        return self._stopping

    def _clear_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _disconnected(self) -> None:
        self._stats.connected = False
        self._stats.backend_pid = None
        self._stats.listening = frozenset()
        self._release(None)

    def _serve(
        self, conn: psycopg.Connection[Any], first: bool, lost_at: float, failures: int
    ) -> None:
        pg = conn.pgconn
        enc = conn.info.encoding
        fd = pg.socket
        poller = select.poll()
        poller.register(fd, _POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        self._stats.connected = True
        self._stats.backend_pid = pg.backend_pid
        listening: frozenset[str] = frozenset()
        with self._lock:
            self._applied = -1
        pending = self._send_sync(conn, listening)
        reported = pending is None
        if reported:
            self._became_ready(first, lost_at, failures)
        last_io = time.monotonic()
        reading = True
        while not self._stopping:
            if self._outbox:
                self._flush_outbox()
            if not self._outbox:
                self._drain(pg, enc)
            paused = bool(self._outbox)  # the queue is full: leave the rest to the server
            if reading != (not paused or pending is not None):
                reading = not reading
                poller.modify(fd, _POLLIN if reading else 0)
            now = time.monotonic()
            if pending is not None:
                deadline = pending.deadline
            elif paused:
                deadline = now + 1.0  # no probe while paused; the dispatcher wakes us
            else:
                deadline = last_io + self._probe_interval
            events = poller.poll(max(0, math.ceil((deadline - now) * 1000)))
            readable = False
            for efd, _ in events:
                if efd == fd:
                    readable = True
                else:
                    self._clear_wake()
            if self._stopping:
                return
            if self._restart:
                raise _Restart
            if readable:
                pg.consume_input()
                if pg.status != pq.ConnStatus.OK:
                    raise _Dead("the server closed the connection")
                last_io = time.monotonic()
                if not self._outbox:
                    self._drain(pg, enc)  # hand the batch over before anything else
                if pending is not None and self._collect(pg, pending, enc):
                    if pending.target is not None:
                        listening = pending.target
                        self._stats.listening = listening
                        if pending.error:
                            self._stats.last_error = pending.error
                            logger.error("LISTEN/UNLISTEN failed: %s", pending.error)
                        self._release(pending.version)
                        if not reported:
                            reported = True
                            self._became_ready(first, lost_at, failures)
                    pending = None
            now = time.monotonic()
            if pending is not None and now >= pending.deadline:
                raise _Dead(f"no answer from the server within {self._probe_timeout:g} s")
            if pending is None:
                pending = self._send_sync(conn, listening)
                if pending is None and not paused and now - last_io >= self._probe_interval:
                    pending = self._send(pg, fd, PROBE_SQL, _Query(now + self._probe_timeout))

    def _flush_outbox(self) -> None:
        """Hand what waits in the outbox to the queue, in order, as far as it takes it."""
        outbox = self._outbox
        while outbox:
            item = outbox.popleft()
            if isinstance(item, Marker):
                self._queue.put_marker(item)
                continue
            rest = self._queue.offer(item)
            if rest is not None:
                outbox.appendleft(rest)
                return

    def _became_ready(self, first: bool, lost_at: float, failures: int) -> None:
        self._backoff.reset()
        if first:
            self._ready.set()
            return
        self._stats.reconnects += 1
        channels = len(self._stats.listening)
        logger.info(
            "The listener reconnected after %.1f s%s and listens again on %d channel%s.",
            time.monotonic() - lost_at,
            f" ({failures + 1} attempts)" if failures else "",
            channels,
            "" if channels == 1 else "s",
        )
        self._outbox.append(RECONNECTED)
        self._flush_outbox()
        self._restarts_done(self._generation)

    def _send_sync(self, conn: psycopg.Connection[Any], listening: frozenset[str]) -> _Query | None:
        """Send the LISTEN/UNLISTEN that make the server match the registry, if any."""
        if self._registry.version == self._applied:
            return None  # the common case, checked without a lock
        version, desired = self._registry.active()
        with self._lock:
            applied = self._applied
        if version == applied:
            return None
        statements = [
            sql.SQL("UNLISTEN {}").format(sql.Identifier(ch)) for ch in listening - desired
        ] + [sql.SQL("LISTEN {}").format(sql.Identifier(ch)) for ch in desired - listening]
        query = _Query(time.monotonic() + self._probe_timeout, version, desired)
        if not statements:
            self._stats.listening = desired
            self._release(version)
            return None
        text = sql.SQL("; ").join(statements).as_bytes(conn)
        return self._send(conn.pgconn, conn.pgconn.socket, text, query)

    def _send(self, pg: pq.abc.PGconn, fd: int, text: bytes, query: _Query) -> _Query:
        pg.send_query(text)
        poller = select.poll()
        poller.register(fd, select.POLLOUT | _POLLIN)
        while pg.flush():
            left = query.deadline - time.monotonic()
            if left <= 0:
                raise _Dead("cannot send to the server")
            for _, event in poller.poll(math.ceil(left * 1000)):
                if event & _POLLIN:
                    pg.consume_input()
        return query

    @staticmethod
    def _collect(pg: pq.abc.PGconn, query: _Query, enc: str) -> bool:
        """Read the results of the query in flight; True once it is complete."""
        while not pg.is_busy():
            result = pg.get_result()
            if result is None:
                return True
            if result.status == pq.ExecStatus.FATAL_ERROR:
                query.error = (result.error_message or b"").decode(enc, "replace").strip()
        return False

    def _drain(self, pg: pq.abc.PGconn, enc: str) -> None:
        """Move every notification libpq has parsed into the queue, as one batch.

        While notifications keep coming, it reads what the socket holds meanwhile (without
        waiting) into the same batch, up to ``BATCH``: fewer, larger hand-offs to the
        dispatcher under load, and nothing more than one non-blocking read when idle.
        """
        n = pg.notifies()
        if n is None:
            return
        notes = [n]
        append = notes.append
        notifies = pg.notifies
        while True:
            while (n := notifies()) is not None:
                append(n)
            if len(notes) >= BATCH:
                break
            try:
                pg.consume_input()
            except psycopg.Error:
                break  # the connection is failing: hand over what was read; _serve notices
            if (n := notifies()) is None:
                break
            append(n)
        self._stats.received += len(notes)
        rest = self._queue.offer((datetime.now(UTC), enc, notes))
        if rest is not None:
            self._outbox.append(rest)
