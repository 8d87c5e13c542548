"""The connection thread: one connection, live LISTEN/UNLISTEN, reading, probing, reconnecting.

The thread owns its connection and drives libpq without blocking: it waits (poll) on the
socket and on a wake-up pipe, so registrations from other threads are applied at once on the
open connection, and ``stop()`` is prompt. LISTEN/UNLISTEN and the liveness probe are sent as
asynchronous queries whose results are read in the same loop as the notifications, so no
notification on another channel waits or is lost while a channel is added or removed.

A dead connection is noticed at once when the server closes it (restart,
``pg_terminate_backend``), and within seconds when the network silently drops it (TCP
keepalives, plus a ``SELECT 1`` probe after ``probe_interval`` seconds without traffic that
must be answered within ``probe_timeout``). Then it reconnects (the loop, its backoff and its
log lines are :class:`pgtide.session.Reconnector`'s), LISTENs again on every active channel,
and queues the "reconnected" marker for ``on_reconnect``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
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

from ..connect import Resolved, connect
from ..errors import ConfigError
from ..session import Lost, Policy, Reconnector
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


class Lane(Protocol):
    """What a dispatcher that reads the socket itself (:meth:`Receiver.take_now`) drains:
    the listener's :class:`BatchQueue`, or a waker (which queues nothing)."""

    @property
    def when_full(self) -> str: ...

    def empty(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Settings:
    """How a receiver opens and watches its connection (checked when made).

    After ``probe_interval`` idle seconds the connection is probed, and declared dead when
    the answer takes longer than ``probe_timeout``.
    """

    application_name: str
    probe_interval: float = 5.0
    probe_timeout: float = 5.0

    def __post_init__(self) -> None:
        if not (self.probe_interval > 0 and self.probe_timeout > 0):
            raise ConfigError(
                "probe_interval and probe_timeout must be positive numbers of seconds"
            )

    def connect_kwargs(self, resolved: Resolved) -> dict[str, Any]:
        """libpq settings for ``resolved``: keepalives and a connect timeout unless it sets
        its own, and the application_name."""
        params = dict(resolved.params) or _conninfo.conninfo_to_dict(resolved.dsn)
        kwargs: dict[str, Any] = {k: v for k, v in KEEPALIVES.items() if k not in params}
        kwargs["application_name"] = self.application_name
        if "connect_timeout" not in params:
            kwargs["connect_timeout"] = 5
        return kwargs


class WakePipe:
    """Wakes a ``poll()`` from any thread: ``wake`` writes a byte, ``clear`` reads them all."""

    def __init__(self) -> None:
        self.fd, self._write = os.pipe()
        os.set_blocking(self.fd, False)
        os.set_blocking(self._write, False)

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # already awake (pipe full), or closed
            os.write(self._write, b"!")

    def clear(self) -> None:
        with contextlib.suppress(OSError):  # empty (BlockingIOError), or closed
            while os.read(self.fd, 4096):
                pass

    def close(self) -> None:
        fds, (self.fd, self._write) = (self.fd, self._write), (-1, -1)
        for fd in fds:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)


_CONNECTIONS = itertools.count(1)
"""Numbers the connections of every receiver in this process (never reused)."""


def watch(loop: asyncio.AbstractEventLoop, fd: int, callback: Callable[[], object]) -> bool:
    """Have ``loop`` call ``callback`` whenever ``fd`` is readable; False when this loop
    cannot watch a socket (such as Windows' proactor loop): its caller then leaves the
    socket to the receiving thread."""
    try:
        loop.add_reader(fd, callback)
    except (NotImplementedError, OSError, RuntimeError):
        return False
    return True


class SocketCopy:
    """A dispatcher's duplicate of the socket of the connection it reads (see
    :meth:`Receiver.take_now`): made once per connection rather than once per wait, and
    closed once that connection is gone, so the dispatcher may keep watching it between
    waits. It is the dispatcher's own file: its number is never another connection's.
    ``forget(fd)`` runs before the file is closed (to stop watching it); the dispatcher
    calls :meth:`close` when it ends.
    """

    __slots__ = ("_forget", "connection", "fd")

    def __init__(self, forget: Callable[[int], None] | None = None) -> None:
        self.fd = -1
        self.connection = 0
        self._forget = forget

    def close(self) -> None:
        fd, self.fd, self.connection = self.fd, -1, 0
        if fd >= 0:
            try:
                if self._forget is not None:
                    self._forget(fd)
            finally:
                os.close(fd)


@dataclass(slots=True)
class _Query:
    deadline: float
    version: int = -1
    target: frozenset[str] | None = None
    error: str | None = None


