"""Counters a listener keeps for ``status()``; plain attributes, updated per batch."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field


@dataclass(slots=True)
class Stats:
    received: int = 0
    dispatched: int = 0
    unrouted: int = 0
    callback_errors: int = 0
    errors_by_subscriber: Counter[Hashable] = field(default_factory=Counter)
    reconnects: int = 0
    connected: bool = False
    backend_pid: int | None = None
    listening: frozenset[str] = frozenset()
    last_error: str | None = None
