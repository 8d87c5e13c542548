"""Follow: the cost of capture on writers, and the feed's throughput and latency.

Runs in a scratch database. Figures: INSERT of 1,000-row statements and single-row
transactions, untracked vs tracked (statement-level transition-table triggers, and a
row-level trigger for comparison); 4 concurrent writers with and without the wake-up NOTIFY;
the same three against WAL capture, with its relay stopped and running (each set measured in
turns, best of several rounds); end-to-end insert -> batch throughput (with WAL capture, the
relay inside the feed and in a process of its own, in turns); commit -> delivery latency at
1,000 tx/s; and a newt.db-style ``id > last`` poller beside the feed (faster, and it skips
rows: both shown).
"""

from __future__ import annotations

import math
import multiprocessing
import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple

import psycopg
from psycopg import sql

import pgtide
from pgtide.feed.sleepers import GATE, waiting_io
from pgtide.session import run as run_io

from ._harness import (
    Figure,
    best_of,
    in_turns,
    percentiles,
    rate,
    scratch_database,
    timed,
    wanted,
)

SUITE = "feed"

# A row-level capture, as a reference for the statement-level trigger pgtide installs.
ROW_LEVEL = """
CREATE FUNCTION bench_capture_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pgtide.changes (table_name, op, row)
        VALUES ('public.t_row', 'insert', to_jsonb(NEW));
    RETURN NULL;
END $$;
CREATE TRIGGER capture AFTER INSERT ON t_row FOR EACH ROW EXECUTE FUNCTION bench_capture_row();
"""
TABLES = ("t_plain", "t_tracked", "t_quiet", "t_row", "e2e", "lat", "race")
ID_INDEX = "CREATE INDEX IF NOT EXISTS bench_changes_id ON pgtide.changes (id)"
NEWT_POLL = (
    "SELECT id, row FROM pgtide.changes WHERE id > %s AND table_name = 'public.race' "
    "ORDER BY id LIMIT 1000"
)
NEWT_LOG = (
    "CREATE TABLE newt_log AS SELECT id, table_name, row FROM pgtide.changes "
    "WHERE table_name = 'public.race'; ALTER TABLE newt_log ADD PRIMARY KEY (id); "
    "VACUUM ANALYZE newt_log"
)
"""The backlog-read reference polls a log of its own, as newt.db does: the same changes in a
table whose primary key is the id (pgtide's partitioned log has no index on id alone)."""


def _prepare(dsn: str) -> None:
    pgtide.install(dsn=dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in TABLES:
            conn.execute(
                sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, v text, at float8)").format(
                    sql.Identifier(table)
                )
            )
        conn.execute(ROW_LEVEL)
    for table in ("t_tracked", "e2e", "lat", "race"):
        pgtide.track(table, dsn=dsn)
    pgtide.track("t_quiet", notify=False, dsn=dsn)


def _bulk(dsn: str, table: str, statements: int) -> Callable[[], None]:
    counter = iter(range(10**9))
    insert = sql.SQL(
        "INSERT INTO {} SELECT g, 'value', 0 FROM generate_series(%s::bigint, %s::bigint) g"
    ).format(sql.Identifier(table))

    def go() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for _ in range(statements):
                base = next(counter) * 1000
                conn.execute(insert, (base, base + 999))

    return go


def _updates(dsn: str, table: str, statements: int) -> Callable[[], None]:
    update = sql.SQL("UPDATE {} SET at = at + 1 WHERE id BETWEEN %s AND %s").format(
        sql.Identifier(table)
    )

    def go() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for i in range(statements):
                conn.execute(update, (i * 1000, i * 1000 + 999))

    return go


def _single(dsn: str, table: str, count: int, writers: int = 1) -> Callable[[], None]:
    counter = iter(range(10**9))
    lock = threading.Lock()
    insert = sql.SQL("INSERT INTO {} VALUES (%s, 'v', 0)").format(sql.Identifier(table))

    def one() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for _ in range(count):
                with lock:
                    i = next(counter)
                conn.execute(insert, (i,))

    def go() -> None:
        threads = [threading.Thread(target=one) for _ in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    return go


def _truncate(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE pgtide.changes, pgtide.consumers")
        for table in ("t_plain", "t_tracked", "t_quiet", "t_row"):
            conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(table)))


def _side_by_side(
    runs: dict[str, Callable[[], object]],
    work: int,
    unit: str,
    rounds: int = 4,
    between: Callable[[], object] | None = None,
    notes: dict[str, str] | None = None,
) -> list[Figure]:
    """A figure for each of ``runs`` (label: run doing ``work`` rows or transactions),
    measured in turns over ``rounds`` rounds, best of each (single-row transactions are
    fsync-bound and noisy on a shared machine); the first run is the others' baseline."""
    took = in_turns(rounds, runs, between)
    base = next(iter(runs))
    return [
        Figure(
            SUITE,
            label,
            rate(work, seconds),
            unit,
            baseline=None if label == base else base,
            note=(notes or {}).get(label, "") + f"best of {rounds}, in turns",
        )
        for label, seconds in took.items()
    ]


