"""Events against real PostgreSQL: results, retries, dead letters, leases, keys, stop."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from typing import Any

import psycopg
import pytest
from events_helpers import count, wait_for
from psycopg import sql
from psycopg.conninfo import make_conninfo

import pgtide
from pgtide.channel._gate import EVENTS_GATE, waiting_io
from pgtide.events._signatures import run_args
from pgtide.events._sql import CHANNEL
from pgtide.events._worker import _DRIVE
from pgtide.session import run


@pytest.fixture
def events(dsn: str) -> Any:
    ev = pgtide.Events(dsn=dsn, poll_interval=0.05, retry_delay=0.01, max_retry_delay=0.05)
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


@pytest.mark.parametrize("limits", [{}, {"concurrency": 50, "rate": "1000/s"}])
def test_a_handler_gets_the_row_it_claimed(dsn: str, limits: dict[str, Any]) -> None:
    """Every field of the event a handler gets is the row's (the claims' rows come back in
    binary format: timestamps and integers decoded as the text format gives them)."""
    events = pgtide.Events(dsn=dsn, poll_interval=0.05)
    seen: dict[int, pgtide.Event] = {}
    events.register("fields", lambda e: seen.__setitem__(e.id, e), **limits)
    ids = [
        events.publish("fields", {"n": 1, "big": 2**62, "s": "é"}),
        events.publish("fields", [1.5, None, True], key="k-1"),
        events.publish("fields", "text", priority=-3),
    ]
    events.start(concurrency=4)
    try:
        wait_for(lambda: len(seen) == 3, what="three events run")
    finally:
        events.stop()
        events.close()
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT id, name, payload, created_at, key, source_id FROM pgtide.events "
            "WHERE id = ANY(%s) ORDER BY id",
            (ids,),
        ).fetchall()
    for id_, name, payload, created_at, key, source_id in rows:
        event = seen[id_]
        assert (event.name, event.payload, event.key, event.source_id) == (
            name,
            payload,
            key,
            source_id,
        )
        assert event.attempt == 1
        assert event.created_at == created_at and event.created_at.tzinfo is not None


def test_failure_then_retry_then_success(events: pgtide.Events) -> None:
    attempts: list[int] = []

    @events.handler("flaky", retries=5)
    def flaky(event: pgtide.Event) -> str:
        attempts.append(event.attempt)
        if event.attempt < 3:
            raise ConnectionError(f"try {event.attempt} failed")
        return "ok"

    id_ = events.publish("flaky", {"n": 1})
    events.start(concurrency=1)
    rec = wait_for(lambda: (r := events.get(id_)) and r.state == "done" and r, what="done")
    events.stop()
    assert attempts == [1, 2, 3]
    assert rec.attempts == 3
    assert rec.result == "ok"
    assert "ConnectionError: try 2 failed" in rec.error  # the last failure is kept


def test_retries_exhausted_go_dead_with_traceback(events: pgtide.Events) -> None:
    calls: list[int] = []

    @events.handler("doomed", retries=2)
    def doomed(event: pgtide.Event) -> None:
        calls.append(event.attempt)
        raise ValueError(f"bad order {event.payload['order']}")

    id_ = events.publish("doomed", {"order": 7})
    events.start(concurrency=1)
    rec = wait_for(lambda: (r := events.get(id_)) and r.state == "dead" and r, what="dead")
    events.stop()
    assert calls == [1, 2, 3]
    assert rec.attempts == 3
    assert "Traceback (most recent call last)" in rec.error
    assert "ValueError: bad order 7" in rec.error
    assert events.status()["dead"] == 1
    # a dead event can be sent round again by hand
    assert events.retry(id_)
    assert events.get(id_).state == "pending"  # type: ignore[union-attr]
    assert not events.retry(10**9)


def test_failure_waits_for_its_backoff(dsn: str) -> None:
    events = pgtide.Events(dsn=dsn, poll_interval=0.05, retry_delay=0.6, max_retry_delay=0.6)
    times: list[float] = []

    @events.handler("slow_retry", retries=1)
    def once_failing(event: pgtide.Event) -> None:
        times.append(time.monotonic())
        if event.attempt == 1:
            raise RuntimeError("first")

    id_ = events.publish("slow_retry")
    events.start(concurrency=1)
    wait_for(lambda: events.get(id_).state == "done", what="done")  # type: ignore[union-attr]
    events.close()
    assert times[1] - times[0] >= 0.3  # jittered between half and all of 0.6 s


def test_unknown_name_is_kept_and_visible(events: pgtide.Events, dsn: str) -> None:
    @events.handler("known")
    def known(event: pgtide.Event) -> None:
        return None

    lost = events.publish("nobody_handles_me", {"x": 1})
    events.publish("known")
    events.start(concurrency=2)
    wait_for(lambda: events.status()["done"] == 1, what="known done")
    status = events.status()
    assert status["pending"] == 1
    assert status["unhandled"] == 1
    assert events.unhandled() == {"nobody_handles_me": 1}
    rec = events.get(lost)
    assert rec is not None and rec.state == "pending" and rec.attempts == 0
    events.stop()
    # a worker that does handle it picks it up later
    later = pgtide.Events(dsn=dsn, poll_interval=0.05)
    later.register("nobody_handles_me", lambda e: e.payload)
    later.start(concurrency=1)
    wait_for(lambda: later.get(lost).state == "done", what="late handler")  # type: ignore[union-attr]
    assert later.get(lost).result == {"x": 1}  # type: ignore[union-attr]
    later.close()


def test_publish_in_rolled_back_transaction_leaves_nothing(events: pgtide.Events, dsn: str) -> None:
    with psycopg.connect(dsn) as conn:  # not autocommit: one transaction
        events.publish("order_created", {"order": 1}, conn=conn)
        events.publish_many("order_created", [{"order": 2}, {"order": 3}], conn=conn)
        assert count(dsn, "SELECT count(*) FROM pgtide.events") == 0  # not yet visible
        conn.rollback()
    assert count(dsn, "SELECT count(*) FROM pgtide.events") == 0
    with psycopg.connect(dsn) as conn:
        events.publish("order_created", {"order": 4}, conn=conn)
        conn.commit()
    assert count(dsn, "SELECT count(*) FROM pgtide.events") == 1


def test_publish_many_keeps_order_and_returns_ids(events: pgtide.Events, dsn: str) -> None:
    ids = events.publish_many("batch", [{"n": n} for n in range(500)])
    assert ids == sorted(ids) and len(set(ids)) == 500
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT payload->>'n' FROM pgtide.events ORDER BY id").fetchall()
    assert [int(r[0]) for r in rows] == list(range(500))
    assert events.publish_many("batch", []) == []


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"when": object()}, "object is not JSON serializable"),
        ({"ratio": float("nan")}, "Out of range float values"),
        ({1, 2}, "set is not JSON serializable"),
    ],
)
def test_bad_payloads_are_refused_clearly(
    events: pgtide.Events, dsn: str, payload: Any, fragment: str
) -> None:
    with pytest.raises(pgtide.EventPayloadError) as info:
        events.publish("order_created", payload)
    message = str(info.value)
    assert "payload of event 'order_created' is not JSON-serialisable" in message
    assert fragment in message
    assert isinstance(info.value, TypeError) and isinstance(info.value, pgtide.PgtideError)
    with pytest.raises(pgtide.EventPayloadError, match="payload #1 of event 'many'"):
        events.publish_many("many", [{"ok": 1}, {"bad": object()}])
    assert count(dsn, "SELECT count(*) FROM pgtide.events") == 0


def test_bad_names_and_options_are_refused(events: pgtide.Events) -> None:
    with pytest.raises(pgtide.ConfigError, match="bad event name ''"):
        events.publish("", {})
    with pytest.raises(pgtide.ConfigError, match="timezone-aware"):
        from datetime import datetime

        events.publish("x", run_at=datetime(2030, 1, 1))
    with pytest.raises(pgtide.ConfigError, match="retries"):
        events.register("x", lambda e: None, retries=-1)
    with pytest.raises(pgtide.ConfigError, match="no handlers registered"):
        events.run()


def test_unserialisable_result_is_kept_as_its_repr(events: pgtide.Events) -> None:
    """(Issue 12 changed this: a result JSON cannot hold is stored as its repr with a note,
    never turned into a failure.)"""

    class Junk:
        def __repr__(self) -> str:
            return "<junk 42>"

    @events.handler("returns_junk", retries=0)
    def junk(event: pgtide.Event) -> object:
        return Junk()

    id_ = events.publish("returns_junk")
    events.start(concurrency=1)
    rec = wait_for(lambda: (r := events.get(id_)) and r.state == "done" and r, what="done")
    assert rec.result["repr"] == "<junk 42>"
    assert "result of 'returns_junk' is not JSON-serialisable" in rec.result["note"]
    assert rec.error is None


def test_run_at_delays_an_event(events: pgtide.Events) -> None:
    from datetime import timedelta

    ran: list[float] = []
    events.register("later", lambda e: ran.append(time.monotonic()))
    began = time.monotonic()
    id_ = events.publish("later", run_at=timedelta(seconds=0.7))
    events.start(concurrency=1)
    wait_for(lambda: events.get(id_).state == "done", what="done")  # type: ignore[union-attr]
    assert ran[0] - began >= 0.6


def test_slow_live_handler_is_not_stolen(dsn: str) -> None:
    """A handler that outlives its lease keeps it (heartbeat); another worker never runs it."""
    runs: list[str] = []
    first = pgtide.Events(dsn=dsn, lease=0.6, poll_interval=0.05)
    second = pgtide.Events(dsn=dsn, lease=0.6, poll_interval=0.05)
    started = threading.Event()

    def slow(event: pgtide.Event) -> str:
        runs.append("first")
        started.set()
        time.sleep(2.5)
        return "finished"

    first.register("slow", slow, timeout=None)
    second.register("slow", lambda e: runs.append("second"))
    id_ = first.publish("slow")
    first.start(concurrency=1)
    assert started.wait(10)
    second.start(concurrency=1)
    wait_for(lambda: first.get(id_).state == "done", what="done")  # type: ignore[union-attr]
    rec = first.get(id_)
    first.close()
    second.close()
    assert runs == ["first"]
    assert rec is not None and rec.attempts == 1 and rec.result == "finished"


def test_graceful_stop_finishes_running_and_releases_the_rest(dsn: str) -> None:
    events = pgtide.Events(dsn=dsn, poll_interval=0.05, batch_size=20)
    started = threading.Semaphore(0)
    release = threading.Event()

    @events.handler("work")
    def work(event: pgtide.Event) -> int:
        started.release()
        release.wait(10)
        return int(event.payload)

    ids = events.publish_many("work", list(range(10)))
    events.start(concurrency=2)
    assert started.acquire(timeout=10) and started.acquire(timeout=10)
    stopper = threading.Thread(target=events.stop)
    stopper.start()
    time.sleep(0.2)  # stop() must wait for the two running handlers
    assert stopper.is_alive()
    release.set()
    stopper.join(10)
    assert not stopper.is_alive()
    recs = {r.id: r for r in events.recent(limit=20)}
    done = [i for i in ids if recs[i].state == "done"]
    assert len(done) == 2
    assert all(recs[i].result == ids.index(i) for i in done)
    rest = [recs[i] for i in ids if i not in done]
    assert all(r.state == "pending" and r.attempts == 0 for r in rest)
    with psycopg.connect(dsn) as conn:
        held = conn.execute("SELECT count(*) FROM pgtide.events WHERE lease_owner IS NOT NULL")
        assert held.fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM pgtide.event_workers").fetchone() == (0,)
    events.close()


def test_stop_timeout_bounds_a_handler_that_does_not_finish(dsn: str) -> None:
    events = pgtide.Events(dsn=dsn, poll_interval=0.05, lease=1.0)
    started = threading.Event()
    forever = threading.Event()

    def stuck(event: pgtide.Event) -> None:
        started.set()
        forever.wait(30)

    events.register("stuck", stuck, timeout=None)
    id_ = events.publish("stuck")
    events.start(concurrency=1, stop_timeout=0.3)
    assert started.wait(10)
    began = time.monotonic()
    events.stop()
    assert time.monotonic() - began < 3
    # the event is still held by the abandoned handler's lease; once it expires, it runs again
    rescuer = pgtide.Events(dsn=dsn, poll_interval=0.05)
    rescuer.register("stuck", lambda e: "rescued")
    rescuer.start(concurrency=1)
    wait_for(lambda: rescuer.get(id_).state == "done", what="re-run")  # type: ignore[union-attr]
    assert rescuer.get(id_).attempts == 2  # type: ignore[union-attr]
    rescuer.close()
    forever.set()
    events.close()


def test_keyed_events_run_one_at_a_time_in_order(dsn: str) -> None:
    """Across two workers, events of one key never overlap and run in publish order."""
    events = pgtide.Events(dsn=dsn, poll_interval=0.05)
    log: list[tuple[str, int, str]] = []
    lock = threading.Lock()
    active: dict[str, int] = {}
    overlaps: list[str] = []

    @events.handler("step")
    def step(event: pgtide.Event) -> None:
        key = event.key or ""
        with lock:
            active[key] = active.get(key, 0) + 1
            if active[key] > 1:
                overlaps.append(key)
            log.append((key, event.payload, "start"))
        time.sleep(0.002)
        with lock:
            active[key] -= 1

    for n in range(25):
        events.publish("step", n, key="alpha")
        events.publish("step", n, key="beta")
    events.publish_many("step", list(range(25)), key="gamma")
    other = pgtide.Events(dsn=dsn, poll_interval=0.05)  # a second worker on the same keys
    other.register("step", step)
    events.start(concurrency=8)
    other.start(concurrency=8)
    wait_for(lambda: events.status()["done"] == 75, what="all done")
    events.close()
    other.close()
    assert overlaps == []
    for key in ("alpha", "beta", "gamma"):
        assert [n for k, n, _ in log if k == key] == list(range(25))


def test_keyed_event_waits_for_a_failing_predecessor(dsn: str) -> None:
    events = pgtide.Events(dsn=dsn, poll_interval=0.05, retry_delay=0.05, max_retry_delay=0.1)
    order: list[int] = []

    @events.handler("k", retries=3)
    def handler(event: pgtide.Event) -> None:
        order.append(event.payload)
        if event.payload == 0 and event.attempt < 3:
            raise RuntimeError("not yet")

    events.publish_many("k", [0, 1, 2], key="account-1")
    events.start(concurrency=4)
    wait_for(lambda: events.status()["done"] == 3, what="all done")
    events.close()
    assert order == [0, 0, 0, 1, 2]


def test_per_handler_concurrency_limit(dsn: str) -> None:
    events = pgtide.Events(dsn=dsn, poll_interval=0.05)
    lock = threading.Lock()
    now = [0]
    peak = [0]

    @events.handler("limited", concurrency=2)
    def limited(event: pgtide.Event) -> None:
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        time.sleep(0.02)
        with lock:
            now[0] -= 1

    events.publish_many("limited", list(range(30)))
    events.start(concurrency=8)
    wait_for(lambda: events.status()["done"] == 30, what="all done")
    events.close()
    assert peak[0] == 2


def test_async_handler_and_timeout_under_blocking_face(dsn: str) -> None:
    import asyncio

    events = pgtide.Events(dsn=dsn, poll_interval=0.05, retry_delay=0.01)

    @events.handler("async_ok")
    async def ok(event: pgtide.Event) -> dict[str, Any]:
        await asyncio.sleep(0.01)
        return {"doubled": event.payload * 2}

    @events.handler("too_slow", retries=0, timeout=0.2)
    async def too_slow(event: pgtide.Event) -> None:
        await asyncio.sleep(5)

    good = events.publish("async_ok", 21)
    bad = events.publish("too_slow")
    events.start(concurrency=2)
    wait_for(lambda: events.get(good).state == "done", what="done")  # type: ignore[union-attr]
    wait_for(lambda: events.get(bad).state == "dead", what="dead")  # type: ignore[union-attr]
    assert events.get(good).result == {"doubled": 42}  # type: ignore[union-attr]
    assert "TimeoutError" in events.get(bad).error  # type: ignore[union-attr,operator]
    events.close()


def test_structured_log_line_per_event(events: pgtide.Events, caplog: Any) -> None:
    events.register("logged", lambda e: None)
    id_ = events.publish("logged")
    with caplog.at_level("INFO", logger="pgtide.events"):
        events.start(concurrency=1)
        wait_for(lambda: events.get(id_).state == "done", what="done")  # type: ignore[union-attr]
        events.stop()
    lines = [r for r in caplog.records if getattr(r, "event_id", None) == id_]
    assert len(lines) == 1
    line = lines[0]
    assert (line.event_name, line.attempt, line.outcome) == ("logged", 1, "done")  # type: ignore[attr-defined]
    assert line.duration_ms >= 0  # type: ignore[attr-defined]
    assert f"name=logged id={id_} attempt=1 outcome=done" in line.getMessage()


def test_poll_only_mode(dsn: str) -> None:
    events = pgtide.Events(dsn=dsn, poll_interval=0.05, listen=False)
    events.register("p", lambda e: e.payload)
    events.start(concurrency=1)
    id_ = events.publish("p", "polled")
    wait_for(lambda: events.get(id_).state == "done", what="done")  # type: ignore[union-attr]
    events.close()


def test_notify_wakes_an_idle_worker_at_once(dsn: str) -> None:
    """With a 30 s poll interval, only the NOTIFY of the insert can wake the worker in time."""
    events = pgtide.Events(dsn=dsn, poll_interval=30.0)
    events.register("ping", lambda e: None)
    events.start(concurrency=1)
    time.sleep(0.2)  # let the first (empty) claim pass, so the worker is idle and waiting
    began = time.monotonic()
    id_ = events.publish("ping")
    wait_for(lambda: events.get(id_).state == "done", timeout=5, what="done")  # type: ignore[union-attr]
    assert time.monotonic() - began < 2
    with psycopg.connect(dsn) as conn:  # the wake-up reuses the Listen core's connection
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
            "'pgtide-events-listen' AND datname = current_database()"
        ).fetchone()
    assert row == (1,)
    events.close()


def test_an_inserts_notify_names_its_newest_event(dsn: str) -> None:
    """The wake-up of an insert carries the highest id it inserted (one publish: its id; a
    publish_many: the last of them); a publish that inserted nothing (its dedupe_key is
    held) wakes nobody. (The listener holds the wake gate, as a waiting worker does.)"""
    events = pgtide.Events(dsn=dsn)
    events.status()  # the schema
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN pgtide_events")
        listener.execute("SELECT pg_advisory_lock_shared(%s, %s)", EVENTS_GATE)
        one = events.publish("n", 1, dedupe_key="k")
        many = events.publish_many("n", [1, 2, 3])
        assert events.publish("n", 2, dedupe_key="k") == one  # held: nothing inserted
        heard = [n.payload for n in listener.notifies(timeout=0.5)]
    assert heard == [str(one), str(max(many))]
    events.close()


def test_a_publish_notifies_only_while_a_worker_waits(dsn: str) -> None:
    """A NOTIFY locks the whole database through its commit's flush: a publish sends it only
    while a worker waits for it (holds the wake gate, migration 027). An idle worker holds
    it, and its publish is handled at once; with no worker waiting, nothing is sent."""
    events = pgtide.Events(dsn=dsn)
    events.status()  # the schema
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN pgtide_events")
        events.publish("alone", None)
        assert list(listener.notifies(timeout=0.3)) == []
        ran = threading.Event()
        worker = pgtide.Events(dsn=dsn, poll_interval=60)
        worker.register("ping", lambda e: ran.set())
        worker.start(2)
        wait_for(lambda: _waiting(dsn, EVENTS_GATE) == 1, timeout=5, what="the worker waiting")
        id_ = events.publish("ping", None)
        assert [n.payload for n in listener.notifies(timeout=5, stop_after=1)] == [str(id_)]
        assert ran.wait(5)  # woken by it, long before the poll
        worker.close()
        wait_for(lambda: _waiting(dsn, EVENTS_GATE) == 0, timeout=5, what="the gate released")
    events.close()


def _waiting(dsn: str, gate: tuple[int, int]) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return run(conn, waiting_io(gate))


def test_a_worker_claims_nothing_for_the_notify_of_an_event_it_already_took(dsn: str) -> None:
    """A NOTIFY that arrives after the claim that took its event (that claim's snapshot held
    the insert) makes no claim due and wakes nobody; a NOTIFY of an event it has not taken
    does (and one that arrives while a claim is out makes a claim due only until that claim
    comes back with its event)."""
    events = pgtide.Events(dsn=dsn)
    events.register("n", lambda e: None)
    worker = events._new_worker(run_args(4))
    core = worker.core

    def claim_round(conn: psycopg.Connection[Any], before: Any = None) -> list[int]:
        sent = time.monotonic()
        claims = core._claims()
        if before is not None:
            before()
        results = [conn.execute(q.statement, q.params).fetchall() for q, _, _ in claims]
        core._claimed(results, [want for _, want, _ in claims], sent)
        return [r[0] for got in results for r in got]

    with psycopg.connect(dsn, autocommit=True) as conn:
        run(conn, core.setup())
        first = events.publish("n", 1)
        assert claim_round(conn) == [first]  # the first round claims (due at start)
        assert core.on_notify(CHANNEL, str(first)) is False  # its NOTIFY, read afterwards
        assert core._claims() == []  # nothing due: no empty claim
        second = events.publish("n", 2)
        assert core.on_notify(CHANNEL, str(second)) is True
        assert claim_round(conn) == [second]
        assert core._claims() == []
        third = events.publish("n", 3)
        fourth = events.publish("n", 4)  # its NOTIFY is read while the claim is out
        assert core.on_notify(CHANNEL, str(third)) is True
        assert claim_round(conn, lambda: core.on_notify(CHANNEL, str(fourth))) == [third, fourth]
        assert core._claims() == []  # that claim brought it back: still nothing due
        assert core.on_notify(CHANNEL, "") is True  # pgtide's own wake-ups: a claim
        assert core._claims() != []
    events.close()


def test_a_notify_read_while_a_claim_is_out_makes_the_next_claim_due_when_it_missed_the_event(
    dsn: str,
) -> None:
    """At a steady publish rate most NOTIFYs arrive while a claim is out. One whose event
    committed after that claim's snapshot (the claim comes back without it) keeps a claim
    due, so the worker claims again right after, not at the next poll (30 s here)."""
    events = pgtide.Events(dsn=dsn, poll_interval=30.0)
    events.register("n", lambda e: None)
    worker = events._new_worker(run_args(4))
    core = worker.core
    with psycopg.connect(dsn, autocommit=True) as conn:
        run(conn, core.setup())
        first = events.publish("n", 1)
        sent = time.monotonic()
        claims = core._claims()  # due at start
        results = [conn.execute(q.statement, q.params).fetchall() for q, _, _ in claims]
        late = events.publish("n", 2)  # committed after the claim ran: it cannot see it
        assert core.on_notify(CHANNEL, str(late)) is True  # read while the claim is out
        core._claimed(results, [want for _, want, _ in claims], sent)
        assert [r[0] for got in results for r in got] == [first]
        again = core._claims()
        assert again != []  # still due: the claim came back without it
        got = [conn.execute(q.statement, q.params).fetchall() for q, _, _ in again]
        core._claimed(got, [want for _, want, _ in again], time.monotonic())
        assert [r[0] for rows in got for r in rows] == [late]
        assert core._claims() == []
    events.close()


def test_a_worker_shutting_down_after_a_failure_claims_nothing(dsn: str) -> None:
    """A plan that fails (not a stop) shuts down as a stop does: its last rounds record
    outcomes and release leases, and claim no event they could not run."""
    events = pgtide.Events(dsn=dsn)
    events.register("n", lambda e: None)
    worker = events._new_worker(run_args(4))
    core = worker.core
    with psycopg.connect(dsn, autocommit=True) as conn:
        run(conn, core.setup())
        events.publish("n", 1)
        assert core.on_notify(CHANNEL, "") is True  # a claim is due
        assert core.stop_requested is False
        shutdown = core._shutdown()  # what plan() runs when a step raised
        next(shutdown, None)
        assert core._claims() == []
        shutdown.close()
    events.close()


def test_a_claim_that_skipped_an_event_a_waiter_held_is_made_again(dsn: str) -> None:
    """``wait(id)`` marks the event watched, locking its row for an instant; a claim then
    skips it (SKIP LOCKED) and comes back empty. The waiter's commit wakes the workers, so
    the event runs at once, not at the next poll (``id = publish(); wait(id)`` hung for
    the whole poll interval now and then)."""
    from pgtide.events import _sql
    from pgtide.events._worker import WorkerCore

    empty = threading.Event()  # a claim came back empty
    claimed = WorkerCore._claimed

    def spy(self: WorkerCore, results: Any, wanted: Any, sent: float) -> bool:
        if results and not any(results):
            empty.set()
        return claimed(self, results, wanted, sent)

    events = pgtide.Events(dsn=dsn, poll_interval=60.0)
    events.register("ping", lambda e: None)
    id_ = events.publish("ping", 1)
    with pytest.MonkeyPatch.context() as patch, psycopg.connect(dsn) as waiter:
        patch.setattr(WorkerCore, "_claimed", spy)
        # the waiter's statement, its transaction held open while the worker starts: every
        # claim the worker makes meanwhile skips the locked row
        waiter.execute(_sql.WATCH, {"id": id_, "channel": _sql.CHANNEL})
        events.start(concurrency=2)
        try:
            assert empty.wait(10), "the worker never claimed"
            waiter.commit()
            assert events.wait(id_, timeout=10).state == "done"
        finally:
            events.close()


def test_a_claim_of_several_events_wakes_one_idle_pool_thread(dsn: str) -> None:
    """After a claim of three events, the claiming thread runs the first and passes the
    plan on: one idle pool thread is woken (it takes an event, else the plan, and wakes the
    next in turn). A thread back from a quick handler takes the other events and the plan
    itself, waking nobody more (each wake-up that finds nothing to do costs context
    switches beside the thread that claims: 2.7 a claim at a steady 1,000 events/s)."""
    events = pgtide.Events(dsn=dsn)
    events.register("n", lambda e: None)
    worker = events._new_worker(run_args(4))
    core = worker.core
    woken: list[int] = []
    core._work.notify = lambda n=1: woken.append(n)  # type: ignore[method-assign]
    with psycopg.connect(dsn, autocommit=True) as conn:
        run(conn, core.setup())
        ids = events.publish_many("n", [1, 2, 3])
        sent = time.monotonic()
        claims = core._claims()
        results = [conn.execute(q.statement, q.params).fetchall() for q, _, _ in claims]
        core._claimed(results, [want for _, want, _ in claims], sent)
        core._idle = 2  # two pool threads wait for work
        passed, first = core.lead(take=True)
        assert passed and first is not None and first.id == ids[0]
        assert woken == [1]
        # back from its handler, the claiming thread takes the rest, then the plan back
        assert [core._next().id, core._next().id] == ids[1:]  # type: ignore[union-attr]
        assert core._next() is _DRIVE
        assert woken == [1]
    events.close()


def test_an_idle_blocking_worker_runs_a_claimed_event_in_the_thread_that_claimed_it(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No hand-off between the claim and a blocking handler: the thread that claimed the
    event runs it (and passes the worker's loop to an idle pool thread meanwhile)."""
    from pgtide.events._worker import WorkerCore

    claimed_in: list[str] = []
    claimed = WorkerCore._claimed

    def spy(self: WorkerCore, results: Any, wanted: Any, sent: float) -> bool:
        if any(results):
            claimed_in.append(threading.current_thread().name)
        return claimed(self, results, wanted, sent)

    monkeypatch.setattr(WorkerCore, "_claimed", spy)
    events = pgtide.Events(dsn=dsn, poll_interval=30.0)
    ran_in: list[str] = []
    events.register("ping", lambda e: ran_in.append(threading.current_thread().name))
    events.start(concurrency=2)
    try:
        for n in range(5):
            id_ = events.publish("ping", n)
            assert events.wait(id_, timeout=10).state == "done"
    finally:
        events.close()
    # the worker's own thread claims until a pool thread idles (it runs no handler: it
    # passes the loop on); from then on, each event runs where it was claimed
    pairs = list(zip(claimed_in, ran_in, strict=True))
    by_pool = [(c, r) for c, r in pairs if c != "pgtide-events-worker"]
    assert len(by_pool) >= 3
    assert all(c == r for c, r in by_pool), pairs


