"""The change log at scale: reading some tables among many, and retention by rotating
partitions while writers write (migration 014)."""

from __future__ import annotations

import random
import threading
import time
from datetime import timedelta
from typing import Any
from unittest import mock

import psycopg
import pytest
from listen_helpers import wait_until

import pgtide
from pgtide.feed import retention
from pgtide.feed.retention import size

# The id windows of migration 014: 65,536 change ids per window, 16 partitions.
WINDOW, PARTITIONS = 1 << 16, 16
_NEXT_WINDOW = (
    "SELECT setval('pgtide.changes_id_seq', ((last_value >> 16) + 1 << 16) + 100) "
    "FROM pgtide.changes_id_seq"
)
_FILES = (
    "SELECT c.relname, c.relfilenode FROM pg_partition_tree('pgtide.changes') t "
    "JOIN pg_class c ON c.oid = t.relid WHERE t.isleaf"
)


_WAITING = "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s"


def _tables(dsn: str, names: list[str]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name in names:
            conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v text)")
    for name in names:
        pgtide.track(name, dsn=dsn)


def _read(feed: pgtide.Feed, max_changes: int = 7) -> list[pgtide.Change]:
    got: list[pgtide.Change] = []
    for batch in feed.batches(start="beginning", stop="end", max_changes=max_changes):
        got.extend(batch)
    return got


def test_reading_some_tables_among_many_keeps_transactions_and_commit_order(dsn: str) -> None:
    names = [f"t{k}" for k in range(12)]
    _tables(dsn, names)
    rng = random.Random(7)
    written: list[tuple[str, int]] = []  # (table, id) in commit order
    with psycopg.connect(dsn) as conn:
        for n in range(300):
            chosen = rng.sample(names, rng.randint(1, 3))  # a transaction over some tables
            for table in chosen:
                conn.execute(f"INSERT INTO {table} VALUES (%s, 'v')", (n,))
                written.append((table, n))
            conn.commit()
    # a writer that waited for another one's row lock: commit order, not xid order
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO t0 VALUES (2000, 'v')")
    with psycopg.connect(dsn) as first, psycopg.connect(dsn) as second:
        first.execute("INSERT INTO t1 VALUES (1000, 'first')")  # the smaller xid
        second.execute("UPDATE t0 SET v = 'second' WHERE id = 2000")
        pid = first.info.backend_pid

        def wait_for_second() -> None:
            first.execute("UPDATE t0 SET v = 'first' WHERE id = 2000")
            first.commit()

        blocked = threading.Thread(target=wait_for_second)
        blocked.start()
        with psycopg.connect(dsn, autocommit=True) as watch:
            deadline = time.monotonic() + 20
            while watch.execute(_WAITING, (pid,)).fetchone() != (True,):
                assert time.monotonic() < deadline, "the first writer never waited"
        second.commit()
        blocked.join(20)
    written += [("t0", 2000), ("t0", 2000), ("t1", 1000), ("t0", 2000)]

    for followed in (["t0"], ["t0", "t1"], ["t5", "t0", "t11"]):
        feed = pgtide.Feed(f"some-{len(followed)}", followed, dsn=dsn)
        got = _read(feed)
        feed.close()
        keys = [(c.table.removeprefix("public."), (c.row or c.old or {})["id"]) for c in got]
        assert keys == [w for w in written if w[0] in followed]
    # the whole log, for a consumer of every table
    feed = pgtide.Feed("every", dsn=dsn)
    every = _read(feed, max_changes=50)
    feed.close()
    assert [(c.table.removeprefix("public."), (c.row or c.old or {})["id"]) for c in every] == (
        written
    )


def _acknowledged(dsn: str, name: str, tables: list[str] | None = None) -> None:
    """Register consumer ``name`` as having acknowledged every change so far."""
    feed = pgtide.Feed(name, tables, dsn=dsn)
    feed.seek("end")
    feed.close()


def _files(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute(_FILES).fetchall())  # type: ignore[arg-type]


