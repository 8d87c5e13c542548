"""The value every subscriber receives."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(slots=True, eq=False)
class Notification:
    """One NOTIFY as received: the channel, the decoded payload and where it came from.

    ``payload`` is the value the listener's codec made of ``raw`` (the text as sent). When a
    strict codec rejected the text, ``payload`` is ``raw`` and ``error`` says why.
    ``pid`` is the sending backend's process id; ``received_at`` is when pgtide read it
    (UTC, shared by the notifications read together).
    """

    channel: str
    payload: Any
    raw: str
    pid: int
    received_at: datetime
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the shape of ``pgtide listen --json``)."""
        return {
            "channel": self.channel,
            "payload": self.payload,
            "raw": self.raw,
            "pid": self.pid,
            "received_at": self.received_at.isoformat(),
            "error": self.error,
        }
