"""Events stage: each order publishes two events; one handler fails once and is retried."""

from __future__ import annotations

import threading
from typing import Any

import psycopg

from ... import Event, Events
from ._part import Line, Meter, Part

DECLINE_EVERY = 7  # every 7th charge fails on its first attempt, then succeeds
FORGET_EVENTS = "DELETE FROM pgtide.events WHERE name = ANY(%s)"


class EventsPart(Part):
    feature = "events"
    doing = "events -> handlers"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.published = 0
        self.done = Meter()
        self.failures = 0
        self.retried_ok = 0
        self._lock = threading.Lock()
        self.names = [self.shop.event("order_created"), self.shop.event("charge")]
        self._events = Events(dsn=self.shop.db, retry_delay=0.05, max_retry_delay=0.2)
        self._events.handler(self.names[0])(self._on_order)
        self._events.handler(self.names[1], retries=3)(self._on_charge)

    def _on_order(self, event: Event) -> dict[str, Any]:
        self.done.add()
        return {"packed": event.payload["order"]}

    def _on_charge(self, event: Event) -> dict[str, Any]:
        if event.payload["order"] % DECLINE_EVERY == 0 and event.attempt == 1:
            with self._lock:
                self.failures += 1
            raise RuntimeError("card declined (the demo's planned failure); retrying")
        if event.attempt > 1:
            with self._lock:
                self.retried_ok += 1
        self.done.add()
        return {"charged": event.payload["order"], "attempt": event.attempt}

    def start(self) -> None:
        self._events.start(concurrency=4)

    def write(self, conn: psycopg.Connection[Any], tick: int) -> None:
        for name in self.names:
            self._events.publish(name, {"order": tick}, conn=conn)
        self.published += len(self.names)

    def settled(self) -> bool:
        return self.done.count >= self.published

    def stop(self) -> None:
        self._events.close()

    def line(self) -> Line:
        detail = f"{self.published} published, {self.failures} retried"
        return Line(self.feature, self.doing, self.done.count, self.done.rate(), detail)

    def summary(self) -> dict[str, Any]:
        done = self.done.count
        return {
            "published": self.published,
            "done": done,
            "failed_attempts": self.failures,
            "retried_then_done": self.retried_ok,
            "ok": done == self.published and done > 0 and self.retried_ok == self.failures,
            "text": f"{done} of {self.published} done; {self.failures} failed once, then retried",
        }

    def cleanup(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(FORGET_EVENTS, (self.names,))