def test_rotation_under_concurrent_writers_loses_nothing(dsn: str) -> None:
    """Writers (some holding their transaction open across rotations), a fast and a slow
    consumer, and prune() emptying partitions while the ids move through their windows:
    both consumers get every committed row exactly once, and partitions were emptied."""
    _tables(dsn, ["items"])
    before = _files(dsn)
    committed: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()
    failures: list[BaseException] = []

    def guarded(fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except BaseException as exc:  # pragma: no cover - reported by the test
            failures.append(exc)
            stop.set()

    emptied_once = threading.Event()  # a partition was emptied while the writers wrote

    def write(w: int) -> None:
        rng = random.Random(w)
        with psycopg.connect(dsn) as conn:
            # 150 transactions, and more until prune emptied a partition meanwhile (on a
            # loaded machine its lock may be refused for a while: readers hold it)
            for t in range(5_000):
                if t >= 150 and (emptied_once.is_set() or stop.is_set()):
                    break
                ids = [w * 100_000 + t * 10 + k for k in range(rng.randint(1, 4))]
                for i in ids:
                    conn.execute("INSERT INTO items VALUES (%s, 'v')", (i,))
                    if rng.random() < 0.05:
                        time.sleep(0.05)  # open across a rotation and a prune
                conn.commit()
                with lock:
                    committed.extend(ids)

    def rotate() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not stop.is_set():
                conn.execute(_NEXT_WINDOW)  # as if 65,536 changes were written
                pgtide.prune(dsn=dsn)
                if not emptied_once.is_set():
                    now: dict[str, int] = dict(conn.execute(_FILES).fetchall())  # type: ignore[arg-type]
                    if any(before[p] != now[p] for p in before):
                        emptied_once.set()
                time.sleep(0.02)

    seen: dict[str, list[int]] = {"fast": [], "slow": []}

    def follow(name: str, pause: float) -> None:
        feed = pgtide.Feed(name, ["items"], dsn=dsn, wakeup="poll", poll_interval=0.01)
        for batch in feed.batches(max_changes=20, timeout=3):
            seen[name].extend(c.row["id"] for c in batch if c.row is not None)
            batch.ack()
            time.sleep(pause)
            if stop.is_set() and len(seen[name]) >= len(committed):
                break
        feed.close()

    for name in seen:  # registered before any write: prune waits for both
        _acknowledged(dsn, name, ["items"])
    writers = [threading.Thread(target=guarded, args=(write, w)) for w in range(4)]
    others = [
        threading.Thread(target=guarded, args=(rotate,)),
        threading.Thread(target=guarded, args=(follow, "fast", 0.0)),
        threading.Thread(target=guarded, args=(follow, "slow", 0.02)),
    ]
    for t in writers + others:
        t.start()
    for t in writers:
        t.join(120)
    stop.set()
    for t in others:
        t.join(120)
    assert not failures, failures
    for name, ids in seen.items():
        assert sorted(ids) == sorted(committed), name  # each committed row once, none lost
    after = _files(dsn)
    emptied = [p for p in before if before[p] != after[p]]
    assert emptied, "prune emptied no partition: the rotation was not exercised"
    # once everything is acknowledged, prune leaves nothing behind (a partition whose lock
    # another session holds, autovacuum say, is emptied by a later prune)
    with psycopg.connect(dsn, autocommit=True) as conn:
        wait_until(
            lambda: (
                pgtide.prune(dsn=dsn) >= 0
                and conn.execute("SELECT count(*) FROM pgtide.changes").fetchone() == (0,)
            ),
            what="prune to empty the log",
        )


def test_prune_returns_the_space_of_whole_partitions(dsn: str) -> None:
    """200k acknowledged changes over several id windows: prune empties their partitions
    (TRUNCATE: the space comes back at once, no VACUUM needed) and counts them."""
    total = 200_000
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO pgtide.changes (table_name, op, row) "
            "SELECT 'public.gone', 'insert', json_build_object('id', g) "
            "FROM generate_series(1, %s) g",
            (total,),
        )
        rows, full, _ = size(conn)  # what pgtide status shows: every partition counted
        assert rows == total and full > total * 50
        _acknowledged(dsn, "done")
        conn.execute("INSERT INTO pgtide.changes (table_name, op) VALUES ('public.x', 'truncate')")
        # a partition another session holds (autovacuum analysing the new rows, say) is
        # left whole for a later prune: prune again until every partition was emptied
        removed = [pgtide.prune(dsn=dsn)]
        wait_until(
            lambda: (
                conn.execute("SELECT count(*) FROM pgtide.changes").fetchone() == (1,)
                or removed.append(pgtide.prune(dsn=dsn)) is not None
            ),
            what="prune to empty every acknowledged partition",
        )
        assert sum(removed) == total  # each change counted once, by the prune that emptied it
        assert size(conn)[1] < full / 10


