"""The NOTIFY wake-up of a feed, built on the Listen feature's core (pgtide.Listener)."""

from __future__ import annotations

from typing import Protocol

from ..connect import Resolved
from ._wakeup import Signal


class WakeupSource(Protocol):
    def stop(self) -> None: ...


def start_listener(
    resolved: Resolved, signal: Signal, tables: list[str] | None
) -> WakeupSource | None:
    """No Listener is available in this build: the feed reads at the polling pace."""
    return None
