"""A background worker of a Feed process (the WAL relay, the backfill runner) in a thread."""

from __future__ import annotations

import logging
import threading
from typing import Generic, Protocol, TypeVar

from ..errors import FeedError
from ..session import OUTAGES

log = logging.getLogger("pgtide.feed")


class Worker(Protocol):
    name: str

    def run(self) -> None: ...

    def stop(self) -> None: ...


W = TypeVar("W", bound=Worker)


class WorkerThread(Generic[W]):
    """Runs ``worker.run()`` in a daemon thread; an error it cannot recover from (a lost
    slot, a backfilled table gone) is kept for the feed to raise (:meth:`check`)."""

    def __init__(self, worker: W, thread_name: str) -> None:
        self.worker = worker
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=thread_name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:  # kept for the feed to raise
            if not isinstance(exc, OUTAGES):
                log.error("%s stopped: %s", self.worker.name, exc)
            self.error = exc

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def check(self) -> None:
        """Raise the worker's error, if it stopped on one."""
        if self.error is not None and isinstance(self.error, FeedError):
            raise self.error

    def stop(self) -> None:
        self.worker.stop()
        self._thread.join(10)
