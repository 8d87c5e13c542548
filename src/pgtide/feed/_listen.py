"""The NOTIFY wake-up of a feed, built on the Listen feature's core (:class:`pgtide.Listener`).

The capture triggers NOTIFY ``pgtide_changes`` with the table name; the listener sets the
feed's :class:`~pgtide.feed._wakeup.Signal` for a followed table, and on reconnect (a
notification may have been missed while the connection was down), so the feed reads at once.
The wake-up only shortens waits: a feed that hears nothing still polls, and stays correct.
"""

from __future__ import annotations

import logging
from typing import Protocol

from ..connect import Resolved
from ..errors import PgtideError
from ..listen import Listener, Notification
from ._wakeup import CHANNEL, Signal

log = logging.getLogger("pgtide.feed")


class WakeupSource(Protocol):
    def stop(self) -> None: ...


def start_listener(
    resolved: Resolved, signal: Signal, tables: list[str] | None
) -> WakeupSource | None:
    """A running Listener that wakes the feed; None (poll only) if it cannot start."""
    wanted = None if tables is None else frozenset(tables)

    def on_change(note: Notification) -> None:
        if wanted is None or note.payload in wanted:
            signal.set()

    listener = Listener(resolved, decode="text", on_reconnect=signal.set)
    listener.subscribe(CHANNEL, on_change)
    try:
        listener.start()
    except PgtideError as exc:
        log.warning("feed wake-up unavailable (%s); polling instead", exc)
        return None
    signal.set()  # changes may have committed before LISTEN took effect: read once now
    return listener
