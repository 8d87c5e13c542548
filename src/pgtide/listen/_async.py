"""The asyncio face of the listener: :class:`pgtide.aio.Listener`.

Same core as the blocking face; the connection runs in its own thread, and callbacks (plain
or async) run in one task on your event loop, in server order. Only how to wait is here; the
methods mean what their blocking twins (:class:`pgtide.Listener`) say.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Hashable, Iterable
from typing import Any, TypeVar

from .._lifecycle import AsyncRunnable
from ..channel import Callback, Notification, SocketCopy, watch
from ._core import END, IN_DISPATCH, Change, Face, ListenerCore

logger = logging.getLogger("pgtide.listen")

T = TypeVar("T")


class Listener(Face, AsyncRunnable):
    """The asyncio listener: ``async with pgtide.aio.Listener() as listener: ...``.

    Takes the same arguments as :class:`pgtide.Listener` (``dsn`` keyword only). Methods that
    change what is LISTENed, and ``start``/``close``, are coroutines (a registration returns
    once the server has applied it); the views (``channels``, ``active_channels``,
    ``subscribers``, ``status``) are plain methods.
    """

    _name = "pgtide.aio.Listener"

    def _prepare(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self._stopped: asyncio.Event | None = None
        self._starting = asyncio.Lock()

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
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

    async def close(self) -> None:
        task, self._task = self._task, None
        await asyncio.to_thread(self._core.close)
        if task is not None and task is not asyncio.current_task():
            done, _ = await asyncio.wait({task}, timeout=self._stop_timeout)
            if not done:
                logger.warning("a listener callback is still running; cancelling it")
                task.cancel()
        self._core.end_pulls()
        if self._stopped is not None:
            self._stopped.set()

    stop = close

    async def restart(self) -> None:
        """Close the connection and open a new one; see :meth:`pgtide.Listener.restart`."""
        if not self._core.running:
            await self.start()
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def ready() -> None:  # called from the connection thread
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_resolve, done)

        if self._core.restart(ready):
            try:
                await asyncio.wait_for(done, self._core.sync_timeout)
            except TimeoutError:
                self._core.restart_late()

    async def run_forever(self) -> None:
        """Start if needed, then wait until :meth:`close` (or cancellation)."""
        await self.start()
        assert self._stopped is not None
        try:
            await self._stopped.wait()
        except asyncio.CancelledError:
            await self.close()
            raise

    async def _dispatch(self, wake: asyncio.Event) -> None:
        IN_DISPATCH.set(True)
        core = self._core
        items = core.queue
        reader = _Reader(asyncio.get_running_loop(), wake, core)
        try:
            while not core.closing:
                wake.clear()
                item = core.next_item(reader.copy)
                if isinstance(item, bool):  # nothing yet: wait (on the socket too, if True)
                    if items.closed:
                        return
                    await reader.sleep(item)
                    continue
                for awaitable, sub, note in core.deliver(item):
                    try:
                        await awaitable
                    except Exception as exc:
                        core.failed(sub, note, exc)
                await asyncio.sleep(0)  # let the rest of the loop run between batches
        finally:
            reader.copy.close()

    async def _settle(self, change: Change[T]) -> T:
        """Await (up to ``sync_timeout``) the server applying ``change``; its result."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def applied() -> None:  # called from the connection thread
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_resolve, done)

        if self._core.must_wait(change, applied):
            try:
                await asyncio.wait_for(done, self._core.sync_timeout)
            except TimeoutError:
                self._core.late()
        return change.result

    # -- registrations (each means what pgtide.Listener's twin says) ------------------------

    async def subscribe(self, channel: str, callback: Callback, id: Hashable | None = None) -> Any:
        return await self._settle(self._core.subscribe(channel, callback, id))

    async def unsubscribe(self, id: Hashable, channel: str | None = None) -> bool:
        return await self._settle(self._core.unsubscribe(id, channel))

    async def add_channel(self, *channels: str | Iterable[str]) -> None:
        return await self._settle(self._core.add_channel(channels))

    async def remove_channel(
        self, channel: str | Iterable[str] | None = None, *channels: str | Iterable[str]
    ) -> bool:
        return await self._settle(self._core.remove_channel((channel, *channels)))

    async def mute(
        self, channel: str | Iterable[str] | None = None, *channels: str | Iterable[str]
    ) -> None:
        return await self._settle(self._core.mute((channel, *channels)))

    async def unmute(
        self, channel: str | Iterable[str] | None = None, *channels: str | Iterable[str]
    ) -> None:
        return await self._settle(self._core.unmute((channel, *channels)))

    async def mute_subscriber(self, id: Hashable, channel: str | None = None) -> None:
        return await self._settle(self._core.mute_subscriber(id, channel))

    async def unmute_subscriber(self, id: Hashable, channel: str | None = None) -> None:
        return await self._settle(self._core.unmute_subscriber(id, channel))

    def iter(self, channel: str, timeout: float | None = None) -> AsyncNotificationIterator:
        """``async for note in listener.iter("orders", timeout=5.0)``: pull style.

        Subscribes on ``async with`` or the first ``__anext__`` (starting the listener if
        needed); ends after ``timeout`` idle seconds (never when None), when the listener
        closes, or on ``aclose()``; it then unsubscribes. Leaving an ``async for`` early with
        ``break`` unsubscribes at the next ``aclose()``: prefer ``async with`` for that.
        """
        return AsyncNotificationIterator(self, channel, timeout)


