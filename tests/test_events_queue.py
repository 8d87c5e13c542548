"""Events as a job queue (issue 12): priorities, dedupe, global limits, cancel, pause, wait,
retry_dead, retention, schedules, and publishing on the caller's connection."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pgtide_testing
import psycopg
import pytest
from events_helpers import count, limited_worker, most_at_once, read_runs, wait_for

import pgtide
import pgtide.aio
from pgtide.events._signatures import run_args
from pgtide.session import run


@pytest.fixture
def events(dsn: str) -> Any:
    ev = pgtide.Events(dsn=dsn, poll_interval=0.05, retry_delay=0.01, max_retry_delay=0.05)
    yield ev
    ev.close()


def test_smaller_priority_runs_first_then_id_order(events: pgtide.Events) -> None:
    order: list[int] = []
    events.register("job", lambda e: order.append(e.payload))
    for n, priority in [(1, 5), (2, 0), (3, 0), (4, -1), (5, 5), (6, 1)]:
        events.publish("job", n, priority=priority)
    last = events.publish("job", 7, priority=9)
    events.start(concurrency=1)
    events.wait(last, timeout=20)
    assert order == [4, 2, 3, 6, 1, 5, 7]
    assert events.get(last).priority == 9  # type: ignore[union-attr]


def test_dedupe_under_eight_concurrent_publishers_inserts_one(dsn: str) -> None:
    publishers = [pgtide.Events(dsn=dsn) for _ in range(8)]
    for p in publishers:
        p.status()  # connected and schema installed: the race is the publish itself
    ids: list[int] = []
    start = threading.Barrier(8)

    def publish(p: pgtide.Events) -> None:
        start.wait()
        for _ in range(20):
            ids.append(p.publish("charge", {"order": 42}, dedupe_key="order-42"))

    threads = [threading.Thread(target=publish, args=(p,)) for p in publishers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in publishers:
        p.close()
    assert len(set(ids)) == 1 and len(ids) == 160
    assert count(dsn, "SELECT count(*) FROM pgtide.events WHERE dedupe_key = 'order-42'") == 1


def test_dedupe_releases_the_key_when_the_event_ends_and_works_with_publish_many(
    events: pgtide.Events, dsn: str
) -> None:
    events.register("charge", lambda e: None)
    first = events.publish("charge", 1, dedupe_key="k1")
    ids = events.publish_many("charge", [1, 2, 3, 4], dedupe_key=["k1", "k2", None, "k2"])
    assert ids[0] == first and ids[1] == ids[3] and len(set(ids)) == 3
    same = events.publish_many("charge", [5, 6], dedupe_key="k3")
    assert same[0] == same[1]
    assert count(dsn, "SELECT count(*) FROM pgtide.events WHERE dedupe_key = 'k3'") == 1
    events.start(concurrency=2)
    events.wait(first, timeout=20)
    again = events.publish("charge", 1, dedupe_key="k1")  # the first one ended: a new event
    assert again != first


def test_global_concurrency_holds_across_two_worker_processes(
    dsn: str, killable: pgtide_testing.Killable, tmp_path: Path
) -> None:
    """A global limit of 3 over two workers that run 2 at once each: neither can hold every
    slot, so each always finds one to claim and both run (with two workers of 8 and a limit
    of 2, the one that got the slots first often kept them, claiming again as it finished).
    Were the limit held per process only, they would run 4 at once."""
    log = str(tmp_path / "runs.log")
    with pgtide.Events(dsn=dsn) as events:
        for worker in ("A", "B"):
            killable.start(limited_worker, dsn, worker, log, 3, None, 0.15, 2)
        query = "SELECT count(*) FROM pgtide.event_workers"
        wait_for(lambda: count(dsn, query) == 2, what="two workers")
        ids = events.publish_many("limited", list(range(16)))
        for id_ in ids:
            assert events.wait(id_, timeout=60).state == "done"
    runs = read_runs(log)
    assert len(runs) == 16
    assert most_at_once(runs) <= 3  # never 4, though the two workers could run 2 + 2
    assert {worker for _, worker, *_ in runs} == {"A", "B"}


def _claimed_by_one_round(dsn: str, events: pgtide.Events, concurrency: int) -> int:
    """How many events one claim round of a fresh worker (``concurrency`` at once) takes."""
    worker = events._new_worker(run_args(concurrency))
    with psycopg.connect(dsn, autocommit=True) as conn:
        run(conn, worker.core.setup())
        sent = time.monotonic()
        claims = worker.core._claims()
        results = [conn.execute(q.statement, q.params).fetchall() for q, _, _ in claims]
        worker.core._claimed(results, [want for _, want, _ in claims], sent)
        row = conn.execute(
            "SELECT count(*) FROM pgtide.events WHERE state = 'running' AND lease_owner = %s",
            (worker.owner,),
        ).fetchone()
        conn.execute("UPDATE pgtide.events SET state = 'pending', lease_owner = NULL")
    assert row is not None
    return int(row[0])


def test_a_worker_claims_no_more_slots_of_a_limited_name_than_it_can_start(dsn: str) -> None:
    """Claimed, an event holds a slot of its name's limit while it waits to start: a worker
    that runs 2 at once takes 2 of a limit of 3 (the third is left to another worker), while
    a limit far above what it could claim lets it claim ahead as an unlimited name does."""
    with pgtide.Events(dsn=dsn) as events:
        events.register("scarce", lambda e: None, concurrency=3)
        events.register("plenty", lambda e: None, concurrency=100_000)
        events.publish_many("scarce", list(range(10)))
        assert _claimed_by_one_round(dsn, events, 2) == 2
        events.publish_many("plenty", list(range(10)))
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("UPDATE pgtide.events SET state = 'done' WHERE name = 'scarce'")
        assert _claimed_by_one_round(dsn, events, 2) == 10


def test_global_rate_limit(dsn: str, killable: pgtide_testing.Killable, tmp_path: Path) -> None:
    log = str(tmp_path / "runs.log")
    with pgtide.Events(dsn=dsn) as events:
        ids = events.publish_many("limited", list(range(15)))
        for worker in ("A", "B"):
            killable.start(limited_worker, dsn, worker, log, 100, "5/s", 0.0)
        for id_ in ids:
            assert events.wait(id_, timeout=60).state == "done"
    starts = sorted(began for *_, began, _ in read_runs(log))
    assert starts[-1] - starts[0] >= 1.8  # 15 starts at 5/s: three windows at least
    for i, at in enumerate(starts):  # any window a bit under a second holds at most 5
        assert sum(1 for s in starts[i:] if s < at + 0.9) <= 5


def test_limits_and_pause_are_stored_per_name(events: pgtide.Events, dsn: str) -> None:
    events.register("slow", lambda e: None, concurrency=3, rate="10/m")
    events.start(concurrency=1)
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT concurrency, rate_count, rate_period FROM pgtide.event_queues "
            "WHERE name = 'slow'"
        ).fetchone()
    assert row == (3, 10, 60.0)
    with pytest.raises(pgtide.ConfigError, match="bad rate"):
        events.register("x", lambda e: None, rate="fast")


def test_pause_and_resume(events: pgtide.Events) -> None:
    ran = threading.Event()
    events.register("report", lambda e: ran.set())
    events.pause("report")
    assert events.status()["paused"] == ["report"]
    id_ = events.publish("report")
    events.start(concurrency=1)
    assert not ran.wait(0.5)  # several claims happened: a paused name is never claimed
    assert events.get(id_).state == "pending"  # type: ignore[union-attr]
    events.resume("report")
    assert events.wait(id_, timeout=10).state == "done"
    assert events.status()["paused"] == []


def test_cancel_a_pending_event(events: pgtide.Events) -> None:
    ran: list[int] = []
    events.register("job", lambda e: ran.append(e.id))
    id_ = events.publish("job", run_at=timedelta(seconds=0.5))
    assert events.cancel(id_) == "cancelled"
    assert events.cancel(id_) is None  # already ended
    events.start(concurrency=1)
    record = events.wait(id_, timeout=5)
    assert record.state == "cancelled" and ran == []


def test_cancel_a_running_blocking_handler(events: pgtide.Events) -> None:
    started = threading.Event()
    saw: list[bool] = []

    @events.handler("long", retries=5)
    def long(event: pgtide.Event) -> str:
        started.set()
        deadline = time.monotonic() + 20
        while not event.cancelled and time.monotonic() < deadline:
            time.sleep(0.01)
        saw.append(event.cancelled)
        return "stopped"

    id_ = events.publish("long")
    events.start(concurrency=1)
    assert started.wait(10)
    assert events.cancel(id_) == "running"
    record = events.wait(id_, timeout=10)
    assert record.state == "cancelled" and saw == [True] and record.attempts == 1


def test_a_cancel_reaches_a_running_handler_while_full_claims_follow_each_other(
    events: pgtide.Events, dsn: str
) -> None:
    # a backlog keeps the claims full, and after a full claim the worker claims again without
    # reading its wake-ups first: the cancel's NOTIFY is still read while the backlog lasts
    # (not left to the next heartbeat, a third of the lease away)
    started = threading.Event()
    unfinished = "SELECT count(*) FROM pgtide.events WHERE name = 'quick' AND state <> 'done'"
    saw: list[tuple[bool, int]] = []

    @events.handler("long")
    def long(event: pgtide.Event) -> None:
        started.set()
        deadline = time.monotonic() + 20
        while not event.cancelled and time.monotonic() < deadline:
            time.sleep(0.001)
        saw.append((event.cancelled, count(dsn, unfinished)))

    events.register("quick", lambda event: None)
    id_ = events.publish("long")
    events.publish_many("quick", list(range(30_000)))
    events.start(concurrency=4)
    assert started.wait(10)
    assert events.cancel(id_) == "running"
    record = events.wait(id_, timeout=10)
    assert record.state == "cancelled"
    [(cancelled, backlog)] = saw
    assert cancelled and backlog > 0  # seen while full claims still followed each other


def test_cancel_a_running_async_handler(dsn: str) -> None:
    async def main() -> pgtide.EventRecord:
        events = pgtide.aio.Events(dsn=dsn, poll_interval=0.05)
        started = asyncio.Event()
        cancelled: list[bool] = []

        @events.handler("long", retries=5)
        async def long(event: pgtide.Event) -> None:
            started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

        id_ = await events.publish("long")
        await events.start(concurrency=1)
        await asyncio.wait_for(started.wait(), 10)
        assert await events.cancel(id_) == "running"
        record = await events.wait(id_, timeout=10)
        assert cancelled == [True]
        await events.close()
        return record

    record = asyncio.run(main())
    assert record.state == "cancelled" and record.attempts == 1


def test_wait_returns_within_10_ms_of_completion(events: pgtide.Events, dsn: str) -> None:
    """Completion is the commit of the outcome: a LISTENer of our own sees it (its NOTIFY is
    sent at that commit); wait() returns within 10 ms of that, with no polling."""
    go = threading.Event()
    seen: dict[int, float] = {}

    @events.handler("job")
    def job(event: pgtide.Event) -> int:
        go.wait(10)
        return 1

    listener = psycopg.connect(dsn, autocommit=True)
    listener.execute("LISTEN pgtide_events_done")

    def watch() -> None:
        for note in listener.notifies(timeout=30, stop_after=5):
            for id_ in note.payload.split(","):
                seen[int(id_)] = time.monotonic()

    watcher = threading.Thread(target=watch)
    watcher.start()
    events.start(concurrency=1)
    lags = []
    for _ in range(5):
        go.clear()
        id_ = events.publish("job")
        threading.Timer(0.2, go.set).start()
        record = events.wait(id_, timeout=10)
        returned = time.monotonic()
        assert record.state == "done"
        wait_for(lambda i=id_: i in seen, what="our own listener saw the end")  # type: ignore[misc]
        lags.append(returned - seen[id_])
    watcher.join()
    listener.close()
    assert sorted(lags)[2] < 0.010, lags  # the median; one slow scheduler tick is not a bug
    with pytest.raises(TimeoutError):
        events.wait(events.publish("nobody"), timeout=0.2)


def test_wait_async_twin(dsn: str) -> None:
    async def main() -> str:
        async with pgtide.aio.Events(dsn=dsn, poll_interval=0.05) as events:
            events.register("job", lambda e: {"ok": e.payload})
            id_ = await events.publish("job", 3)
            await events.start(concurrency=1)
            record = await events.wait(id_, timeout=10)
            return record.state

    assert asyncio.run(main()) == "done"


def test_retry_dead_returns_the_count(events: pgtide.Events) -> None:
    fail = [True]

    @events.handler("flaky", retries=0)
    def flaky(event: pgtide.Event) -> None:
        if fail[0]:
            raise RuntimeError("boom")

    ids = [events.publish("flaky", n) for n in range(3)]
    events.start(concurrency=2)
    for id_ in ids:
        assert events.wait(id_, timeout=10).state == "dead"
    fail[0] = False
    assert events.retry_dead("other") == 0
    assert events.retry_dead() == 3
    for id_ in ids:
        assert events.wait(id_, timeout=10).state == "done"


def test_keep_done_purges_finished_events(dsn: str) -> None:
    with pgtide.Events(dsn=dsn, poll_interval=0.05, keep_done=timedelta(0)) as events:
        events.register("job", lambda e: None)
        id_ = events.publish("job")
        events.publish("other")  # unhandled: never purged
        events.start(concurrency=1)
        wait_for(lambda: events.get(id_) is None, what="the done event purged")
        assert events.status()["pending"] == 1


def test_a_schedule_with_three_workers_enqueues_each_tick_once(dsn: str) -> None:
    workers = [pgtide.Events(dsn=dsn, poll_interval=0.05) for _ in range(3)]
    for w in workers:
        w.register("tick", lambda e: None)
    workers[0].schedule("tick", "* * * * * *", {"every": "second"}, id="each-second")
    assert [s.id for s in workers[0].schedules()] == ["each-second"]
    for w in workers:
        w.start(concurrency=2)
    query = "SELECT count(DISTINCT dedupe_key) FROM pgtide.events WHERE name = 'tick'"
    wait_for(lambda: count(dsn, query) >= 4, timeout=15, what="four ticks")
    assert workers[0].unschedule("each-second") and not workers[0].unschedule("each-second")
    for w in workers:
        w.close()
    with psycopg.connect(dsn) as conn:
        keys = [
            r[0] for r in conn.execute("SELECT dedupe_key FROM pgtide.events WHERE name = 'tick'")
        ]
    assert len(keys) == len(set(keys)) >= 4  # each tick once
    assert all(k.startswith("schedule:each-second:") for k in keys)


def test_after_downtime_a_missed_tick_is_enqueued_once(events: pgtide.Events, dsn: str) -> None:
    events.register("nightly", lambda e: None)
    events.schedule("nightly", "*/5 * * * *", tz="Europe/Paris", id="n")
    with psycopg.connect(dsn, autocommit=True) as conn:  # as if down for an hour
        conn.execute("UPDATE pgtide.event_schedules SET next_at = now() - interval '1 hour'")
    events.start(concurrency=1)
    query = "SELECT count(*) FROM pgtide.events WHERE name = 'nightly'"
    wait_for(lambda: count(dsn, query) == 1, what="one event")
    (schedule,) = events.schedules()
    assert schedule.next_at > datetime.now(UTC) and schedule.next_at.minute % 5 == 0
    time.sleep(0.3)
    assert count(dsn, query) == 1


def test_bad_schedules_are_clear_errors(events: pgtide.Events) -> None:
    with pytest.raises(pgtide.ConfigError, match="cron"):
        events.schedule("x", "every day")
    with pytest.raises(pgtide.ConfigError, match="time zone"):
        events.schedule("x", "0 3 * * *", tz="Mars/Olympus")


def test_publish_on_the_callers_connection_uses_its_database(dsn: str) -> None:
    """Events(dsn=unreachable) never connects when given conn=: the schema is checked
    through the caller's connection, in the caller's database."""
    events = pgtide.Events(dsn="postgresql://nobody@127.0.0.1:1/none?connect_timeout=1")
    with psycopg.connect(dsn) as conn:
        with conn.transaction():
            id_ = events.publish("job", {"n": 1}, conn=conn)
        with conn.transaction(force_rollback=True):
            gone = events.publish("job", {"n": 2}, conn=conn)
    assert count(dsn, "SELECT count(*) FROM pgtide.events WHERE id = %s", id_) == 1
    assert count(dsn, "SELECT count(*) FROM pgtide.events WHERE id = %s", gone) == 0


def test_failure_log_line_carries_the_exception(
    events: pgtide.Events, caplog: pytest.LogCaptureFixture
) -> None:
    @events.handler("bad", retries=0)
    def bad(event: pgtide.Event) -> None:
        raise ValueError("the card was declined")

    caplog.set_level("INFO", logger="pgtide.events")
    events.start(concurrency=1)
    assert events.wait(events.publish("bad"), timeout=10).state == "dead"
    wait_for(lambda: any("declined" in r.getMessage() for r in caplog.records), what="log")
    line = next(r.getMessage() for r in caplog.records if "declined" in r.getMessage())
    assert "outcome=dead" in line and "ValueError: the card was declined" in line
