"""How a waiting feed learns that there may be new changes: the seam between the feed and
the wake-up mechanism. Polling alone is always correct (the read decides what is new); a
wake-up only shortens the wait."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Literal, TypeAlias

from ..errors import FeedError

CHANNEL = "pgtide_changes"
"""The channel the capture triggers NOTIFY on, with the table name as payload."""

WakeupMode: TypeAlias = Literal["notify", "poll"]

DEFAULT_POLL = {"notify": 1.0, "poll": 0.1}
"""Seconds between reads when no wake-up comes: a fallback with NOTIFY, the pace without."""


def check_mode(mode: str, poll_interval: float | None) -> float:
    if mode not in DEFAULT_POLL:
        raise FeedError(f"wakeup must be 'notify' or 'poll', not {mode!r}")
    interval = DEFAULT_POLL[mode] if poll_interval is None else poll_interval
    if interval <= 0:
        raise FeedError(f"poll_interval must be > 0 seconds, not {interval}")
    return interval


class Signal:
    """A flag that a wake-up source sets and a waiting feed (thread or task) consumes."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._aevent: asyncio.Event | None = None

    def set(self) -> None:
        """Wake the waiter; safe from any thread."""
        self._event.set()
        if self._loop is not None and self._aevent is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                self._loop.call_soon_threadsafe(self._aevent.set)

    def wait(self, seconds: float) -> bool:
        woke = self._event.wait(seconds)
        self._event.clear()
        return woke

    async def await_(self, seconds: float) -> bool:
        if self._aevent is None:
            self._loop = asyncio.get_running_loop()
            self._aevent = asyncio.Event()
            if self._event.is_set():
                self._aevent.set()
        try:
            await asyncio.wait_for(self._aevent.wait(), seconds)
            woke = True
        except TimeoutError:
            woke = False
        self._aevent.clear()
        self._event.clear()
        return woke
