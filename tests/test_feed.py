"""The change feed against real PostgreSQL: capture, snapshot reads, positions, faults."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import feed_workers
import psycopg
import pytest
from pgtide_testing import Killable, RestartableServer

import pgtide
import pgtide.aio
from pgtide.feed import consumers, tracked
from pgtide.feed.retention import drop_consumer
from pgtide.feed.sleepers import GATE


def _until(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def _setup(dsn: str, *tables: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in tables or ("items",):
            conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v text)")
    for table in tables or ("items",):
        pgtide.track(table, dsn=dsn)


def _ids(batches: list[Any]) -> list[int]:
    return [c.row["id"] for b in batches for c in b if c.row is not None]


def _drain(feed: pgtide.Feed, **kw: Any) -> list[pgtide.Batch]:
    got = []
    for batch in feed.batches(timeout=kw.pop("timeout", 0.3), **kw):
        got.append(batch)
        batch.ack()
    return got


# -- capture ---------------------------------------------------------------------------------
def test_payloads_of_every_operation_in_statement_order(dsn: str) -> None:
    _setup(dsn)
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO items VALUES (1, 'a'), (2, 'b')")
        conn.execute("UPDATE items SET v = 'c' WHERE id = 1")
        conn.execute("DELETE FROM items WHERE id = 2")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE items")
    batches = _drain(pgtide.Feed("t", ["items"], dsn=dsn))
    changes = [c for b in batches for c in b]
    assert [(c.table, c.op, c.row, c.old) for c in changes] == [
        ("public.items", "insert", {"id": 1, "v": "a"}, None),
        ("public.items", "insert", {"id": 2, "v": "b"}, None),
        ("public.items", "update", {"id": 1, "v": "c"}, {"id": 1, "v": "a"}),
        ("public.items", "delete", None, {"id": 2, "v": "b"}),
        ("public.items", "truncate", None, None),
    ]
    assert len({c.xid for c in changes[:4]}) == 1 and changes[4].xid != changes[0].xid


def test_updates_pair_old_and_new_rows_whatever_the_key(dsn: str) -> None:
    """UPDATE is captured per statement: the n-th old row of the transition tables is the
    n-th new row before the update, also when keys are swapped (pairing by key would mix
    them up), for many rows in one statement, for a statement that updates nothing, and
    for a row moving between partitions of a tracked partitioned table."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int UNIQUE DEFERRABLE INITIALLY DEFERRED, v text)")
    pgtide.track("items", dsn=dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 500) g")
        conn.execute("UPDATE items SET id = 3 - id, v = v || '!' WHERE id IN (1, 2)")
        conn.execute("UPDATE items SET v = upper(v) WHERE id > 2")
        conn.execute("UPDATE items SET v = 'never' WHERE id < 0")
        conn.execute(
            "CREATE TABLE parts (id int, v text, PRIMARY KEY (id)) PARTITION BY RANGE (id)"
        )
        conn.execute("CREATE TABLE parts_low PARTITION OF parts FOR VALUES FROM (0) TO (100)")
        conn.execute("CREATE TABLE parts_high PARTITION OF parts FOR VALUES FROM (100) TO (200)")
    pgtide.track("parts", dsn=dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO parts VALUES (1, 'a'), (2, 'b')")
        conn.execute("UPDATE parts SET id = id + 100, v = v || '+' WHERE id = 2")
        conn.execute(
            "INSERT INTO parts VALUES (1, 'x'), (3, 'c') "
            "ON CONFLICT (id) DO UPDATE SET v = excluded.v"
        )
    updates = [
        (c.old, c.row)
        for b in _drain(pgtide.Feed("pairs", ["items", "parts"], dsn=dsn))
        for c in b
        if c.op == "update"
    ]
    swapped = [
        ({"id": 1, "v": "v1"}, {"id": 2, "v": "v1!"}),
        ({"id": 2, "v": "v2"}, {"id": 1, "v": "v2!"}),
    ]
    assert sorted(updates[:2], key=str) == sorted(swapped, key=str)
    expected = [({"id": i, "v": f"v{i}"}, {"id": i, "v": f"V{i}"}) for i in range(3, 501)]
    assert sorted(updates[2:500], key=lambda u: u[0]["id"]) == expected
    assert updates[500:] == [
        ({"id": 2, "v": "b"}, {"id": 102, "v": "b+"}),
        ({"id": 1, "v": "a"}, {"id": 1, "v": "x"}),  # the upsert's update (its insert: 3)
    ]


# What a database installed before migration 017 holds: row and old as jsonb, tables tracked
# with a row-level UPDATE capture (pgtide.capture_update) and its statement-level wake-up.
BEFORE_017 = """
ALTER TABLE pgtide.changes ALTER COLUMN row TYPE jsonb, ALTER COLUMN old TYPE jsonb;
DELETE FROM pgtide.schema_version WHERE version = 17;
CREATE FUNCTION old_capture_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pgtide.changes (table_name, op, row, old)
        VALUES (TG_ARGV[0], 'update', to_jsonb(NEW), to_jsonb(OLD));
    RETURN NULL;
END $$;
DROP TRIGGER pgtide_capture_update ON items;
CREATE TRIGGER pgtide_capture_update AFTER UPDATE ON items FOR EACH ROW
    EXECUTE FUNCTION old_capture_update('public.items', 'notify');
CREATE TRIGGER pgtide_capture_update_wakeup AFTER UPDATE ON items FOR EACH STATEMENT
    EXECUTE FUNCTION pgtide.capture_statement('public.items', 'notify');
"""


def test_upgrade_to_json_rows_keeps_changes_and_old_triggers(dsn: str) -> None:
    """Migration 017 on a database that has jsonb changes and a table tracked with the
    row-level UPDATE capture: the changes read back the same, the old trigger keeps
    capturing (its jsonb is cast), and tracking the table again moves it to the
    statement-level trigger."""
    _setup(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(BEFORE_017)
        conn.execute("INSERT INTO items VALUES (1, 'a'), (2, 'b')")
        conn.execute("UPDATE items SET v = 'c' WHERE id = 1")
    assert pgtide.install(dsn=dsn) == pgtide.schema.latest_version()
    with psycopg.connect(dsn, autocommit=True) as conn:
        types = conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'pgtide.changes'::regclass AND attname IN ('row', 'old')"
        ).fetchall()
        conn.execute("UPDATE items SET v = 'd' WHERE id = 2")  # the old trigger, cast to json
    assert types == [("json",), ("json",)]
    assert pgtide.track("items", dsn=dsn) is True
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE items SET v = 'e' WHERE id = 1")
        triggers = conn.execute(
            "SELECT tgname, tgtype & 1 FROM pg_trigger WHERE tgrelid = 'items'::regclass "
            "AND tgname LIKE 'pgtide%%' ORDER BY tgname"
        ).fetchall()
    assert ("pgtide_capture_update", 0) in triggers  # FOR EACH STATEMENT
    assert all(name != "pgtide_capture_update_wakeup" for name, _ in triggers)
    changes = [(c.op, c.old, c.row) for b in _drain(pgtide.Feed("up", dsn=dsn)) for c in b]
    assert changes == [
        ("insert", None, {"id": 1, "v": "a"}),
        ("insert", None, {"id": 2, "v": "b"}),
        ("update", {"id": 1, "v": "a"}, {"id": 1, "v": "c"}),
        ("update", {"id": 2, "v": "b"}, {"id": 2, "v": "d"}),
        ("update", {"id": 1, "v": "c"}, {"id": 1, "v": "e"}),
    ]


def _wake_ups_until_marker(
    listener: psycopg.Connection[Any], conn: psycopg.Connection[Any]
) -> list[str]:
    """The payloads ``listener`` hears on pgtide_changes up to a marker that ``conn`` sends
    last (notifications arrive in commit order, so the marker bounds the wait)."""
    conn.execute("SELECT pg_notify('pgtide_changes', 'marker')")
    got = []
    for note in listener.notifies(timeout=30):
        got.append(note.payload)
        if note.payload == "marker":
            break
    return got


def test_capture_notifies_once_per_statement_that_captured_rows(dsn: str) -> None:
    """The wake-up NOTIFY (migration 020: FOUND after the capture's INSERT): one per
    statement that captured a row, none for a statement that captured nothing, none for a
    table tracked quiet, while a feed waits (the listener registers as one). A marker sent
    last bounds the wait (notifications arrive in commit order)."""
    _setup(dsn, "items")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE hushed (id int PRIMARY KEY, v text)")
    pgtide.track("hushed", notify=False, dsn=dsn)
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN pgtide_changes")
        listener.execute("SELECT pg_advisory_lock_shared(%s, %s)", GATE)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO items SELECT 1, 'x' WHERE false")
            conn.execute("UPDATE items SET v = 'y' WHERE id = 1")
            conn.execute("DELETE FROM items WHERE id = 1")
            conn.execute("INSERT INTO hushed VALUES (1, 'x')")
            conn.execute("INSERT INTO items VALUES (1, 'x')")
            conn.execute("UPDATE items SET v = 'y' WHERE id = 1")
            got = _wake_ups_until_marker(listener, conn)
    assert got == ["public.items", "public.items", "marker"]


def test_writers_notify_only_while_a_feed_waits(dsn: str) -> None:
    """Migration 021: a capture NOTIFYs only while some connection holds the gate shared
    (a waiting feed); otherwise the writer commits without the NOTIFY and its lock."""
    _setup(dsn, "items")
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN pgtide_changes")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO items VALUES (1, 'nobody waits')")
            with psycopg.connect(dsn, autocommit=True) as waiting:
                waiting.execute("SELECT pg_advisory_lock_shared(%s, %s)", GATE)
                conn.execute("INSERT INTO items VALUES (2, 'a feed waits')")
                waiting.execute("SELECT pg_advisory_unlock_shared(%s, %s)", GATE)
                conn.execute("INSERT INTO items VALUES (3, 'it stopped waiting')")
            got = _wake_ups_until_marker(listener, conn)
    assert got == ["public.items", "marker"]