def test_a_full_claim_in_a_backlog_is_followed_by_the_next_claim_from_the_same_thread(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blocking worker whose claim came back full (a backlog) claims again at once from the
    same thread, and has the pool run the claimed events: it does not pass its loop to a
    pool thread first (that thread would wait for the GIL behind the busy pool while the
    claimed events drain, and the next claim with it)."""
    from pgtide.events._worker import WorkerCore

    steps: dict[str, list[str]] = {}
    claimed, lead = WorkerCore._claimed, WorkerCore.lead

    def spy_claimed(self: WorkerCore, results: Any, wanted: Any, sent: float) -> bool:
        more = claimed(self, results, wanted, sent)  # (also after a round that claims nothing)
        steps.setdefault(threading.current_thread().name, []).append(f"claimed {more}")
        return more

    def spy_lead(self: WorkerCore, take: bool) -> Any:
        steps.setdefault(threading.current_thread().name, []).append("lead")
        return lead(self, take)

    monkeypatch.setattr(WorkerCore, "_claimed", spy_claimed)
    monkeypatch.setattr(WorkerCore, "lead", spy_lead)
    events = pgtide.Events(dsn=dsn, poll_interval=30.0, batch_size=10)
    ran = itertools.count()
    events.register("noop", lambda e: next(ran))
    events.publish_many("noop", list(range(200)))
    events.start(concurrency=4)
    try:
        wait_for(lambda: events.status()["done"] == 200, what="the backlog done")
    finally:
        events.close()
    full = [(t, i) for t, s in steps.items() for i, step in enumerate(s) if step == "claimed True"]
    assert len(full) >= 5, steps
    assert all(steps[t][i + 1 : i + 2] != ["lead"] for t, i in full), steps


def test_a_blocking_handler_run_by_the_claiming_thread_never_stalls_the_worker(dsn: str) -> None:
    """While the thread that claimed an event runs its (slow) handler, another thread drives
    the worker: it renews the lease (a lease shorter than the handler never lapses), claims
    and starts other events, and hears a cancel."""
    events = pgtide.Events(dsn=dsn, lease=0.6, poll_interval=30.0)
    gate = threading.Event()
    slow_started = threading.Event()

    def slow(event: pgtide.Event) -> None:
        slow_started.set()
        while not gate.wait(0.01):
            if event.cancelled:
                return

    events.register("slow", slow)
    events.register("quick", lambda e: e.payload)
    events.start(concurrency=2)
    time.sleep(0.2)  # the first (empty) claim passed: the next ones are woken by NOTIFY
    first = events.publish("slow")
    assert slow_started.wait(10)
    for n in range(3):  # the other slot runs these while the slow one holds its thread
        assert events.wait(events.publish("quick", n), timeout=10).state == "done"
    time.sleep(1.5)  # longer than the lease: renewed meanwhile, never claimed again
    assert events.cancel(first) == "running"
    record = events.wait(first, timeout=10)
    gate.set()
    events.close()
    assert record.state == "cancelled"
    assert record.attempts == 1


def test_notify_wakes_a_worker_on_your_own_table(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE jobs (id bigserial, name text)")
    events = pgtide.Events(dsn=dsn, table="jobs", channel="jobs-channel", poll_interval=30.0)
    events.register("ping", lambda e: e.source_id)
    events.start(concurrency=1)
    time.sleep(0.2)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO jobs (name) VALUES ('ping')")
        conn.execute("SELECT pg_notify('jobs-channel', '1')")  # the id: only that row is read
    wait_for(lambda: events.status()["done"] == 1, timeout=5, what="the notified row")
    with psycopg.connect(dsn, autocommit=True) as conn:
        # payloads notified died on (empty, not an integer) are wake-ups here: a whole scan
        conn.execute("INSERT INTO jobs (name) VALUES ('ping'), ('ping')")
        conn.execute("SELECT pg_notify('jobs-channel', ''), pg_notify('jobs-channel', 'x y')")
    wait_for(lambda: events.status()["done"] == 3, timeout=5, what="the scanned rows")
    events.close()


def test_one_worker_handles_a_burst_in_id_order_and_stops_fast(dsn: str) -> None:
    """notified ran a transaction's events newest first and took 5 s to shut down."""
    events = pgtide.Events(dsn=dsn, poll_interval=0.05, batch_size=50)
    order: list[int] = []
    events.register("burst", lambda e: order.append(e.payload))
    events.start(concurrency=1)
    with psycopg.connect(dsn) as conn:  # one transaction, many events
        events.publish_many("burst", list(range(500)), conn=conn)
        conn.commit()
    wait_for(lambda: len(order) == 500, what="the burst")
    began = time.monotonic()
    events.stop()
    assert time.monotonic() - began < 2.5  # notified: 5 s; a loaded machine: well under 1 s
    assert order == list(range(500))
    events.close()


def test_a_handler_calling_sys_exit_is_a_failed_attempt(events: pgtide.Events) -> None:
    import sys

    def bail(event: pgtide.Event) -> str:
        if event.attempt == 1:
            sys.exit(3)
        return "second time lucky"

    events.register("bail", bail, retries=1)
    id_ = events.publish("bail")
    events.start(concurrency=1)
    wait_for(lambda: events.get(id_).state == "done", what="done")  # type: ignore[union-attr]
    rec = events.get(id_)
    assert rec is not None and rec.attempts == 2 and "SystemExit: 3" in (rec.error or "")


def test_purge_deletes_only_old_finished_events(events: pgtide.Events, dsn: str) -> None:
    from datetime import timedelta

    events.register("p", lambda e: None)
    events.register("d", lambda e: 1 / 0, retries=0)
    done, dead = events.publish("p"), events.publish("d")
    waiting = events.publish("nobody")
    events.start(concurrency=1)
    wait_for(lambda: events.status()["dead"] == 1 and events.status()["done"] == 1, what="ran")
    events.stop()
    assert events.purge(timedelta(hours=1)) == 0  # nothing that old
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE pgtide.events SET finished_at = now() - interval '2 hours'")
    assert events.purge(timedelta(hours=1)) == 1
    assert events.get(done) is None and events.get(dead) is not None
    assert events.purge(timedelta(hours=1), dead=True) == 1
    assert events.get(waiting) is not None  # never a waiting event
    with pytest.raises(pgtide.ConfigError, match="own events table"):
        pgtide.Events(dsn=dsn, table="anything").purge(timedelta(0))


def test_a_nul_character_is_a_clear_payload_error_before_anything_is_sent(
    events: pgtide.Events, dsn: str
) -> None:
    """jsonb cannot hold NUL: pgtide says so itself (psycopg would raise
    UntranslatableCharacter after a round trip)."""
    unreachable = pgtide.Events(dsn="postgresql://nobody@127.0.0.1:1/none")
    for publisher in (events, unreachable):  # refused before any connection
        with pytest.raises(pgtide.EventPayloadError) as info:
            publisher.publish("note", {"text": ["ok", "a\x00b"]})
        assert "payload of event 'note' holds a NUL character" in str(info.value)
        assert "['text'][1]" in str(info.value)
    with pytest.raises(pgtide.EventPayloadError, match="payload #1 of event 'many'"):
        events.publish_many("many", ["fine", "bad\x00"])
    with pytest.raises(pgtide.EventPayloadError, match="NUL character"):
        events.publish("note", "\x00")
    with pytest.raises(pgtide.ConfigError, match="NUL"):
        events.publish("note", "x", key="k\x00")
    with pytest.raises(pgtide.ConfigError, match="NUL"):
        events.publish("no\x00te", "x")
    # the text "\u0000" (a backslash, not a NUL) is a fine payload
    id_ = events.publish("note", {"text": "\\u0000"})
    assert events.get(id_).payload == {"text": "\\u0000"}  # type: ignore[union-attr]
    assert count(dsn, "SELECT count(*) FROM pgtide.events") == 1


def test_a_nul_in_a_result_is_kept_as_repr_and_in_an_error_is_recorded(
    events: pgtide.Events,
) -> None:
    """(Issue 12: a result JSON cannot hold is kept as its repr with a note, not a failure.)"""

    @events.handler("nul_result", retries=0)
    def nul_result(event: pgtide.Event) -> str:
        return "a\x00b"

    @events.handler("nul_error", retries=0)
    def nul_error(event: pgtide.Event) -> None:
        raise ValueError("bad \x00 byte")

    first = events.publish("nul_result")
    second = events.publish("nul_error")
    events.start(concurrency=2)
    done = events.wait(first, timeout=20)
    assert done.state == "done" and "NUL character" in done.result["note"]
    assert done.result["repr"] == repr("a\x00b")
    assert events.wait(second, timeout=20).state == "dead"
    assert "bad \\x00 byte" in (events.get(second).error or "")  # type: ignore[union-attr]


def test_a_role_without_grants_gets_permission_denied_on_every_path(dsn: str) -> None:
    role = f"pgtide_events_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    as_role = make_conninfo(dsn, user=role)
    try:
        plain = pgtide.Events(dsn=as_role)
        plain.register("x", lambda e: None)
        calls: list[Any] = [
            lambda: plain.publish("x"),
            lambda: plain.status(),
            lambda: plain.start(concurrency=1),
        ]
        for call in calls:
            with pytest.raises(pgtide.PermissionDenied, match=f"pgtide grant {role}"):
                call()
        plain.close()
        # the caller's connection: the statement itself is refused
        with (
            psycopg.connect(as_role, autocommit=True) as conn,
            pytest.raises(pgtide.PermissionDenied, match=f"pgtide grant {role}"),
        ):
            pgtide.Events(dsn=dsn).publish("x", conn=conn)
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_retry_runs_at_its_time_not_at_the_next_poll(dsn: str) -> None:
    """retry_delay=0.05 with a 5 s poll: the worker sleeps until the retry is due."""
    events = pgtide.Events(dsn=dsn, poll_interval=5, retry_delay=0.05, max_retry_delay=0.05)
    runs: list[float] = []

    @events.handler("flaky", retries=5)
    def flaky(event: pgtide.Event) -> str:
        runs.append(time.monotonic())
        if event.attempt < 3:
            raise RuntimeError(f"attempt {event.attempt} fails")
        return "third time"

    events.start(concurrency=1)
    began = time.monotonic()
    id_ = events.publish("flaky")
    wait_for(lambda: events.get(id_).state == "done", timeout=20, what="done")  # type: ignore[union-attr]
    elapsed = time.monotonic() - began
    events.close()
    assert len(runs) == 3
    assert elapsed < 3.0, f"three attempts took {elapsed:.2f} s"  # at the polls: >= 10 s
