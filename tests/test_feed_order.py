"""Per-row order: changes of transactions that wrote the same row come in commit order,
even when those transactions drew their xids in the other order."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from test_feed_wal import _fresh, _relay, wal_server  # noqa: F401 (fixture)

import pgtide
from pgtide.feed._core import choose_cut


def apply(
    copy: dict[Any, Any], change: pgtide.Change, key: str = "id", strict: bool = False
) -> None:
    """Apply a change to a consumer's copy: read/insert/update as upsert, delete, truncate.
    ``strict``: the old row of an update or delete must be the copy's (whole old rows)."""
    if strict and change.op in ("update", "delete"):
        assert change.old is not None
        assert copy.get(change.old[key]) == change.old, f"out of order: {change}"
    if change.op == "truncate":
        copy.clear()
    elif change.op == "delete":
        assert change.old is not None
        copy.pop(change.old[key], None)
    else:
        assert change.row is not None
        if change.op == "update" and change.old is not None:
            copy.pop(change.old[key], None)
        copy[change.row[key]] = change.row


def table_rows(dsn: str, table: str, key: str = "id") -> dict[Any, Any]:
    with psycopg.connect(dsn) as conn:
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        return {r[key]: r for r in cur.execute(f"SELECT * FROM {table}")}  # test-only name


def feed_copy(
    dsn: str, consumer: str, max_changes: int = 1000, strict: bool = False
) -> dict[Any, Any]:
    copy: dict[Any, Any] = {}
    feed = pgtide.Feed(consumer, dsn=dsn, relay=False)
    try:
        for batch in feed.batches(start="beginning", stop="end", max_changes=max_changes):
            for change in batch:
                apply(copy, change, strict=strict)
    finally:
        feed.close()
    return copy


@pytest.fixture(params=["trigger", "wal"])
def capture_dsn(request: pytest.FixtureRequest, dsn: str) -> Iterator[tuple[str, str]]:
    if request.param == "trigger":
        yield dsn, "trigger"
        return
    admin = request.getfixturevalue("wal_server")
    for url in _fresh(admin):
        yield url, "wal"


def _interleave(dsn: str) -> None:
    """T1 draws its xid first (a write elsewhere); T2 updates row 1 and commits; then T1
    updates row 1 and commits: T1 has the smaller xid but committed second."""
    with psycopg.connect(dsn) as t1, psycopg.connect(dsn) as t2:
        t1.execute("INSERT INTO items VALUES (2, 'by t1')")
        t2.execute("UPDATE items SET v = 't2' WHERE id = 1")
        t2.commit()
        t1.execute("UPDATE items SET v = 't1' WHERE id = 1")
        t1.commit()


@pytest.mark.parametrize("max_changes", [1000, 1])
def test_same_row_in_commit_order_not_xid_order(dsn: str, max_changes: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO items VALUES (1, 'first')")
    pgtide.track("items", dsn=dsn)
    _interleave(dsn)
    feed = pgtide.Feed("c", dsn=dsn)
    start = pgtide.Position.beginning()
    changes = [
        c
        for b in feed.batches(start=start, stop="end", max_changes=max_changes)
        for c in b
        if c.op == "update"
    ]
    feed.close()
    assert [c.row["v"] for c in changes if c.row] == ["t2", "t1"]
    assert feed_copy(dsn, "copy", max_changes) == table_rows(dsn, "items")


def test_same_row_in_commit_order_through_the_relay(capture_dsn: tuple[str, str]) -> None:
    url, capture = capture_dsn
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
    pgtide.track("items", capture=capture, dsn=url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO items VALUES (1, 'first')")
    _interleave(url)
    if capture == "wal":
        _relay(url)
    assert feed_copy(url, "copy") == table_rows(url, "items")
    assert feed_copy(url, "small", max_changes=1) == table_rows(url, "items")


def _writer(dsn: str, seed: int, rounds: int, errors: list[BaseException]) -> None:
    rng = random.Random(seed)
    try:
        with psycopg.connect(dsn) as conn:
            for n in range(rounds):
                try:
                    if rng.random() < 0.7:  # draw the xid early, elsewhere
                        conn.execute(
                            "INSERT INTO items VALUES (%s, 'cold') ON CONFLICT (id) DO UPDATE "
                            "SET v = excluded.v",
                            (1000 + seed * 1000 + n % 7,),
                        )
                    for hot in sorted(rng.sample(range(3), rng.randint(1, 2))):
                        if rng.random() < 0.15:
                            conn.execute("DELETE FROM items WHERE id = %s", (hot,))
                        else:
                            conn.execute(
                                "INSERT INTO items VALUES (%s, %s) ON CONFLICT (id) DO UPDATE "
                                "SET v = excluded.v",
                                (hot, f"w{seed}-{n}"),
                            )
                    conn.commit()
                except psycopg.errors.DeadlockDetected:
                    conn.rollback()
    except BaseException as exc:
        errors.append(exc)


def test_random_writers_on_hot_rows_copy_equals_table(capture_dsn: tuple[str, str]) -> None:
    url, capture = capture_dsn
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
    pgtide.track("items", capture=capture, old="full" if capture == "wal" else None, dsn=url)
    copies: list[dict[Any, Any]] = [{}, {}]
    feeds = [pgtide.Feed("big", dsn=url, relay=False), pgtide.Feed("small", dsn=url, relay=False)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def consume(i: int, max_changes: int) -> None:
        # reads while writers write: steps split into batches, positions saved
        while not stop.is_set():
            for batch in feeds[i].batches(stop="end", max_changes=max_changes):
                for change in batch:
                    apply(copies[i], change, strict=True)
                batch.ack()
            if capture == "wal":
                _relay(url)

    writers = [threading.Thread(target=_writer, args=(url, seed, 60, errors)) for seed in range(4)]
    readers = [threading.Thread(target=consume, args=a) for a in [(0, 1000), (1, 3)]]
    for t in writers + readers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert not errors
    if capture == "wal":
        _relay(url)
    for i, max_changes in enumerate([1000, 3]):
        for batch in feeds[i].batches(stop="end", max_changes=max_changes):
            for change in batch:
                apply(copies[i], change)
            batch.ack()
        feeds[i].close()
    expected = table_rows(url, "items")
    assert copies[0] == expected
    assert copies[1] == expected
    # read afterwards, every transaction is in one step (or a few, with max_changes=3)
    assert feed_copy(url, "after", strict=True) == expected
    assert feed_copy(url, "after-small", max_changes=3, strict=True) == expected


def test_choose_cut_takes_whole_transactions_up_to_an_xid() -> None:
    # (last id, xid, changes), by last id: xid 10 committed after 11 and 12
    summary = [(5, 11, 1), (6, 12, 1), (9, 10, 3), (10, 13, 1)]
    assert choose_cut(summary, 1) == (12, [(10, 13, 1)])  # 10, 11, 12 come together
    assert choose_cut(summary, 5) == (12, [(10, 13, 1)])
    assert choose_cut(summary, 6) == (13, [])
    assert choose_cut([(3, 7, 50), (4, 8, 1)], 10) == (7, [(4, 8, 1)])