def test_upgrade_drops_the_check_on_op_whatever_its_name(dsn: str) -> None:
    """Migration 020 removes the CHECK on the log's op, which every capturing statement
    compiled again: it is found by its column (its name depends on the database's history),
    gone from the log and its partitions, and capture keeps working."""
    _setup(dsn)
    check = "CHECK (op IN ('insert', 'update', 'delete', 'truncate', 'read'))"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE pgtide.changes ADD CONSTRAINT changes_op_check1 {check}")
        conn.execute("DELETE FROM pgtide.schema_version WHERE version = 20")
    assert pgtide.install(dsn=dsn) == pgtide.schema.latest_version()
    with psycopg.connect(dsn, autocommit=True) as conn:
        left = conn.execute(
            "SELECT c.conrelid::regclass::text FROM pg_constraint c "
            "JOIN pg_inherits i ON c.conrelid IN (i.inhrelid, i.inhparent) "
            "WHERE i.inhparent = 'pgtide.changes'::regclass AND c.contype = 'c'"
        ).fetchall()
        conn.execute("INSERT INTO items VALUES (1, 'a')")
    assert left == []
    changes = [(c.op, c.row) for b in _drain(pgtide.Feed("up20", dsn=dsn)) for c in b]
    assert changes == [("insert", {"id": 1, "v": "a"})]


