"""The blocking face of the listener: :class:`pgtide.Listener`.

Only how to wait is here (a dispatcher thread, threading events); everything else is the
core's (``_core``), shared with the asyncio face.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import select
import threading
from collections.abc import Awaitable, Hashable, Iterable, Iterator
from typing import Any, TypeVar

from .._lifecycle import Runnable
from .._signals import SIGNAL_CHECK, stop_on_signals
from ..channel import Callback, Notification, SocketCopy, WakePipe
from ._core import END, IN_DISPATCH, Change, Face

logger = logging.getLogger("pgtide.listen")

T = TypeVar("T")


class Listener(Face, Runnable):
    """Calls your functions on PostgreSQL NOTIFY, on any number of channels, over one connection.

    Use it as a context manager (``with pgtide.Listener() as listener:``), or call
    :meth:`start` / :meth:`close`, or :meth:`run_forever`. Callbacks receive a
    :class:`Notification` and run in one dispatcher thread, in server order; async callbacks
    run to completion on that thread's own event loop. Registrations may come from any thread,
    including from inside a callback, and take effect on the open connection. Nothing connects
    before :meth:`start`.

    ``dsn`` (keyword only): the database, as :func:`pgtide.connect.resolve` takes it; left
    out, pgtide resolves it (``PGTIDE_DSN``, ``DATABASE_URL``, ..., the embedded server).
    Passing it by position (``deprecated_dsn``) still works for one release, with a
    ``DeprecationWarning``.
    ``decode``: ``"json"`` (default), ``"text"``, ``"literal"`` or a function of the raw text.
    ``on_reconnect``: called with no arguments after the connection was lost and restored,
    once every active channel is LISTENed again (notifications may have been missed).
    ``queue_size`` / ``when_full``: the bound between receipt and callbacks and what happens
    when it is reached (``"block"``, ``"drop_oldest"``, ``"drop_newest"``).
    ``probe_interval`` / ``probe_timeout``: after so many idle seconds the connection is
    probed, and declared dead if the answer takes longer than ``probe_timeout``.
    """

    _name = "pgtide.Listener"

    def _prepare(self) -> None:
        self._lock = threading.Lock()
        self._dispatcher: threading.Thread | None = None
        self._leaving: threading.Thread | None = None  # closed from its own callback
        self._stopped = threading.Event()
        self._stopped.set()

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Connect, LISTEN on every active channel and dispatch in the background.

        Returns once the channels are LISTENed; raises :class:`pgtide.ConnectionFailed` if
        the database cannot be reached. Does nothing if already running.
        """
        with self._lock:
            if self._core.running:
                return
            self._core.open()
            self._stopped.clear()
            self._dispatcher = threading.Thread(
                target=self._dispatch, name="pgtide-listen-dispatch", daemon=True
            )
            self._dispatcher.start()

    def close(self) -> None:
        """Stop receiving and dispatching; waits for a callback that is running to return.

        Notifications still queued are discarded and open iterators end. Safe to call from a
        callback, and twice; the listener can :meth:`start` again. ``stop()`` is the same.
        """
        with self._lock:
            self._core.close()
            # a close() from a callback cannot wait for its own thread: the next close()
            # from elsewhere (run_forever's, say) does
            dispatcher = self._dispatcher or self._leaving
            self._dispatcher = self._leaving = None
            if dispatcher is threading.current_thread():
                self._leaving, dispatcher = dispatcher, None
        if dispatcher is not None:
            dispatcher.join(self._stop_timeout)
            if dispatcher.is_alive():
                logger.warning(
                    "a listener callback is still running after %g s; close() returns anyway",
                    self._stop_timeout,
                )
        self._core.end_pulls()
        self._stopped.set()

    stop = close

    def restart(self) -> None:
        """Close the connection and open a new one; LISTEN again on every active channel.

        Returns once the new connection listens (or after ``sync_timeout``, with a warning,
        while the server cannot be reached; it keeps trying). Notifications sent meanwhile
        may be missed, so ``on_reconnect`` is called, as after a lost connection, and
        ``status()["reconnects"]`` counts it. Queued notifications, subscribers and open
        iterators are kept. On a listener that is not running, the same as :meth:`start`.
        """
        if not self._core.running:
            self.start()
            return
        done = threading.Event()
        if self._core.restart(done.set) and not done.wait(self._core.sync_timeout):
            self._core.restart_late()

    def run_forever(self) -> None:
        """Start if needed, then block until :meth:`close` is called, Ctrl-C is pressed, or
        (in the main thread) SIGTERM arrives; then close, and return normally."""
        self.start()
        signalled = False

        def on_signal() -> None:  # in a signal handler: only a flag, no lock
            nonlocal signalled
            signalled = True

        with stop_on_signals(on_signal, "pgtide listener"):
            try:
                while not self._stopped.wait(SIGNAL_CHECK) and not signalled:
                    pass
            except KeyboardInterrupt:
                pass
        self.close()

    def _dispatch(self) -> None:
        IN_DISPATCH.set(True)
        core = self._core
        items = core.queue
        loop: asyncio.AbstractEventLoop | None = None
        wake = WakePipe()
        copy = SocketCopy()
        items.set_wakeup(wake.wake)
        try:
            while not core.closing:
                item = core.next_item(copy)
                if isinstance(item, bool):  # nothing yet: wait (on the socket too, if True)
                    if items.closed:
                        break
                    _sleep(wake, copy.fd if item else -1)
                    continue
                for awaitable, sub, note in core.deliver(item):
                    if loop is None:
                        loop = asyncio.new_event_loop()
                    try:
                        loop.run_until_complete(_await(awaitable))
                    except Exception as exc:
                        core.failed(sub, note, exc)
        finally:
            items.set_wakeup(None)
            wake.close()
            copy.close()
            if loop is not None:
                loop.close()

    def _settle(self, change: Change[T]) -> T:
        """Wait (up to ``sync_timeout``) until the server applied ``change``; its result."""
        done = threading.Event()
        if self._core.must_wait(change, done.set) and not done.wait(self._core.sync_timeout):
            self._core.late()
        return change.result

    # -- registrations --------------------------------------------------------------------

    def subscribe(self, channel: str, callback: Callback, id: Hashable | None = None) -> Any:
        """Call ``callback(notification)`` for each NOTIFY on ``channel``; return the id.

        ``id`` defaults to a new integer; the same id may be used on several channels, and
        subscribing an id again on a channel replaces its callback. When the listener is
        running, this returns once the channel is LISTENed (from a callback it does not wait).
        """
        return self._settle(self._core.subscribe(channel, callback, id))

    def unsubscribe(self, id: Hashable, channel: str | None = None) -> bool:
        """Remove subscriber ``id`` from ``channel`` (from every channel when None).

        Returns whether anything was removed. A channel left without subscribers is UNLISTENed.
        """
        return self._settle(self._core.unsubscribe(id, channel))

    def add_channel(self, *channels: str | Iterable[str]) -> None:
        """LISTEN on ``channels`` (names, or iterables of names) even without a subscriber.

        Their notifications are counted (``status()["without_subscriber"]``) and reach
        :meth:`iter`; subscribers may come later. The channel stays until
        :meth:`remove_channel`, even when its last subscriber leaves.
        """
        return self._settle(self._core.add_channel(channels))

    def remove_channel(
        self, channel: str | Iterable[str] | None = None, *channels: str | Iterable[str]
    ) -> bool:
        """Remove ``channels`` (every channel when none is given) with all their subscribers
        and mute states; UNLISTEN them. Returns whether any of them was known."""
        return self._settle(self._core.remove_channel((channel, *channels)))

    def mute(
        self, channel: str | Iterable[str] | None = None, *channels: str | Iterable[str]
    ) -> None:
        """Stop delivering ``channels`` (every channel when none is given): UNLISTEN;
        subscribers keep their own mute states."""
        return self._settle(self._core.mute((channel, *channels)))

    def unmute(
        self, channel: str | Iterable[str] | None = None, *channels: str | Iterable[str]
    ) -> None:
        """Deliver ``channels`` again (every muted channel when none is given): LISTEN, if
        they have a subscriber that is not muted or were added."""
        return self._settle(self._core.unmute((channel, *channels)))

    def mute_subscriber(self, id: Hashable, channel: str | None = None) -> None:
        """Stop calling subscriber ``id`` on ``channel`` (every channel when None).

        Raises :class:`pgtide.UnknownSubscriber` if it is not subscribed there.
        """
        return self._settle(self._core.mute_subscriber(id, channel))

    def unmute_subscriber(self, id: Hashable, channel: str | None = None) -> None:
        """Call subscriber ``id`` again on ``channel`` (every channel when None)."""
        return self._settle(self._core.unmute_subscriber(id, channel))

    def iter(self, channel: str, timeout: float | None = None) -> NotificationIterator:
        """Iterate over the notifications of ``channel`` (pull style, beside the callbacks).

        Subscribes now (starting the listener if needed); iteration ends when no notification
        came for ``timeout`` seconds (never when None), when the listener closes, or on
        the iterator's ``close()``. Use it in a ``with`` block or a ``for`` loop that runs to
        its end.
        """
        self.start()
        return NotificationIterator(self, channel, timeout)