def test_a_held_partition_is_left_whole_not_waited_for(dsn: str) -> None:
    """A reader holding a partition's lock makes prune give up emptying it at once (after a
    short wait, never blocking writers behind it for long); its changes stay as they are,
    not deleted row by row, and a later prune empties the partition whole."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO pgtide.changes (table_name, op) "
            "SELECT 'public.old', 'truncate' FROM generate_series(1, 10)"
        )
        conn.execute(_NEXT_WINDOW)
        files = _files(dsn)
        with psycopg.connect(dsn) as reader:
            reader.execute("SELECT count(*) FROM pgtide.changes_0")  # holds its lock
            began = time.monotonic()
            assert pgtide.prune(dsn=dsn) == 0
            assert time.monotonic() - began < 5
        assert _files(dsn) == files
        assert conn.execute("SELECT count(*) FROM pgtide.changes_0").fetchone() == (10,)
        # a later prune empties it (one may still find its lock taken: autovacuum, say)
        pruned: list[int] = []
        wait_until(lambda: pruned.append(pgtide.prune(dsn=dsn)) or sum(pruned) == 10)
        assert _files(dsn)["changes_0"] != files["changes_0"]  # emptied, not deleted from
        assert conn.execute("SELECT count(*) FROM pgtide.changes").fetchone() == (0,)


_RING_START = (  # the start of the next ring of 16 windows: the current window is 0
    "SELECT setval('pgtide.changes_id_seq', ((last_value >> 20) + 1 << 20) + 100) "
    "FROM pgtide.changes_id_seq"
)
_HELD = (
    "SELECT c.relname, l.granted FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
    "WHERE l.pid = %s AND l.mode = 'AccessExclusiveLock' AND c.relname ~ '^changes_[0-9]+$'"
)


def _settled(conn: psycopg.Connection[Any]) -> None:
    """Wait until every transaction that began before the changes so far has ended, anywhere
    on the server (a shared server's other sessions hold the snapshots' xmin back, and with
    it what prune may empty); then a consumer registered acknowledges all of them."""
    newest = conn.execute("SELECT max(xid) FROM pgtide.changes").fetchone()[0]  # type: ignore[index]
    wait_until(
        lambda: conn.execute(
            "SELECT pg_snapshot_xmin(pg_current_snapshot()) > %s::xid8", (str(newest),)
        ).fetchone()[0],  # type: ignore[index]
        timeout=120,
        what="older transactions to end",
    )


def test_the_partition_writers_enter_next_is_emptied_last(dsn: str) -> None:
    """prune empties partitions one transaction each, from the one writers left the longest
    ago to the one they enter next: while it is held up emptying a partition, it holds no
    lock on any other (a writer moving on into the next window's partition would wait for
    all the rest of prune), and the partitions before it are emptied already."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        base = int(conn.execute(_RING_START).fetchone()[0]) - 100  # type: ignore[index]
        conn.execute(
            "INSERT INTO pgtide.changes (id, table_name, op) OVERRIDING SYSTEM VALUE "
            "SELECT %s + (p << 16) + g, 'public.old', 'truncate' "
            "FROM unnest(ARRAY[1, 5, 15]) p, generate_series(1, 10) g",
            (base,),
        )
        _settled(conn)
        _acknowledged(dsn, "done")
        with psycopg.connect(dsn) as reader, psycopg.connect(dsn, autocommit=True) as pruner:
            reader.execute("SELECT count(*) FROM pgtide.changes_5")  # holds its lock
            pid = pruner.info.backend_pid
            pruned: list[int] = []
            with mock.patch.object(retention, "LOCK_WAIT", timedelta(seconds=20)):
                waiting = threading.Thread(target=lambda: pruned.append(pgtide.prune(conn=pruner)))
                waiting.start()

                def held() -> dict[str, bool]:
                    return dict(conn.execute(_HELD, (pid,)).fetchall())  # type: ignore[arg-type]

                wait_until(lambda: held().get("changes_5") is False, what="prune waiting for 5")
                assert held() == {"changes_5": False}  # changes_15's transaction has ended
                assert conn.execute("SELECT count(*) FROM pgtide.changes_15").fetchone() == (0,)
                assert conn.execute("SELECT count(*) FROM pgtide.changes_1").fetchone() == (10,)
                reader.rollback()
                waiting.join(30)
        assert pruned == [30]
        assert conn.execute("SELECT count(*) FROM pgtide.changes").fetchone() == (0,)