class AsyncNotificationIterator(AsyncIterator[Notification]):
    """The async iterator returned by :meth:`Listener.iter`."""

    def __init__(self, listener: Listener, channel: str, timeout: float | None) -> None:
        self._listener = listener
        self._items: asyncio.Queue[Any] = asyncio.Queue()
        self._pull = listener._core.pull(channel, timeout, self._items.put_nowait)

    async def _open(self) -> None:
        if self._pull.state == "new":
            await self._listener.start()
            await self._listener._settle(self._pull.subscribe())

    async def __anext__(self) -> Notification:
        await self._open()
        note = self._pull.take(None if self._pull.state == "closed" else await self._get())
        if note is None:
            raise StopAsyncIteration
        return note

    async def _get(self) -> Any:
        try:
            return await asyncio.wait_for(self._items.get(), self._pull.timeout)
        except TimeoutError:
            return END

    async def aclose(self) -> None:
        """Unsubscribe; the iteration ends."""
        self._pull.close()

    async def __aenter__(self) -> AsyncNotificationIterator:
        await self._open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class _Reader:
    """The dispatcher's wait: on its wakeup, and on its duplicate of the socket (a
    :class:`SocketCopy`) when the core says so. The duplicate stays registered with the loop
    from one wait to the next while its connection lasts (no add_reader/remove_reader per
    notification); it is unregistered when the dispatcher must not wait on the socket (the
    connection thread reads it, or its connection is gone and it reads as closed), when it
    is still readable at the loop's second turn while the dispatcher delivers (no busy loop
    during a slow callback: the next wait registers it again; the first may be what the
    dispatcher has just read, seen by the loop before the dispatcher ran), and before it is
    closed.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, wake: asyncio.Event, core: ListenerCore):
        self._loop = loop
        self._wake = wake
        self._core = core
        self.copy = SocketCopy(self._forget)
        self._watched = -1  # the file registered with the loop, or -1
        self._waiting = False
        self._spare = True

    async def sleep(self, socket: bool) -> None:
        """Wait until the wakeup is set (something was queued, or the listener closes) or,
        when ``socket``, until the socket is readable."""
        if not socket:
            self._unwatch()
        elif self._watched < 0:
            if watch(self._loop, self.copy.fd, self._readable):
                self._watched = self.copy.fd
            else:
                self._core.leave_socket()
        self._waiting = self._spare = True
        try:
            await self._wake.wait()
        finally:
            self._waiting = False

    def _readable(self) -> None:
        if self._waiting:
            self._wake.set()
        elif self._spare:  # the loop saw it readable before the dispatcher read it: once
            self._spare = False
        else:  # readable again while the dispatcher delivers: stop watching meanwhile
            self._unwatch()

    def _unwatch(self) -> None:
        if self._watched >= 0:
            fd, self._watched = self._watched, -1
            self._loop.remove_reader(fd)

    def _forget(self, fd: int) -> None:
        self._unwatch()


def _resolve(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)
