"""Helpers for the events tests: waiting on conditions, and worker processes to kill."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import psycopg

import pgtide


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it is truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def states(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT state, count(*) FROM pgtide.events GROUP BY state").fetchall()
    return {state: n for state, n in rows}


def count(dsn: str, query: str, *params: Any) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


RUNS_TABLE = """
CREATE TABLE IF NOT EXISTS handler_runs (
    event_id bigint NOT NULL,
    worker   text NOT NULL,
    began    timestamptz NOT NULL DEFAULT clock_timestamp(),
    ended    timestamptz
);
-- At most one unfinished run per event: a second worker starting it while the first
-- still runs violates this and the test sees it.
CREATE UNIQUE INDEX IF NOT EXISTS one_live_run ON handler_runs (event_id) WHERE ended IS NULL;
"""


def recording_worker(dsn: str, worker: str, concurrency: int, lease: float, sleep: float) -> None:
    """A worker process: each handler run is recorded in handler_runs (begin and end)."""
    events = pgtide.Events(dsn=dsn, lease=lease, poll_interval=0.1)
    runs = psycopg.connect(dsn, autocommit=True)

    @events.handler("job", retries=10)
    def job(event: pgtide.Event) -> dict[str, Any]:
        with runs.cursor() as cur:
            cur.execute(
                "INSERT INTO handler_runs (event_id, worker) VALUES (%s, %s)", (event.id, worker)
            )
        time.sleep(sleep)
        with runs.cursor() as cur:
            cur.execute(
                "UPDATE handler_runs SET ended = clock_timestamp() "
                "WHERE event_id = %s AND worker = %s AND ended IS NULL",
                (event.id, worker),
            )
        return {"worker": worker}

    events.run(concurrency=concurrency)


def blocking_worker(dsn: str, lease: float) -> None:
    """A worker process whose handler never returns (to be SIGKILLed while it holds a lease)."""
    events = pgtide.Events(dsn=dsn, lease=lease, poll_interval=0.1)

    @events.handler("stuck")
    def stuck(event: pgtide.Event) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO handler_runs (event_id, worker) VALUES (%s, 'doomed')", (event.id,)
            )
        time.sleep(3600)

    events.run(concurrency=1)


def log_line(path: str, *fields: object) -> None:
    """Append one line to ``path`` in one write (O_APPEND: safe across processes)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (" ".join(map(str, fields)) + "\n").encode())
    finally:
        os.close(fd)


def read_runs(path: str) -> list[tuple[int, str, int, float, float | None]]:
    """The runs logged by :func:`logging_worker`: (event, worker, attempt, began, ended)."""
    began: dict[tuple[int, str, int], float] = {}
    ended: dict[tuple[int, str, int], float] = {}
    with open(path) as lines:
        for line in lines:
            what, event, worker, attempt, at = line.split()
            run = (int(event), worker, int(attempt))
            (began if what == "start" else ended)[run] = float(at)
    return [(*run, at, ended.get(run)) for run, at in sorted(began.items(), key=lambda r: r[1])]


def logging_worker(
    dsn: str, worker: str, path: str, lease: float, sleep: float, batch_size: int
) -> None:
    """A worker process (concurrency 1) that logs each handler's start and end with the
    system-wide monotonic clock, outside the database (it may be down)."""
    events = pgtide.Events(dsn=dsn, lease=lease, poll_interval=0.1, batch_size=batch_size)

    @events.handler("job", retries=20)
    def job(event: pgtide.Event) -> None:
        log_line(path, "start", event.id, worker, event.attempt, time.monotonic())
        time.sleep(sleep)
        log_line(path, "end", event.id, worker, event.attempt, time.monotonic())

    events.run(concurrency=1)


def batch_worker(dsn: str, lease: float) -> None:
    """A worker process that claims a batch of 10 and starts one handler that never returns."""
    events = pgtide.Events(dsn=dsn, lease=lease, poll_interval=0.1, batch_size=10)

    @events.handler("job", retries=1)
    def job(event: pgtide.Event) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO handler_runs (event_id, worker) VALUES (%s, 'doomed')", (event.id,)
            )
        time.sleep(3600)

    events.run(concurrency=1)


def limited_worker(
    dsn: str,
    worker: str,
    path: str,
    concurrency: int,
    rate: str | None,
    sleep: float,
    local: int = 8,
) -> None:
    """A worker process (local concurrency ``local``) whose handler ``limited`` has global
    limits; each run's start and end are logged with the system-wide monotonic clock."""
    events = pgtide.Events(dsn=dsn, poll_interval=0.05)

    @events.handler("limited", concurrency=concurrency, rate=rate)
    def limited(event: pgtide.Event) -> None:
        log_line(path, "start", event.id, worker, event.attempt, time.monotonic())
        time.sleep(sleep)
        log_line(path, "end", event.id, worker, event.attempt, time.monotonic())

    events.run(concurrency=local)


def most_at_once(runs: list[tuple[int, str, int, float, float | None]]) -> int:
    """The largest number of runs in progress at one moment."""
    edges = sorted([(b, 1) for *_, b, _ in runs] + [(e, -1) for *_, e in runs if e is not None])
    most = now = 0
    for _, step in edges:  # at equal times an end (-1) sorts first: touching runs don't overlap
        now += step
        most = max(most, now)
    return most


def crashing_worker(dsn: str, lease: float) -> None:
    """A worker process whose handler records its run, waits until its start is counted,
    then kills the process (a poison event: a segfault, the OOM killer)."""
    events = pgtide.Events(dsn=dsn, lease=lease, poll_interval=0.1)

    @events.handler("poison", retries=1)
    def poison(event: pgtide.Event) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO handler_runs (event_id, worker, ended) "
                "VALUES (%s, 'crashing', clock_timestamp())",
                (event.id,),
            )
            attempts = "SELECT attempts FROM pgtide.events WHERE id = %s"
            wait_for(
                lambda: conn.execute(attempts, (event.id,)).fetchone() == (event.attempt,),
                what="the start counted",
            )
        os._exit(9)

    events.run(concurrency=1)
