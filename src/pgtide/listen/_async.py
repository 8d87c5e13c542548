"""The asyncio face of the listener: :class:`pgtide.aio.Listener`.

Same core as the blocking face; the connection runs in its own thread, and callbacks (plain
or async) run in one task on your event loop, in server order. Only how to wait is here; the
methods mean what their blocking twins (:class:`pgtide.Listener`) say.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Hashable, Iterable
from typing import Any, TypeVar

from .._lifecycle import AsyncRunnable
from ..channel import Callback, Notification
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
        loop = asyncio.get_running_loop()
        while not core.closing:
            wake.clear()
            item = core.next_item()
            if isinstance(item, int):  # nothing yet: wait (on the socket too, if >= 0)
                if items.closed:
                    if item >= 0:
                        os.close(item)
                    return
                await _sleep(loop, wake, core, item)
                continue
            for awaitable, sub, note in core.deliver(item):
                try:
                    await awaitable
                except Exception as exc:
                    core.failed(sub, note, exc)
            await asyncio.sleep(0)  # let the rest of the loop run between batches

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


async def _sleep(
    loop: asyncio.AbstractEventLoop, wake: asyncio.Event, core: ListenerCore, socket: int
) -> None:
    """Wait until ``wake`` is set (something was queued, or the listener closes) or, when it
    is not -1, until ``socket`` is readable; then close ``socket``."""
    if socket < 0:
        await wake.wait()
        return
    try:
        try:
            loop.add_reader(socket, wake.set)
        except (NotImplementedError, OSError, RuntimeError):  # a loop that cannot watch files
            core.leave_socket()
            await wake.wait()
            return
        try:
            await wake.wait()
        finally:
            loop.remove_reader(socket)
    finally:
        os.close(socket)


def _resolve(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)