def test_track_is_idempotent_and_validates(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA sales")
        conn.execute('CREATE TABLE sales."Orders" (id int)')
    assert pgtide.track("sales.Orders", dsn=dsn) is True
    assert pgtide.track("sales.Orders", dsn=dsn) is False
    assert pgtide.track("sales.Orders", ops=["insert"], dsn=dsn) is True
    assert tracked(dsn=dsn)[0]["ops"] == ["insert"]
    with pytest.raises(pgtide.UnknownTable, match="does not exist"):
        pgtide.track("nope", dsn=dsn)
    with pytest.raises(pgtide.InvalidName, match=r"schema\.table"):
        pgtide.track("a.b.c", dsn=dsn)
    with pytest.raises(pgtide.FeedError, match="choose from"):
        pgtide.track("sales.Orders", ops=["upsert"], dsn=dsn)
    with pytest.raises(pgtide.UnknownTable, match="not tracked"):
        pgtide.latest("public.nope", dsn=dsn)
    with pytest.raises(pgtide.UnknownTable, match="not tracked"):
        list(pgtide.Feed("x", ["public.other"], dsn=dsn).batches(timeout=0))
    assert pgtide.untrack("sales.Orders", dsn=dsn) is True
    assert pgtide.untrack("sales.Orders", dsn=dsn) is False
    with psycopg.connect(dsn) as conn:
        left = conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pgtide%'")
        assert left.fetchone() == (0,)


def test_track_without_rights_installs_nothing(dsn: str) -> None:
    role = f"feed_norights_{random.randrange(10**9)}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int)")
        conn.execute(f"CREATE ROLE {role}")
        conn.execute(f"GRANT USAGE, CREATE ON SCHEMA pgtide TO {role}")
        conn.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA pgtide TO {role}")
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"SET ROLE {role}")
            with pytest.raises(pgtide.FeedError, match=r"cannot track public\.items"):
                pgtide.track("items", conn=conn)
        with psycopg.connect(dsn) as conn:
            assert conn.execute(
                "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pgtide%'"
            ).fetchone() == (0,)
            assert conn.execute("SELECT count(*) FROM pgtide.tracked").fetchone() == (0,)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


