"""The wake-up seam: how a worker hears that events are waiting.

Workers are correct without it (they poll); a waker only makes them react sooner. It is
pgtide's :class:`~pgtide.listen.Listener` (one connection, reconnect with backoff, re-LISTEN),
so the events feature has no NOTIFY code of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from ..connect import Resolved
from ..listen import Listener, Notification

log = logging.getLogger("pgtide.events")

APPLICATION_NAME = "pgtide-events-listen"


class Waker(Protocol):
    """Calls ``on_wake(channel, payload)`` when a NOTIFY arrives on one of its channels."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


def make_waker(
    resolved: Resolved,
    channels: Sequence[str],
    on_wake: Callable[[str, str], None],
    on_gap: Callable[[], None],
) -> Waker:
    """A listener on ``channels`` that calls ``on_wake``; ``on_gap`` after a reconnect.

    Wake-ups are idempotent, so when its queue fills the oldest are dropped rather than
    slowing the server's delivery.
    """

    def wake(note: Notification) -> None:
        on_wake(note.channel, note.raw)

    listener = Listener(
        resolved,
        decode="text",
        on_reconnect=on_gap,
        queue_size=1000,
        when_full="drop_oldest",
        application_name=APPLICATION_NAME,
    )
    for channel in dict.fromkeys(channels):
        listener.subscribe(channel, wake)
    return listener
