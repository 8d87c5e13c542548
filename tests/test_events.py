"""Events against real PostgreSQL: results, retries, dead letters, leases, keys, stop."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest
from events_helpers import count, states, wait_for

import pgtide


@pytest.fixture
def events(dsn: str) -> Any:
    ev = pgtide.Events(dsn, poll_interval=0.05, retry_delay=0.01, max_retry_delay=0.05)
    yield ev
    ev.close()


def test_results_are_stored(events: pgtide.Events, dsn: str) -> None:
    seen: list[pgtide.Event] = []

    @events.handler("order_created")
    def on_order(event: pgtide.Event) -> dict[str, Any]:
        seen.append(event)
        return {"emailed": True, "order": event.payload["order"]}

    ids = [events.publish("order_created", {"order": n}) for n in range(3)]
    events.start(concurrency=2)
    wait_for(lambda: events.status()["done"] == 3, what="three events done")
    events.stop()
    for n, id_ in enumerate(ids):
        rec = events.get(id_)
        assert rec is not None
        assert rec.state == "done"
        assert rec.result == {"emailed": True, "order": n}
        assert rec.attempts == 1
        assert rec.finished_at is not None
    assert sorted(e.id for e in seen) == ids
    assert all(e.attempt == 1 and e.name == "order_created" for e in seen)
