"""The value every subscriber receives."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(slots=True, eq=False)
class Notification:
    """One NOTIFY as received: the channel, the decoded payload and where it came from.

    ``payload`` is the value the listener's codec made of ``raw`` (the text as sent). When a
    strict codec rejected the text, ``payload`` is ``raw`` and ``error`` says why.
    ``pid`` is the sending backend's process id; ``received_at`` is when pgtide read it
    (UTC, shared by the notifications read together). ``subscriber`` is the id of the
    subscriber the notification was delivered to (each subscriber of a channel gets its own
    copy), so that one callback shared by several subscriptions knows which one it serves;
    None on a notification that was not delivered by a listener.
    """

    channel: str
    payload: Any
    raw: str
    pid: int
    received_at: datetime
    error: str | None = None
    subscriber: Hashable | None = None

    def copy_for(self, subscriber: Hashable) -> Notification:
        """The same notification, for another subscriber (every field copied, quickly)."""
        other = object.__new__(Notification)
        other.channel = self.channel
        other.payload = self.payload
        other.raw = self.raw
        other.pid = self.pid
        other.received_at = self.received_at
        other.error = self.error
        other.subscriber = subscriber
        return other

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the shape of ``pgtide listen --json``; without ``subscriber``,
        which may be any hashable)."""
        return {
            "channel": self.channel,
            "payload": self.payload,
            "raw": self.raw,
            "pid": self.pid,
            "received_at": self.received_at.isoformat(),
            "error": self.error,
        }