class NotificationIterator(Iterator[Notification]):
    """The iterator returned by :meth:`Listener.iter`; unsubscribes when it ends."""

    def __init__(self, listener: Listener, channel: str, timeout: float | None) -> None:
        self._items: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pull = listener._core.pull(channel, timeout, self._items.put)
        listener._settle(self._pull.subscribe())

    def __next__(self) -> Notification:
        note = self._pull.take(None if self._pull.state == "closed" else self._get())
        if note is None:
            raise StopIteration
        return note

    def _get(self) -> Any:
        try:
            return self._items.get(timeout=self._pull.timeout)
        except queue.Empty:
            return END

    def __del__(self) -> None:
        # an iterator dropped before its end stops collecting (unsubscribing never blocks)
        with contextlib.suppress(Exception):
            self.close()

    def close(self) -> None:
        """Unsubscribe; the iteration ends."""
        self._pull.close()

    def __enter__(self) -> NotificationIterator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _sleep(wake: WakePipe, socket: int) -> None:
    """Wait until ``wake`` is woken (something was queued, or the listener closes) or, when
    it is not -1, until ``socket`` is readable."""
    poller = select.poll()
    poller.register(wake.fd, select.POLLIN)
    if socket >= 0:
        poller.register(socket, select.POLLIN)
    poller.poll()
    wake.clear()
