"""The wake-up seam: how a worker hears that events are waiting.

Workers are correct without it (they poll); a waker only makes them react sooner. This is
the one place that knows how NOTIFY is received.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from ..connect import Resolved

log = logging.getLogger("pgtide.events")


class Waker(Protocol):
    """Calls ``on_wake(channel, payload)`` when a NOTIFY arrives on one of its channels."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


def make_waker(
    resolved: Resolved,
    channels: Sequence[str],
    on_wake: Callable[[str, str], None],
    on_gap: Callable[[], None],
) -> Waker | None:
    """A waker on ``channels``, or None when NOTIFY cannot be received (then poll only).

    ``on_gap`` is called when notifications may have been missed (after a reconnect).
    """
    log.debug("no listener available; events workers poll only")
    return None
