"""Backfill: existing rows as 'read' changes, consistent with concurrent writes, resumable
after a kill -9, and visible as such to `pgtide follow` and the sinks."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any

import psycopg
import pytest
import test_feed_order
from listen_helpers import wait_until
from pgtide_testing import CliRunner, Killable
from test_feed_order import apply, table_rows
from test_feed_wal import _relay, wal_server  # noqa: F401 (fixture)

import pgtide
from pgtide.errors import FeedError
from pgtide.feed.backfill import Backfiller
from pgtide.session import run
from pgtide.sinks._encode import record

ROWS = 5000
capture_dsn = test_feed_order.capture_dsn  # the fixture: both captures


def _make(dsn: str, rows: int = ROWS) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, v text, n int NOT NULL)")
        conn.execute(
            "INSERT INTO items SELECT g, 'v' || g, 0 FROM generate_series(1, %s) g", (rows,)
        )


def _progress(dsn: str) -> tuple[int, bool]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT chunks, done_at IS NOT NULL FROM pgtide.backfills").fetchone()
    return (0, False) if row is None else (row[0], row[1])


def _copy(dsn: str, consumer: str) -> tuple[dict[Any, Any], list[pgtide.Change]]:
    copy: dict[Any, Any] = {}
    seen: list[pgtide.Change] = []
    feed = pgtide.Feed(consumer, dsn=dsn, relay=False)
    try:
        for batch in feed.batches(start="beginning", stop="end", max_changes=700):
            for change in batch:
                apply(copy, change)
                seen.append(change)
    finally:
        feed.close()
    return copy, seen


def _writer(dsn: str, seed: int, stop: threading.Event, errors: list[BaseException]) -> None:
    rng = random.Random(seed)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not stop.is_set():
                key = rng.randint(1, ROWS + 200)
                r = rng.random()
                if r < 0.2:
                    conn.execute("DELETE FROM items WHERE id = %s", (key,))
                elif r < 0.4:
                    conn.execute(
                        "INSERT INTO items VALUES (%s, 'new', 0) ON CONFLICT (id) DO NOTHING",
                        (key,),
                    )
                else:
                    with conn.transaction():
                        conn.execute("UPDATE items SET n = n + 1, v = 'u' WHERE id = %s", (key,))
                        conn.execute(
                            "UPDATE items SET n = n + 1 WHERE id = %s", (rng.randint(1, ROWS),)
                        )
    except psycopg.errors.DeadlockDetected:
        pass
    except BaseException as exc:
        errors.append(exc)


def test_backfill_under_concurrent_updates_and_deletes_ends_equal(
    capture_dsn: tuple[str, str],
) -> None:
    url, capture = capture_dsn
    _make(url)
    pgtide.track("items", capture=capture, backfill=True, dsn=url)
    stop, errors = threading.Event(), []
    writers = [threading.Thread(target=_writer, args=(url, s, stop, errors)) for s in range(3)]
    for t in writers:
        t.start()
    filler = Backfiller(url, chunk_rows=250)
    with psycopg.connect(url, autocommit=True) as conn:
        assert filler.run_pending(conn)
    stop.set()
    for t in writers:
        t.join()
    assert not errors
    if capture == "wal":
        _relay(url)
    assert _progress(url)[1]
    copy, seen = _copy(url, "copy")
    assert copy == table_rows(url, "items")
    reads = Counter(c.row["id"] for c in seen if c.op == "read" and c.row)
    assert reads and max(reads.values()) == 1
    assert filler.emitted == sum(reads.values())


def test_backfill_needs_a_primary_key(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE nokey (v text)")
    with pytest.raises(FeedError, match="no primary key"):
        pgtide.track("nokey", backfill=True, dsn=dsn)
    assert pgtide.feed.tracked(dsn=dsn) == []  # nothing half done


KILLED_CHUNK = 5
"""The crash test's chunks: so small that the runner is still at it when the kill lands (with
50 rows a chunk, a fast machine finished all 100 between two looks at the progress)."""


def backfill_forever(dsn: str) -> None:
    """The runner killed by the crash test: small chunks, one after the other."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        Backfiller(dsn, chunk_rows=KILLED_CHUNK).run_pending(conn)