# -- reading by visibility -------------------------------------------------------------------
def test_open_transaction_is_not_skipped(dsn: str) -> None:
    """newt.db.follow's bug: A draws the smaller id but commits after B; A must come later."""
    _setup(dsn)
    feed = pgtide.Feed("v", ["items"], dsn=dsn)
    assert _drain(feed) == []
    a = psycopg.connect(dsn)
    try:
        a.execute("INSERT INTO items VALUES (1, 'A')")  # open: its change id is the smaller
        with psycopg.connect(dsn) as b:
            b.execute("INSERT INTO items VALUES (2, 'B')")
        assert _ids(_drain(feed)) == [2]
        a.commit()
    finally:
        a.close()
    assert _ids(_drain(feed)) == [1]
    assert _ids(_drain(pgtide.Feed("v", ["items"], dsn=dsn))) == []  # saved: nothing again


def test_concurrent_writers_every_row_exactly_once(dsn: str) -> None:
    _setup(dsn)
    committed: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(w: int) -> None:
        rnd = random.Random(w)
        with psycopg.connect(dsn) as conn:
            for t in range(60):
                ids = [w * 100_000 + t * 10 + k for k in range(rnd.randint(1, 4))]
                for i in ids:
                    conn.execute("INSERT INTO items VALUES (%s, 'w')", (i,))
                time.sleep(rnd.random() / 500)
                if rnd.random() < 0.15:
                    conn.rollback()
                    continue
                conn.commit()
                with lock:
                    committed.extend(ids)

    delivered: list[int] = []

    def follower() -> None:
        feed = pgtide.Feed("many", ["items"], dsn=dsn, wakeup="poll", poll_interval=0.01)
        for batch in feed.batches(max_changes=8, timeout=1.0):
            counts = Counter(c.xid for c in batch)
            assert all(counts[x] >= 1 for x in batch.xids)
            delivered.extend(c.row["id"] for c in batch if c.row)
            batch.ack()
            if stop.is_set() and len(delivered) >= len(committed):
                return

    reader = threading.Thread(target=follower)
    reader.start()
    writers = [threading.Thread(target=writer, args=(w,)) for w in range(6)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    reader.join(30)
    assert not reader.is_alive()
    assert Counter(delivered) == Counter(committed)


def test_large_transaction_is_never_split(dsn: str) -> None:
    _setup(dsn)
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO items SELECT g, 'small' FROM generate_series(1, 3) g")
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO items SELECT g, 'big' FROM generate_series(10, 509) g")
    for i in range(3):
        with psycopg.connect(dsn) as conn:
            conn.execute(
                "INSERT INTO items VALUES (%s, 'after'), (%s, 'after')", (600 + i, 700 + i)
            )
    batches = _drain(pgtide.Feed("big", ["items"], dsn=dsn), max_changes=100)
    sizes = {x: Counter(c.xid for b in batches for c in b)[x] for b in batches for x in b.xids}
    for batch in batches:
        for xid in batch.xids:
            assert sum(1 for c in batch if c.xid == xid) == sizes[xid]  # whole in this batch
    big = [b for b in batches if len(b) == 500]
    assert len(big) == 1 and {c.row["v"] for c in big[0] if c.row} == {"big"}
    assert sorted(_ids(batches)) == sorted(
        [1, 2, 3, *range(10, 510), *range(600, 603), *range(700, 703)]
    )
    assert all(len(b) <= 100 for b in batches if b is not big[0])


def test_resume_from_saved_and_positions(dsn: str) -> None:
    _setup(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(5):
            conn.execute("INSERT INTO items VALUES (%s, 'x')", (i,))
    feed = pgtide.Feed("r", ["items"], dsn=dsn)
    it = feed.batches(max_changes=2, timeout=0.2)
    first = next(it)
    first.ack()
    second = next(it)  # delivered, never acknowledged
    it.close()
    assert feed.saved() == first.position
    assert first.position < second.position and first.start < first.position
    assert pgtide.Position.parse(str(second.position)) == second.position
    again = _drain(pgtide.Feed("r", ["items"], dsn=dsn))
    assert _ids(again) == [c.row["id"] for c in second if c.row] + [4]
    with pytest.raises(pgtide.InvalidPosition):
        pgtide.Position.parse("not a position")


def test_bounded_ranges_end_by_themselves(dsn: str) -> None:
    _setup(dsn)
    feed = pgtide.Feed("range", ["items"], dsn=dsn)
    p0 = feed.seek("end")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO items VALUES (1, 'x')")
        conn.execute("INSERT INTO items VALUES (2, 'x')")
        p1 = pgtide.Feed("probe", dsn=dsn).seek("end")
        conn.execute("INSERT INTO items VALUES (3, 'x')")
    p2 = pgtide.Feed("probe", dsn=dsn).seek("end")
    assert p0 < p1 < p2
    ranged = list(feed.batches(start=p0, stop=p1))  # no timeout: it must end by itself
    assert _ids(ranged) == [1, 2]
    assert _ids(list(feed.batches(start=p1, stop=p2))) == [3]
    assert _ids(list(feed.batches(start="beginning", stop=p2, max_changes=1))) == [1, 2, 3]
    split = list(feed.batches(start="beginning", stop=p2, max_changes=1))
    middle = split[0].position  # a position inside one snapshot step
    assert middle.partial
    assert _ids(list(feed.batches(start="beginning", stop=middle))) == [1]
    assert _ids(list(feed.batches(start=middle, stop=p2))) == [2, 3]
    assert _ids(list(feed.batches(start="end", stop="end"))) == []


def test_prune_never_removes_unacknowledged_changes(dsn: str) -> None:
    _setup(dsn)
    fast = pgtide.Feed("fast", ["items"], dsn=dsn)
    slow = pgtide.Feed("slow", ["items"], dsn=dsn)
    assert _drain(slow) == [] and _drain(fast) == []  # both registered
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(4):
            conn.execute("INSERT INTO items VALUES (%s, 'x')", (i,))
    assert len(_ids(_drain(fast))) == 4
    assert pgtide.prune(dsn=dsn) == 0  # slow has acknowledged nothing
    it = slow.batches(max_changes=1, timeout=0.2)
    next(it).ack()
    next(it).ack()
    it.close()
    assert pgtide.prune(older_than=3600, dsn=dsn) == 0  # too young
    assert pgtide.prune(dsn=dsn) == 2
    assert _ids(_drain(slow)) == [2, 3]
    assert {c["name"]: c["pending"] for c in consumers(dsn=dsn)} == {"fast": 0, "slow": 0}
    assert drop_consumer("slow", dsn=dsn) and fast.drop()
    assert pgtide.prune(dsn=dsn) == 2


def test_latest_sees_every_write(dsn: str) -> None:
    _setup(dsn)
    assert pgtide.latest("items", dsn=dsn) is None
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(500):
            conn.execute("INSERT INTO items VALUES (%s, 'x')", (i,))
            if i % 50 == 0:
                assert pgtide.latest("public.items", dsn=dsn) == {"id": i, "v": "x"}
        assert pgtide.latest("items", dsn=dsn) == {"id": 499, "v": "x"}
        conn.execute("UPDATE items SET v = 'y' WHERE id = 7")
        assert pgtide.latest("items", dsn=dsn) == {"id": 7, "v": "y"}
        conn.execute("TRUNCATE items")
        assert pgtide.latest("items", dsn=dsn) is None


# -- faults ----------------------------------------------------------------------------------
def _count_lines(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


@pytest.mark.slow
def test_killed_follower_loses_nothing(dsn: str, killable: Killable, tmp_path: Path) -> None:
    _setup(dsn)
    out = tmp_path / "delivered.txt"
    proc = killable.start(feed_workers.follow_to_file, dsn, "killed", str(out))
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(300):
            conn.execute("INSERT INTO items VALUES (%s, 'x')", (i,))
            if i == 150:
                _until(lambda: len(_count_lines(out)) > 20)
                killable.kill(proc)
                proc = killable.start(feed_workers.follow_to_file, dsn, "killed", str(out))
    _until(lambda: set(_count_lines(out)) == set(range(300)))
    killable.kill(proc)


@pytest.mark.slow
def test_batch_transaction_across_kill_has_no_duplicate(dsn: str, killable: Killable) -> None:
    _setup(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE sink (id int)")  # no key: a duplicate would show
        for i in range(400):
            conn.execute("INSERT INTO items VALUES (%s, 'x')", (i,))

    def sunk() -> int:
        with psycopg.connect(dsn) as conn:
            return int(conn.execute("SELECT count(*) FROM sink").fetchone()[0])  # type: ignore[index]

    for _ in range(3):
        proc = killable.start(feed_workers.follow_into_table, dsn, "once")
        before = sunk()
        _until(lambda b=before: sunk() > b + 10 or sunk() == 400)
        killable.kill(proc)
    proc = killable.start(feed_workers.follow_into_table, dsn, "once")
    _until(lambda: sunk() == 400)
    killable.kill(proc)
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT id, count(*) FROM sink GROUP BY id HAVING count(*) > 1")
        assert rows.fetchall() == []
        assert conn.execute("SELECT count(DISTINCT id) FROM sink").fetchone() == (400,)


@pytest.mark.slow
def test_follower_survives_server_restart(restartable: RestartableServer) -> None:
    dsn = restartable.dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS items")
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
    pgtide.track("items", dsn=dsn)
    got: list[int] = []
    # polls only every 60 s: the row after the restart comes through the Listener's
    # reconnect signal or its NOTIFY, within the test's time
    feed = pgtide.Feed("restart", ["items"], dsn=dsn, poll_interval=60)

    def follow() -> None:
        for batch in feed.batches(start="end", timeout=30):
            got.extend(c.row["id"] for c in batch if c.row)
            batch.ack()
            if 2 in got:
                return

    thread = threading.Thread(target=follow)
    thread.start()
    with psycopg.connect(dsn, autocommit=True) as conn:
        _until(lambda: feed._cursor.position is not None)
        conn.execute("INSERT INTO items VALUES (1, 'before')")
    _until(lambda: got == [1])
    restartable.restart()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO items VALUES (2, 'after')")
    thread.join(30)
    assert got == [1, 2]


def test_notify_wakes_a_waiting_feed(dsn: str) -> None:
    _setup(dsn, "items", "other")
    got: list[tuple[str, float]] = []
    feed = pgtide.Feed("woken", ["items"], dsn=dsn, poll_interval=60)

    def follow() -> None:
        for batch in feed.batches(start="end"):
            got.extend((c.table, time.monotonic()) for c in batch)
            return

    thread = threading.Thread(target=follow)
    thread.start()
    _until(lambda: feed._wakeup is not None and feed._cursor.position is not None)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO other VALUES (1, 'not followed')")
        began = time.monotonic()
        conn.execute("INSERT INTO items VALUES (1, 'x')")
    thread.join(10)
    assert [t for t, _ in got] == ["public.items"]
    assert got[0][1] - began < 5  # woken, not polled (the poll interval is 60 s)


def test_unrelated_writes_do_not_make_the_feed_spin(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _setup(dsn, "items", "other")
    from pgtide.feed._core import Core

    reads = 0
    real = Core.read

    def counting(self: Core, *args: Any) -> Any:
        nonlocal reads
        reads += 1
        return real(self, *args)

    monkeypatch.setattr(Core, "read", counting)
    done = threading.Event()

    def noise() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            i = 0
            while not done.is_set():
                conn.execute("INSERT INTO other VALUES (%s, 'noise')", (i,))
                i += 1

    thread = threading.Thread(target=noise)
    thread.start()
    try:
        feed = pgtide.Feed("calm", ["items"], dsn=dsn, wakeup="poll", poll_interval=0.1)
        assert _drain(feed, timeout=1.0) == []
    finally:
        done.set()
        thread.join()
    assert reads < 20  # about one read per poll interval, not a busy loop


def test_transaction_refuses_a_batch_another_process_applied(dsn: str) -> None:
    _setup(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO items VALUES (1, 'x')")
    first = next(pgtide.Feed("twice", ["items"], dsn=dsn).batches(timeout=0.2))
    second = next(pgtide.Feed("twice", ["items"], dsn=dsn).batches(timeout=0.2))
    # the same batch from the same saved position (where it ends depends on the snapshot of
    # its read: another database's transaction on a shared server may sit in one, not the other)
    assert first.start == second.start and first.changes == second.changes
    with first.transaction() as conn:
        conn.execute("INSERT INTO items VALUES (2, 'effect')")
    with pytest.raises(pgtide.FeedError, match="already acknowledged"), second.transaction() as c:
        c.execute("INSERT INTO items VALUES (3, 'duplicate effect')")
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT id FROM items ORDER BY id").fetchall() == [(1,), (2,)]


def test_auto_prune_after_ack(dsn: str) -> None:
    _setup(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO items VALUES (1, 'x'), (2, 'y')")
    assert len(_drain(pgtide.Feed("pruner", ["items"], dsn=dsn, auto_prune=0))) == 1
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM pgtide.changes").fetchone() == (0,)


# -- faces -----------------------------------------------------------------------------------
def test_unreachable_server_is_a_clear_error_not_a_retry_loop() -> None:
    feed = pgtide.Feed("nowhere", dsn="postgresql://postgres@127.0.0.1:1/nowhere")
    began = time.monotonic()
    with pytest.raises(pgtide.ConnectionFailed, match=r"127\.0\.0\.1:1"):
        list(feed.batches(timeout=0))
    assert time.monotonic() - began < 10


def test_run_acks_after_each_call_and_poll_mode(dsn: str) -> None:
    _setup(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO items VALUES (1, 'x')")
    seen: list[int] = []
    feed = pgtide.Feed("cb", "items", dsn=dsn, wakeup="poll", poll_interval=0.01)
    feed.run(lambda b: seen.extend(_ids([b])), timeout=0.2)
    saved = feed.saved()
    assert seen == [1] and saved is not None and saved <= feed.position()
    with pytest.raises(pgtide.FeedError, match="wakeup"):
        pgtide.Feed("cb", dsn=dsn, wakeup="push")


def test_asyncio_face(dsn: str) -> None:
    _setup(dsn, "items", "sink")

    async def main() -> list[int]:
        feed = pgtide.aio.Feed("aio", ["items"], dsn=dsn)
        async with feed:
            got: list[int] = []
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("INSERT INTO items VALUES (1, 'x'), (2, 'y')")
            async for batch in feed.batches(timeout=0.3):
                async with batch.transaction() as conn:
                    for change in batch:
                        assert change.row is not None
                        await conn.execute(
                            "INSERT INTO sink VALUES (%s, 'copy')", (change.row["id"],)
                        )
                got.extend(_ids([batch]))
            saved = await feed.saved()
            assert saved is not None and saved <= await feed.position()
            return got

    assert asyncio.run(main()) == [1, 2]
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM sink").fetchone() == (2,)
