"""Events stage: each order publishes two events; one handler fails once and is retried."""

from __future__ import annotations

from typing import Any

import psycopg

from ... import Event, Events
from ._part import Part

DECLINE_EVERY = 7  # every 7th charge fails on its first attempt, then succeeds
FORGET_EVENTS = "DELETE FROM pgtide.events WHERE name = ANY(%s)"


class EventsPart(Part, feature="events", doing="events -> handlers"):
    def setup(self) -> None:
        self.failures = 0
        self.retried_ok = 0
        self.names = [self.shop.event("order_created"), self.shop.event("charge")]
        self._events = Events(dsn=self.shop.db, retry_delay=0.05, max_retry_delay=0.2)
        self._events.handler(self.names[0])(self._on_order)
        self._events.handler(self.names[1], retries=3)(self._on_charge)

    def _on_order(self, event: Event) -> dict[str, Any]:
        self.seen.add()
        return {"packed": event.payload["order"]}

    def _on_charge(self, event: Event) -> dict[str, Any]:
        if event.payload["order"] % DECLINE_EVERY == 0 and event.attempt == 1:
            with self._lock:
                self.failures += 1
            raise RuntimeError("card declined (the demo's planned failure); retrying")
        if event.attempt > 1:
            with self._lock:
                self.retried_ok += 1
        self.seen.add()
        return {"charged": event.payload["order"], "attempt": event.attempt}

    def start(self) -> None:
        self._events.start(concurrency=4)

    def write(self, conn: psycopg.Connection[Any], tick: int) -> None:
        for name in self.names:
            self._events.publish(name, {"order": tick}, conn=conn)
        self.written += len(self.names)

    def stop(self) -> None:
        self._events.close()

    def detail(self) -> str:
        return f"{self.written} published, {self.failures} retried"

    counted = ("published", "done")

    def figures(self) -> dict[str, Any]:
        return {"failed_attempts": self.failures, "retried_then_done": self.retried_ok}

    def healthy(self) -> bool:
        return self.retried_ok == self.failures

    def outcome(self, seen: int) -> str:
        return f"{seen} of {self.written} done; {self.failures} failed once, then retried"

    def cleanup(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(FORGET_EVENTS, (self.names,))
