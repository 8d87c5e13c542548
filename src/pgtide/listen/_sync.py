"""The blocking face of the listener: :class:`pgtide.Listener`."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import threading
import weakref
from collections.abc import Awaitable, Callable, Hashable, Iterator
from types import TracebackType
from typing import Any

from .. import codecs
from ..channel import Callback, Notification, WhenFull
from ..connect import Resolved
from ._core import APPLICATION_NAME, IN_DISPATCH, ListenerCore, iter_id

logger = logging.getLogger("pgtide.listen")

_END = object()


class Listener:
    """Calls your functions on PostgreSQL NOTIFY, on any number of channels, over one connection.

    Use it as a context manager (``with pgtide.Listener() as listener:``), or call
    :meth:`start` / :meth:`stop`, or :meth:`run_forever`. Callbacks receive a
    :class:`Notification` and run in one dispatcher thread, in server order; async callbacks
    run to completion on that thread's own event loop. Registrations may come from any thread,
    including from inside a callback, and take effect on the open connection.

    ``decode``: ``"json"`` (default), ``"text"``, ``"literal"`` or a function of the raw text.
    ``on_reconnect``: called with no arguments after the connection was lost and restored,
    once every active channel is LISTENed again (notifications may have been missed).
    ``queue_size`` / ``when_full``: the bound between receipt and callbacks and what happens
    when it is reached (``"block"``, ``"drop_oldest"``, ``"drop_newest"``).
    ``probe_interval`` / ``probe_timeout``: after so many idle seconds the connection is
    probed, and declared dead if the answer takes longer than ``probe_timeout``.
    """

    def __init__(
        self,
        dsn: str | Resolved | None = None,
        *,
        decode: codecs.Codec = "json",
        on_reconnect: Callable[[], Any] | None = None,
        queue_size: int = 10_000,
        when_full: WhenFull = "block",
        probe_interval: float = 5.0,
        probe_timeout: float = 5.0,
        sync_timeout: float = 10.0,
        stop_timeout: float = 10.0,
        application_name: str = APPLICATION_NAME,
    ) -> None:
        self._core = ListenerCore(
            dsn,
            decode=decode,
            on_reconnect=on_reconnect,
            queue_size=queue_size,
            when_full=when_full,
            probe_interval=probe_interval,
            probe_timeout=probe_timeout,
            sync_timeout=sync_timeout,
            application_name=application_name,
        )
        self._stop_timeout = stop_timeout
        self._lock = threading.Lock()
        self._dispatcher: threading.Thread | None = None
        self._stopped = threading.Event()
        self._stopped.set()
        self._serial = itertools.count(1)
        self._iterators: weakref.WeakSet[NotificationIterator] = weakref.WeakSet()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<pgtide.Listener {state} channels={self.channels()!r}>"

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop` (even while reconnecting)."""
        return self._core.running

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

    def stop(self) -> None:
        """Stop receiving and dispatching; waits for a callback that is running to return.

        Notifications still queued are discarded. Safe to call from a callback and twice.
        """
        with self._lock:
            self._core.close()
            dispatcher, self._dispatcher = self._dispatcher, None
        if dispatcher is not None and dispatcher is not threading.current_thread():
            dispatcher.join(self._stop_timeout)
            if dispatcher.is_alive():
                logger.warning(
                    "a listener callback is still running after %g s; stop() returns anyway",
                    self._stop_timeout,
                )
        for iterator in list(self._iterators):
            iterator._end()
        self._stopped.set()

    def run_forever(self) -> None:
        """Start if needed, then block until :meth:`stop` is called or Ctrl-C is pressed."""
        self.start()
        try:
            while not self._stopped.wait(0.25):
                pass
        except KeyboardInterrupt:
            self.stop()

    def __enter__(self) -> Listener:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _dispatch(self) -> None:
        IN_DISPATCH.set(True)
        core = self._core
        items = core.queue
        loop: asyncio.AbstractEventLoop | None = None
        try:
            while not core.closing:
                item = items.get()
                if item is None:
                    break
                for awaitable, sub, note in core.deliver(item):
                    if loop is None:
                        loop = asyncio.new_event_loop()
                    try:
                        loop.run_until_complete(_await(awaitable))
                    except Exception as exc:
                        core.failed(sub, note, exc)
        finally:
            if loop is not None:
                loop.close()

    def _wait(self, version: int) -> None:
        done = threading.Event()
        if self._core.changed(version, done.set) and not done.wait(self._core.sync_timeout):
            logger.warning(
                "LISTEN not confirmed within %g s; it is applied as soon as the server answers",
                self._core.sync_timeout,
            )

    # -- registrations --------------------------------------------------------------------

    def subscribe(self, channel: str, callback: Callback, id: Hashable | None = None) -> Any:
        """Call ``callback(notification)`` for each NOTIFY on ``channel``; return the id.

        ``id`` defaults to a new integer; the same id may be used on several channels, and
        subscribing an id again on a channel replaces its callback. When the listener is
        running, this returns once the channel is LISTENed (from a callback it does not wait).
        """
        sub_id, version = self._core.registry.subscribe(channel, callback, id)
        self._wait(version)
        return sub_id

    def unsubscribe(self, id: Hashable, channel: str | None = None) -> bool:
        """Remove subscriber ``id`` from ``channel`` (from every channel when None).

        Returns whether anything was removed. A channel left without subscribers is UNLISTENed.
        """
        removed, version = self._core.registry.unsubscribe(id, channel)
        self._core.changed(version, _nothing)
        return removed

    def remove_channel(self, channel: str) -> bool:
        """Remove ``channel`` with all its subscribers and its mute state; UNLISTEN it."""
        removed, version = self._core.registry.remove_channel(channel)
        self._core.changed(version, _nothing)
        return removed

    def mute(self, channel: str) -> None:
        """Stop delivering ``channel`` (UNLISTEN); subscribers keep their own mute states."""
        self._core.changed(self._core.registry.set_channel_muted(channel, True), _nothing)

    def unmute(self, channel: str) -> None:
        """Deliver ``channel`` again (LISTEN, if it has a subscriber that is not muted)."""
        self._wait(self._core.registry.set_channel_muted(channel, False))

    def mute_subscriber(self, id: Hashable, channel: str | None = None) -> None:
        """Stop calling subscriber ``id`` on ``channel`` (every channel when None).

        Raises :class:`pgtide.UnknownSubscriber` if it is not subscribed there.
        """
        version = self._core.registry.set_subscriber_muted(id, channel, True)
        self._core.changed(version, _nothing)

    def unmute_subscriber(self, id: Hashable, channel: str | None = None) -> None:
        """Call subscriber ``id`` again on ``channel`` (every channel when None)."""
        self._wait(self._core.registry.set_subscriber_muted(id, channel, False))

    # -- views ----------------------------------------------------------------------------

    def channels(self) -> list[str]:
        """Every channel with a subscriber, muted or not."""
        return self._core.registry.channels()

    def active_channels(self) -> list[str]:
        """The channels that must be LISTENed: not muted, with a subscriber that is not muted."""
        return sorted(self._core.registry.active()[1])

    def subscribers(self) -> dict[str, dict[Hashable, bool]]:
        """channel -> {subscriber id: muted}."""
        return self._core.registry.subscribers()

    def status(self) -> dict[str, Any]:
        """Connection, channels, counters (received, dispatched, callback errors, dropped...)."""
        return self._core.status()

    def iter(self, channel: str, timeout: float | None = None) -> NotificationIterator:
        """Iterate over the notifications of ``channel`` (pull style, beside the callbacks).

        Subscribes now (starting the listener if needed); iteration ends when no notification
        came for ``timeout`` seconds (never when None), when the listener stops, or on
        ``close()``. Use it in a ``with`` block or a ``for`` loop that runs to its end.
        """
        self.start()
        iterator = NotificationIterator(self, channel, timeout, next(self._serial))
        self._iterators.add(iterator)
        return iterator


class NotificationIterator(Iterator[Notification]):
    """The iterator returned by :meth:`Listener.iter`; unsubscribes when it ends."""

    def __init__(
        self, listener: Listener, channel: str, timeout: float | None, serial: int
    ) -> None:
        self._listener = listener
        self._channel = channel
        self._timeout = timeout
        self._items: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._id = listener.subscribe(channel, self._items.put, id=iter_id(channel, serial))
        self._closed = False

    def __next__(self) -> Notification:
        if self._closed:
            raise StopIteration
        try:
            item = self._items.get(timeout=self._timeout)
        except queue.Empty:
            item = _END
        if item is _END:
            self.close()
            raise StopIteration
        note: Notification = item
        return note

    def _end(self) -> None:
        self._items.put(_END)

    def __del__(self) -> None:
        # an iterator dropped before its end stops collecting (unsubscribing never blocks)
        with contextlib.suppress(Exception):
            self.close()

    def close(self) -> None:
        """Unsubscribe; the iteration ends."""
        if not self._closed:
            self._closed = True
            self._listener.unsubscribe(self._id, self._channel)

    def __enter__(self) -> NotificationIterator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _nothing() -> None:
    return None