def test_kill_9_mid_backfill_resumes_without_losing_or_repeating_chunks(
    dsn: str, killable: Killable
) -> None:
    _make(dsn)
    pgtide.track("items", backfill=True, dsn=dsn)
    process = killable.start(backfill_forever, dsn)
    deadline = time.monotonic() + 30
    while _progress(dsn)[0] < 5:  # a few chunks committed: kill it mid-way
        assert time.monotonic() < deadline and process.is_alive()
        time.sleep(0.01)
    killable.kill(process)
    chunks, done = _progress(dsn)
    assert not done and chunks < ROWS // KILLED_CHUNK
    # the next runner (a feed of the table) takes over from the last saved key
    feed = pgtide.Feed("taker", "items", dsn=dsn)
    for batch in feed.batches(start="end", timeout=0.2):
        batch.ack()
        if _progress(dsn)[1]:
            break
    while feed._backfill is not None and feed._backfill.running:
        feed._backfill._thread.join(0.1)
    feed.close()
    assert _progress(dsn)[1]
    copy, seen = _copy(dsn, "copy")
    reads = Counter(c.row["id"] for c in seen if c.op == "read" and c.row)
    assert sorted(reads) == list(range(1, ROWS + 1))
    assert set(reads.values()) == {1}
    assert copy == table_rows(dsn, "items")


def test_read_reaches_follow_and_sinks_json_unchanged(dsn: str, cli: CliRunner) -> None:
    _make(dsn, 3)
    out = cli("track", "items", "--backfill", "--wait", "--dsn", dsn)
    assert out.returncode == 0, out.stderr
    out = cli("follow", "--consumer", "cli", "--timeout", "0.5", "--dsn", dsn)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(c["op"], c["row"]) for c in lines] == [
        ("read", {"id": i, "v": f"v{i}", "n": 0}) for i in (1, 2, 3)
    ]
    _, seen = _copy(dsn, "sink")
    assert [record(c)["op"] for c in seen] == ["read"] * 3
    assert record(seen[0])["row"] == {"id": 1, "v": "v1", "n": 0}
    assert pgtide.latest("items", dsn=dsn) == {"id": 3, "v": "v3", "n": 0}


def test_a_chunk_that_deadlocks_with_a_writer_runs_again(dsn: str) -> None:
    """The backfill's chunk locks rows 1-9 and waits for row 10, which a writer holds; the
    writer then waits for row 1: a deadlock, and the chunk (whose check comes first) is
    rolled back. It runs again once the writer commits; the backfill ends, nothing raised."""
    _make(dsn, rows=10)
    pgtide.track("items", backfill=True, dsn=dsn)
    errors: list[BaseException] = []

    def fill() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SET deadlock_timeout = '500ms'")
            try:
                Backfiller(dsn, chunk_rows=100).run_pending(conn)
            except BaseException as exc:  # the test asserts there is none
                errors.append(exc)

    with psycopg.connect(dsn) as writer:
        writer.execute("SET deadlock_timeout = '60s'")  # the backfill is the one to notice
        writer.execute("UPDATE items SET n = 1 WHERE id = 10")
        runner = threading.Thread(target=fill)
        runner.start()
        waiting = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'"
        )
        with psycopg.connect(dsn, autocommit=True) as watch:
            deadline = time.monotonic() + 20
            while watch.execute(waiting).fetchone() != (1,):
                assert time.monotonic() < deadline, "the backfill never waited for row 10"
                time.sleep(0.01)
        writer.execute("UPDATE items SET n = 1 WHERE id = 1")  # waits: the deadlock
        writer.commit()
    runner.join(30)
    assert not runner.is_alive() and errors == []
    assert _progress(dsn)[1]
    with psycopg.connect(dsn) as conn:
        reads = conn.execute("SELECT count(*) FROM pgtide.changes WHERE op = 'read'").fetchone()
    assert reads == (10,)


class _PausedAfterTwo(Backfiller):
    """A runner whose backfill is paused from another session after its second chunk."""

    @staticmethod
    def _chunk(conn: psycopg.Connection[Any], *args: Any) -> tuple[int, bool, str | None]:
        done = Backfiller._chunk(conn, *args)
        if _progress(conn.info.dsn)[0] == 2:
            assert pgtide.feed.pause_backfill("items", dsn=conn.info.dsn)
        return done


