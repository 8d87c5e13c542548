"""Behind a transaction-pooling proxy (a real PgBouncer, pool_mode = transaction): with
PGTIDE_POOLER=transaction, events are published and worked, wait() returns and feeds follow
through it; what needs a session of its own refuses to start, naming the fix."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from events_helpers import wait_for
from pooler_helpers import bouncer

import pgtide
import pgtide.aio
from pgtide.connect import pooled
from pgtide.errors import ConfigError
from pgtide.feed import Relay
from pgtide.feed.backfill import Backfiller


@pytest.fixture
def pooler(dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("PGTIDE_POOLER", "transaction")
    with bouncer(dsn, pool_size=2) as through:
        yield through


def test_events_publish_work_and_wait_through_a_transaction_pooler(pooler: str) -> None:
    # 4 publishers, a worker (claims, outcomes, heartbeats) and wait(), on 2 server
    # connections: each transaction may get another one, so nothing may outlive it
    ran: list[int] = []
    worker = pgtide.Events(dsn=pooler, poll_interval=0.05)
    worker.register("job", lambda event: ran.append(event.id))
    worker.start(concurrency=4)
    errors: list[BaseException] = []
    ids: list[int] = []

    def publish() -> None:
        with pgtide.Events(dsn=pooler) as publisher:
            try:
                for n in range(50):
                    ids.append(publisher.publish("job", {"n": n}))
                ids.extend(publisher.publish_many("job", [1, 2, 3]))
            except BaseException as exc:  # pragma: no cover - what the test looks for
                errors.append(exc)

    threads = [threading.Thread(target=publish) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    last = max(ids)
    assert worker.wait(last, timeout=20).state == "done"  # polled: no LISTEN through it
    wait_for(lambda: len(ran) == len(ids), what="every event run")
    assert sorted(ran) == sorted(ids)
    assert worker.status()["done"] == len(ids)
    worker.close()


def test_a_worker_behind_a_pooler_leaves_no_session_setting(pooler: str, dsn: str) -> None:
    worker = pgtide.Events(dsn=pooler, poll_interval=0.05)
    worker.register("job", lambda event: None)
    worker.start(concurrency=2)
    worker.wait(worker.publish("job"), timeout=20)
    worker.close()
    for _ in range(4):  # each server connection of the pool, whichever comes
        with psycopg.connect(pooler, prepare_threshold=None) as conn:
            assert conn.execute("SHOW jit").fetchone() == ("on",)
            assert conn.execute("SHOW plan_cache_mode").fetchone() == ("auto",)
    with psycopg.connect(dsn) as conn:  # and no worker held a wake gate (a session lock)
        held = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        assert held.fetchone() == (0,)


def test_async_events_through_a_transaction_pooler(pooler: str) -> None:
    import asyncio

    async def main() -> str:
        async with pgtide.aio.Events(dsn=pooler, poll_interval=0.05) as events:

            async def job(event: pgtide.Event) -> str:
                return "ok"

            events.register("job", job)
            ids = [await events.publish("job") for _ in range(10)]
            worker = asyncio.ensure_future(events.run(concurrency=4))
            try:
                return (await events.wait(ids[-1], timeout=20)).state
            finally:
                worker.cancel()
                await asyncio.gather(worker, return_exceptions=True)

    assert asyncio.run(main()) == "done"


def test_a_feed_follows_through_a_transaction_pooler(pooler: str, dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, total numeric)")
    pgtide.track("orders", dsn=dsn)
    feed = pgtide.Feed("through-pooler", ["orders"], dsn=pooler, poll_interval=0.05)
    seen: list[Any] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for n in range(1, 31):
            conn.execute("INSERT INTO orders VALUES (%s, %s)", (n, n))
    for batch in feed.batches(start="beginning", timeout=2):
        seen.extend(c.row["id"] for c in batch)
        batch.ack()
        if len(seen) == 30:
            break
    assert seen == list(range(1, 31))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO orders VALUES (31, 31)")
    batch = next(iter(feed.batches(start="saved", timeout=5)))  # polled: woken without LISTEN
    assert [c.row["id"] for c in batch] == [31]
    feed.close()
    newest: list[Any] = []
    fetcher = pgtide.LatestFetcher("orders", newest.append, dsn=pooler, poll_interval=0.05)
    fetcher.start()
    wait_for(lambda: newest and newest[-1]["id"] == 31, what="the newest row")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO orders VALUES (32, 32)")
    wait_for(lambda: newest[-1]["id"] == 32, what="the next newest row, polled")
    fetcher.stop()


def test_ingest_lands_lines_through_a_transaction_pooler(
    pooler: str, dsn: str, tmp_path: Any
) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE readings (value float8)")
    data = tmp_path / "in"
    data.mkdir()
    (data / "a.txt").write_text("".join(f"{n}.5\n" for n in range(200)) + "oops\n")
    watcher = pgtide.FileWatcher(data, table="readings", dsn=pooler, name="pooled")
    assert watcher.catch_up() == 200
    with (data / "a.txt").open("a") as f:
        f.write("7\n8\n")
    watcher.start()
    with psycopg.connect(dsn) as conn:
        wait_for(
            lambda: conn.execute("SELECT count(*) FROM readings").fetchone() == (202,),
            what="the appended lines",
        )
    watcher.stop()
    assert [r.line for r in pgtide.ingest.rejects.find(dsn=dsn)] == ["oops"]


def test_what_needs_a_session_refuses_to_start_behind_a_pooler(pooler: str) -> None:
    with pytest.raises(ConfigError, match=r"a Listener .* needs a session of its own"):
        pgtide.Listener(dsn=pooler).start()
    with pytest.raises(ConfigError, match=r"the WAL relay .* PGTIDE_POOLER"):
        Relay(pooler).run(until_idle=True)
    with pytest.raises(ConfigError, match=r"a backfill runner .* reaches PostgreSQL directly"):
        Backfiller(pooler).run()


def test_a_pooler_setting_pgtide_does_not_know_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PGTIDE_POOLER", "statement")
    with pytest.raises(ConfigError, match="'statement' is not a pool mode pgtide knows"):
        pooled()
    for off in ("", "session", "none"):
        monkeypatch.setenv("PGTIDE_POOLER", off)
        assert pooled() is False
