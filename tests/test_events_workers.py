"""Many worker processes over one table; a SIGKILLed worker's events run again elsewhere."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import pgtide_testing
import psycopg
import pytest
from events_helpers import (
    RUNS_TABLE,
    batch_worker,
    blocking_worker,
    count,
    crashing_worker,
    logging_worker,
    read_runs,
    recording_worker,
    wait_for,
)

import pgtide


def _setup(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(RUNS_TABLE)


def test_two_processes_one_killed_midway_every_event_done_never_twice_at_once(
    dsn: str, killable: pgtide_testing.Killable
) -> None:
    _setup(dsn)
    total = 2000
    pgtide.Events(dsn=dsn).publish_many("job", [{"n": n} for n in range(total)])
    # leases of 2 s: a worker starved of CPU by a loaded machine still renews them in time
    victim = killable.start(recording_worker, dsn, "A", 4, 2.0, 0.002)
    killable.start(recording_worker, dsn, "B", 4, 2.0, 0.002)
    done = "SELECT count(*) FROM pgtide.events WHERE state = 'done'"
    by_a = "SELECT count(*) FROM pgtide.events WHERE state = 'done' AND result->>'worker' = 'A'"
    wait_for(lambda: count(dsn, done) >= total // 4, timeout=40, what="a quarter done")
    wait_for(lambda: count(dsn, by_a) > 0, timeout=40, what="outcomes recorded by A")
    assert count(dsn, "SELECT count(*) FROM handler_runs WHERE worker = 'A'") > 0
    killable.kill(victim)

    def a_ended_and_all_done() -> bool:
        """A's unfinished runs end with the process (the unique index then lets a re-run
        begin); ended again at each look, since a statement A's backend was running when
        the process died may still commit its row after the first look."""
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "UPDATE handler_runs SET ended = clock_timestamp() "
                "WHERE worker = 'A' AND ended IS NULL"
            )
        return count(dsn, done) == total

    wait_for(a_ended_and_all_done, timeout=45, what="every event done")

    with psycopg.connect(dsn) as conn:
        states = dict(
            conn.execute("SELECT state, count(*) FROM pgtide.events GROUP BY 1").fetchall()
        )
        assert states == {"done": total}
        # every event ran, and finished, at least once
        unran = conn.execute(
            "SELECT count(*) FROM pgtide.events e WHERE NOT EXISTS "
            "(SELECT 1 FROM handler_runs r WHERE r.event_id = e.id)"
        ).fetchone()
        assert unran == (0,)
        # no two runs of one event overlap in time (the unique index also refused any such
        # start while the test ran: a refused start is a failed attempt, and none failed)
        overlapping = conn.execute(
            """SELECT count(*) FROM handler_runs a JOIN handler_runs b
               ON a.event_id = b.event_id AND a.ctid < b.ctid
               AND tstzrange(a.began, a.ended) && tstzrange(b.began, b.ended)"""
        ).fetchone()
        assert overlapping == (0,)
        errors = conn.execute("SELECT count(*) FROM pgtide.events WHERE error IS NOT NULL")
        assert errors.fetchone() == (0,)
        # the killed worker's in-flight events were re-run by B (their attempts may not show
        # A's start: a start is recorded in batches, and the kill can come before the write)
        rerun = conn.execute(
            "SELECT count(DISTINCT a.event_id) FROM handler_runs a JOIN handler_runs b"
            " ON a.event_id = b.event_id WHERE a.worker = 'A' AND b.worker = 'B'"
        ).fetchone()
        assert rerun is not None and rerun[0] > 0
        by_worker = dict(
            conn.execute("SELECT result->>'worker', count(*) FROM pgtide.events GROUP BY 1")
        )
        assert set(by_worker) == {"A", "B"}


def test_lease_expiry_reruns_a_killed_workers_event(
    dsn: str, killable: pgtide_testing.Killable
) -> None:
    _setup(dsn)
    events = pgtide.Events(dsn=dsn, poll_interval=0.05)
    id_ = events.publish("stuck", {"order": 9})
    doomed = killable.start(blocking_worker, dsn, 1.0)
    wait_for(
        lambda: count(dsn, "SELECT count(*) FROM handler_runs WHERE worker = 'doomed'"),
        what="the doomed worker to start the handler",
    )
    held = events.get(id_)
    assert held is not None and held.state == "running"
    # (a start is written in the worker's next round, at once: a kill before it forgets it)
    wait_for(lambda: events.get(id_).attempts == 1, what="the start counted")  # type: ignore[union-attr]
    killable.kill(doomed)
    events.register("stuck", lambda e: {"rescued": e.payload["order"]})
    events.start(concurrency=1)
    wait_for(lambda: events.get(id_).state == "done", what="re-run")  # type: ignore[union-attr]
    rec = events.get(id_)
    events.close()
    assert rec is not None
    assert rec.attempts == 2
    assert rec.result == {"rescued": 9}


def test_worker_survives_a_server_restart(restartable: pgtide_testing.RestartableServer) -> None:
    """The worker reconnects with backoff; events published after the restart are handled."""
    pgtide.install(dsn=restartable.dsn)
    events = pgtide.Events(dsn=restartable.dsn, poll_interval=0.1)
    handled: list[int] = []
    events.register("tick", lambda e: handled.append(e.payload))
    events.start(concurrency=2)
    events.publish_many("tick", [1, 2, 3])
    wait_for(lambda: len(handled) == 3, what="first three")
    restartable.restart()
    publisher = pgtide.Events(dsn=restartable.dsn)
    publisher.publish_many("tick", [4, 5, 6])
    wait_for(lambda: sorted(set(handled)) == [1, 2, 3, 4, 5, 6], timeout=30, what="after restart")
    wait_for(lambda: publisher.status()["done"] == 6, timeout=30, what="recorded done")
    events.close()
    publisher.close()


def test_competing_workers_never_claim_the_same_event(dsn: str) -> None:
    """Four workers claiming tiny batches at once: with no crash, each event runs once."""
    import threading

    runs: list[tuple[int, int]] = []
    lock = threading.Lock()

    def record(event: pgtide.Event) -> None:
        with lock:
            runs.append((event.id, event.attempt))

    publisher = pgtide.Events(dsn=dsn)
    ids = publisher.publish_many("contended", list(range(600)))
    workers = [pgtide.Events(dsn=dsn, batch_size=2, poll_interval=0.01) for _ in range(4)]
    for worker in workers:
        worker.register("contended", record)
    for worker in workers:
        worker.start(concurrency=2)
    wait_for(lambda: publisher.status()["done"] == 600, timeout=40, what="all done")
    for worker in workers:
        worker.close()
    publisher.close()
    assert sorted(runs) == [(i, 1) for i in ids]


LEASE = 2.0


@pytest.mark.slow
def test_an_outage_longer_than_the_lease_never_runs_an_event_twice_at_once(
    restartable: pgtide_testing.RestartableServer, killable: pgtide_testing.Killable, tmp_path: Path
) -> None:
    """Three workers; the server stops for twice the lease while handlers run and claimed
    events wait. No two runs of one event overlap, and events of one key run one at a time
    in publish order (a worker starts nothing whose lease it cannot confirm)."""
    dsn = restartable.dsn
    pgtide.install(dsn=dsn)
    log = str(tmp_path / "runs.log")
    publisher = pgtide.Events(dsn=dsn)
    for round_ in range(4):
        for key in ("a", "b", "c", "d"):
            publisher.publish("job", {"key": key, "n": round_}, key=key)
    publisher.publish_many("job", [{"n": n} for n in range(20)])
    total = 36
    for worker in "ABC":
        killable.start(logging_worker, dsn, worker, log, LEASE, 0.6, 10)
    wait_for(lambda: os.path.exists(log) and len(read_runs(log)) >= 4, what="handlers running")
    publisher.close()
    restartable.stop()
    stopped = time.monotonic()  # no lease can be renewed after this
    time.sleep(2 * LEASE)  # the outage itself: every lease lapses while the server is down
    restarted = time.monotonic()
    restartable.start()
    done = "SELECT count(*) FROM pgtide.events WHERE state = 'done'"
    wait_for(lambda: count(dsn, done) == total, timeout=90, what="every event done")

    runs = read_runs(log)
    assert all(ended is not None for *_, ended in runs)
    # a handler starts only while its lease is valid: none once every lease had lapsed
    lapsed = [run for run in runs if stopped + LEASE < run[3] < restarted]
    assert lapsed == []
    by_event: dict[int, list[tuple[float, float]]] = {}
    for event, _, _, began, ended in runs:
        assert ended is not None
        by_event.setdefault(event, []).append((began, ended))
    overlaps = [
        (event, a, b)
        for event, spans in by_event.items()
        for a, b in itertools.pairwise(spans)
        if b[0] < a[1]
    ]
    assert overlaps == []
    with psycopg.connect(dsn) as conn:
        keys = dict(conn.execute("SELECT id, key FROM pgtide.events WHERE key IS NOT NULL"))
        attempts = dict(conn.execute("SELECT id, attempts FROM pgtide.events"))
    for key in set(keys.values()):
        keyed = [(event, b, e) for event, _, _, b, e in runs if keys.get(event) == key]
        for (event_a, _, end_a), (event_b, began_b, _) in itertools.pairwise(keyed):
            assert began_b >= end_a and event_b >= event_a, f"key {key}: {keyed}"
    # every attempt counted is a handler that really started
    started: dict[int, int] = {}
    for event, *_ in runs:
        started[event] = started.get(event, 0) + 1
    assert attempts == started


def test_a_killed_worker_burns_no_attempt_of_the_events_it_never_started(
    dsn: str, killable: pgtide_testing.Killable
) -> None:
    """A worker claims a batch of 10, starts one, and is SIGKILLed: with retries=1 the nine
    others still get their two real runs; attempts count the handlers that really started."""
    _setup(dsn)
    publisher = pgtide.Events(dsn=dsn)
    ids = publisher.publish_many("job", list(range(10)))
    doomed = killable.start(batch_worker, dsn, 1.0)
    held = "SELECT count(*) FROM pgtide.events WHERE lease_owner IS NOT NULL"
    wait_for(lambda: count(dsn, "SELECT count(*) FROM handler_runs") == 1, what="one start")
    counted = "SELECT count(*) FROM pgtide.events WHERE attempts > 0"
    wait_for(lambda: count(dsn, counted) == 1, what="the start counted")
    assert count(dsn, held) == 10
    killable.kill(doomed)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE handler_runs SET ended = clock_timestamp()")

    failed_once: set[int] = set()

    def flaky(event: pgtide.Event) -> str:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO handler_runs (event_id, worker, ended) "
                "VALUES (%s, 'rescuer', clock_timestamp())",
                (event.id,),
            )
        if event.id not in failed_once:
            failed_once.add(event.id)
            raise RuntimeError("first run fails")
        return "ok"

    rescuer = pgtide.Events(dsn=dsn, poll_interval=0.05, retry_delay=0.01)
    rescuer.register("job", flaky, retries=1)
    rescuer.start(concurrency=2)
    settled = "SELECT count(*) FROM pgtide.events WHERE state IN ('done', 'dead')"
    wait_for(lambda: count(dsn, settled) == 10, timeout=30, what="every event settled")
    rescuer.close()
    publisher.close()
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT e.id, e.state, e.attempts, count(r.event_id) FROM pgtide.events e "
            "LEFT JOIN handler_runs r ON r.event_id = e.id GROUP BY e.id ORDER BY e.id"
        ).fetchall()
    assert all(attempts == runs for _, _, attempts, runs in rows), rows
    first, *others = rows
    assert first[0] == ids[0] and first[1:] == ("dead", 2, 2)  # the doomed run, then one more
    assert [(state, attempts) for _, state, attempts, _ in others] == [("done", 2)] * 9


@pytest.mark.slow  # two worker processes started one after the other
def test_an_event_that_kills_its_worker_every_time_ends_dead(
    dsn: str, killable: pgtide_testing.Killable
) -> None:
    """A poison event (its handler takes the process down once its start is counted) with
    retries=1 runs twice; the next worker to claim it makes it dead, unrun."""
    _setup(dsn)
    publisher = pgtide.Events(dsn=dsn)
    id_ = publisher.publish("poison", {})
    runs = "SELECT count(*) FROM handler_runs"
    for n in (1, 2):
        crashed = killable.start(crashing_worker, dsn, 0.5)
        crashed.join(30)
        assert crashed.exitcode == 9 and count(dsn, runs) == n
        record = publisher.get(id_)
        assert record is not None and (record.state, record.attempts) == ("running", n)
    survivor = pgtide.Events(dsn=dsn, poll_interval=0.05)
    survivor.register("poison", lambda e: "ran", retries=1)
    survivor.start(concurrency=1)
    wait_for(lambda: publisher.get(id_).state == "dead", what="dead")  # type: ignore[union-attr]
    survivor.close()
    record = publisher.get(id_)
    publisher.close()
    assert record is not None and record.attempts == 2 and record.result is None
    assert "all 2 allowed attempt(s) have started" in (record.error or "")
    assert count(dsn, runs) == 2