def test_older_than_keeps_a_young_partition(dsn: str) -> None:
    """A partition of acknowledged changes younger than ``older_than`` is kept whole."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        base = int(conn.execute(_RING_START).fetchone()[0]) - 100  # type: ignore[index]
        conn.execute(
            "INSERT INTO pgtide.changes (id, table_name, op) OVERRIDING SYSTEM VALUE "
            "SELECT %s + (3 << 16) + g, 'public.old', 'truncate' FROM generate_series(1, 10) g",
            (base,),
        )
        _settled(conn)
        _acknowledged(dsn, "done")
        files = _files(dsn)
        assert pgtide.prune(older_than=3600, dsn=dsn) == 0
        assert conn.execute("SELECT count(*) FROM pgtide.changes_3").fetchone() == (10,)
        assert pgtide.prune(dsn=dsn) == 10
        assert _files(dsn)["changes_3"] != files["changes_3"]  # emptied, not deleted from


def test_an_acknowledged_window_sharing_a_partition_is_left_until_all_of_it_is(
    dsn: str,
) -> None:
    """Writers back in a partition that still holds an older, acknowledged window: prune
    deletes none of that window row by row (it would slow the writers), and empties the
    partition whole once its new changes are acknowledged too, the writers' own partition
    included."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        base = int(conn.execute(_RING_START).fetchone()[0]) - 100  # type: ignore[index]
        conn.execute(  # window 3 of the ring before: partition 3
            "INSERT INTO pgtide.changes (id, table_name, op) OVERRIDING SYSTEM VALUE "
            "SELECT %s - (13 << 16) + g, 'public.old', 'truncate' FROM generate_series(1, 10) g",
            (base,),
        )
        _settled(conn)
        _acknowledged(dsn, "done")
        conn.execute("SELECT setval('pgtide.changes_id_seq', %s)", (base + (3 << 16) + 100,))
        conn.execute(
            "INSERT INTO pgtide.changes (table_name, op) "
            "SELECT 'public.new', 'truncate' FROM generate_series(1, 5)"
        )
        files = _files(dsn)
        assert pgtide.prune(dsn=dsn) == 0
        assert conn.execute(
            "SELECT table_name, count(*) FROM pgtide.changes_3 GROUP BY 1 ORDER BY 1"
        ).fetchall() == [("public.new", 5), ("public.old", 10)]
        assert _files(dsn) == files
        _settled(conn)
        _acknowledged(dsn, "done")
        assert pgtide.prune(dsn=dsn) == 15
        assert _files(dsn)["changes_3"] != files["changes_3"]  # emptied, not deleted from


def test_the_current_windows_acknowledged_changes_are_deleted_the_rest_kept(dsn: str) -> None:
    """In the window writers are filling, prune deletes the acknowledged changes row by row
    (an idle log is emptied all the same) and keeps every change not yet acknowledged."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_RING_START)  # the current window is in partition 0
        conn.execute(
            "INSERT INTO pgtide.changes (table_name, op) "
            "SELECT 'public.old', 'truncate' FROM generate_series(1, 10)"
        )
        _settled(conn)
        _acknowledged(dsn, "done")
        conn.execute(
            "INSERT INTO pgtide.changes (table_name, op) "
            "SELECT 'public.new', 'truncate' FROM generate_series(1, 5)"
        )
        assert pgtide.prune(dsn=dsn) == 10
        assert conn.execute(
            "SELECT table_name, count(*) FROM pgtide.changes GROUP BY 1"
        ).fetchall() == [("public.new", 5)]


def test_the_partition_step_empties_nothing_but_the_logs_partitions(dsn: str) -> None:
    """truncate_partition_acked runs with its owner's rights (TRUNCATE): given any other
    table's name (the log itself, another table of the schema), it refuses before it reads."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO pgtide.changes (table_name, op) VALUES ('public.t', 'truncate')")
        _settled(conn)
        _acknowledged(dsn, "done")
        for name in ("changes", "consumers", "changes_16", "changes_1;x", "changes_01"):
            with pytest.raises(psycopg.errors.InvalidParameterValue, match="not a partition"):
                conn.execute("SELECT pgtide.truncate_partition_acked(%s, NULL, '1 s')", (name,))
        assert conn.execute("SELECT count(*) FROM pgtide.changes").fetchone() == (1,)