def test_a_paused_backfill_keeps_its_progress_and_resumes_after_it(
    dsn: str, cli: CliRunner
) -> None:
    """Paused, a backfill runs no chunk more (the runner leaves it after the current one),
    shows as paused, and resumes after its last chunk: every row read once in all."""
    _make(dsn, rows=5000)
    pgtide.track("items", backfill=True, dsn=dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert _PausedAfterTwo(dsn, chunk_rows=1000).run_pending(conn)  # nothing left to run
    assert _progress(dsn) == (2, False)
    (found,) = pgtide.feed.backfills(dsn=dsn)
    assert (found["rows"], found["paused_at"] is not None) == (2000, True)
    sections = {s.title: s for s in _overview(dsn)}
    assert sections["backfills"].as_dicts()[0]["state"] == "paused"
    with psycopg.connect(dsn, autocommit=True) as conn:  # no runner takes a paused one up
        assert Backfiller(dsn, chunk_rows=1000).run_pending(conn)
    assert _progress(dsn) == (2, False)
    _, seen = _copy(dsn, "before")
    assert [c.row["id"] for c in seen] == list(range(1, 2001))

    out = cli("backfill", "resume", "items", "--wait", "--dsn", dsn)
    assert out.returncode == 0 and "resumed the backfill of items" in out.stdout, out.stderr
    assert _progress(dsn) == (3, True)  # one chunk more (of 10,000 rows at most) ends it
    _, seen = _copy(dsn, "after")
    assert [c.row["id"] for c in seen] == list(range(1, 5001))
    out = cli("backfill", "ls", "--json", "--dsn", dsn)
    assert json.loads(out.stdout)["rows"] == 5000 and json.loads(out.stdout)["done_at"]
    assert not pgtide.feed.pause_backfill("items", dsn=dsn)  # done: nothing to pause
    out = cli("backfill", "pause", "public.items", "--dsn", dsn)
    assert out.returncode == 0 and "backfill done" in out.stdout, out.stderr
    with pytest.raises(FeedError, match=r"none was recorded; start one with"):
        pgtide.feed.resume_backfill("other", dsn=dsn)


def _overview(dsn: str) -> list[Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return run(conn, pgtide.feed.overview())


def test_running_consumers_take_up_a_backfill_recorded_or_resumed_later(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A feed that was already following the table, and a running `pgtide capture`, both
    look for new backfills: one recorded after they started is run, as is one resumed."""
    monkeypatch.setattr("pgtide.feed._core.BACKFILL_CHECK", 0.1)  # the feed looks often
    _make(dsn, rows=300)
    pgtide.track("items", dsn=dsn)
    feed = pgtide.Feed("live", ["items"], dsn=dsn)
    reads: list[int] = []

    def follow() -> None:
        for batch in feed.batches(timeout=None):
            reads.extend(c.row["id"] for c in batch if c.op == "read")
            batch.ack()

    follower = threading.Thread(target=follow)
    follower.start()
    try:
        wait_until(lambda: "live" in {c["name"] for c in pgtide.feed.consumers(dsn=dsn)})
        pgtide.track("items", backfill=True, dsn=dsn)  # recorded after the feed started
        wait_until(lambda: len(reads) == 300, 20, "the running feed's backfill")
        with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
            pgtide.track("items", backfill=True, conn=conn)  # again, recorded paused
            pgtide.feed.pause_backfill("items", conn=conn)
        assert pgtide.feed.resume_backfill("items", dsn=dsn)
        wait_until(lambda: len(reads) == 600, 20, "the resumed backfill")
    finally:
        feed.stop()
        follower.join(10)
        feed.close()
    assert sorted(reads) == sorted(list(range(1, 301)) * 2)

    # a running `pgtide capture` (its backfill runner keeps looking) runs a later one too
    capture = subprocess.Popen([sys.executable, "-m", "pgtide", "capture", "--dsn", dsn])
    try:
        wait_until(lambda: _capture_running(dsn), 20, "pgtide capture to start")
        pgtide.track("items", backfill=True, dsn=dsn)
        wait_until(lambda: _progress(dsn)[1], 20, "pgtide capture's backfill")
    finally:
        capture.terminate()
        assert capture.wait(20) == 0
    assert _progress(dsn) == (1, True)


def _capture_running(dsn: str) -> bool:
    with psycopg.connect(dsn) as conn:
        found = "SELECT 1 FROM pg_stat_activity WHERE application_name = 'pgtide backfill'"
        return conn.execute(found).fetchone() is not None
