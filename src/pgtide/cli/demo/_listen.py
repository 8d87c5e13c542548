"""Listen stage: every order also sends a NOTIFY; a Listener hears it and measures how soon."""

from __future__ import annotations

import statistics
import time
from typing import Any

import psycopg

from ... import Listener, Notification, notify
from ._part import Part


class ListenPart(Part, feature="listen", doing="NOTIFY -> callback"):
    def setup(self) -> None:
        self.latencies_ms: list[float] = []
        self._listener: Listener | None = None

    def start(self) -> None:
        self._listener = Listener(dsn=self.shop.db)
        self._listener.start()
        self._listener.subscribe(self.shop.channel, self._on_note)

    def _on_note(self, note: Notification) -> None:
        payload = note.payload if isinstance(note.payload, dict) else {}
        sent = payload.get("sent")
        if isinstance(sent, float):
            with self._lock:
                self.latencies_ms.append((note.received_at.timestamp() - sent) * 1000)
        self.seen.add()

    def write(self, conn: psycopg.Connection[Any], tick: int) -> None:
        notify(self.shop.channel, {"order": tick, "sent": time.time()}, conn=conn)
        self.written += 1

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.stop()

    def _p50(self) -> float:
        with self._lock:
            return statistics.median(self.latencies_ms) if self.latencies_ms else 0.0

    def detail(self) -> str:
        return f"{self.written} sent, p50 {self._p50():.1f} ms"

    counted = ("sent", "received")

    def figures(self) -> dict[str, Any]:
        return {"latency_p50_ms": round(self._p50(), 2)}

    def outcome(self, seen: int) -> str:
        return f"{seen} of {self.written} heard, p50 {self._p50():.1f} ms after commit"

    def cleanup(self, conn: psycopg.Connection[Any]) -> None:
        """Nothing to remove: NOTIFY leaves no trace, and the listener's connection is closed."""
