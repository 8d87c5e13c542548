"""A claim's cost grows with the work, not with history: it must not walk finished events,
events of names no worker handles, nor events of paused names.

The worker's own claim (whatever statements ``WorkerCore._claims()`` plans, on a connection
set up by the worker's own ``setup()``: its session settings) is run under
``EXPLAIN (ANALYZE, BUFFERS)`` in a small table, then again after hundreds of thousands of
such rows were added in SQL with the table's autovacuum off and its statistics left stale (as
after a bulk publish). The buffers and rows each claim touches must stay what they were in the
small table: deterministic counts, no timing.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

import pgtide
from pgtide.events import _sql
from pgtide.events._signatures import run_args
from pgtide.session import Io, Query

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

FINISHED = 300_000
UNHANDLED = 100_000
PAUSED = 50_000
READY = 40
SLACK = 40
"""Blocks a claim may touch more in the large table: a deeper index, a few more pages."""

AUTOVACUUM_OFF = "ALTER TABLE pgtide.events SET (autovacuum_enabled = false)"
FINISHED_ROWS = """
INSERT INTO pgtide.events (name, payload, state, attempts, started_at, finished_at)
SELECT 'noop', jsonb_build_object('n', g), CASE WHEN g %% 3 = 0 THEN 'dead' ELSE 'done' END,
       1, now(), now()
