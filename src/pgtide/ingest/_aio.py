"""The asyncio face: :class:`FileWatcher` awaits the same engine in a worker thread.

Reading files and committing batches (COPY from file contents) are blocking by nature: file
I/O has no asyncio API. So the engine runs in a thread, through
:func:`pgtide._blocking.run_in_thread`, and the event loop stays free; cancelling
:meth:`FileWatcher.run` stops the engine after its current batch.
"""

from __future__ import annotations

import asyncio

from .._blocking import run_in_thread
from .._lifecycle import AsyncRunnable
from .watcher import Watcher


class FileWatcher(Watcher, AsyncRunnable):
    """``pgtide.FileWatcher`` for asyncio, with the same arguments (its signature is the
    blocking one's): ``await run()``, ``await start()`` / ``await stop()``, ``await close()``,
    ``await catch_up()``, ``status()``, and ``async with``.

    File I/O is blocking, so the engine runs in a worker thread (never on the event loop).
    """

    _face = "aio.FileWatcher"

    async def run(self) -> None:
        """Land lines as they are written until :meth:`stop` or cancellation."""
        await run_in_thread(self._engine.run, self._engine.request_stop)

    async def catch_up(self) -> int:
        """Land every complete line there is now; return the number of rows landed."""
        return await asyncio.to_thread(self._engine.catch_up)

    async def start(self) -> None:
        """Run in a background thread; connection and target errors are raised here."""
        await asyncio.to_thread(self._engine.start)

    async def stop(self, timeout: float | None = 30.0) -> None:
        """Stop after the current batch; re-raise what stopped the watcher, if anything."""
        await asyncio.to_thread(self._engine.stop, timeout)

    async def close(self) -> None:
        """Stop (as :meth:`stop`) and release the connection."""
        await asyncio.to_thread(self._engine.close)
