"""The waker: sleep until a NOTIFY on some channels, a deadline, or a stop.

Features that read the database in a loop (the feed, event workers, ingest) are correct by
polling alone; a waker only shortens their waits. It runs one :class:`Receiver` connection
(no dispatcher thread, no queue): each notification is handed to an optional ``on_notify``
in the receiving thread, and sets the :class:`Signal` that the feature waits on, from a
thread or an asyncio task. After a reconnect it calls ``on_gap`` and wakes at once, since a
notification may have been missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from ..connect import Resolved
from ..errors import PgtideError
from ._queue import Batch, Marker
from ._receiver import Receiver, Settings
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

    def set(self) -> None:
        """Wake the waiter; safe from any thread."""
        self._event.set()
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

    async def wait_async(self, seconds: float | None) -> bool:
        """The asyncio twin of :meth:`wait` (the first task to call it binds its loop)."""
        loop = asyncio.get_running_loop()
        if self._aevent is None or self._loop is not loop:
            self._aevent = asyncio.Event()
            self._loop = loop
        if self._event.is_set():
            self._aevent.set()
        try:
            await asyncio.wait_for(self._aevent.wait(), seconds)
            woke = True
        except TimeoutError:
            woke = False
        self._aevent.clear()
        self._event.clear()
        return woke


class Waker:
    """Wakes a waiting loop when a NOTIFY arrives on ``channels``, or when :meth:`set` is called.

    :meth:`start` LISTENs (on its own connection, with pgtide's reconnect policy); if the
    server cannot be reached it logs why and the waiter simply polls. With no channels it
    opens no connection and is a plain signal with deadlines. ``wait``/``wait_async`` return
    True when woken, False when ``seconds`` passed.
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
    ) -> None:
        self._resolved = resolved
        self._channels = tuple(dict.fromkeys(channels))
        self._on_notify = on_notify
        self._on_gap = on_gap
        self._settings = Settings(application_name, probe_interval, probe_interval)
        self._receiver: Receiver | None = None
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

    def set(self) -> None:
        """Wake the waiter now (any thread)."""
        self.signal.set()

    def wait(self, seconds: float | None) -> bool:
        return self.signal.wait(seconds)

    async def wait_async(self, seconds: float | None) -> bool:
        return await self.signal.wait_async(seconds)

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


def _ignore(_note: Any) -> None:
    return None
