"""Graceful stop on SIGTERM as on Ctrl-C, for every blocking ``run()``.

systemd, Docker and Kubernetes stop a service with SIGTERM; a terminal sends SIGINT. While a
blocking ``run()`` serves in the main thread, both call its ``stop`` (no new work; in-flight
work finishes or is released), and ``run()`` then returns normally. Elsewhere (another
thread, or a handler the program installed itself) nothing is changed.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

log = logging.getLogger("pgtide")

SIGNALS = (signal.SIGTERM, signal.SIGINT)

SIGNAL_CHECK = 0.1
"""How often a main thread that waits for other threads wakes, to run the signal handlers:
the kernel may deliver a signal to any thread, and Python runs its handler only when the
main thread next runs Python code. A wait with no timeout (an event's, a join) never does,
so a SIGTERM or Ctrl-C that landed on a busy worker thread went unheard until the work
ended by itself."""


@contextlib.contextmanager
def stop_on_signals(stop: Callable[[], Any], what: str = "pgtide") -> Iterator[None]:
    """While the block runs in the main thread, SIGTERM and SIGINT call ``stop()`` once.

    A second signal while stopping falls back to the previous behaviour (a second Ctrl-C
    interrupts at once), so a stuck handler can still be left.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {}
    stopping = False

    def handle(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if stopping:
            _restore(previous)
            signal.raise_signal(signum)  # the default now: a second Ctrl-C interrupts
            return
        stopping = True
        log.info("%s: %s received; stopping gracefully", what, signal.Signals(signum).name)
        stop()

    for sig in SIGNALS:
        previous[sig] = signal.getsignal(sig)
        if previous[sig] not in (signal.SIG_DFL, signal.default_int_handler):
            del previous[sig]  # the program handles it itself: leave it
            continue
        signal.signal(sig, handle)
    try:
        yield
    finally:
        _restore(previous)


def _restore(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        with contextlib.suppress(ValueError, TypeError):
            signal.signal(sig, handler)
    previous.clear()


def wait(done: threading.Event) -> None:
    """Wait for ``done``, running signal handlers meanwhile (see :data:`SIGNAL_CHECK`)."""
    while not done.wait(SIGNAL_CHECK):
        pass


def join(thread: threading.Thread) -> None:
    """Wait for ``thread`` to end, running signal handlers meanwhile."""
    while thread.is_alive():
        thread.join(SIGNAL_CHECK)
