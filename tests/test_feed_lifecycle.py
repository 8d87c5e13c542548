"""The feed's life cycle against real PostgreSQL: names through the search_path, overview(),
stop() and close() from elsewhere, and a server restart inside ``batch.transaction()``."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from pgtide_testing import RestartableServer

import pgtide
import pgtide.aio
from pgtide.feed import overview, tracked
from pgtide.session import run


def _until(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


async def _insert_once_waiting(feed: pgtide.aio.Feed, dsn: str, id_: int) -> None:
    """Insert row ``id_`` once ``feed`` waits with a LISTEN (a NOTIFY then wakes it)."""
    while feed._wakeup is None:
        await asyncio.sleep(0.02)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("INSERT INTO items VALUES (%s, 'x')", (id_,))


def _setup(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS items, sink")
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
        conn.execute("CREATE TABLE sink (id int)")  # no key: a duplicate would show
    pgtide.track("items", dsn=dsn)


def _sunk(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM sink ORDER BY id")]


def test_unqualified_names_follow_the_search_path(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA sales")
        conn.execute("CREATE TABLE sales.orders (id int)")
        conn.execute("CREATE TABLE public.orders (id int)")
    on_sales = psycopg.conninfo.make_conninfo(dsn, options="-c search_path=sales,public")
    assert pgtide.track("orders", dsn=on_sales) is True
    assert pgtide.track("orders", dsn=dsn) is True  # the default search_path: public
    assert [t["table"] for t in tracked(dsn=dsn)] == ["public.orders", "sales.orders"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO sales.orders VALUES (1)")
        conn.execute("INSERT INTO public.orders VALUES (2)")
    feed = pgtide.Feed("sp", ["orders"], dsn=on_sales)
    got = [(c.table, c.row) for b in feed.batches(timeout=0.2) for c in b]
    assert got == [("sales.orders", {"id": 1})]
    assert feed._core.tables == ["sales.orders"]  # stored schema-qualified
    assert pgtide.latest("orders", dsn=on_sales) == {"id": 1}
    assert pgtide.latest("orders", dsn=dsn) == {"id": 2}
    with pytest.raises(pgtide.UnknownTable, match=r"table public\.nope is not tracked"):
        pgtide.latest("nope", dsn=dsn)


def test_overview_sections(dsn: str, bare_dsn: str) -> None:
    _setup(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        consumers, changes = run(conn, overview())
        assert (consumers.title, consumers.rows) == ("consumers", [])
        assert changes.title == "changes" and changes.rows[0][::2] == [0, None]
        conn.execute("INSERT INTO items VALUES (1, 'x'), (2, 'y')")
        feed = pgtide.Feed("ov", ["items"], dsn=dsn)
        it = feed.batches(max_changes=1, timeout=0.2)
        next(it)  # registered, nothing acknowledged
        it.close()
        consumers, changes = run(conn, overview())
        assert consumers.columns == ["consumer", "pending changes", "acked at", "tables"]
        assert [row[:2] + row[3:] for row in consumers.rows] == [["ov", 2, "public.items"]]
        assert changes.columns == ["rows", "kB", "oldest"] and changes.rows[0][0] == 2
    with psycopg.connect(bare_dsn, autocommit=True) as conn:
        assert run(conn, overview()) == []  # the feed was never installed there


@pytest.mark.parametrize("verb", ["stop", "close"])
def test_stop_or_close_from_another_thread_ends_run(dsn: str, verb: str) -> None:
    _setup(dsn)
    feed = pgtide.Feed("stoppable", ["items"], dsn=dsn, poll_interval=60)
    seen: list[int] = []
    thread = threading.Thread(target=feed.run, args=(lambda b: seen.extend(range(len(b))),))
    thread.start()
    with psycopg.connect(dsn, autocommit=True) as conn:
        _until(lambda: feed._wakeup is not None)  # waiting for changes
        conn.execute("INSERT INTO items VALUES (1, 'x')")
    _until(lambda: seen == [0])
    getattr(feed, verb)()
    thread.join(10)
    assert not thread.is_alive()
    assert feed._session._conn is None and feed._waker is None  # released by the run
    saved = feed.saved()  # the batch in hand was acknowledged
    assert saved is not None and saved.seen(_xid_of_last_insert(dsn))
    assert list(feed.batches(timeout=0)) == []  # and the feed can be used again


def _xid_of_last_insert(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT max(xid)::text::bigint FROM pgtide.changes").fetchone()
        assert row is not None
        return int(row[0])


def test_asyncio_stop_and_close_from_another_task(dsn: str) -> None:
    _setup(dsn)

    async def main() -> None:
        for verb in ("stop", "close"):
            feed = pgtide.aio.Feed(f"stoppable-{verb}", ["items"], dsn=dsn, poll_interval=60)
            running = asyncio.ensure_future(feed.run(lambda b: None))
            while feed._wakeup is None:
                await asyncio.sleep(0.02)
            if verb == "stop":
                feed.stop()
            else:
                await feed.close()
            await asyncio.wait_for(running, 10)
            assert feed._session._conn is None

    asyncio.run(main())


def test_run_survives_a_restart_inside_batch_transaction(restartable: RestartableServer) -> None:
    dsn = restartable.dsn
    _setup(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO items VALUES (1, 'a'), (2, 'b')")
    calls = 0

    def handle(batch: pgtide.Batch) -> None:
        nonlocal calls
        calls += 1
        with batch.transaction() as conn:
            for change in batch:
                assert change.row is not None
                conn.execute("INSERT INTO sink VALUES (%s)", (change.row["id"],))
            if calls == 1:
                restartable.restart()  # the open transaction dies with AdminShutdown

    feed = pgtide.Feed("restart-tx", ["items"], dsn=dsn, wakeup="poll", poll_interval=0.05)
    feed.run(handle, timeout=0.5)
    assert calls == 2 and _sunk(dsn) == [1, 2]  # the batch came again, applied once


def test_iterating_a_restart_inside_batch_transaction_is_a_feed_error(
    restartable: RestartableServer,
) -> None:
    dsn = restartable.dsn
    _setup(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO items VALUES (1, 'a')")
    feed = pgtide.Feed("restart-it", ["items"], dsn=dsn, wakeup="poll", poll_interval=0.05)
    with pytest.raises(pgtide.FeedError, match=r"lost inside batch\.transaction\(\)") as lost:
        for batch in feed.batches(timeout=0.5):
            with batch.transaction() as conn:
                conn.execute("INSERT INTO sink VALUES (1)")
                restartable.restart()
    assert isinstance(lost.value.__cause__, psycopg.OperationalError)
    assert _sunk(dsn) == []
    again = [c.row for b in feed.batches(timeout=0.2) for c in b]  # reconnects by itself
    assert again == [{"id": 1, "v": "a"}]


def test_track_again_after_the_table_was_dropped_and_created_reinstalls_capture(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE again (id int PRIMARY KEY)")
        assert pgtide.track("again", dsn=dsn)
        assert not pgtide.track("again", dsn=dsn)  # already in place: nothing to do
        conn.execute("DROP TABLE again")
        conn.execute("CREATE TABLE again (id int PRIMARY KEY)")
        assert pgtide.track("again", dsn=dsn)  # its triggers went with the old table
        conn.execute("INSERT INTO again VALUES (1)")
    assert pgtide.latest("again", dsn=dsn) == {"id": 1}


def test_close_after_leaving_an_async_for_releases_the_wake_up_connection(dsn: str) -> None:
    """``break`` out of ``async for`` leaves the generator suspended until it is collected:
    close() must still stop the waker, whose LISTEN holds a connection of its own."""
    _setup(dsn)

    async def main() -> None:
        feed = pgtide.aio.Feed("left", ["items"], dsn=dsn, poll_interval=60)
        batches = feed.batches()

        writer = asyncio.ensure_future(_insert_once_waiting(feed, dsn, 1))
        async for batch in batches:
            await batch.ack()
            break
        await writer
        waker = feed._waker
        assert waker is not None and waker.listening  # the generator still holds it
        await feed.close()
        assert feed._waker is None and not waker.listening
        await batches.aclose()  # what collecting it would do later: nothing left to stop

    asyncio.run(main())


def test_close_after_the_task_that_iterated_ended_releases_the_wake_up_connection(
    dsn: str,
) -> None:
    """A task that left ``async for`` with ``return`` and ended leaves the generator
    suspended, and nobody will resume it: close() from another task releases the waker at
    once (it does not wait, as it must while the task that iterates still runs)."""
    _setup(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO items VALUES (1, 'x')")

    async def main() -> None:
        feed = pgtide.aio.Feed("ended", ["items"], dsn=dsn, poll_interval=60)
        kept: list[Any] = []

        async def follow() -> None:
            kept.append(batches := feed.batches())
            async for batch in batches:
                await batch.ack()
                if feed._waker is not None:
                    return  # (the first batch may come before any wait)

        writer = asyncio.ensure_future(_insert_once_waiting(feed, dsn, 2))
        await asyncio.create_task(follow())
        await writer
        waker = feed._waker
        assert waker is not None and waker.listening
        await feed.close()
        assert feed._waker is None and not waker.listening
        await kept[0].aclose()

    asyncio.run(main())


def test_close_after_the_thread_that_iterated_ended_releases_the_wake_up_connection(
    dsn: str,
) -> None:
    """The same for a thread of the blocking face."""
    _setup(dsn)
    feed = pgtide.Feed("ended", ["items"], dsn=dsn, poll_interval=60)
    kept: list[Any] = []

    def follow() -> None:
        kept.append(batches := feed.batches())
        for batch in batches:
            batch.ack()
            if feed._waker is not None:
                return

    thread = threading.Thread(target=follow)
    thread.start()
    while feed._wakeup is None and thread.is_alive():
        time.sleep(0.02)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO items VALUES (1, 'x')")
    thread.join(15)
    waker = feed._waker
    assert not thread.is_alive() and waker is not None and waker.listening
    feed.close()
    assert feed._waker is None and not waker.listening
    kept[0].close()
