"""Events that run after others (``publish(..., after=...)``): waiting, release when every
event named is done, cancellation when one ends dead or cancelled, and the races between
publishing, completing and cancelling."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from events_helpers import wait_for
from pgtide_testing import CliRunner

import pgtide
import pgtide.aio
from pgtide.errors import ConfigError


@pytest.fixture
def events(dsn: str) -> Any:
    ev = pgtide.Events(dsn=dsn, poll_interval=0.05, retry_delay=0.01, max_retry_delay=0.05)
    yield ev
    ev.close()


def _state(dsn: str, id_: int) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT state FROM pgtide.events WHERE id = %s", (id_,)).fetchone()
    assert row is not None
    return str(row[0])


def _blocked_on_a_lock(dsn: str) -> bool:
    """Whether some session waits for a row lock (a transaction of the test holds it)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
    return bool(row and row[0])


def test_an_event_runs_only_after_every_event_it_names_is_done(
    events: pgtide.Events, dsn: str
) -> None:
    gates = {"a": threading.Event(), "b": threading.Event()}
    log: list[tuple[str, str, float]] = []

    @events.handler("step")
    def step(event: pgtide.Event) -> str:
        log.append((event.payload, "start", time.monotonic()))
        if event.payload in gates:
            assert gates[event.payload].wait(20)
        log.append((event.payload, "end", time.monotonic()))
        return str(event.payload)

    a = events.publish("step", "a")
    b = events.publish("step", "b")
    c = events.publish("step", "c", after=[a, b])
    assert events.get(c).state == "waiting"  # type: ignore[union-attr]
    assert events.get(c).after == [a, b]  # type: ignore[union-attr]
    assert events.status()["waiting"] == 1
    events.start(concurrency=4)
    wait_for(lambda: len([x for x in log if x[1] == "start"]) == 2, what="a and b started")
    gates["a"].set()
    assert events.wait(a, timeout=10).state == "done"
    time.sleep(0.2)  # c must not start while b runs (nothing to await: it must not happen)
    assert _state(dsn, c) == "waiting"
    gates["b"].set()
    assert events.wait(c, timeout=10).result == "c"
    ended = {p: t for p, what, t in log if what == "end"}
    started_c = next(t for p, what, t in log if p == "c" and what == "start")
    assert started_c >= max(ended["a"], ended["b"])


def test_a_dead_event_cancels_the_chain_waiting_for_it(events: pgtide.Events) -> None:
    ran: list[str] = []

    @events.handler("fails", retries=0)
    def fails(event: pgtide.Event) -> None:
        raise ValueError("no")

    events.register("next", lambda e: ran.append(e.payload))
    a = events.publish("fails")
    b = events.publish("next", "b", after=a)
    c = events.publish("next", "c", after=[b])
    unrelated = events.publish("next", "free")
    events.start(concurrency=2)
    record = events.wait(c, timeout=10)  # woken by the cascade, not by a poll
    assert record.state == "cancelled"
    assert record.error == f"cancelled: event {b}, which it was to run after, ended cancelled"
    b_record = events.get(b)
    assert b_record is not None and b_record.state == "cancelled"
    assert b_record.error == f"cancelled: event {a}, which it was to run after, ended dead"
    events.wait(unrelated, timeout=10)
    assert ran == ["free"]


def test_publishing_after_events_that_already_ended(events: pgtide.Events, dsn: str) -> None:
    done = events.publish("x")
    lost = events.publish("x")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE pgtide.events SET state = 'done' WHERE id = %s", (done,))
    assert events.cancel(lost) == "cancelled"
    assert _state(dsn, events.publish("y", after=done)) == "pending"
    gone = events.publish("y", after=[done, lost])
    record = events.get(gone)
    assert record is not None and record.state == "cancelled" and record.finished_at
    assert record.error == f"cancelled: event {lost}, which it was to run after, ended cancelled"
    ids = events.publish_many("y", [1, 2, 3], after=[done])
    assert [_state(dsn, i) for i in ids] == ["pending"] * 3


def test_bad_after_is_a_clear_error_and_inserts_nothing(events: pgtide.Events, dsn: str) -> None:
    a = events.publish("x")
    with pytest.raises(ConfigError, match="after= names no event 999999"):
        events.publish("y", after=[a, 999999])
    with pytest.raises(ConfigError, match="after= names no event 999999"):
        events.publish_many("y", [1, 2], after=999999)
    for bad in ([], "12", [1.5], [0], True):
        with pytest.raises(ConfigError, match="after= takes an event id"):
            events.publish("y", after=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="cannot be combined"):
        events.publish("y", after=a, dedupe_key="k")
    assert events.status()["pending"] == 1 and events.status()["waiting"] == 0