def test_values_orjson_refuses_are_still_typed(dsn: str) -> None:
    """Rows are decoded with orjson; a value it refuses (an integer beyond 64 bits in a json
    column) still comes back as SELECT * gives it, as does a table with numeric columns."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body json, n numeric)")
    pgtide.track("docs", dsn=dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO docs VALUES (1, '{\"big\": 123456789012345678901234567890}', 0.1), "
            "(2, '[1, 2.5, \"x\"]', NULL)"
        )
        expected = conn.execute("SELECT * FROM docs ORDER BY id").fetchall()
    feed = pgtide.Feed("docs", ["docs"], dsn=dsn)
    got = _read(feed)
    feed.close()
    assert [tuple(c.row.values()) for c in got if c.row] == expected


_TABLE_INDEX_SIZE = (
    "SELECT sum(pg_relation_size(relid)) FROM pg_partition_tree('pgtide.changes_table_xid')"
)


def test_the_index_by_table_costs_writers_a_few_bytes_per_change(dsn: str) -> None:
    """The index by table (migration 016) is keyed by table and transaction: a transaction's
    changes to a table share one key (B-tree deduplication), so a captured row adds a few
    bytes to it, not a whole index entry (about 36 bytes with the change id in the key)."""
    _tables(dsn, ["wide"])
    with psycopg.connect(dsn, autocommit=True) as conn:
        before = int(conn.execute(_TABLE_INDEX_SIZE).fetchone()[0])  # type: ignore[index]
        for k in range(4):
            conn.execute(
                "INSERT INTO wide SELECT g, 'v' FROM generate_series(%s::int, %s::int) g",
                (k * 10_000, k * 10_000 + 9_999),
            )
        grown = int(conn.execute(_TABLE_INDEX_SIZE).fetchone()[0]) - before  # type: ignore[index]
    assert grown / 40_000 < 12, f"{grown / 40_000:.1f} bytes per change"
    feed = pgtide.Feed("wide-reader", ["wide"], dsn=dsn)
    got = _read(feed, max_changes=5_000)
    assert [c.row["id"] for c in got if c.row] == list(range(40_000))  # in (xid, id) order
    feed.close()


def test_latest_reads_one_transaction_not_the_table_history(dsn: str) -> None:
    """latest() finds the newest transaction by the index by table, then its last change:
    its cost does not grow with the table's captured history."""
    from pgtide.feed.retention import _LATEST
    from pgtide.feed.rows import RowTypes

    _tables(dsn, ["hist", "other", "side"])
    with psycopg.connect(dsn, autocommit=True) as conn:
        for k in range(30):
            conn.execute(
                "INSERT INTO hist SELECT g, 'v' FROM generate_series(%s::int, %s::int) g",
                (k * 1_000, k * 1_000 + 999),
            )
        conn.execute("INSERT INTO other VALUES (1, 'x')")
        with conn.transaction():
            conn.execute("UPDATE hist SET v = 'last' WHERE id = 5")
            conn.execute("UPDATE hist SET v = 'last' WHERE id = 7")
            conn.execute("DELETE FROM hist WHERE id = 9")  # not a row latest() gives
        plan = conn.execute(
            psycopg.sql.Composed(
                [psycopg.sql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) "), _LATEST]
            ),
            {"table": "public.hist", **RowTypes().params()},
        ).fetchone()[0][0]  # type: ignore[index]
    touched = plan["Plan"]["Shared Hit Blocks"] + plan["Plan"]["Shared Read Blocks"]
    assert touched < 100, touched  # the history holds 30,000 changes over ~500 pages
    assert pgtide.latest("hist", dsn=dsn) == {"id": 7, "v": "last"}


_OTHERS = (
    "INSERT INTO pgtide.changes (table_name, op, row) "
    "SELECT 'public.other', 'insert', json_build_object('id', g) FROM generate_series(1, %s) g"
)
_SIDE = (
    "INSERT INTO pgtide.changes (table_name, op, row) "
    "VALUES ('public.side', 'insert', json_build_object('id', %s, 'v', 's'))"
)
_HIST = (
    "INSERT INTO pgtide.changes (table_name, op, row) "
    "SELECT 'public.hist', 'insert', json_build_object('id', g, 'v', 'v') "
    "FROM generate_series(%s::int, %s::int) g"
)