def _capture(dsn: str) -> list[Figure]:
    figures = []
    # 100 statements a run: with 20 (~60 ms untracked) a connect, a checkpoint or the
    # trigger function's first compile in the session weighed on one side of the ratio
    n = 100
    bulk = {
        "INSERT 1,000-row statements, untracked": _bulk(dsn, "t_plain", n),
        "INSERT 1,000-row statements, tracked (statement trigger)": _bulk(dsn, "t_tracked", n),
        "INSERT 1,000-row statements, row-level trigger": _bulk(dsn, "t_row", n),
    }
    figures += _side_by_side(bulk, n * 1000, "rows/s", rounds=5)
    _truncate(dsn)
    for table, label in (
        ("t_plain", "UPDATE 1,000-row statements, untracked"),
        ("t_tracked", "UPDATE 1,000-row statements, tracked (statement trigger)"),
    ):
        _bulk(dsn, table, n)()  # rows to update, not timed
        seconds = best_of(3, _updates(dsn, table, n))
        base = None if table == "t_plain" else "UPDATE 1,000-row statements, untracked"
        figures.append(Figure(SUITE, label, rate(n * 1000, seconds), "rows/s", baseline=base))
        _truncate(dsn)
    single, per = 500, 250
    figures += _side_by_side(
        {
            "single-row tx, untracked": _single(dsn, "t_plain", single),
            "single-row tx, tracked": _single(dsn, "t_tracked", single),
        },
        single,
        "tx/s",
    )
    _truncate(dsn)
    following = "a Feed in another process follows the table and acks each batch (same cores); "
    four = 4 * per * 4  # longer runs than one writer's: a run of 1,000 took ~0.15 s
    figures += _side_by_side(
        {
            "4 writers single-row tx, untracked": _single(dsn, "t_plain", four // 4, writers=4),
            "4 writers single-row tx, tracked + NOTIFY, a feed following": _beside(
                _follower_process, dsn, _single(dsn, "t_tracked", four // 4, writers=4)
            ),
            "4 writers single-row tx, tracked + NOTIFY at every commit, a feed following": (
                _beside(
                    _follower_process,
                    dsn,
                    _gate_held(dsn, _single(dsn, "t_tracked", four // 4, writers=4)),
                )
            ),
            "4 writers single-row tx, tracked + NOTIFY, no feed waiting": _single(
                dsn, "t_tracked", four // 4, writers=4
            ),
            "4 writers single-row tx, tracked + NOTIFY at every commit, no feed": _gate_held(
                dsn, _single(dsn, "t_tracked", four // 4, writers=4)
            ),
            "4 writers single-row tx, tracked, no NOTIFY (wakeup=poll)": _single(
                dsn, "t_quiet", four // 4, writers=4
            ),
        },
        four,
        "tx/s",
        between=lambda: _truncate(dsn),  # several runs write t_tracked, each from id 0
        notes={
            "4 writers single-row tx, tracked + NOTIFY, a feed following": (
                following + "writers NOTIFY only while it waits; "
            ),
            "4 writers single-row tx, tracked + NOTIFY at every commit, a feed following": (
                following + "the wake-up gate held all along, so every commit NOTIFYs (as "
                "before migration 021); "
            ),
            "4 writers single-row tx, tracked + NOTIFY, no feed waiting": (
                "no feed waits, so no writer NOTIFYs; "
            ),
            "4 writers single-row tx, tracked + NOTIFY at every commit, no feed": (
                "the wake-up gate held all along, so every commit NOTIFYs: what every "
                "tracked writer paid before migration 021; "
            ),
        },
    )
    _truncate(dsn)
    return figures


def _consume(batch: Any) -> int:
    """How many changes a batch holds, each row read as a consumer reads it: a change decodes
    its row at first use, and the references decode every row they read, so a figure that only
    counted batches would leave pgtide's decoding out."""
    rows = [change.row for change in batch]
    return len(rows)


def _end_to_end(dsn: str) -> Figure:
    total = 100_000
    seconds = _follow(dsn, "e2e", _bulk(dsn, "e2e", total // 1000), total)
    return Figure(
        SUITE,
        "end to end: insert -> batch (100k rows, 1,000-row tx)",
        rate(total, seconds),
        "changes/s",
        note="writer and follower at once; includes capture",
    )


def _follow(dsn: str, table: str, write: Callable[[], None], total: int) -> float:
    """Seconds from the start of ``write`` (in a thread) until a feed of ``table`` has had
    ``total`` changes (its set-up untimed); with WAL capture the feed relays by itself
    unless a relay runs elsewhere."""
    feed = pgtide.Feed(f"bench-{table}", [table], dsn=dsn)
    feed.seek("end")
    writer = threading.Thread(target=write)
    began = time.perf_counter()
    writer.start()
    seen = 0
    for batch in feed.batches(max_changes=5000, timeout=60):
        seen += _consume(batch)
        batch.ack()
        if seen >= total:
            break
    elapsed = time.perf_counter() - began
    writer.join()
    feed.close()
    if seen < total:
        raise RuntimeError(f"the feed of {table} had {seen} of {total} changes")
    return elapsed


def _paced_lags(dsn: str, feed: pgtide.Feed, table: str, offset: int) -> tuple[list[float], int]:
    """Commit -> delivery lags (ms) of single-row transactions into ``table`` at 1,000/s for
    3 s, followed by ``feed`` (ids from ``offset``; one warm-up row first); and how many."""
    per_second, seconds = 1000, 3
    count = per_second * seconds
    committed: dict[int, float] = {}
    delivered: dict[int, float] = {}
    start = feed.seek("end")
    ready = threading.Event()
    insert = sql.SQL("INSERT INTO {} VALUES (%s, %s, 0)").format(sql.Identifier(table))

    def follow() -> None:
        for batch in feed.batches(start=start, timeout=10):
            ready.set()
            now = time.perf_counter()
            for change in batch:
                assert change.row is not None
                delivered[change.row["id"]] = now
            batch.ack()
            if len(delivered) >= count:
                return

    thread = threading.Thread(target=follow)
    thread.start()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(insert, (offset - 1, "warm"))
        ready.wait(10)
        delivered.clear()
        began = time.perf_counter()
        for i in range(count):
            pause = began + i / per_second - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            conn.execute(insert, (offset + i, "v"))
            committed[offset + i] = time.perf_counter()
    thread.join(30)
    feed.close()
    return [(delivered[i] - committed[i]) * 1000 for i in committed if i in delivered], count


def _latency(dsn: str, wakeup: str) -> Figure:
    feed = pgtide.Feed(f"bench-lat-{wakeup}", ["lat"], dsn=dsn, wakeup=wakeup, poll_interval=None)
    lags, count = _paced_lags(dsn, feed, "lat", 0 if wakeup == "notify" else 10**6)
    p = percentiles(lags)
    return Figure(
        SUITE,
        f"commit -> delivery p99 at 1,000 tx/s (wakeup={wakeup})",
        p[99],
        "ms",
        higher_is_better=False,
        note=f"p50 {p[50]:.1f} ms, p95 {p[95]:.1f} ms, {len(lags)}/{count} delivered",
    )


def _race(dsn: str) -> list[Figure]:
    """Writers whose transactions commit out of id order; the feed and an id > last poller
    follow at once. Returns the rate of each and how many committed rows each missed."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(ID_INDEX)  # for the reference poller only (pgtide reads by xid)
    writers, per = 4, 300
    stop = threading.Event()
    feed_seen: set[int] = set()
    newt_seen: set[int] = set()
    feed = pgtide.Feed("bench-race", ["race"], dsn=dsn, wakeup="poll", poll_interval=0.005)
    start = feed.seek("end")
    committed: list[int] = []
    lock = threading.Lock()

    def write(w: int) -> None:
        rnd = random.Random(w)
        with psycopg.connect(dsn) as conn:
            for t in range(per):
                conn.execute("INSERT INTO race VALUES (%s, 'v', 0)", (w * 10**6 + t,))
                if rnd.random() < 0.2:
                    time.sleep(0.002)  # commit later than a neighbour that drew a larger id
                conn.commit()
                with lock:
                    committed.append(w * 10**6 + t)

    def follow() -> None:
        for batch in feed.batches(start=start, timeout=2):
            feed_seen.update(c.row["id"] for c in batch if c.row)
            batch.ack()
            if stop.is_set() and len(feed_seen) >= len(committed):
                return

    def newt_style() -> None:
        last = 0
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("SELECT coalesce(max(id), 0) FROM pgtide.changes").fetchone()
            last = int(row[0]) if row else 0
            idle = 0
            while idle < 40:
                rows = conn.execute(NEWT_POLL, (last,)).fetchall()
                if rows:
                    newt_seen.update(r[1]["id"] for r in rows)
                    last = rows[-1][0]
                    idle = 0
                else:
                    idle += 1 if stop.is_set() else 0
                    time.sleep(0.005)

    threads = [threading.Thread(target=follow), threading.Thread(target=newt_style)]
    for t in threads:
        t.start()
    began = time.perf_counter()
    ws = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in ws:
        t.start()
    for t in ws:
        t.join()
    elapsed = time.perf_counter() - began
    stop.set()
    for t in threads:
        t.join(30)
    feed.close()
    every = set(committed)
    return [
        Figure(SUITE, "race: committed rows", len(every), "rows", note=f"{elapsed:.1f} s"),
        Figure(
            SUITE,
            "race: rows the feed missed",
            len(every - feed_seen),
            "rows",
            higher_is_better=False,
        ),
        Figure(
            SUITE,
            "race: rows an id > last poller (newt.db style) missed",
            len(every - newt_seen),
            "rows",
            higher_is_better=False,
        ),
    ]


def _read_rate(dsn: str) -> list[Figure]:
    """Reading a backlog of 100k committed changes: the feed vs an id > last poller."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO race SELECT g, 'v', 0 FROM generate_series(10000000, 10099999) g")

    def feed_read() -> None:
        feed = pgtide.Feed(f"bench-read-{uuid.uuid4().hex[:6]}", ["race"], dsn=dsn)
        n = sum(_consume(b) for b in feed.batches(start="beginning", stop="end", max_changes=5000))
        assert n >= 100_000
        feed.drop()
        feed.close()

    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in NEWT_LOG.split("; "):
            conn.execute(statement)
    poll = NEWT_POLL.replace("pgtide.changes", "newt_log").replace("1000", "5000")

    def newt_read() -> None:
        last, n = 0, 0
        with psycopg.connect(dsn, autocommit=True) as conn:
            while True:
                rows = conn.execute(poll, (last,)).fetchall()
                if not rows:
                    break
                n += len(rows)
                last = rows[-1][0]
        assert n >= 100_000

    with psycopg.connect(dsn) as conn:
        total = int(conn.execute("SELECT count(*) FROM race").fetchone()[0])  # type: ignore[index]
    return [
        Figure(
            SUITE,
            "read backlog: id > last poller (newt.db style)",
            rate(total, best_of(2, newt_read)),
            "changes/s",
            note="wrong under concurrency",
        ),
        Figure(
            SUITE,
            "read backlog: pgtide feed (snapshot visibility)",
            rate(total, best_of(2, feed_read)),
            "changes/s",
            baseline="read backlog: id > last poller (newt.db style)",
        ),
    ]


SCALE_TABLES, SCALE_ROWS, SCALE_READS = 100, 10_000, 7


def _follow_one(dsn: str, table: str, expected: int) -> Callable[[], None]:
    """A backlog read of one table's changes (1,000-change batches), as a consumer of it."""

    def go() -> None:
        feed = pgtide.Feed(f"bench-scale-{uuid.uuid4().hex[:6]}", [table], dsn=dsn)
        n = sum(len(b) for b in feed.batches(start="beginning", stop="end", max_changes=1000))
        assert n == expected, (n, expected)
        feed.drop()
        feed.close()

    return go


def _scale_log(dsn: str, written: int) -> str:
    """100 tracked tables, the first ``written`` of them given 10k rows each (1,000-row
    statements, interleaved across tables); the log vacuumed and analyzed. Returns the
    table whose changes are followed."""
    names = [f"scale_{k}" for k in range(SCALE_TABLES)]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE pgtide.changes, pgtide.consumers")
        for name in names:
            conn.execute(
                sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, v text, at float8)").format(
                    sql.Identifier(name)
                )
            )
    for name in names:
        pgtide.track(name, notify=False, dsn=dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for r in range(SCALE_ROWS // 1000):
            for name in names[:written]:
                conn.execute(
                    sql.SQL(
                        "INSERT INTO {} SELECT g, 'value', 0 FROM generate_series(%s::bigint, "
                        "%s::bigint) g"
                    ).format(sql.Identifier(name)),
                    (r * 1000, r * 1000 + 999),
                )
        conn.execute("VACUUM ANALYZE pgtide.changes")
    return names[0]


def _scale(dsn: str) -> list[Figure]:
    """Following one table when the log holds only its changes, and when it holds 100
    tables' (1M changes). The two logs are in two databases of the server, prepared alike
    (vacuumed and analyzed: the baseline used to be read unvacuumed, its reads touching
    twice the buffers of a vacuumed log), and their reads (~0.1 s each) alternate, best of
    7 each: a disturbance of the shared machine falls on both sides, not on one."""
    table = _scale_log(dsn, SCALE_TABLES)
    with scratch_database(dsn, "pgtide_bench_scale") as single:
        pgtide.install(dsn=single)
        _scale_log(single, 1)
        alone, among = math.inf, math.inf
        for _ in range(SCALE_READS):
            alone = min(alone, timed(_follow_one(single, table, SCALE_ROWS)))
            among = min(among, timed(_follow_one(dsn, table, SCALE_ROWS)))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE pgtide.changes, pgtide.consumers")
    for k in range(SCALE_TABLES):
        pgtide.untrack(f"scale_{k}", dsn=dsn)
    label = "follow 1 table of 10k changes, the log holding only its changes"
    return [
        Figure(SUITE, label, rate(SCALE_ROWS, alone), "changes/s"),
        Figure(
            SUITE,
            "follow 1 table of 10k changes among 100 tracked tables (1M changes in the log)",
            rate(SCALE_ROWS, among),
            "changes/s",
            baseline=label,
        ),
    ]


RETAINED = 1_000_000
_FILL = """
INSERT INTO pgtide.changes (table_name, op, row)
SELECT 'public.t_plain', 'insert', json_build_object('id', g, 'v', 'value', 'at', 0)
FROM generate_series(1, %s) g
"""
_LEFT = "SELECT table_name, count(*) FROM pgtide.changes GROUP BY table_name"
_LOG_SIZE = "SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('pgtide.changes')"


CONTROL_LONGEST = 0.5
"""The longest control window (s): the writer's 2 s before the action hold it, the second
before it and a warm-up (its first statements plan the capture)."""


def _writer_around(
    dsn: str, action: Callable[[], Any], before: float = 2.0
) -> tuple[float, float, float, float]:
    """A writer of 1,000-row statements into a tracked table runs ``before`` seconds, then
    while ``action`` runs (started from another thread): returns its rows/s over the last
    second before and while the action ran; and the same two windows ending where the
    action began, with nothing running (a control: the spread of the measure itself on a
    shared machine), the second as long as the action (at most ``CONTROL_LONGEST``)."""
    insert = "INSERT INTO t_tracked SELECT g, 'v', 0 FROM generate_series(%s::bigint, %s::bigint) g"
    done = threading.Event()
    marks: list[float] = []

    def act() -> None:
        marks.append(time.perf_counter())
        action()
        marks.append(time.perf_counter())
        done.set()

    spans: list[tuple[float, float]] = []  # each statement's start and end
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE t_tracked")
        began = time.perf_counter()
        acting = threading.Thread(target=act)
        n = 0
        while not done.is_set():
            if not marks and not acting.is_alive() and time.perf_counter() - began >= before:
                acting.start()
            start = time.perf_counter()
            conn.execute(insert, (n * 1000, n * 1000 + 999))
            spans.append((start, time.perf_counter()))
            n += 1
    acting.join()
    first, last = marks

    def rows_per_second(start: float, end: float, within: bool) -> float:
        """The rate of the statements that ran within [start, end] (else: ran in part)."""
        chosen = [
            s
            for s in spans
            if (start <= s[0] and s[1] <= end if within else s[1] > start and s[0] < end)
        ]
        return rate(1000 * len(chosen), chosen[-1][1] - chosen[0][0])

    # the last second before: the writer warmed up (its first statements plan the capture);
    # while the action ran: every statement that ran in part while it did
    still = first - min(last - first, CONTROL_LONGEST)
    return (
        rows_per_second(first - 1.0, first, within=True),
        rows_per_second(first, last, within=False),
        rows_per_second(still - 1.0, still, within=True),
        rows_per_second(still, first, within=False),
    )


RETENTION_ROUNDS = 9


class _Round(NamedTuple):
    """One retention round: the writer's rows/s just before and while prune runs, the same
    two windows of the control (nothing running, see :func:`_writer_around`), how long prune
    took and how many changes it removed."""

    alone: float
    during: float
    still_before: float
    still: float
    took: float
    pruned: int


def _retention_round(dsn: str, prune: Callable[[], int]) -> _Round:
    """One round: 1M acknowledged changes (a consumer at the end), then the writer around
    ``prune``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE pgtide.changes, pgtide.consumers")
        conn.execute(_FILL, (RETAINED,))
        conn.execute("VACUUM ANALYZE pgtide.changes")
    feed = pgtide.Feed("bench-retention", dsn=dsn)
    feed.seek("end")  # a consumer that acknowledged every change
    feed.close()
    took: list[float] = []
    pruned: list[int] = []

    def timed_prune() -> None:
        began = time.perf_counter()
        pruned.append(prune())
        took.append(time.perf_counter() - began)

    return _Round(*_writer_around(dsn, timed_prune), took[0], pruned[0])


def _median_round(rounds: list[_Round], ratio: Callable[[_Round], float]) -> _Round:
    """The round of median ``ratio``: both figures of the ratio come from one round, and a
    disturbance of the shared machine in one window of ~0.4 s moves one round to an end,
    not the figure."""
    return sorted(rounds, key=ratio)[len(rounds) // 2]


def _pruning(r: _Round) -> float:
    return r.during / r.alone


def _control(r: _Round) -> float:
    return r.still / r.still_before


def _ratios(rounds: list[_Round], ratio: Callable[[_Round], float]) -> str:
    return ", ".join(f"{ratio(r):.2f}" for r in sorted(rounds, key=ratio))


def _retention(dsn: str) -> list[Figure]:
    """prune() of 1M acknowledged changes while a writer writes (its rate just before and
    while prune runs, the round of median ratio of 9), beside the control from the same
    rounds (two such windows with nothing running: how far the measure swings by itself);
    the log's size before and after, and after a second prune once the writer's changes are
    acknowledged too. Before the writer's pause, the log holds a full ring of changes: the
    writer's new changes share partitions with acknowledged ones, which prune leaves until
    their partition is acknowledged entirely (the note counts both); the second prune
    empties them whole."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE pgtide.changes, pgtide.consumers")
        conn.execute("TRUNCATE t_tracked")
    _bulk(dsn, "t_tracked", 20)()
    with psycopg.connect(dsn, autocommit=True) as conn:
        per_row = _log_size(conn) / 20_000
        conn.execute("TRUNCATE pgtide.changes, pgtide.consumers")
        conn.execute(_FILL, (RETAINED,))
        conn.execute("VACUUM ANALYZE pgtide.changes")
        before = _log_size(conn)
    rounds = [_retention_round(dsn, lambda: pgtide.prune(dsn=dsn)) for _ in range(RETENTION_ROUNDS)]
    median = _median_round(rounds, _pruning)
    control = _median_round(rounds, _control)
    with psycopg.connect(dsn, autocommit=True) as conn:
        after = _log_size(conn)
        kept = dict(conn.execute(_LEFT).fetchall())
        feed = pgtide.Feed("bench-retention", dsn=dsn)
        feed.seek("end")  # the writer's changes acknowledged too
        feed.close()
        again = pgtide.prune(dsn=dsn)
        after_all = _log_size(conn)
        conn.execute("TRUNCATE pgtide.changes, pgtide.consumers")
    label = "writer of 1,000-row statements, tracked, just before prune()"
    still_label = "writer of 1,000-row statements, tracked, the second before the control window"
    mib = 2**20
    writer, acked = kept.get("public.t_tracked", 0), kept.get("public.t_plain", 0)
    return [
        Figure(
            SUITE,
            "captured row size (1,000-row inserts, id/text/float8 row)",
            per_row,
            "bytes",
            higher_is_better=False,
        ),
        Figure(SUITE, label, median.alone, "rows/s"),
        Figure(
            SUITE,
            "writer of 1,000-row statements, tracked, while prune() runs over 1M acked changes",
            median.during,
            "rows/s",
            baseline=label,
            note=f"prune took {median.took:.2f} s and removed {median.pruned:,} changes; the "
            f"round of median ratio of {len(rounds)} (ratios {_ratios(rounds, _pruning)})",
        ),
        Figure(SUITE, still_label, control.still_before, "rows/s"),
        Figure(
            SUITE,
            "writer of 1,000-row statements, tracked, control: as long as prune, just before it",
            control.still,
            "rows/s",
            baseline=still_label,
            note="the same rounds, nothing else running: the spread of the measure itself; "
            f"the round of median ratio of {len(rounds)} (ratios {_ratios(rounds, _control)})",
        ),
        Figure(
            SUITE,
            "pgtide.changes size before prune (1M acked changes)",
            before / mib,
            "MiB",
            higher_is_better=False,
        ),
        Figure(
            SUITE,
            "pgtide.changes size after prune",
            after / mib,
            "MiB",
            higher_is_better=False,
            note=f"{writer + acked:,} changes left: the writer's {writer:,} (unacknowledged; "
            f"at the captured row size {writer * per_row / mib:.0f} MiB) and {acked:,} "
            "acknowledged ones sharing their partitions",
        ),
        Figure(
            SUITE,
            "pgtide.changes size after the writer's changes are acknowledged and prune runs again",
            after_all / mib,
            "MiB",
            higher_is_better=False,
            note=f"that prune removed {again:,} changes",
        ),
    ]


def _log_size(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(_LOG_SIZE).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


WAL_TABLES = ("t_wal", "e2e_wal", "relay_wal", "lat_wal")
_BARE = (
    "SELECT count(*) FROM pg_logical_slot_get_binary_changes(%s, NULL, NULL, 'proto_version', "
    "'1', 'publication_names', 'pgtide_wal', 'messages', 'true')"
)


def _wal(dsn: str) -> list[Figure]:
    """WAL capture beside the figures above: write overhead (the relay stopped, and running),
    end to end with the relay inside the feed, and the relay against a bare read of its slot."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        level = conn.execute("SHOW wal_level").fetchone()
        if level is None or level[0] != "logical":
            return []
        for table in WAL_TABLES:
            conn.execute(
                sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, v text, at float8)").format(
                    sql.Identifier(table)
                )
            )
    for table in WAL_TABLES:
        pgtide.track(table, capture="wal", dsn=dsn)
    figures = []
    try:
        figures += _wal_writers(dsn)
        figures += _end_to_end_wal(dsn)
        figures.append(_latency_wal(dsn))
        figures.extend(_relay_vs_bare(dsn))
    finally:
        for table in WAL_TABLES:
            pgtide.untrack(table, dsn=dsn)  # the last one drops the slot
    return figures


def _wal_writers(dsn: str) -> list[Figure]:
    """What WAL capture costs writers: 1,000-row statements, single-row transactions and 4
    concurrent writers, each into an untracked table and a WAL-captured one, in turns. The
    captured table is measured with the relay stopped (what the writer's own transaction
    pays: no trigger, nothing else) and with a relay draining the slot meanwhile, in a
    process of its own as ``pgtide capture`` or a feed runs it (capture as it is in use; its
    decoding and writes take the same 2 cores as the writers). The slot is emptied after
    each run, untimed, with the tables, so that no run starts with another's backlog."""
    n, single, per = 100, 2000, 1000  # runs of ~0.2-0.4 s: a connect or warm-up weighs little
    stopped = "relay stopped: the slot only keeps the WAL; "
    running = "a relay in another process drains the slot meanwhile (same cores); "
    figures: list[Figure] = []
    for what, make, work, unit, rounds in (
        ("INSERT 1,000-row statements", lambda t: _bulk(dsn, t, n), n * 1000, "rows/s", 3),
        ("single-row tx", lambda t: _single(dsn, t, single), single, "tx/s", 4),
        (
            "4 writers single-row tx",
            lambda t: _single(dsn, t, per, writers=4),
            4 * per,
            "tx/s",
            4,
        ),
    ):
        figures += _side_by_side(
            {
                f"{what}, untracked (WAL run)": make("t_plain"),
                f"{what}, WAL capture (relay stopped)": make("t_wal"),
                f"{what}, WAL capture (relay running)": _relay_running(dsn, make("t_wal")),
            },
            work,
            unit,
            rounds=rounds,
            between=lambda: _empty_wal(dsn),
            notes={
                f"{what}, WAL capture (relay stopped)": stopped,
                f"{what}, WAL capture (relay running)": running,
            },
        )
    return figures


def _empty_wal(dsn: str) -> None:
    """The tables of :func:`_wal_writers` emptied (each run counts its ids from 0), and the
    slot and log with them."""
    _truncate(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE t_wal")
    _drain(dsn)


def _relay_process(dsn: str, stop: Any, started: Any) -> None:
    """A relay until ``stop`` (a process's event) is set; ``started`` once it took a step."""
    from pgtide.feed import Relay

    halt = threading.Event()
    threading.Thread(target=lambda: (stop.wait(), halt.set()), daemon=True).start()
    Relay(dsn).run(halt, on_step=lambda _result: started.set())


def _follower_process(dsn: str, stop: Any, started: Any) -> None:
    """A feed following t_tracked until ``stop``; ``started`` once it waits for changes."""
    feed = pgtide.Feed("bench-follower", ["t_tracked"], dsn=dsn)
    feed.seek("end")
    threading.Thread(target=lambda: (stop.wait(), feed.stop()), daemon=True).start()
    threading.Thread(target=lambda: (_until_waiting(dsn), started.set()), daemon=True).start()
    feed.run(_consume)
    feed.close()


def _gate_held(dsn: str, fn: Callable[[], object]) -> Callable[[], float]:
    """``fn`` while a connection holds the wake-up gate, as a waiting feed does: every
    capturing commit then NOTIFYs."""

    def go() -> float:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_advisory_lock_shared(%s, %s)", GATE)
            return timed(fn)  # the writers' seconds alone

    return go


def _until_waiting(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not run_io(conn, waiting_io()):
            time.sleep(0.01)


def _relay_running(dsn: str, fn: Callable[[], object]) -> Callable[[], float]:
    """``fn`` timed while a relay runs in a process of its own."""
    return _beside(_relay_process, dsn, fn)


def _beside(target: Callable[..., None], dsn: str, fn: Callable[[], object]) -> Callable[[], float]:
    """``fn`` timed while ``target(dsn, stop, started)`` runs in a process of its own (not a
    thread of this one, whose writers would wait for the GIL): it starts before the clock
    and stops after it, so the seconds are the writer's alone."""

    def go() -> float:
        context = multiprocessing.get_context("spawn")
        stop, started = context.Event(), context.Event()
        other = context.Process(target=target, args=(dsn, stop, started))
        other.start()
        try:
            if not started.wait(60):
                raise RuntimeError(f"the bench's {target.__name__} did not start")
            began = time.perf_counter()
            took = fn()  # a run that timed itself says its seconds (as in in_turns)
            return took if isinstance(took, float) else time.perf_counter() - began
        finally:
            stop.set()
            other.join(60)

    return go


def _drain(dsn: str) -> int:
    from pgtide.feed import Relay

    relay = Relay(dsn)
    relay.run(until_idle=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE pgtide.changes, pgtide.consumers")
    return relay.relayed


E2E_WAL = "end to end: insert -> batch, WAL capture (100k rows, 1,000-row tx)"
E2E_WAL_APART = (
    "end to end: insert -> batch, WAL capture, relay in a process of its own "
    "(100k rows, 1,000-row tx)"
)


def _end_to_end_wal(dsn: str) -> list[Figure]:
    """Insert -> batch with WAL capture, the relay where a lone consumer has it (inside the
    feed, which relays by itself) and where ``pgtide capture`` runs it (a process of its
    own: its decoding then takes no turn on the follower's interpreter lock); in turns,
    best of 3 each (one run of either swings by 1.3x from the next on a loaded machine)."""
    total = 100_000
    write = _bulk(dsn, "e2e_wal", total // 1000)  # one id counter: every run inserts anew

    def follow() -> float:
        return _follow(dsn, "e2e_wal", write, total)

    took = in_turns(3, {E2E_WAL: follow, E2E_WAL_APART: _beside(_relay_process, dsn, follow)})
    return [
        Figure(
            SUITE,
            E2E_WAL,
            rate(total, took[E2E_WAL]),
            "changes/s",
            note="writer, relay (in the feed) and follower at once; best of 3, in turns",
        ),
        Figure(
            SUITE,
            E2E_WAL_APART,
            rate(total, took[E2E_WAL_APART]),
            "changes/s",
            baseline=E2E_WAL,
            note="the relay as `pgtide capture` runs it, started before the clock; the "
            "writer and the follower in this process; best of 3, in turns",
        ),
    ]


def _latency_wal(dsn: str) -> Figure:
    """Commit -> delivery at 1,000 single-row tx/s, the relay running inside the feed."""
    feed = pgtide.Feed("bench-lat-wal", ["lat_wal"], dsn=dsn, poll_interval=None)
    lags, count = _paced_lags(dsn, feed, "lat_wal", 0)
    p = percentiles(lags)
    return Figure(
        SUITE,
        "commit -> delivery p99 at 1,000 tx/s, WAL capture (relay in the feed)",
        p[99],
        "ms",
        higher_is_better=False,
        note=f"p50 {p[50]:.1f} ms, p95 {p[95]:.1f} ms, {len(lags)}/{count} delivered",
    )


def _relay_vs_bare(dsn: str) -> list[Figure]:
    """The same 100k changes read by a bare slot read (the decoding limit) and relayed; in
    turns, 3 times, the best of each (on a loaded machine one run of each swings by 2-4x)."""
    total = 100_000
    bare, relayed = float("inf"), float("inf")
    for _ in range(3):
        one_bare, one_relayed, count = _relay_vs_bare_once(dsn, total)
        assert count == total, f"the relay relayed {count} changes of {total}"
        bare, relayed = min(bare, one_bare), min(relayed, one_relayed)
    return [
        Figure(
            SUITE,
            "bare pg_logical_slot_get_binary_changes (decoding limit)",
            rate(total, bare),
            "changes/s",
            note="best of 3",
        ),
        Figure(
            SUITE,
            "relay: slot -> pgtide.changes",
            rate(total, relayed),
            "changes/s",
            baseline="bare pg_logical_slot_get_binary_changes (decoding limit)",
            note="best of 3, in turns with the bare read",
        ),
    ]


def _relay_vs_bare_once(dsn: str, total: int) -> tuple[float, float, int]:
    """Seconds of a bare read and of the relay over the same ``total`` new changes, and how
    many the relay relayed."""
    from pgtide.feed import Relay

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE relay_wal")
    _drain(dsn)
    bare_slot = f"pgtide_bench_bare_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (bare_slot,))
        try:
            _bulk(dsn, "relay_wal", total // 1000)()
            conn.execute("SET synchronous_commit = on")
            conn.execute("SELECT pg_logical_emit_message(true, 'bench', 'flush')")
            began = time.perf_counter()
            conn.execute(_BARE, (bare_slot,))
            bare = time.perf_counter() - began
        finally:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (bare_slot,))
    relay = Relay(dsn)
    began = time.perf_counter()
    relay.run(until_idle=True)
    return bare, time.perf_counter() - began, relay.relayed


BACKFILL_ROWS = 1_000_000


def _backfill(dsn: str) -> list[Figure]:
    """Backfill of 1M rows while 2 writers keep updating the table, for each capture."""
    from pgtide.feed.backfill import Backfiller

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SHOW wal_level").fetchone()
    captures = ["trigger", "wal"] if row and row[0] == "logical" else ["trigger"]
    figures = []
    for capture in captures:
        table = f"bf_{capture}"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, v text, n int NOT NULL)").format(
                    sql.Identifier(table)
                )
            )
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} SELECT g, 'row ' || g, 0 FROM generate_series(1, %s) g"
                ).format(sql.Identifier(table)),
                (BACKFILL_ROWS,),
            )
            conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(table)))
        pgtide.track(table, capture=capture, backfill=True, dsn=dsn)
        stop = threading.Event()
        writes = [0, 0]
        update = sql.SQL("UPDATE {} SET n = n + 1 WHERE id = %s").format(sql.Identifier(table))

        def write(
            w: int,
            update: sql.Composed = update,
            stop: threading.Event = stop,
            writes: list[int] = writes,
        ) -> None:
            rng = random.Random(w)
            with psycopg.connect(dsn, autocommit=True) as conn:
                while not stop.is_set():
                    conn.execute(update, (rng.randint(1, BACKFILL_ROWS),))
                    writes[w] += 1

        writers = [threading.Thread(target=write, args=(w,)) for w in range(2)]
        for t in writers:
            t.start()
        filler = Backfiller(dsn)
        began = time.perf_counter()
        with psycopg.connect(dsn, autocommit=True) as conn:
            filler.run_pending(conn, wait=True)
        elapsed = time.perf_counter() - began
        stop.set()
        for t in writers:
            t.join()
        pgtide.untrack(table, dsn=dsn)
        figures.append(
            Figure(
                SUITE,
                f"backfill of 1M rows ({capture} capture), 2 writers updating",
                rate(filler.emitted, elapsed),
                "rows/s",
                note=f"writers meanwhile: {rate(sum(writes), elapsed):,.0f} updates/s",
            )
        )
    return figures


PARTS: dict[str, Callable[[str], list[Figure]]] = {
    "capture": _capture,
    "wal": _wal,
    "e2e": lambda db: [_end_to_end(db)],
    "latency": lambda db: [_latency(db, "notify"), _latency(db, "poll")],
    "race": _race,
    "read": _read_rate,
    "scale": _scale,
    "retention": _retention,
    "backfill": _backfill,
}
"""The suite's parts, in order; ``python -m bench feed --only capture,scale`` runs only
those (a quick before/after of one area; a full report runs them all)."""


def run(dsn: str) -> list[Figure]:
    figures: list[Figure] = []
    with scratch_database(dsn, "pgtide_bench_feed") as db:
        _prepare(db)
        for name, part in PARTS.items():
            if wanted(name):
                figures.extend(part(db))
    return figures


def main(argv: Any = None) -> None:
    from pgtide.connect import resolve

    for figure in run(resolve().dsn):
        print(f"{figure.name}: {figure.value:,.1f} {figure.unit} {figure.note}")


if __name__ == "__main__":
    main()
