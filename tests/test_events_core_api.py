"""The consolidated events core: one-transaction publishing to your own table, async
handlers that hold no thread, the deprecated spellings, and the public overview()."""

from __future__ import annotations

import asyncio
import threading
import warnings
from typing import Any

import psycopg
import pytest
from events_helpers import wait_for

import pgtide
import pgtide.aio
from pgtide.events import overview
from pgtide.overview import Section
from pgtide.session import run

OWN_TABLE = "CREATE TABLE jobs (id bigserial PRIMARY KEY, name text NOT NULL, data jsonb)"


def test_own_table_publish_is_one_transaction(dsn: str) -> None:
    """The row and its NOTIFY commit together: a NOTIFY that fails leaves no row behind."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(OWN_TABLE)
    too_long = "c" * 70  # pg_notify refuses a channel name this long, after the INSERT ran
    events = pgtide.Events(dsn=dsn, table="jobs", payload_column="data", channel=too_long)
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        events.publish("job", {"n": 1})
    events.close()
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (0,)


def test_own_table_publish_notifies_inside_the_callers_transaction(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(OWN_TABLE)
    events = pgtide.Events(dsn=dsn, table="jobs", payload_column="data", channel="jobs_wake")
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN jobs_wake")
        with psycopg.connect(dsn) as conn:
            events.publish("job", {"n": 1}, conn=conn)
            conn.rollback()  # neither the row nor its wake-up
            kept = events.publish("job", {"n": 2}, conn=conn)
            conn.commit()
        heard = [n.payload for n in listener.notifies(timeout=1.0, stop_after=2)]
        assert heard == [str(kept)]
        rows = listener.execute("SELECT id, data FROM jobs").fetchall()
    assert rows == [(kept, {"n": 2})]
    events.close()


def test_async_handlers_hold_no_thread(dsn: str) -> None:
    """50 async handlers sleep at once under concurrency 50, with a handful of threads."""

    async def main() -> int:
        all_in = asyncio.Event()
        running = [0]
        peak_threads = [0]
        events = pgtide.aio.Events(dsn=dsn, poll_interval=0.05)

        @events.handler("nap")
        async def nap(event: pgtide.Event) -> None:
            running[0] += 1
            if running[0] == 50:
                peak_threads[0] = threading.active_count()
                all_in.set()
            await asyncio.wait_for(all_in.wait(), 20)

        await events.publish_many("nap", list(range(50)))
        before = threading.active_count()
        await events.start(concurrency=50)
        await asyncio.wait_for(all_in.wait(), 20)
        while (await events.status())["done"] < 50:
            await asyncio.sleep(0.02)
        await events.close()
        return peak_threads[0] - before

    extra = asyncio.run(main())
    assert extra <= 3  # the wake-up receiver (and asyncio's own helper), not 50 threads


def test_async_handlers_under_the_blocking_face_share_one_loop_thread(dsn: str) -> None:
    before = set(threading.enumerate())  # (earlier tests' daemon threads may still be ending)
    events = pgtide.Events(dsn=dsn, poll_interval=0.05)
    threads: set[int] = set()
    started = threading.Semaphore(0)
    gate = threading.Event()

    @events.handler("nap")
    async def nap(event: pgtide.Event) -> None:
        threads.add(threading.get_ident())
        started.release()
        while not gate.is_set():
            await asyncio.sleep(0.01)

    events.publish_many("nap", list(range(20)))
    events.start(concurrency=20)
    for _ in range(20):  # all twenty run at once
        assert started.acquire(timeout=10)
    gate.set()
    wait_for(lambda: events.status()["done"] == 20, what="all done")
    events.close()
    assert len(threads) == 1
    assert not any(
        t.name.startswith("pgtide-events-") and t.is_alive()
        for t in set(threading.enumerate()) - before
    )


def test_deprecated_spellings_still_work_with_a_warning(dsn: str) -> None:
    with pytest.warns(DeprecationWarning, match=r"Events\(dsn=\.\.\.\)"):
        blocking = pgtide.Events(dsn)
    assert blocking.status()["pending"] == 0
    blocking.close()
    with (
        pytest.raises(pgtide.ConfigError, match="both by position and by keyword"),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", DeprecationWarning)
        pgtide.Events(dsn, dsn=dsn)

    async def main() -> None:
        with pytest.warns(DeprecationWarning, match="by position"):
            events = pgtide.aio.Events(dsn)
        assert (await events.status())["pending"] == 0
        with pytest.warns(DeprecationWarning, match="aclose"):
            await events.aclose()

    asyncio.run(main())


def test_constructors_do_not_connect() -> None:
    unreachable = "postgresql://nobody@127.0.0.1:1/none?connect_timeout=1"
    blocking = pgtide.Events(dsn=unreachable)
    asyncio_face = pgtide.aio.Events(dsn=unreachable)
    assert "Events" in repr(blocking) and "Events" in repr(asyncio_face)
    with pytest.raises(pgtide.ConnectionFailed):
        blocking.status()
    with pytest.raises(pgtide.ConnectionFailed):
        asyncio.run(asyncio_face.status())


def test_overview_is_the_status_section(dsn: str) -> None:
    events = pgtide.Events(dsn=dsn)
    events.publish("nobody_handles_this", {"n": 1})
    with psycopg.connect(dsn, autocommit=True) as conn:
        (section,) = run(conn, overview())
    events.close()
    assert isinstance(section, Section) and section.title == "events"
    assert section.columns == ["table", *pgtide.events.STATES, "unhandled", "workers"]
    (row,) = section.as_dicts()
    expected: dict[str, Any] = dict.fromkeys(pgtide.events.STATES, 0)
    expected.update(table="pgtide.events", pending=1, unhandled=1, workers=0)
    assert row == expected


def test_publish_many_with_a_generator_survives_nothing_twice(dsn: str) -> None:
    """Payloads are read once, before any connection (a retry after an outage re-sends them)."""
    events = pgtide.Events(dsn=dsn)
    ids = events.publish_many("gen", (n for n in range(3)))
    assert [r.payload for r in sorted(events.recent(name="gen"), key=lambda r: r.id)] == [0, 1, 2]
    assert len(ids) == 3
    events.close()
