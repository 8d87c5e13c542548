"""The newest row of a tracked table, handed to a function after each committed change.

:class:`LatestFetcher` is for code that only cares about the current state (a dashboard, a
cache of the last measurement): it wakes on the capture's NOTIFY for its table, reads the
newest row once however many changes committed meanwhile (bursts are coalesced), and calls
``process(row)``. It reads from pgtide.changes, so a write is never missed the way polling an
audit table misses writes between two polls; it is not a change feed (use :class:`Feed` to see
every change).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from .._lifecycle import Runnable
from .._signals import stop_on_signals
from ..channel import Waker
from ..connect import DsnLike
from ..errors import ConfigError
from ..names import TableName
from ..schema import ensure_io
from ..session import Io, Session, Stopped
from ._face import CHANNEL
from .retention import newest_io
from .rows import RowTypes
from .sleepers import Watch, check_io, registration
from .track import require_tracked

log = logging.getLogger("pgtide.feed")

Process = Callable[[dict[str, Any] | None], Any]


class LatestFetcher(Runnable):
    """Call ``process(row)`` with the newest row of tracked ``table`` after each change.

    ``process`` may be given, or a subclass may override :meth:`process`. It is called once
    at start with the current newest row, then after each committed change that made a new
    newest row (several changes committed while it runs make one call). ``row`` is None after
    a TRUNCATE. ``poll_interval``: seconds between reads when no NOTIFY arrives (the fetcher
    stays correct without NOTIFY, only slower). A raising ``process`` is logged; the fetcher
    goes on.
    """

    def __init__(
        self,
        table: str,
        process: Process | None = None,
        *,
        dsn: DsnLike = None,
        poll_interval: float = 1.0,
    ) -> None:
        if poll_interval <= 0:
            raise ConfigError(f"poll_interval must be > 0 seconds, not {poll_interval}")
        if process is not None and not callable(process):
            raise ConfigError("process must be a function of one argument (the row)")
        self.table = TableName.parse(table)
        self._process = process
        self._poll = poll_interval
        self._session = Session(dsn, name=f"latest {self.table}", prepare=self._prepare)
        self._registration = registration()
        self._stop = threading.Event()
        self._waker: Waker | None = None
        self._thread: threading.Thread | None = None
        self._seen: tuple[str, int] | None = None
        self._types = RowTypes()
        self.calls = 0

    def __repr__(self) -> str:
        return f"<pgtide.LatestFetcher table={str(self.table)!r} calls={self.calls}>"

    def process(self, row: dict[str, Any] | None) -> None:
        """Handle the newest row; override it in a subclass, or pass ``process=``."""
        if self._process is None:
            raise ConfigError("LatestFetcher needs process= or a subclass overriding process()")
        self._process(row)

    def run(self) -> None:
        """Fetch and process until :meth:`stop` (or SIGTERM/Ctrl-C in the main thread)."""
        self._stop.clear()
        with stop_on_signals(self.stop, f"latest {self.table}"):
            self._serve()

    def _prepare(self) -> Io[None]:
        self._registration = registration()  # a new connection holds no registration
        yield from ensure_io()

    def _serve(self) -> None:
        try:
            name = str(self._session.run(lambda: require_tracked(self.table)))
            waker = Waker(
                self._session.resolved,
                (CHANNEL,),
                on_notify=lambda _channel, payload: payload == name,
                application_name="pgtide-latest-listen",
            )
            self._waker = waker
            waker.start()
            watch = Watch(cap=self._poll)
            try:
                while not self._stop.is_set():
                    self._fetch()
                    pause: float | None = self._poll
                    if waker.listening:  # registered as waiting: the captures notify
                        fresh, pause = self._session.run(
                            lambda: check_io(self._registration, watch)
                        )
                        if fresh:
                            continue  # read again after registering
                    waker.wait(self._poll if pause is None else pause)
            finally:
                waker.stop()
                self._waker = None
        except Stopped:
            pass
        finally:
            self._session.close()

    def _fetch(self) -> None:
        seen, row = self._session.run(lambda: newest_io(self.table, self._types))
        if seen is None or seen == self._seen:
            return
        self._seen = seen
        self.calls += 1
        try:
            self.process(row)
        except Exception:
            log.exception("LatestFetcher %s: process raised; going on", self.table)

    def start(self) -> None:
        """Run in a background thread (the first read happens there)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._serve, name=f"pgtide-latest-{self.table}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop after the current call of ``process``."""
        self._stop.set()
        self._session.stop()
        waker = self._waker
        if waker is not None:
            waker.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            self._thread = None

    def close(self) -> None:
        """Stop (as :meth:`stop`); ``start()`` may follow."""
        self.stop()
