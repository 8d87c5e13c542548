"""The asyncio face: :class:`FileWatcher` awaits the same engine in a worker thread.

Reading files and committing batches are blocking by nature (file I/O has no asyncio API),
so the engine runs in a thread and the event loop stays free; cancelling :meth:`run` stops
the engine after its current batch.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

from .._blocking import run_in_thread
from ._core import WatcherStatus
from .watcher import FileWatcher as _Blocking


class FileWatcher:
    """``pgtide.FileWatcher`` for asyncio: ``await run()``, ``await start()/stop()``,
    ``await catch_up()``, ``status()``, and ``async with``. Same arguments."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._watcher = _Blocking(*args, **kwargs)
        self.settings = self._watcher.settings

    def __repr__(self) -> str:
        return repr(self._watcher).replace("FileWatcher(", "aio.FileWatcher(", 1)

    async def run(self) -> None:
        """Land lines as they are written until :meth:`stop` or cancellation."""
        await run_in_thread(self._watcher.run, self._watcher._engine.stop_event.set)

    async def catch_up(self) -> int:
        """Land every complete line there is now; return the number of rows landed."""
        return await asyncio.to_thread(self._watcher.catch_up)

    async def start(self) -> None:
        """Run in a background thread; connection and target errors are raised here."""
        await asyncio.to_thread(self._watcher.start)

    async def stop(self, timeout: float | None = 30.0) -> None:
        """Stop after the current batch; re-raise what stopped the watcher, if anything."""
        await asyncio.to_thread(self._watcher.stop, timeout)

    def status(self) -> WatcherStatus:
        """Files, offsets, rows written and rejects (as :meth:`pgtide.FileWatcher.status`)."""
        return self._watcher.status()

    async def __aenter__(self) -> FileWatcher:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
