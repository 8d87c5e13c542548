"""Follow stage: the orders table is tracked; a Feed consumer reads its changes with their lag."""

from __future__ import annotations

import statistics
import threading
from datetime import UTC, datetime
from typing import Any

import psycopg

from ... import Feed, latest, track, untrack
from ...connect import connect
from ._part import Part

FORGET_CHANGES = "DELETE FROM pgtide.changes WHERE table_name = %s"


class FollowPart(Part, feature="follow", doing="table changes -> feed"):
    def setup(self) -> None:
        self.lags_ms: list[float] = []
        self.table = ""
        self.newest: dict[str, Any] | None = None
        self.error = ""
        self._stop = threading.Event()
        self._feed: Feed | None = None
        self._thread: threading.Thread | None = None

    @property
    def consumer(self) -> str:
        return f"pgtide-demo-{self.shop.tag}"

    def start(self) -> None:
        with connect(self.shop.db) as conn:  # the name pgtide.changes records the table by
            row = conn.execute("SELECT current_schema()").fetchone()
        self.table = f"{row[0] if row else 'public'}.{self.shop.orders}"
        track(self.shop.orders, dsn=self.shop.db)
        self._feed = Feed(self.consumer, [self.shop.orders], dsn=self.shop.db)
        self._thread = threading.Thread(target=self._follow, name="demo-follow", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        assert self._feed is not None
        try:
            while not self._stop.is_set():
                for batch in self._feed.batches(timeout=0.3):
                    now = datetime.now(UTC)
                    with self._lock:
                        for change in batch:
                            self.lags_ms.append((now - change.at).total_seconds() * 1000)
                    batch.ack()
                    self.seen.add(len(batch))
                    if self._stop.is_set():
                        break
        except Exception as exc:  # shown in the summary; the tour goes on
            self.error = f"{type(exc).__name__}: {exc}"

    def write(self, conn: psycopg.Connection[Any], tick: int) -> None:
        self.written += 1  # the shop's INSERT itself is the change

    def settled(self) -> bool:
        return self.seen.count >= self.written or bool(self.error)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._feed is not None:
            self._feed.close()
        if self.written and not self.error:
            self.newest = latest(self.shop.orders, dsn=self.shop.db)

    def _lag(self) -> float:
        with self._lock:
            return statistics.median(self.lags_ms[-200:]) if self.lags_ms else 0.0

    def detail(self) -> str:
        return f"lag {self._lag():.0f} ms, {self.written - self.seen.count} behind"

    counted = ("inserts", "changes")

    def figures(self) -> dict[str, Any]:
        newest = self.newest or {}
        return {
            "lag_p50_ms": round(self._lag(), 2),
            "latest_order": newest.get("id"),
            "error": self.error,
        }

    def healthy(self) -> bool:
        return not self.error

    def outcome(self, seen: int) -> str:
        return self.error or f"{seen} of {self.written} changes, lag p50 {self._lag():.0f} ms"

    def cleanup(self, conn: psycopg.Connection[Any]) -> None:
        if self._feed is not None:
            self._feed.drop()
        untrack(self.shop.orders, conn=conn)
        if self.table:
            conn.execute(FORGET_CHANGES, (self.table,))