class Receiver:
    """Serves the LISTEN connection of one listener, kept open by a :class:`Reconnector`."""

    def __init__(
        self, resolved: Resolved, registry: Registry, queue: Sink, stats: Stats, settings: Settings
    ) -> None:
        self._registry = registry
        self._queue = queue
        self._stats = stats
        self._settings = settings
        self._open = functools.partial(connect, resolved, **settings.connect_kwargs(resolved))
        self._pipe = WakePipe()
        self._lock = threading.Lock()
        self._applied = -1
        self._waiters: list[tuple[int, Callable[[], None]]] = []
        self._outbox: deque[Item] = deque()  # what the full queue could not take yet
        # the direct lane (see take_now): libpq is used under _reading; _live is the
        # connection the dispatcher may read, _direct says that it does, _lane is the queue
        # of a dispatcher that reads (this thread then reads only while it waits)
        self._reading = threading.Lock()
        self._live: pq.abc.PGconn | None = None
        self._connection = 0  # which connection serve() uses (or used last): see SocketCopy
        self._direct = False
        self._lane: Lane | None = None
        self._read_at = 0.0  # when the dispatcher last read something (no probe needed)
        self._enc = "utf-8"
        queue.set_on_room(self.wake)
        policy = Policy(
            "listener",
            logger=logger,
            target=resolved.target,
            secrets=resolved.secrets,
            then="calls on_reconnect once it listens again",
        )
        self._keeper = Reconnector(self, policy, thread_name="pgtide-listen-conn", purpose="LISTEN")

    # -- control (any thread) -------------------------------------------------------------

    def start(self) -> None:
        """Start the thread; return once every active channel is LISTENed, or raise."""
        try:
            self._keeper.start()
        except Exception:  # the startup error: the thread has ended
            self._pipe.close()
            raise

    def stop(self, timeout: float = 5.0) -> None:
        if self._keeper.stop(timeout):
            self._pipe.close()

    def wake(self) -> None:
        self._pipe.wake()

    def when_applied(self, version: int, callback: Callable[[], None]) -> bool:
        """Call ``callback`` once the LISTEN set of ``version`` is on the server.

        Returns False (and never calls it) when there is nothing to wait for: already applied,
        or not connected (the set is applied on reconnection, and ``on_reconnect`` follows).
        """
        with self._lock:
            if self._applied >= version or not self._stats.connected or self._keeper.stopping:
                return False
            self._waiters.append((version, callback))
        self.wake()
        return True

    def restart(self, on_ready: Callable[[], None]) -> bool:
        """Close the connection and open a new one now (LISTEN again, then "reconnected").

        ``on_ready`` is called once a connection opened after this call LISTENs; returns
        False (and never calls it) when the receiver is not running.
        """
        return self._keeper.reconnect_now(on_ready)

    def _release(self, version: int | None) -> None:
        with self._lock:
            if version is not None:
                self._applied = max(self._applied, version)
            due = [w for w in self._waiters if version is None or w[0] <= version]
            self._waiters = [w for w in self._waiters if w not in due]
        for _, callback in due:
            callback()

    # -- what the Reconnector calls, in the thread -------------------------------------------

    def open(self) -> psycopg.Connection[Any]:
        return self._open()

    def close(self, conn: psycopg.Connection[Any]) -> None:
        self._disconnected()
        conn.close()

    def failed(self, reason: str) -> None:
        self._stats.last_error = reason

    def resumed(self) -> str:
        self._stats.counts["reconnects"] += 1
        channels = len(self._stats.listening)
        self._outbox.append(RECONNECTED)
        self._flush_outbox()
        return f"listens again on {channels} channel{'' if channels == 1 else 's'}"

    def pause(self, seconds: float) -> None:
        """Wait ``seconds`` or until woken, handing over what the queue can take meanwhile."""
        poller = select.poll()
        poller.register(self._pipe.fd, select.POLLIN)
        if poller.poll(math.ceil(seconds * 1000)):
            self._pipe.clear()
        self._flush_outbox()

    def _disconnected(self) -> None:
        self._stats.backend_pid = None
        self._stats.listening = frozenset()
        self._release(None)

    def serve(self, conn: psycopg.Connection[Any]) -> None:
        """LISTEN and read until the connection is lost (raise) or stop/restart asks (return)."""
        pg = conn.pgconn
        enc = conn.info.encoding
        fd = pg.socket
        poller = select.poll()
        poller.register(fd, _POLLIN)
        poller.register(self._pipe.fd, select.POLLIN)
        self._stats.backend_pid = pg.backend_pid
        listening: frozenset[str] = frozenset()
        with self._lock:
            self._applied = -1
        keeper = self._keeper
        pending = self._send_sync(conn, listening)
        reported = pending is None
        if reported:
            keeper.ready()
        last_io = time.monotonic()
        reading = True
        self._enc = enc
        lock = self._reading
        lock.acquire()
        self._connection = next(_CONNECTIONS)
        try:
            while not keeper.stopping:
                if self._outbox:
                    self._flush_outbox()
                if not self._outbox:
                    self._drain(pg, enc)
                paused = bool(self._outbox)  # the queue is full: leave the rest to the server
                lane = self._lane  # the dispatcher reads the socket, or will once it is done
                direct = lane is not None and (self._direct or not lane.empty())
                if reading != ((not paused and not direct) or pending is not None):
                    reading = not reading
                    poller.modify(fd, _POLLIN if reading else 0)
                now = time.monotonic()
                last_io = max(last_io, self._read_at)
                if pending is not None:
                    deadline = pending.deadline
                elif paused:
                    deadline = now + 1.0  # no probe while paused; the dispatcher wakes us
                else:
                    deadline = last_io + self._settings.probe_interval
                self._live = pg if pending is None and not self._outbox else None
                lock.release()
                try:
                    events = poller.poll(max(0, math.ceil((deadline - now) * 1000)))
                finally:
                    lock.acquire()
                self._live = None
                readable = False
                for efd, _ in events:
                    if efd == fd:
                        readable = True
                    else:
                        self._pipe.clear()
                if keeper.stopping or keeper.due:
                    return
                if readable:
                    pg.consume_input()
                    if pg.status != pq.ConnStatus.OK:
                        raise Lost("the server closed the connection")
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
                                keeper.ready()
                        pending = None
                now = time.monotonic()
                if pending is not None and now >= pending.deadline:
                    raise Lost(
                        f"no answer from the server within {self._settings.probe_timeout:g} s"
                    )
                if pending is None:
                    pending = self._send_sync(conn, listening)
                    if (
                        pending is None
                        and not paused
                        and now - last_io >= self._settings.probe_interval
                    ):
                        pending = self._send(
                            pg, fd, PROBE_SQL, _Query(now + self._settings.probe_timeout)
                        )
        finally:
            self._live = None
            self._direct = False
            lock.release()

    def take_now(self, queue: Lane, copy: SocketCopy) -> Batch | bool:
        """The direct lane: what the socket holds, read by the dispatcher itself.

        The dispatcher of ``queue`` calls it whenever the queue is empty, so that under a
        steady stream it reads and delivers in one thread, as a plain driver loop does,
        instead of this thread handing every batch over (two threads taking turns on the
        GIL). While it does, and while anything is queued, this thread leaves the socket to
        it. When there is nothing to read, it returns True: wait on ``copy.fd`` besides the
        queue (then one wake-up, the dispatcher's, stands between a notification and its
        callback, as in a driver loop). ``copy`` is the dispatcher's duplicate of this
        connection's socket, made here under the lock (so it is this connection's socket even
        when this thread closes the connection meanwhile, which makes it readable) once per
        connection, and closed here once that connection is gone. It returns False, and this
        thread reads again, when it is busy with the connection (a LISTEN or a probe in
        flight, a reconnect), the connection is failing, or something was queued meanwhile
        (it goes first): wait on the queue alone. The drop policies are left to this thread
        (they need it reading while a callback is slow). Never blocks; called in the
        dispatcher's thread only.
        """
        if queue.when_full != "block":
            return False
        self._lane = queue
        if self._reading.acquire(blocking=False):
            try:
                if copy.connection != self._connection:
                    copy.close()  # a connection that is gone (closing it is ours to do)
                pg = self._live
                if pg is not None and queue.empty():
                    try:
                        pg.consume_input()
                        notes = self._read(pg)
                        fd = pg.socket
                    except psycopg.Error:  # failing: this thread notices (below)
                        pass
                    else:
                        if not self._direct:  # this thread stops reading now, not at its
                            self._direct = True  # next wake-up (till then both would wake)
                            self._pipe.wake()
                        if not notes:
                            if copy.fd < 0:
                                copy.fd, copy.connection = os.dup(fd), self._connection
                            return True
                        self._read_at = time.monotonic()
                        self._stats.counts["received"] += len(notes)
                        return datetime.now(UTC), self._enc, notes
            finally:
                self._reading.release()
        self.leave_socket()
        return False

    def leave_socket(self) -> None:
        """The dispatcher stops reading and waiting on the socket: this thread reads again."""
        self._direct = False
        self.wake()

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
        query = _Query(time.monotonic() + self._settings.probe_timeout, version, desired)
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
                raise Lost("cannot send to the server")
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

    @staticmethod
    def _read(pg: pq.abc.PGconn) -> list[Any]:
        """Every notification libpq has parsed, and what the socket holds meanwhile (read
        without waiting) while more keep coming, up to ``BATCH``."""
        notes: list[Any] = []
        more = notes.extend
        parsed = pg.notifies
        while True:
            before = len(notes)
            more(iter(parsed, None))  # every parsed notification, without a Python loop
            if len(notes) == before or len(notes) >= BATCH:
                return notes
            try:
                pg.consume_input()
            except psycopg.Error:
                return notes  # the connection is failing: hand over what was read

    def _drain(self, pg: pq.abc.PGconn, enc: str) -> None:
        """Move every notification libpq has parsed into the queue, as one batch.

        While notifications keep coming, it reads what the socket holds meanwhile (without
        waiting) into the same batch, up to ``BATCH``: fewer, larger hand-offs to the
        dispatcher under load, and nothing more than one non-blocking read when idle.
        """
        notes = self._read(pg)
        if not notes:
            return
        self._stats.counts["received"] += len(notes)
        rest = self._queue.offer((datetime.now(UTC), enc, notes))
        if rest is not None:
            self._outbox.append(rest)
