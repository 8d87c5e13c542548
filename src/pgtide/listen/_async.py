"""The asyncio face of the listener: :class:`pgtide.aio.Listener`.

Same core as the blocking face; the connection runs in its own thread, and callbacks (plain
or async) run in one task on your event loop, in server order.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Hashable
from types import TracebackType
from typing import Any

from .. import codecs
from ..channel import Callback, Notification, WhenFull
from ..connect import Resolved
from ._core import APPLICATION_NAME, IN_DISPATCH, ListenerCore, iter_id

logger = logging.getLogger("pgtide.listen")

_END = object()


class Listener:
    """The asyncio listener: ``async with pgtide.aio.Listener() as listener: ...``.

    Takes the same arguments as :class:`pgtide.Listener`. Methods that change what is
    LISTENed are coroutines (they return once the server has applied the change); the views
    (``channels``, ``active_channels``, ``subscribers``, ``status``) are plain methods.
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
        self._task: asyncio.Task[None] | None = None
        self._stopped: asyncio.Event | None = None
        self._serial = itertools.count(1)
        self._iterators: set[asyncio.Queue[Any]] = set()
        self._starting = asyncio.Lock()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<pgtide.aio.Listener {state} channels={self.channels()!r}>"

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._core.running

    async def start(self) -> None:
        """Connect, LISTEN on every active channel, and dispatch in a task on this loop."""
        async with self._starting:
            if self._core.running:
                return
            await asyncio.to_thread(self._core.open)
            self._begin_dispatch(asyncio.get_running_loop())

    def _begin_dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        wake = asyncio.Event()
        self._stopped = asyncio.Event()

        def wakeup() -> None:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(wake.set)

        self._core.queue.set_wakeup(wakeup)
        self._task = loop.create_task(self._dispatch(wake), name="pgtide-listen-dispatch")

    async def stop(self) -> None:
        """Stop receiving and dispatching; waits (up to ``stop_timeout``) for a running callback."""
        task, self._task = self._task, None
        await asyncio.to_thread(self._core.close)
        if task is not None and task is not asyncio.current_task():
            done, _ = await asyncio.wait({task}, timeout=self._stop_timeout)
            if not done:
                logger.warning("a listener callback is still running; cancelling it")
                task.cancel()
        for items in list(self._iterators):
            items.put_nowait(_END)
        if self._stopped is not None:
            self._stopped.set()

    async def run_forever(self) -> None:
        """Start if needed, then wait until :meth:`stop` (or cancellation)."""
        await self.start()
        assert self._stopped is not None
        try:
            await self._stopped.wait()
        except asyncio.CancelledError:
            await self.stop()
            raise

    async def __aenter__(self) -> Listener:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _dispatch(self, wake: asyncio.Event) -> None:
        IN_DISPATCH.set(True)
        core = self._core
        items = core.queue
        while not core.closing:
            wake.clear()
            item = items.get_nowait()
            if item is None:
                if items.closed:
                    return
                await wake.wait()
                continue
            for awaitable, sub, note in core.deliver(item):
                try:
                    await awaitable
                except Exception as exc:
                    core.failed(sub, note, exc)
            await asyncio.sleep(0)  # let the rest of the loop run between batches

    async def _wait(self, version: int) -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def resolve() -> None:
            if not done.done():
                done.set_result(None)

        def applied() -> None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(resolve)

        if self._core.changed(version, applied):
            try:
                await asyncio.wait_for(done, self._core.sync_timeout)
            except TimeoutError:
                logger.warning(
                    "LISTEN not confirmed within %g s; it is applied when the server answers",
                    self._core.sync_timeout,
                )

    # -- registrations (same meaning as pgtide.Listener) ------------------------------------

    async def subscribe(self, channel: str, callback: Callback, id: Hashable | None = None) -> Any:
        """Call ``callback(notification)`` (plain or async) for each NOTIFY on ``channel``."""
        sub_id, version = self._core.registry.subscribe(channel, callback, id)
        await self._wait(version)
        return sub_id

    async def unsubscribe(self, id: Hashable, channel: str | None = None) -> bool:
        """Remove subscriber ``id`` from ``channel`` (every channel when None)."""
        removed, version = self._core.registry.unsubscribe(id, channel)
        self._core.changed(version, _nothing)
        return removed

    async def remove_channel(self, channel: str) -> bool:
        """Remove ``channel`` with its subscribers and mute state."""
        removed, version = self._core.registry.remove_channel(channel)
        self._core.changed(version, _nothing)
        return removed

    async def mute(self, channel: str) -> None:
        self._core.changed(self._core.registry.set_channel_muted(channel, True), _nothing)

    async def unmute(self, channel: str) -> None:
        await self._wait(self._core.registry.set_channel_muted(channel, False))

    async def mute_subscriber(self, id: Hashable, channel: str | None = None) -> None:
        version = self._core.registry.set_subscriber_muted(id, channel, True)
        self._core.changed(version, _nothing)

    async def unmute_subscriber(self, id: Hashable, channel: str | None = None) -> None:
        await self._wait(self._core.registry.set_subscriber_muted(id, channel, False))

    # -- views ----------------------------------------------------------------------------

    def channels(self) -> list[str]:
        return self._core.registry.channels()

    def active_channels(self) -> list[str]:
        return sorted(self._core.registry.active()[1])

    def subscribers(self) -> dict[str, dict[Hashable, bool]]:
        return self._core.registry.subscribers()

    def status(self) -> dict[str, Any]:
        return self._core.status()

    def iter(self, channel: str, timeout: float | None = None) -> AsyncNotificationIterator:
        """``async for note in listener.iter("orders", timeout=5.0)``: pull style.

        Subscribes on ``async with`` or the first ``__anext__`` (starting the listener if
        needed); ends after ``timeout`` idle seconds (never when None), when the listener
        stops, or on ``aclose()``; it then unsubscribes. Leaving an ``async for`` early with
        ``break`` unsubscribes at the next ``aclose()``: prefer ``async with`` for that.
        """
        return AsyncNotificationIterator(self, channel, timeout, next(self._serial))


class AsyncNotificationIterator(AsyncIterator[Notification]):
    """The async iterator returned by :meth:`Listener.iter`."""

    def __init__(
        self, listener: Listener, channel: str, timeout: float | None, serial: int
    ) -> None:
        self._listener = listener
        self._channel = channel
        self._timeout = timeout
        self._id = iter_id(channel, serial)
        self._items: asyncio.Queue[Any] = asyncio.Queue()
        self._state = "new"

    async def _open(self) -> None:
        if self._state == "new":
            self._state = "open"
            await self._listener.start()
            self._listener._iterators.add(self._items)
            await self._listener.subscribe(self._channel, self._items.put_nowait, id=self._id)

    async def __anext__(self) -> Notification:
        await self._open()
        if self._state == "closed":
            raise StopAsyncIteration
        try:
            item = await asyncio.wait_for(self._items.get(), self._timeout)
        except TimeoutError:
            item = _END
        if item is _END:
            await self.aclose()
            raise StopAsyncIteration
        note: Notification = item
        return note

    async def aclose(self) -> None:
        """Unsubscribe; the iteration ends."""
        if self._state == "open":
            self._listener._iterators.discard(self._items)
            await self._listener.unsubscribe(self._id, self._channel)
        self._state = "closed"

    async def __aenter__(self) -> AsyncNotificationIterator:
        await self._open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _nothing() -> None:
    return None