def _first_read_buffers(dsn: str, max_changes: int) -> int:
    """Shared buffers one read of `hist` and `side` from the beginning touches (its plan,
    run)."""
    from pgtide.feed._core import _ORDER, Core
    from pgtide.feed.position import Position

    io = Core("probe", ["public.hist", "public.side"]).read(Position.beginning(), None, max_changes)
    touched = -1
    with psycopg.connect(dsn, autocommit=True) as conn:
        step = io.send(None)
        while True:
            if isinstance(step.statement, psycopg.sql.Composed) and _ORDER in step.statement:
                explain = psycopg.sql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ")
                plan = conn.execute(explain + step.statement, step.params).fetchone()[0][0]  # type: ignore[index]
                touched = plan["Plan"]["Shared Hit Blocks"] + plan["Plan"]["Shared Read Blocks"]
            rows = conn.execute(step.statement, step.params).fetchall()
            try:
                step = io.send(rows)
            except StopIteration as done:
                changes, _ = done.value
                assert [c.row["id"] for c in changes if c.row] == list(range(max_changes))
                return touched


def test_a_table_read_costs_its_batch_not_its_backlog(dsn: str) -> None:
    """A read of followed tables walks each one's index by table in read order and stops at
    the batch: the buffers it touches do not grow with the tables' remaining changes (it
    once sorted them all: the planner expected a hundredth of them)."""
    _tables(dsn, ["hist", "other", "side"])
    with psycopg.connect(dsn, autocommit=True) as conn:

        def rounds(first: int, count: int) -> None:
            for k in range(first, first + count):
                conn.execute(_OTHERS, (10_000,))
                conn.execute(_HIST, (k * 1_000, k * 1_000 + 999))
                if k < 4:  # `side` keeps a few changes to come: `hist`'s backlog grows
                    conn.execute(_SIDE, (k,))
            conn.execute("ANALYZE pgtide.changes")

        rounds(0, 4)
        small = _first_read_buffers(dsn, 1_000)
        rounds(4, 12)
        large = _first_read_buffers(dsn, 1_000)
    assert large <= small + 10, (small, large)  # 4,000 then 16,000 changes of `hist` to come


_COLLIDING = (
    "SELECT min(n), max(n) FROM (SELECT 'c' || g AS n FROM generate_series(1, 300000) g) s "
    "GROUP BY hashtext('public.' || n) HAVING count(*) > 1 ORDER BY min(n) LIMIT 1"
)


def test_a_table_sharing_the_followed_tables_hash_is_not_read(dsn: str) -> None:
    """The index by table keys on a hash of the name: a table whose name has the same hash
    is read by the index, and left out by the name."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        followed, other = conn.execute(_COLLIDING).fetchone()  # type: ignore[misc]
    _tables(dsn, [followed, other])
    with psycopg.connect(dsn, autocommit=True) as conn:
        for k in range(3):
            conn.execute(f"INSERT INTO {other} VALUES ({k}, 'other')")
            conn.execute(f"INSERT INTO {followed} VALUES ({k}, 'followed')")
            conn.execute(f"INSERT INTO {other} VALUES ({k + 10}, 'other')")
    with pgtide.Feed("collide", [followed], dsn=dsn) as feed:
        got = _read(feed, max_changes=2)
    assert [(c.table, c.row) for c in got] == [
        (f"public.{followed}", {"id": k, "v": "followed"}) for k in range(3)
    ]


def test_prune_empties_a_partition_read_while_an_older_transaction_was_open(dsn: str) -> None:
    """A consumer that read its last changes while an older transaction was still open
    (its snapshot's xmin below them) and then stopped: once the writers left that window,
    prune still empties the partition; it must not wait for a read that never comes."""
    _tables(dsn, ["items"])
    with psycopg.connect(dsn) as older, psycopg.connect(dsn, autocommit=True) as conn:
        older.execute("SELECT pg_current_xact_id()")  # open, with an xid, across the read
        feed = pgtide.Feed("stopped", ["items"], dsn=dsn)
        feed.seek("end")
        for k in range(5):
            conn.execute("INSERT INTO items VALUES (%s, 'v')", (k,))
        got = []
        for batch in feed.batches(stop="end"):
            got.extend(batch)
            batch.ack()
        feed.close()
        assert len(got) == 5
        older.commit()
        conn.execute(_NEXT_WINDOW)  # the writers moved on to the next window
        assert pgtide.prune(dsn=dsn) == 5
        assert conn.execute("SELECT count(*) FROM pgtide.changes").fetchone() == (0,)