def test_two_events_ending_at_once_release_what_waits_for_both(
    events: pgtide.Events, dsn: str
) -> None:
    # Each ending transaction checks the other event, not done yet in its snapshot: only the
    # lock on the waiting event makes the second one see the first one's end.
    a = events.publish("x")
    b = events.publish("x")
    c = events.publish("y", after=[a, b])
    first = psycopg.connect(dsn)
    second = psycopg.connect(dsn, autocommit=True)
    try:
        first.execute("UPDATE pgtide.events SET state = 'done' WHERE id = %s", (a,))
        ended = threading.Thread(
            target=second.execute,
            args=("UPDATE pgtide.events SET state = 'done' WHERE id = %s", (b,)),
        )
        ended.start()
        wait_for(lambda: _blocked_on_a_lock(dsn), what="the second end to wait for the lock")
        assert _state(dsn, c) == "waiting"
        first.commit()
        ended.join(10)
        assert not ended.is_alive()
    finally:
        first.close()
        second.close()
    assert _state(dsn, c) == "pending"


def test_an_event_ending_while_one_is_published_after_it_releases_it(
    events: pgtide.Events, dsn: str
) -> None:
    go = threading.Event()

    @events.handler("parent")
    def parent(event: pgtide.Event) -> None:
        assert go.wait(20)

    events.register("child", lambda e: "ran")
    a = events.publish("parent")
    events.start(concurrency=2)
    wait_for(lambda: _state(dsn, a) == "running", what="the parent to run")
    with psycopg.connect(dsn) as conn, conn.transaction():
        c = events.publish("child", after=a, conn=conn)
        go.set()  # the worker's outcome now waits for this transaction's lock on a
        wait_for(lambda: _blocked_on_a_lock(dsn), what="the outcome to wait")
        assert _state(dsn, a) == "running"
    assert events.wait(c, timeout=10).result == "ran"


def test_a_rolled_back_publish_leaves_nothing_waiting(events: pgtide.Events, dsn: str) -> None:
    a = events.publish("x")
    with psycopg.connect(dsn) as conn, pytest.raises(RuntimeError), conn.transaction():
        events.publish("y", after=a, conn=conn)
        raise RuntimeError("rolled back")
    assert events.status()["waiting"] == 0


def test_cancel_a_waiting_event_and_what_waits_for_it(events: pgtide.Events, dsn: str) -> None:
    a = events.publish("x")
    b = events.publish("y", after=a)
    c = events.publish("y", after=b)
    assert events.cancel(b) == "cancelled"
    assert _state(dsn, c) == "cancelled"
    assert _state(dsn, a) == "pending"


def test_retrying_a_done_event_does_not_release_twice(events: pgtide.Events, dsn: str) -> None:
    a = events.publish("x")
    b = events.publish("x")
    c = events.publish("y", after=[a, b])
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE pgtide.events SET state = 'done' WHERE id = %s", (a,))
        assert events.retry(a)
        conn.execute("UPDATE pgtide.events SET state = 'done' WHERE id = %s", (a,))
        assert _state(dsn, c) == "waiting"  # b is not done
        conn.execute("UPDATE pgtide.events SET state = 'done' WHERE id = %s", (b,))
    assert _state(dsn, c) == "pending"


def test_async_face_publishes_after(dsn: str) -> None:
    async def main() -> tuple[str, str]:
        async with pgtide.aio.Events(dsn=dsn, poll_interval=0.05) as events:
            order: list[str] = []

            async def step(event: pgtide.Event) -> None:
                order.append(event.payload)

            events.register("step", step)
            a = await events.publish("step", "a", run_at=timedelta(seconds=0.2))
            b = await events.publish("step", "b", after=a)
            many = await events.publish_many("step", ["c", "d"], after=[a, b])
            worker = asyncio.ensure_future(events.run(concurrency=4))
            try:
                for id_ in many:
                    await events.wait(id_, timeout=10)
            finally:
                worker.cancel()
                await asyncio.gather(worker, return_exceptions=True)
            return "".join(order[:2]), "".join(sorted(order[2:]))

    assert asyncio.run(main()) == ("ab", "cd")


def test_cli_publish_after_and_show(cli: CliRunner, dsn: str) -> None:
    env = {"PGTIDE_DSN": dsn}
    with pgtide.Events(dsn=dsn) as events:
        a = events.publish("x")
        b = events.publish("x")
        out = cli("events", "publish", "y", "--after", str(a), "--after", str(b), "--json", env=env)
        assert out.returncode == 0, out.stderr
        c = json.loads(out.stdout)["id"]
        record = events.get(c)
        assert record is not None and record.state == "waiting" and record.after == [a, b]
        shown = json.loads(cli("events", "show", str(c), "--json", env=env).stdout)
        assert shown["state"] == "waiting" and shown["after"] == [a, b]
        out = cli("events", "publish", "y", "--after", "999999", env=env)
        assert out.returncode == 1 and "after= names no event 999999" in out.stderr
