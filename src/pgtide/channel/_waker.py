"""The waker: sleep until a NOTIFY on some channels, a deadline, or a stop.

Features that read the database in a loop (the feed, event workers, ingest) are correct by
polling alone; a waker only shortens their waits. It runs one :class:`Receiver` connection
(no dispatcher thread, no queue): each notification is handed to an optional ``on_notify``
in the receiving thread, and sets the :class:`Signal` that the feature waits on, from a
thread or an asyncio task. After a reconnect it calls ``on_gap`` and wakes at once, since a
notification may have been missed.

A waker made with ``direct=True`` serves one waiter that waits often (an event worker's
dispatcher, a thread or a task): while it waits, it reads the socket itself (the receiver's
direct lane, :meth:`Receiver.take_now`), so a NOTIFY wakes it at once, with no hand-off from
the connection thread (one wake-up between a notification and the waiter, not two).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import select
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..connect import POOLER_KEY, Resolved, pooled
from ..errors import PgtideError
from ._queue import Batch, Marker
from ._receiver import Receiver, Settings, SocketCopy, WakePipe, watch
from ._registry import Registry
from ._stats import Stats

log = logging.getLogger("pgtide.channel")

OnNotify = Callable[[str, str], bool]
"""``on_notify(channel, payload)``: return whether the notification should wake the waiter."""


class Signal:
    """A flag set from any thread and consumed by one waiter, a thread or an asyncio task."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._aevent: asyncio.Event | None = None
        self._pipe: WakePipe | None = None  # made by the first wait_or_readable
        self._polling = False  # a thread waits in wait_or_readable: set() writes the pipe

    def set(self) -> None:
        """Wake the waiter; safe from any thread."""
        self._event.set()
        if self._polling and (pipe := self._pipe) is not None:
            pipe.wake()
        loop, aevent = self._loop, self._aevent
        if loop is not None and aevent is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(aevent.set)

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float | None) -> bool:
        """Block until set or ``seconds`` pass (forever when None); True if set. Consumes it."""
        woke = self._event.wait(seconds)
        self._event.clear()
        return woke

    def wait_or_readable(
        self, fd: int | None, seconds: float | None, also: int | None = None
    ) -> bool:
        """Block until set, ``fd`` (or ``also``) is readable, or ``seconds`` pass (forever
        when None); whether ``also`` is readable. Consumes nothing: the caller reads ``fd``,
        then looks at the flag."""
        if (pipe := self._pipe) is None:
            pipe = self._pipe = WakePipe()
        self._polling = True  # before the look at the flag: a set() from now on writes
        try:
            if self._event.is_set():
                return False
            poller = select.poll()
            poller.register(pipe.fd, select.POLLIN)
            if fd is not None:
                poller.register(fd, select.POLLIN)
            if also is not None:
                poller.register(also, select.POLLIN)
            ready = poller.poll(None if seconds is None else math.ceil(max(0.0, seconds) * 1000))
            return also is not None and any(got == also for got, _ in ready)
        finally:
            self._polling = False
            pipe.clear()

    def close(self) -> None:
        """Release the pipe of :meth:`wait_or_readable` (when no thread waits there)."""
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            pipe.close()

    def _bound(self) -> asyncio.Event:
        """The asyncio flag of the running loop (the first task to wait binds its loop)."""
        loop = asyncio.get_running_loop()
        if self._aevent is None or self._loop is not loop:
            self._aevent = asyncio.Event()
            self._loop = loop
        return self._aevent

    async def wait_async(self, seconds: float | None) -> bool:
        """The asyncio twin of :meth:`wait` (the first task to call it binds its loop)."""
        aevent = self._bound()
        if self._event.is_set():
            aevent.set()
        try:
            await asyncio.wait_for(aevent.wait(), seconds)
            woke = True
        except TimeoutError:
            woke = False
        aevent.clear()
        self._event.clear()
        return woke

    async def wait_or_readable_async(
        self, fd: int | None, seconds: float | None, also: int | None = None
    ) -> tuple[bool, bool]:
        """The asyncio twin of :meth:`wait_or_readable`: (whether it could wait, whether
        ``also`` is readable); it cannot when the loop cannot watch ``fd`` (it did not wait)."""
        aevent = self._bound()
        if self._event.is_set():
            return True, False
        loop = asyncio.get_running_loop()
        if fd is not None and not watch(loop, fd, aevent.set):
            return False, False
        spoke: list[bool] = []

        def speaks() -> None:
            spoke.append(True)
            aevent.set()

        if also is not None and not watch(loop, also, speaks):
            also = None
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(aevent.wait(), seconds)
        finally:
            if fd is not None:
                loop.remove_reader(fd)
            if also is not None:
                loop.remove_reader(also)
            aevent.clear()  # the flag (_event) says whether it was set
        return True, bool(spoke)


