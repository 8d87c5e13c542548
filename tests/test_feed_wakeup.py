"""Wake-ups only while a feed waits (migration 021, pgtide.feed.sleepers): writers skip the
NOTIFY while no feed waits, and no wake-up is lost to a writer that skipped it just before a
feed began to wait."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

import psycopg
from events_helpers import wait_for
from listen_helpers import wait_until
from pgtide_testing import gate_holders_besides, terminate

import pgtide
import pgtide.aio
from pgtide.feed.sleepers import GATE, waiting_io
from pgtide.session import run


def _waiting(dsn: str) -> int:
    """How many connections hold the gate (feeds waiting)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return run(conn, waiting_io())


def _following(feed: pgtide.Feed, got: list[int]) -> threading.Thread:
    """A started thread that follows ``feed`` into ``got`` until a batch brings a row."""

    def follow() -> None:
        for batch in feed.batches(timeout=30):
            got.extend(c.row["id"] for c in batch if c.row is not None)
            batch.ack()
            if got:
                return

    thread = threading.Thread(target=follow)
    thread.start()
    return thread


def _table(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
    pgtide.track("items", dsn=dsn)


def test_a_writer_that_skipped_its_notify_before_the_feed_waited_is_read_at_once(
    dsn: str,
) -> None:
    """A transaction captures its row while no feed waits (so it will not notify), and
    commits after the feed began to wait, with a poll interval of a minute: the feed reads
    it again on its own (the transaction was open in the snapshot it read after registering),
    within seconds, not at the next poll."""
    _table(dsn)
    got: list[int] = []
    feed = pgtide.Feed("late", ["items"], dsn=dsn, poll_interval=60)
    with psycopg.connect(dsn) as writer:
        writer.execute("INSERT INTO items VALUES (1, 'decided before the feed waited')")

        thread = _following(feed, got)
        try:
            wait_until(lambda: _waiting(dsn) == 1, timeout=20, what="the feed waits")
            began = time.monotonic()
            writer.commit()
            thread.join(timeout=15)
            took = time.monotonic() - began
        finally:
            feed.stop()
            thread.join()
    feed.close()
    assert got == [1]
    assert took < 15, took  # the next poll would have come after 60 s


def test_a_busy_feed_lets_the_gate_go_and_so_does_a_stopped_one(dsn: str) -> None:
    """A feed woken by a NOTIFY keeps waiting registered while it handles that batch; one
    that finds changes again right after a batch (busy) lets the gate go, and takes it again
    once it waits; a stopped feed lets it go. Poll interval of a minute: the NOTIFY wakes it."""
    _table(dsn)
    feed = pgtide.Feed("busy", ["items"], dsn=dsn, poll_interval=60)
    seen: list[int] = []
    held_in_handler: list[int] = []

    def insert(id_: int) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO items VALUES (%s, 'x')", (id_,))

    def handle(batch: Any) -> None:
        held_in_handler.append(_waiting(dsn))
        ids = [c.row["id"] for c in batch if c.row is not None]
        seen.extend(ids)
        if ids == [1]:
            insert(2)  # committed before the next read: found without a wait

    thread = threading.Thread(target=feed.run, args=(handle,))
    thread.start()
    try:
        wait_until(lambda: _waiting(dsn) == 1, timeout=20, what="the feed waits")
        insert(1)  # notifies: a feed waits
        wait_until(lambda: seen == [1, 2], timeout=15, what="the NOTIFY to wake the feed")
        wait_until(lambda: _waiting(dsn) == 1, timeout=20, what="the feed waits again")
        insert(3)
        wait_until(lambda: seen == [1, 2, 3], timeout=15, what="the third change")
    finally:
        feed.stop()
        thread.join(20)
    assert held_in_handler == [1, 0, 1]
    wait_until(lambda: _waiting(dsn) == 0, timeout=20, what="the stopped feed lets the gate go")
    feed.close()


def test_an_asyncio_feed_waits_the_same_way(dsn: str) -> None:
    _table(dsn)

    async def main() -> list[int]:
        feed = pgtide.aio.Feed("aio-late", ["items"], dsn=dsn, poll_interval=60)
        got: list[int] = []
        with psycopg.connect(dsn) as writer:
            writer.execute("INSERT INTO items VALUES (1, 'before')")

            async def follow() -> None:
                async with contextlib.aclosing(feed.batches(timeout=30)) as batches:
                    async for batch in batches:
                        got.extend(c.row["id"] for c in batch if c.row is not None)
                        await batch.ack()
                        if len(got) == 2:
                            return

            task = asyncio.create_task(follow())
            while await asyncio.to_thread(_waiting, dsn) != 1:
                await asyncio.sleep(0.01)
            writer.commit()  # skipped its NOTIFY: read again on the backoff, not in 60 s
            async with asyncio.timeout(15):
                while not got:
                    await asyncio.sleep(0.01)
            while await asyncio.to_thread(_waiting, dsn) != 1:
                await asyncio.sleep(0.01)
            writer.execute("INSERT INTO items VALUES (2, 'after')")
            writer.commit()  # notifies
            async with asyncio.timeout(15):
                await task
        await feed.close()
        return got

    assert asyncio.run(main()) == [1, 2]


def test_a_feed_whose_connection_the_server_closed_while_it_waited_waits_again(
    dsn: str,
) -> None:
    """The gate lives on the feed's connection. Terminated while the feed waits, that
    connection takes the gate with it (writers stop notifying): the feed notices at once (it
    watches that socket while it waits), reconnects and waits again, and the next change is
    read without waiting for the poll (a minute)."""
    _table(dsn)
    got: list[int] = []
    feed = pgtide.Feed("killed", ["items"], dsn=dsn, poll_interval=60)

    thread = _following(feed, got)
    try:
        before = wait_for(gate_holders_besides(dsn, GATE), timeout=20, what="the feed waits")
        terminate(dsn, next(iter(before)))
        wait_for(gate_holders_besides(dsn, GATE, before), timeout=10, what="a new registration")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO items VALUES (1, 'after')")
        thread.join(timeout=10)
    finally:
        feed.stop()
        thread.join()
    feed.close()
    assert got == [1]


def test_an_asyncio_feed_whose_connection_the_server_closed_waits_again(dsn: str) -> None:
    """The same, for a feed of ``pgtide.aio`` (its loop watches the socket)."""
    _table(dsn)

    async def main() -> list[int]:
        got: list[int] = []
        feed = pgtide.aio.Feed("killed", ["items"], dsn=dsn, poll_interval=60)

        async def follow() -> None:
            async with contextlib.aclosing(feed.batches(timeout=30)) as batches:
                async for batch in batches:
                    got.extend(c.row["id"] for c in batch if c.row is not None)
                    await batch.ack()
                    if got:
                        return

        task = asyncio.create_task(follow())
        try:
            before = await asyncio.to_thread(
                wait_for, gate_holders_besides(dsn, GATE), timeout=20, what="the feed waits"
            )
            terminate(dsn, next(iter(before)))
            await asyncio.to_thread(
                wait_for,
                gate_holders_besides(dsn, GATE, before),
                timeout=10,
                what="registered again",
            )
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("INSERT INTO items VALUES (1, 'after')")
            await asyncio.wait_for(task, 10)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await feed.close()
        return got

    assert asyncio.run(main()) == [1]