FROM generate_series(1, %s) AS g
"""
PENDING_ROWS = """
INSERT INTO pgtide.events (name, payload)
SELECT %s, jsonb_build_object('n', g) FROM generate_series(1, %s) AS g
"""
CLAIMED_BY = "SELECT count(*) FROM pgtide.events WHERE state = 'running' AND lease_owner = %s"
FINISH_CLAIMED = "UPDATE pgtide.events SET state = 'done' WHERE state = 'running'"
EXPLAINABLE = ("select", "with", "update", "insert", "delete")


@dataclass
class Cost:
    """What the statements of one claim touched, summed over them."""

    blocks: int = 0  # shared buffers hit or read, executing and planning
    removed: int = 0  # rows read and thrown away by a filter or a recheck
    claimed: int = 0
    jit: bool = False


def _removed(node: dict[str, Any]) -> int:
    own = node.get("Rows Removed by Filter", 0) + node.get("Rows Removed by Index Recheck", 0)
    loops = max(1, node.get("Actual Loops", 1))
    return own * loops + sum(_removed(child) for child in node.get("Plans", []))


def _explained(conn: psycopg.Connection[Any], io: Io[Any]) -> tuple[Any, Cost]:
    """Carry out ``io``; each statement is first run twice under EXPLAIN ANALYZE in a
    transaction rolled back (the second run's cost counted, once the caches are warm), then
    for real (its rows sent back to ``io``)."""
    cost = Cost()
    try:
        step: Query = next(io)
        while True:
            text = step.statement if isinstance(step.statement, str) else ""
            if step.params is not None and text.lstrip().lower().startswith(EXPLAINABLE):
                for _ in range(2):  # the second run is counted: the caches are warm
                    with conn.transaction(force_rollback=True):
                        row = conn.execute(
                            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + text, step.params
                        ).fetchone()
                assert row is not None
                plan = row[0][0] if isinstance(row[0], list) else json.loads(row[0])[0]
                top, planning = plan["Plan"], plan.get("Planning", {})
                for part in (top, planning):
                    cost.blocks += part.get("Shared Hit Blocks", 0)
                    cost.blocks += part.get("Shared Read Blocks", 0)
                cost.removed += _removed(top)
                cost.jit = cost.jit or "JIT" in plan
            cur = conn.execute(step.statement, step.params)
            rows = cur.fetchall() if cur.description else []
            step = io.send(rows)
    except StopIteration as done:
        return done.value, cost


def _claim(core: Any) -> Io[None]:
    """One claim round of the worker: the statements ``WorkerCore._claims()`` plans, their
    rows handed to ``WorkerCore._claimed`` as the worker's own round does."""
    sent = time.monotonic()
    claims = core._claims()
    results = []
    for statement, _, _ in claims:
        results.append((yield statement))
    core._claimed(results, [wanted for _, wanted, _ in claims], sent)


def _claim_cost(dsn: str, events: pgtide.Events) -> Cost:
    """One claim of a fresh worker of ``events``, on a connection set up as the worker's."""
    worker = events._new_worker(run_args(1))
    core = worker.core
    with psycopg.connect(dsn, autocommit=True) as conn:
        _explained(conn, core.setup())
        _, cost = _explained(conn, _claim(core))
        row = conn.execute(CLAIMED_BY, (worker.owner,)).fetchone()
        cost.claimed = row[0] if row else 0
    return cost


def test_a_claim_touches_no_finished_unhandled_nor_paused_events(dsn: str) -> None:
    events = pgtide.Events(dsn=dsn)
    events.register("noop", lambda e: None)
    events.register("held", lambda e: None)
    events.pause("held")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(AUTOVACUUM_OFF)
        conn.execute("ANALYZE pgtide.events")  # statistics of the small table, kept stale

    small_idle = _claim_cost(dsn, events)
    events.publish_many("noop", [{"n": n} for n in range(READY)])
    small = _claim_cost(dsn, events)
    assert small.claimed == READY

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(FINISHED_ROWS, (FINISHED,))
        conn.execute(PENDING_ROWS, ("nobody", UNHANDLED))
        conn.execute(PENDING_ROWS, ("held", PAUSED))
        conn.execute(FINISH_CLAIMED)  # the small claim's events: finished too
    large_idle = _claim_cost(dsn, events)
    assert large_idle.claimed == 0  # nothing claimable: the paused and unhandled stay put
    events.publish_many("noop", [{"n": n} for n in range(READY)])
    large = _claim_cost(dsn, events)
    assert large.claimed == READY

    walked = f"small table: {small_idle}, {small}; large table: {large_idle}, {large}"
    assert large_idle.blocks <= small_idle.blocks + SLACK, walked
    # each claimed row is found and updated through indexes a level or two deeper in the
    # large table (a cost that grows with log n): allow twice the blocks; a claim that
    # walked the finished or unhandled rows touched tens of thousands (57,913 measured)
    assert large.blocks <= 2 * small.blocks + SLACK, walked
    assert large_idle.removed <= small_idle.removed + READY, walked
    assert large.removed <= small.removed + READY, walked
    assert not (large.jit or large_idle.jit), walked  # no JIT compilation of a claim
    events.close()


def test_a_worker_finishes_its_events_beside_a_large_history(dsn: str) -> None:
    """The public face of the same: with the history above in the table, a worker runs the
    events of its name (and none of the others)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(AUTOVACUUM_OFF)
        conn.execute(FINISHED_ROWS, (FINISHED // 10,))
        conn.execute(PENDING_ROWS, ("nobody", UNHANDLED // 10))
    events = pgtide.Events(dsn=dsn)
    seen: list[int] = []
    events.register("noop", lambda e: seen.append(e.payload["n"]))
    ids = events.publish_many("noop", [{"n": n} for n in range(200)])
    events.start(8)
    try:
        last = events.wait(ids[-1], timeout=60)
        assert last.state == "done"
        for id_ in ids:
            assert events.wait(id_, timeout=60).state == "done"
        assert events.unhandled() == {"nobody": UNHANDLED // 10}
    finally:
        events.close()
    assert sorted(seen) == list(range(200))


PAGES = "SELECT id, (ctid::text::point)[0]::bigint FROM pgtide.events ORDER BY id"


def test_a_claim_leaves_each_event_on_its_page(dsn: str) -> None:
    """The events table keeps half of each page free (migration 018): a claim's new row
    version sits beside the old one, with no extra WAL record to lock the old version while
    another page is found, and no second page dirtied."""
    events = pgtide.Events(dsn=dsn)
    events.publish_many("noop", [{"n": n} for n in range(300)])
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT reloptions FROM pg_class WHERE oid = 'pgtide.events'::regclass"
        ).fetchone()
        assert row is not None and "fillfactor=50" in row[0]
        before = conn.execute(PAGES).fetchall()
        assert len({page for _, page in before}) > 1  # more than one page to fill
        params = {"source": "", "names": ["noop"], "limit": 500, "owner": "w", "lease": 30.0}
        assert len(conn.execute(_sql.CLAIM, params).fetchall()) == 300
        assert conn.execute(PAGES).fetchall() == before
    events.close()
