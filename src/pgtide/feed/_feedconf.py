"""A feed's settings, checked once, shared by both faces."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from ..connect import Resolved
from ..errors import FeedError
from ._listen import WakeupSource, start_listener
from ._names import TableName
from ._wakeup import DEFAULT_POLL, Signal, check_mode
from .track import require_tracked


@dataclass(frozen=True)
class FeedConfig:
    consumer: str
    tables: list[str] | None
    wakeup: str
    poll_interval: float
    auto_prune: float | None

    @classmethod
    def make(
        cls,
        consumer: str,
        tables: list[str] | str | None,
        wakeup: str,
        poll_interval: float | None,
        auto_prune: float | None,
    ) -> FeedConfig:
        if not isinstance(consumer, str) or not consumer.strip():
            raise FeedError("a feed needs a consumer name, e.g. Feed(consumer='indexer')")
        if isinstance(tables, str):
            tables = [tables]
        names = None if tables is None else sorted({str(TableName.parse(t)) for t in tables})
        if names is not None and not names:
            raise FeedError("tables=[] follows nothing; leave it out to follow every table")
        if auto_prune is not None and auto_prune < 0:
            raise FeedError(f"auto_prune must be None or >= 0 seconds, not {auto_prune}")
        return cls(consumer, names, wakeup, check_mode(wakeup, poll_interval), auto_prune)

    def check_tables(self, conn: psycopg.Connection[Any]) -> None:
        """Every followed table must be tracked: a clear error names the one that is not."""
        for table in self.tables or ():
            require_tracked(conn, table)

    def wait_for(self, seconds: float | None, woken: bool) -> float:
        """How long to wait before the next read; without a running wake-up source, the
        feed reads at the polling pace."""
        pace = self.poll_interval if woken else min(self.poll_interval, DEFAULT_POLL["poll"])
        return pace if seconds is None else min(seconds, pace)

    def start_wakeup(self, resolved: Resolved, signal: Signal) -> WakeupSource | None:
        """Start the NOTIFY wake-up (None in poll mode: the feed then reads on a timer)."""
        if self.wakeup == "poll":
            return None
        return start_listener(resolved, signal, self.tables)
