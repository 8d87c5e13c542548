"""What a listener's connection and delivery did, for ``status()``; updated per batch."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field


@dataclass(slots=True)
class Stats:
    """Counts by name (``received``, ``dispatched``, ``unrouted``, ``callback_errors``,
    ``reconnects``), callback errors by subscriber, and the connection as it is now: its
    server process (None while disconnected), its LISTEN set, its last error."""

    counts: Counter[str] = field(default_factory=Counter)
    errors_by_subscriber: Counter[Hashable] = field(default_factory=Counter)
    backend_pid: int | None = None
    listening: frozenset[str] = frozenset()
    last_error: str | None = None

    @property
    def connected(self) -> bool:
        return self.backend_pid is not None