class Waker:
    """Wakes a waiting loop when a NOTIFY arrives on ``channels``, or when :meth:`set` is called.

    :meth:`start` LISTENs (on its own connection, with pgtide's reconnect policy); if the
    server cannot be reached it logs why and the waiter simply polls. With no channels it
    opens no connection and is a plain signal with deadlines. ``wait``/``wait_async`` return
    True when woken, False when ``seconds`` passed. With ``direct``, :meth:`wait` reads the
    socket in the waiting thread or task (one only, and never while :meth:`stop` runs).
    """

    def __init__(
        self,
        resolved: Resolved | None,
        channels: Iterable[str] = (),
        *,
        on_notify: OnNotify | None = None,
        on_gap: Callable[[], None] | None = None,
        application_name: str = "pgtide-listen-wake",
        probe_interval: float = 5.0,
        direct: bool = False,
    ) -> None:
        self._resolved = resolved
        self._channels = tuple(dict.fromkeys(channels))
        self._on_notify = on_notify
        self._on_gap = on_gap
        self._settings = Settings(application_name, probe_interval, probe_interval)
        self._receiver: Receiver | None = None
        self._direct = direct
        self._copy = SocketCopy()  # the waiting thread's duplicate of the socket (direct)
        self.signal = Signal()
        self.stats = Stats()

    @property
    def listening(self) -> bool:
        """True while a connection LISTENs for this waker (False: the waiter polls)."""
        return self._receiver is not None

    def start(self) -> bool:
        """LISTEN on the channels; return whether it could (a failure is logged, not raised)."""
        if self._receiver is not None or not self._channels:
            return self._receiver is not None
        if pooled():  # a transaction pooler would hand the LISTEN's session to others
            log.info("wake-ups off behind a transaction pooler (%s); polling", POOLER_KEY)
            return False
        if self._resolved is None:
            raise PgtideError("a waker with channels needs a database to LISTEN on")
        registry = Registry()
        for channel in self._channels:
            registry.subscribe(channel, _ignore, None)
        receiver = Receiver(self._resolved, registry, self, self.stats, self._settings)
        try:
            receiver.start()
        except (PgtideError, OSError) as exc:
            log.warning("wake-up unavailable (%s); polling instead", exc)
            return False
        self._receiver = receiver
        self.signal.set()  # something may have committed before LISTEN took effect
        return True

    def stop(self) -> None:
        """Stop listening (the waiter goes on polling if it waits again)."""
        receiver, self._receiver = self._receiver, None
        if receiver is not None:
            receiver.stop()
        self._copy.close()
        self.signal.close()

    def set(self) -> None:
        """Wake the waiter now (any thread)."""
        self.signal.set()

    def wait(self, seconds: float | None, also: int | None = None) -> bool:
        """Block until woken or ``seconds`` pass; direct, reading the socket meanwhile (once
        the connection thread reads it, on the flag alone). ``also``: the socket of the
        waiter's own connection, idle meanwhile, watched too: when the server speaks on it
        (it is closing it), the waiter wakes as after a gap."""
        deadline = None if seconds is None else time.monotonic() + seconds
        while self.read_now():
            left = None if deadline is None else deadline - time.monotonic()
            if self.signal.is_set() or (left is not None and left <= 0):
                break
            if self.signal.wait_or_readable(self._copy.fd, left, also):
                self._spoke()
        else:  # the connection thread reads the wake-ups (or none come): the flag, and also
            if also is not None:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if self.signal.wait_or_readable(None, left, also):
                    self._spoke()
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        return self.signal.wait(left)

    def read_now(self) -> bool:
        """Direct: read what the socket holds in this thread, without waiting, and act on it
        (``on_notify``, the flag); whether this thread may wait on the socket (False: the
        connection thread reads it meanwhile)."""
        receiver = self._receiver
        if not self._direct or receiver is None:
            return False
        while not isinstance(got := receiver.take_now(_DIRECT, self._copy), bool):
            self.offer(got)
        return got  # True: nothing more to read, and the copy of the socket is ready

    def _spoke(self) -> None:
        """The waiter's own connection is readable while it waits: the server is closing it
        (a terminated backend, a restart), and what it held (a wake gate) is gone. Wake it as
        after a gap (``on_gap``): its next statement finds out, and its session reconnects."""
        self._gap()

    def _leave_socket(self) -> None:
        if (receiver := self._receiver) is not None:
            receiver.leave_socket()

    async def wait_async(self, seconds: float | None, also: int | None = None) -> bool:
        """The asyncio twin of :meth:`wait` (direct: the sockets are watched by the loop)."""
        deadline = None if seconds is None else time.monotonic() + seconds
        while self.read_now():
            left = None if deadline is None else deadline - time.monotonic()
            if self.signal.is_set() or (left is not None and left <= 0):
                break
            waited, spoke = await self.signal.wait_or_readable_async(self._copy.fd, left, also)
            if not waited:
                self._leave_socket()
                break
            if spoke:
                self._spoke()
        else:  # the connection thread reads the wake-ups (or none come): the flag, and also
            if also is not None:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                _, spoke = await self.signal.wait_or_readable_async(None, left, also)
                if spoke:
                    self._spoke()
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        return await self.signal.wait_async(left)

    # -- the receiver's sink ----------------------------------------------------------------

    def offer(self, batch: Batch) -> Batch | None:
        _received_at, enc, notes = batch
        on_notify = self._on_notify
        if on_notify is None:
            wake = True
        else:
            wake = False
            for note in notes:
                try:
                    wake = bool(on_notify(note.relname.decode(enc), note.extra.decode(enc))) or wake
                except Exception:  # a wake-up hook must never stop the receiver
                    log.exception("wake-up hook failed; waking anyway")
                    wake = True
        if wake:
            self.signal.set()
        return None

    def put_marker(self, marker: Marker) -> None:
        self._gap()

    def _gap(self) -> None:
        if self._on_gap is not None:
            try:
                self._on_gap()
            except Exception:
                log.exception("wake-up gap hook failed")
        self.signal.set()

    def set_on_room(self, on_room: Callable[[], None] | None) -> None:
        return None  # a waker never fills up

    def __repr__(self) -> str:
        state = "listening" if self.listening else "polling"
        return f"<pgtide Waker {state} channels={list(self._channels)!r}>"


class _Direct:
    """The lane of a direct waker (:meth:`Receiver.take_now`): it queues nothing."""

    when_full = "block"

    @staticmethod
    def empty() -> bool:
        return True


_DIRECT = _Direct()


def _ignore(_note: Any) -> None:
    return None
