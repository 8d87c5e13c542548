"""Events: worker throughput, publish rates and latencies, beside the seed and the peers.

Each system runs in a database of its own (``scratch_database``) on the same server: the one
``python -m bench`` resolves (the embedded server by default; ``PGTIDE_DSN=... python -m
bench events`` measures another, such as the PostgreSQL service of this machine).

The workload of every throughput figure is the same: a backlog of BACKLOG no-op jobs
published before the worker starts, then one worker process at concurrency 32 (where the
library has such a knob); the clock runs from the worker's start to the last handler call
(pgtide's also includes stop(), which records the last outcomes). A peer still running after
PEER_BUDGET seconds is stopped and rated on the jobs it ran (its note says so). pgtide runs at
concurrency 1, 8 and 32; the peers are configured as their docs advise for throughput, and
each figure's note says how:

- notified (seed 003): one thread per event, fed by a trigger (throughput and idle latency);
- pgqueuer (asyncpg): ``run(batch_size=16, max_concurrent_tasks=32)`` (its cap on running
  jobs; it must be at least twice the batch), and ``run(batch_size=100)`` without a cap (its
  guide: larger batches for short jobs);
- procrastinate: ``run_worker_async(concurrency=32, wait=False)`` on a psycopg pool of 34;
- oban (the Python port of Oban): one queue of limit 32. oban needs Python 3.12+: it runs in
  a virtual environment of its own (bench/_oban_peer.py), made from PGTIDE_BENCH_OBAN_PYTHON
  or the first python3.12+ found on PATH or in pyenv; without one it is reported *not run*.

pgtide's concurrency-32 figure is compared with the fastest peer of the run (target: 3x).
The same comparison runs again on a second server, the machine's PostgreSQL service
(SERVICE_DSN, or PGTIDE_BENCH_SERVICE_DSN; skipped when it does not answer or is the server
measured): pgtide and each peer in a database of their own there, in the same run.
Also for pgtide: limits that are not reached (``concurrency=`` and ``rate=`` set high) against
the unlimited handler (target >= 0.7x); publish -> handler start at a paced 1,000 events/s
(targets p50 <= 2 ms, p99 <= 5 ms), beside the same paced publishers feeding a bare psycopg
LISTEN + UPDATE ... FOR UPDATE SKIP LOCKED loop in the same run (the floor of that path on
the machine, without leases, retries nor limits); publish and publish_many rates (target
>= 100k/s); PUBLISHERS threads publishing one event a call, while no worker waits (no
NOTIFY) and while one does, beside the same threads sending an INSERT and its NOTIFY per
event (NOTIFY's commit lock queues concurrent publishers); the WAL the server wrote per
event during the concurrency-32 run (the database's cost of a claim and an outcome).

Cost grows with the work: the concurrency-32 throughput in a table whose autovacuum is off,
empty, beside the same in a table where 2M finished events and 100k events of a name no worker
handles were added in SQL (generate_series, then CHECKPOINT; statistics left stale, the
server's JIT setting as it is), each in a database of its own, measured in turns; target
>= 0.9x.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

import pgtide

from ._harness import Figure, percentiles, rate, scratch_database, wait_until, wanted

SUITE = "events"
BACKLOG = 20_000
CONCURRENCY = 32
SINGLE = 1_000
LATENCY_SAMPLES = 200
NOTIFIED_EVENTS = 2_000
PACED_RATE = 1000.0
PACED_EVENTS = 2_000
PACED_WARMUP = 200
PUBLISHERS = 8
"""Threads (each with a connection of its own) that publish the paced events in turn."""
FINISHED = 2_000_000
UNHANDLED = 100_000
ROUNDS = 3
LIMITS = {"concurrency": 100_000, "rate": "1000000/s"}
PEER_BUDGET = 15.0
"""Seconds a peer may run the backlog; a slower one is stopped and rated on what it ran."""

C32 = "pgtide worker, concurrency 32"
EMPTY = "pgtide worker, concurrency 32, empty table (autovacuum off)"
NOTIFIED = "notified server"

AUTOVACUUM_OFF = """
ALTER TABLE pgtide.events SET (autovacuum_enabled = false, toast.autovacuum_enabled = false)
"""
HISTORY_FINISHED = """
INSERT INTO pgtide.events (name, payload, state, attempts, started_at, finished_at)
SELECT 'noop', '{"n": 0}'::jsonb, 'done', 1, now(), now()
FROM generate_series(1, %s) AS g
"""
"""Finished events of the very name the worker handles (the worst case for a claim)."""
HISTORY_UNHANDLED = """
INSERT INTO pgtide.events (name, payload)
SELECT 'nobody', '{"n": 0}'::jsonb FROM generate_series(1, %s)
"""
"""Pending events of a name no worker handles."""
DONE_OF = "SELECT count(*) FROM pgtide.events WHERE id = ANY(%s) AND state = 'done'"
WAL_AT = "SELECT pg_current_wal_insert_lsn()"
WAL_SINCE = "SELECT pg_current_wal_insert_lsn() - %s::pg_lsn"
WAL_WRITTEN: list[float] = []
"""WAL bytes an event of each worker run (the whole server's: the runs are the only writers
of their database, and the rest of the machine is quiet during `make bench`)."""


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    if not wait_until(condition, timeout):
        raise TimeoutError(f"{what} did not happen within {timeout} s")


def _pgtide_throughput(
    dsn: str,
    concurrency: int,
    *,
    analyze: bool = True,
    keep: bool = False,
    limits: dict[str, Any] | None = None,
) -> float:
    """BACKLOG no-op events published in batches, then one worker until all are done; the
    table is emptied afterwards unless ``keep`` (the finished events then join the history)."""
    events = pgtide.Events(dsn=dsn, batch_size=500)
    seen = [0]
    events.register("noop", lambda e: seen.__setitem__(0, seen[0] + 1), **(limits or {}))
    ids: list[int] = []
    for chunk in range(0, BACKLOG, 1000):
        ids += events.publish_many("noop", [{"n": n} for n in range(chunk, chunk + 1000)])
    with psycopg.connect(dsn, autocommit=True) as conn:
        if analyze:
            conn.execute("VACUUM ANALYZE pgtide.events")
        wal = conn.execute(WAL_AT).fetchone()
    began = time.perf_counter()
    events.start(concurrency)
    _wait(lambda: seen[0] >= BACKLOG, 300, "handlers")
    events.stop()  # flushes the last outcomes: every event is recorded done
    elapsed = time.perf_counter() - began
    with psycopg.connect(dsn, autocommit=True) as conn:
        written = conn.execute(WAL_SINCE, (wal[0] if wal else None,)).fetchone()
        if written is not None and written[0] is not None:
            WAL_WRITTEN.append(float(written[0]) / BACKLOG)
        row = conn.execute(DONE_OF, (ids,)).fetchone()
        if row is None or row[0] != BACKLOG:
            raise RuntimeError(f"{row[0] if row else 0} of {BACKLOG} events are recorded done")
        if not keep:
            conn.execute("TRUNCATE pgtide.events")
    events.close()
    return rate(BACKLOG, elapsed)


def _pgtide_publish(dsn: str) -> tuple[float, float]:
    """Single publishes (SINGLE, one a call) and publish_many (BACKLOG, 1,000 a call): the
    best of ROUNDS runs each, in turns (on these machines one run of 20 calls swings by up
    to 1.6x from the next)."""
    events = pgtide.Events(dsn=dsn)
    events.publish("warm", None)
    payloads = [{"n": n} for n in range(BACKLOG)]
    single = batch = 0.0
    for _ in range(ROUNDS):
        began = time.perf_counter()
        for n in range(SINGLE):
            events.publish("single", {"n": n})
        single = max(single, rate(SINGLE, time.perf_counter() - began))
        began = time.perf_counter()
        for chunk in range(0, BACKLOG, 1000):
            events.publish_many("batch", payloads[chunk : chunk + 1000])
        batch = max(batch, rate(BACKLOG, time.perf_counter() - began))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE pgtide.events")
    events.close()
    return single, batch


CONCURRENT_SECONDS = 2.0
"""How long each concurrent-publish run lasts (PUBLISHERS threads, one connection each)."""
EVENTS_GATE = (0x70677469, 0x45564E)
"""The advisory lock a waiting worker holds shared (pgtide.channel._gate, migration 027)."""


def _concurrently(publish: list[Callable[[int], None]]) -> float:
    """Publishes a second from ``publish[k](n)`` called in a loop by a thread each."""
    stop = time.perf_counter() + CONCURRENT_SECONDS
    counts = [0] * len(publish)

    def loop(k: int) -> None:
        n = 0
        while time.perf_counter() < stop:
            publish[k](n)
            n += 1
        counts[k] = n

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(len(publish))]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return rate(sum(counts), time.perf_counter() - began)


def _concurrent_publish(dsn: str) -> tuple[float, float, float]:
    """PUBLISHERS threads publishing one event a call, each on a connection of its own:
    pgtide while no worker waits (no NOTIFY: migration 027), pgtide while one waits (every
    insert notifies; the waiting worker is stood for by a connection holding its gate), and
    the bare reference, an INSERT and its NOTIFY in one autocommit statement, as a
    LISTEN/NOTIFY queue publishes. Alternated twice, the best of each."""
    publishers = [pgtide.Events(dsn=dsn) for _ in range(PUBLISHERS)]
    conns = [psycopg.connect(dsn, autocommit=True) for _ in range(PUBLISHERS)]
    best = [0.0, 0.0, 0.0]
    try:
        conns[0].execute(BARE_TABLE)
        for publisher in publishers:
            publisher.publish("warm", None)
        ours = [partial(_publish_one, p) for p in publishers]
        bare = [partial(_bare_publish, c) for c in conns]
        with psycopg.connect(dsn, autocommit=True) as waiting:
            for _ in range(2):
                best[0] = max(best[0], _concurrently(ours))
                waiting.execute("SELECT pg_advisory_lock_shared(%s, %s)", EVENTS_GATE)
                best[1] = max(best[1], _concurrently(ours))
                waiting.execute("SELECT pg_advisory_unlock_shared(%s, %s)", EVENTS_GATE)
                best[2] = max(best[2], _concurrently(bare))
        conns[0].execute("DROP TABLE bare_jobs")
        conns[0].execute("TRUNCATE pgtide.events")
    finally:
        for publisher in publishers:
            publisher.close()
        for c in conns:
            c.close()
    return best[0], best[1], best[2]


def _publish_one(publisher: pgtide.Events, n: int) -> None:
    publisher.publish("concurrent", {"n": n})


def _latencies(publish: Callable[[], None], arrived: list[float]) -> list[float]:
    """Publish one at a time on an idle system; ms from before publish to handler start."""
    samples = []
    for _ in range(LATENCY_SAMPLES):
        count = len(arrived)
        began = time.perf_counter()
        publish()
        _wait(lambda c=count: len(arrived) > c, 10, "handler call")  # type: ignore[misc]
        samples.append((arrived[count] - began) * 1000)
        time.sleep(0.005)  # idle again before the next one
    return samples


def _pgtide_latency(dsn: str) -> dict[int, float]:
    events = pgtide.Events(dsn=dsn)
    arrived: list[float] = []
    events.register("ping", lambda e: arrived.append(time.perf_counter()))
    events.start(1)
    samples = _latencies(lambda: events.publish("ping", None) and None, arrived)
    events.close()
    return percentiles(samples)


def _paced(
    publishers: list[Callable[[int], None]], started: list[float]
) -> tuple[dict[int, float], float]:
    """Call ``publishers[k](n)`` for every PUBLISHERS-th event n, each on a thread of its own,
    at PACED_RATE events/s in all, then wait until ``started[n]`` is set for every n; the
    percentiles of ms from before the publish to the start (the first PACED_WARMUP left
    out), and the rate reached."""
    sent = [0.0] * PACED_EVENTS
    began = time.perf_counter() + 0.05

    def publish(index: int) -> None:
        for n in range(index, PACED_EVENTS, len(publishers)):
            pause = began + n / PACED_RATE - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            sent[n] = time.perf_counter()
            publishers[index](n)

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(len(publishers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    _wait(lambda: all(started), 60, "paced handler calls")
    samples = [(started[n] - sent[n]) * 1000 for n in range(PACED_WARMUP, PACED_EVENTS)]
    return percentiles(samples), rate(PACED_EVENTS - 1, max(sent) - min(sent))


def _pgtide_paced(dsn: str) -> tuple[dict[int, float], float]:
    """Publish at PACED_RATE events/s (one publish() each, with its own commit, on schedule)
    from PUBLISHERS threads, each on a connection of its own and taking every PUBLISHERS-th
    event, a worker at concurrency 32 handling them; ms from before publish() to handler
    start. One publisher alone cannot keep that pace here (a single publish waits for its
    commit's flush: about 1,000/s at best, less beside a busy worker). The first
    PACED_WARMUP samples are left out; the rate reached is reported with the figures."""
    events = pgtide.Events(dsn=dsn)
    started = [0.0] * PACED_EVENTS

    def handler(event: Any) -> None:
        started[event.payload["n"]] = time.perf_counter()

    events.register("paced", handler)
    events.start(CONCURRENCY)
    publishers = [pgtide.Events(dsn=dsn) for _ in range(PUBLISHERS)]
    for publisher in publishers:
        publisher.publish("warm", None)  # connected before the clock starts
    try:
        return _paced([partial(_publish_paced, p) for p in publishers], started)
    finally:
        events.close()
        for publisher in publishers:
            publisher.close()


BARE_TABLE = """
CREATE TABLE bare_jobs (id bigserial PRIMARY KEY, n integer NOT NULL,
                        state text NOT NULL DEFAULT 'pending');
CREATE INDEX bare_jobs_pending ON bare_jobs (id) WHERE state = 'pending'
"""
BARE_PUBLISH = """
WITH i AS (INSERT INTO bare_jobs (n) VALUES (%s) RETURNING id)
SELECT pg_notify('bare_jobs', '') FROM i
"""
BARE_CLAIM = """
UPDATE bare_jobs SET state = 'running'
WHERE id IN (SELECT id FROM bare_jobs WHERE state = 'pending' ORDER BY id
             LIMIT %s FOR UPDATE SKIP LOCKED)
RETURNING id, n
"""
BARE_DONE = "UPDATE bare_jobs SET state = 'done' WHERE id = ANY(%s)"


def _bare_paced(dsn: str) -> tuple[dict[int, float], float]:
    """The reference of the paced figure: the same publishers (an INSERT and a NOTIFY in one
    autocommit statement each) and a bare psycopg loop in one thread: LISTEN on one
    connection; on the other, claim up to CONCURRENCY rows (UPDATE ... FOR UPDATE SKIP
    LOCKED, autocommit), call the handler inline, mark them done, claim again; when a claim
    finds nothing, wait for a NOTIFY. No leases, retries nor limits."""
    started = [0.0] * PACED_EVENTS
    stopping = threading.Event()
    listening = threading.Event()

    def consume() -> None:
        with (
            psycopg.connect(dsn, autocommit=True) as listen,
            psycopg.connect(dsn, autocommit=True) as conn,
        ):
            listen.execute("LISTEN bare_jobs")
            listening.set()
            while not stopping.is_set():
                rows = conn.execute(BARE_CLAIM, (CONCURRENCY,)).fetchall()
                for _, n in rows:
                    started[n] = time.perf_counter()  # the handler
                if rows:
                    conn.execute(BARE_DONE, ([id_ for id_, _ in rows],))
                else:
                    for _ in listen.notifies(timeout=0.1, stop_after=1):
                        pass

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(BARE_TABLE)
    consumer = threading.Thread(target=consume)
    consumer.start()
    listening.wait(10)
    conns = [psycopg.connect(dsn, autocommit=True) for _ in range(PUBLISHERS)]
    try:
        return _paced([partial(_bare_publish, c) for c in conns], started)
    finally:
        stopping.set()
        consumer.join()
        for c in conns:
            c.close()


def _publish_paced(publisher: pgtide.Events, n: int) -> None:
    publisher.publish("paced", {"n": n})


def _bare_publish(conn: psycopg.Connection[Any], n: int) -> None:
    conn.execute(BARE_PUBLISH, (n,))


def _scale(dsn: str) -> tuple[float, float, str]:
    """The concurrency-32 throughput in an empty table and in one holding the history, each
    in a database of its own with the table's autovacuum off and no ANALYZE (statistics
    stale); measured in turns, ROUNDS times each, the best of each kept."""
    with scratch_database(dsn) as empty_db, scratch_database(dsn) as loaded_db:
        for db in (empty_db, loaded_db):
            pgtide.install(dsn=db)
            with psycopg.connect(db, autocommit=True) as conn:
                conn.execute(AUTOVACUUM_OFF)
        began = time.perf_counter()
        with psycopg.connect(loaded_db, autocommit=True) as conn:
            conn.execute(HISTORY_FINISHED, (FINISHED,))
            conn.execute(HISTORY_UNHANDLED, (UNHANDLED,))
            conn.execute("CHECKPOINT")  # the bulk load's writes are not the queue's cost
            jit = conn.execute("SHOW jit").fetchone()
        filled = time.perf_counter() - began
        empty, loaded = 0.0, 0.0
        for _ in range(ROUNDS):
            empty = max(empty, _pgtide_throughput(empty_db, CONCURRENCY, analyze=False, keep=True))
            loaded = max(
                loaded, _pgtide_throughput(loaded_db, CONCURRENCY, analyze=False, keep=True)
            )
    note = (
        f"{FINISHED:,} finished events of the handled name and {UNHANDLED:,} pending events of "
        f"a name no worker handles, added in SQL in {filled:.0f} s (then CHECKPOINT); "
        f"autovacuum off for the table, no ANALYZE, server jit = {jit[0] if jit else '?'}; "
        f"best of {ROUNDS}, in turns with the empty table; target >= 0.9x"
    )
    return empty, loaded, note


NOTIFIED_TABLE = """
CREATE TABLE events (id serial PRIMARY KEY, name text NOT NULL, data jsonb);
CREATE FUNCTION notify_event() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('events', NEW.id::text); RETURN NULL; END $$;
CREATE TRIGGER notify_event AFTER INSERT ON events FOR EACH ROW EXECUTE PROCEDURE notify_event();
"""


def _notified(dsn: str) -> tuple[float, dict[int, float]]:
    """notified's server: events inserted in one transaction, then one at a time (latency)."""
    from notified.config import NotifiedConfig
    from notified.handlers import HandlerResult, HandlerStatus
    from notified.server import Server

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(NOTIFIED_TABLE)
    arrived: list[float] = []
    lock = threading.Lock()

    def handler(event: dict[str, Any]) -> Any:
        with lock:
            arrived.append(time.perf_counter())
        return HandlerResult(status=HandlerStatus.SUCCESS, payload=event)

    server = Server("events", dsn, conf=NotifiedConfig(channel_select_timeout=1))
    server.register_handler("noop", handler)
    thread = threading.Thread(target=server.listen, daemon=True)
    thread.start()
    with psycopg.connect(dsn, autocommit=True) as conn:
        time.sleep(0.5)  # notified gives no signal that it is listening
        began = time.perf_counter()
        with conn.transaction():
            conn.execute(
                "INSERT INTO events (name) SELECT 'noop' FROM generate_series(1, %s)",
                (NOTIFIED_EVENTS,),
            )
        _wait(lambda: len(arrived) >= NOTIFIED_EVENTS, 120, "notified handlers")
        throughput = rate(NOTIFIED_EVENTS, time.perf_counter() - began)
        arrived.clear()
        samples = _latencies(
            lambda: conn.execute("INSERT INTO events (name) VALUES ('noop')") and None, arrived
        )
    server.shutdown()
    thread.join(10)
    return throughput, percentiles(samples)


def _asyncpg_params(dsn: str) -> dict[str, Any]:
    params = conninfo_to_dict(dsn)
    return {
        "host": params.get("host"),
        "port": int(params.get("port") or 5432),
        "user": params.get("user"),
        "password": params.get("password"),
        "database": params.get("dbname"),
    }


@dataclass(frozen=True)
class PeerRun:
    """What one peer's run measured: its rate, how far it got, and (pgqueuer) idle latency."""

    rate: float
    done: int
    seconds: float
    latency: dict[int, float] | None = None
    note: str = ""

    def describe(self, how: str) -> str:
        """How it was configured, and whether it ran the whole backlog or stopped early."""
        if self.done >= BACKLOG:
            return how
        return (
            f"{how}; stopped after {self.seconds:.0f} s (the suite's budget per peer) with "
            f"{self.done:,} of {BACKLOG:,} jobs run: the rate is over those"
        )


async def _drain(count: Callable[[], int], began: float, alive: Callable[[], bool]) -> PeerRun:
    """Wait until the backlog is run or PEER_BUDGET seconds pass; the rate so far."""
    while count() < BACKLOG and time.perf_counter() - began < PEER_BUDGET and alive():
        await asyncio.sleep(0.001)
    seconds = time.perf_counter() - began
    done = count()
    if done == 0:
        raise RuntimeError(f"no job ran in {seconds:.0f} s")
    return PeerRun(rate(done, seconds), done, seconds)


def _pgqueuer(dsn: str, batch_size: int, max_tasks: int | None, latency: bool) -> PeerRun:
    """pgqueuer with asyncpg (its durable default tables): backlog throughput, and (when
    asked) idle latency."""
    import asyncpg
    from pgqueuer import AsyncpgDriver, PgQueuer, Queries

    kwargs = _asyncpg_params(dsn)

    async def main() -> PeerRun:
        conn = await asyncpg.connect(**kwargs)
        await Queries(AsyncpgDriver(conn)).install()
        arrived: list[float] = []
        pgq = PgQueuer(AsyncpgDriver(conn))

        @pgq.entrypoint("noop")
        async def noop(job: Any) -> None:
            arrived.append(time.perf_counter())

        producer = Queries(AsyncpgDriver(await asyncpg.connect(**kwargs)))
        for _ in range(0, BACKLOG, 1000):
            await producer.enqueue(["noop"] * 1000, [None] * 1000, [0] * 1000)
        began = time.perf_counter()
        runner = asyncio.create_task(pgq.run(batch_size=batch_size, max_concurrent_tasks=max_tasks))
        result = await _drain(lambda: len(arrived), began, lambda: not runner.done())
        if runner.done():
            runner.result()  # raises what stopped it
        if latency:
            await _drain(lambda: len(arrived), time.perf_counter(), lambda: True)  # idle again
            arrived.clear()
            samples = []
            for _ in range(LATENCY_SAMPLES):
                count = len(arrived)
                start = time.perf_counter()
                await producer.enqueue("noop", None)
                while len(arrived) <= count:
                    await asyncio.sleep(0.0002)
                samples.append((arrived[count] - start) * 1000)
                await asyncio.sleep(0.005)
            result = replace(result, latency=percentiles(samples))
        pgq.shutdown.set()
        await asyncio.wait_for(runner, 60)
        return result

    return asyncio.run(main())


PROCRASTINATE_POOL = CONCURRENCY + 2


def _procrastinate(dsn: str) -> PeerRun:
    """procrastinate 3 (psycopg 3 pool): BACKLOG jobs deferred in batches, then one worker
    with ``concurrency=32, wait=False`` (it returns once the queue is empty)."""
    import procrastinate

    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(
            conninfo=dsn, min_size=PROCRASTINATE_POOL, max_size=PROCRASTINATE_POOL
        )
    )
    done = [0]

    @app.task(name="noop")
    async def noop(n: int) -> None:
        done[0] += 1

    async def main() -> PeerRun:
        async with app.open_async():
            await app.schema_manager.apply_schema_async()
            for chunk in range(0, BACKLOG, 1000):
                await noop.batch_defer_async(*({"n": n} for n in range(chunk, chunk + 1000)))
            began = time.perf_counter()
            worker = asyncio.create_task(
                app.run_worker_async(
                    concurrency=CONCURRENCY, wait=False, install_signal_handlers=False
                )
            )
            result = await _drain(lambda: done[0], began, lambda: not worker.done())
            if worker.done():
                worker.result()  # raises what stopped it
            else:
                worker.cancel()  # over budget: stop it (running jobs finish)
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(worker, 60)
        return result

    return asyncio.run(main())


def _oban_requirement() -> str:
    """oban's line of bench/requirements.txt, without its marker (it names the version)."""
    for line in (Path(__file__).parent / "requirements.txt").read_text().splitlines():
        requirement = line.split("#", 1)[0].split(";", 1)[0].strip()
        if re.match(r"oban\b", requirement):
            return requirement
    return "oban"


def _python_312() -> str | None:
    """A Python 3.12+ interpreter that runs: PGTIDE_BENCH_OBAN_PYTHON, else pyenv's, else
    one on PATH (a pyenv shim on PATH may not run: each candidate is tried)."""
    candidates = [os.environ.get("PGTIDE_BENCH_OBAN_PYTHON", "")]
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    release = re.compile(r"3\.(1[2-9])\.\d+$")  # CPython 3.12+ releases only
    versions = sorted(root.glob("3.*"), key=lambda p: [int(x) for x in p.name.split(".")[:2]])
    candidates += [str(v / "bin" / "python3") for v in versions if release.match(v.name)]
    candidates += [shutil.which(f"python3.{minor}") or "" for minor in (12, 13, 14)]
    for candidate in filter(None, candidates):
        check = [candidate, "-c", "import sys; sys.exit(sys.version_info < (3, 12))"]
        try:
            if subprocess.run(check, capture_output=True, timeout=30).returncode == 0:
                return candidate
        except (OSError, subprocess.TimeoutExpired):
            continue
    return None


class NotRun(Exception):
    """A reference that cannot run here; the message says why."""


def _oban_python() -> str:
    """The interpreter of the oban environment (.venv/oban-bench), made on first use."""
    home = Path(__file__).resolve().parent.parent / ".venv" / "oban-bench"
    python = home / "bin" / "python"
    requirement = _oban_requirement()
    if python.exists():
        check = subprocess.run(
            [str(python), "-c", "import oban"], capture_output=True, text=True, check=False
        )
        if check.returncode == 0:
            return str(python)
    base = _python_312()
    if base is None:
        raise NotRun(
            "oban requires Python >= 3.12 (its code uses 3.12 syntax, such as `type Result[T] "
            "= ...` in oban/job.py) and no python3.12+ was found on PATH or in pyenv; set "
            "PGTIDE_BENCH_OBAN_PYTHON to one"
        )
    print(f"  making the oban environment {home} from {base} ...", file=sys.stderr, flush=True)
    for command in (
        [base, "-m", "venv", "--clear", str(home)],
        [str(python), "-m", "pip", "install", "--quiet", requirement],
    ):
        made = subprocess.run(command, capture_output=True, text=True, check=False)
        if made.returncode != 0:
            last = (made.stderr.strip() or made.stdout.strip()).splitlines()[-1:]
            raise NotRun(f"`{' '.join(command)}` failed: {' '.join(last)}")
    return str(python)


def _oban(dsn: str) -> PeerRun:
    """oban in its own environment (bench/_oban_peer.py): the same backlog and budget."""
    python = _oban_python()
    script = Path(__file__).parent / "_oban_peer.py"
    args = [python, str(script), dsn, str(BACKLOG), str(CONCURRENCY), str(PEER_BUDGET)]
    ran = subprocess.run(args, capture_output=True, text=True, timeout=PEER_BUDGET + 300)
    lines = ran.stdout.strip().splitlines()
    if ran.returncode != 0 or not lines:
        last = ran.stderr.strip().splitlines()[-1:] or [f"exit code {ran.returncode}"]
        raise RuntimeError(f"the oban process failed: {last[0]}")
    got = json.loads(lines[-1])
    return PeerRun(float(got["rate"]), int(got["done"]), float(got["seconds"]), note=got["note"])


def _attempt(label: str, dsn: str, measure: Callable[[str], Any]) -> Any:
    """Run one reference in a database of its own; its exception is returned, not raised."""
    with _phase(label), scratch_database(dsn) as db:
        try:
            return measure(db)
        except Exception as exc:  # reported as such, never faked
            print(f"events: {label} did not run: {exc!r}", file=sys.stderr)
            return exc


@contextlib.contextmanager
def _phase(label: str) -> Iterator[None]:
    """Say on stderr what runs, and how long it took (the suite's time, part by part)."""
    print(f"  {label} ...", file=sys.stderr, flush=True)
    began = time.perf_counter()
    try:
        yield
    finally:
        print(f"  {label}: {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)


def _missing(name: str, exc: BaseException) -> Figure:
    """The figure of a reference that did not run: *not run*, with the reason."""
    reason = str(exc) or type(exc).__name__
    note = f"not run: {reason}" if isinstance(exc, NotRun) else f"failed: {reason}"
    return Figure(SUITE, name, 0.0, "events/s", note=note)


def _peers(dsn: str, where: str = "") -> tuple[list[Figure], dict[str, Any]]:
    """The peers' throughput figures (and the references' idle latencies). ``where`` names
    another server (a suffix of each figure's name): there, the peers only, against no
    baseline (notified and the latencies are measured on the main server)."""
    figures: list[Figure] = []
    latencies: dict[str, Any] = {}
    if not where:
        notified = _attempt("notified", dsn, _notified)
        if isinstance(notified, tuple):
            figures.append(Figure(SUITE, NOTIFIED, notified[0], "events/s"))
            latencies["notified"] = notified[1]
        else:
            figures.append(_missing(NOTIFIED, notified))
    runs: list[tuple[str, Callable[[str], PeerRun], str]] = [
        (
            "pgqueuer (asyncpg), max_concurrent_tasks 32, batch 16",
            lambda db: _pgqueuer(db, 16, CONCURRENCY, latency=True),
            "PgQueuer.run(batch_size=16, max_concurrent_tasks=32): its cap on running jobs "
            "(at least twice the batch); durable tables (its default); async entrypoint",
        ),
        (
            "pgqueuer (asyncpg), batch 100, no cap",
            lambda db: _pgqueuer(db, 100, None, latency=False),
            "PgQueuer.run(batch_size=100), no max_concurrent_tasks (its guide: larger batches "
            "for short jobs); durable tables; async entrypoint",
        ),
        (
            "procrastinate, concurrency 32",
            _procrastinate,
            f"App(PsycopgConnector(min_size={PROCRASTINATE_POOL}, max_size="
            f"{PROCRASTINATE_POOL})).run_worker_async(concurrency=32, wait=False), "
            "listen_notify on (its default), async task, jobs deferred with batch_defer_async",
        ),
        ("oban, queue limit 32", _oban, ""),
    ]
    for name, measure, how in runs:
        result = _attempt(name.split(",")[0] + where, dsn, measure)
        if isinstance(result, BaseException):
            figures.append(_missing(name + where, result))
            continue
        if result.latency is not None and not where:
            latencies[name.split(" ")[0]] = result.latency
        note = result.describe(result.note or how)
        baseline = None if where else NOTIFIED
        figures.append(
            Figure(SUITE, name + where, result.rate, "events/s", baseline=baseline, note=note)
        )
    return figures, latencies


SERVICE_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
"""The PostgreSQL service of this machine (and CI's); PGTIDE_BENCH_SERVICE_DSN names
another, or "" for none."""
ON_SERVICE = " (PostgreSQL service)"


def _service(dsn: str) -> str | None:
    """The DSN of the second server the peers are compared on: the machine's PostgreSQL
    service when it answers and is not the server of ``dsn`` (None: not measured)."""
    other = os.environ.get("PGTIDE_BENCH_SERVICE_DSN", SERVICE_DSN)
    if not other:
        return None
    try:
        with psycopg.connect(other, connect_timeout=3) as conn:
            theirs = conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()
        with psycopg.connect(dsn) as conn:
            ours = conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()
    except psycopg.Error as exc:
        print(f"events: no second server to compare on ({exc})", file=sys.stderr)
        return None
    return None if theirs == ours else other


def _on_service(dsn: str) -> list[Figure]:
    """pgtide's concurrency-32 throughput and the peers' on the service, in one run with
    the main server's: the 3x target holds on both servers."""
    with psycopg.connect(dsn) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    best = 0.0
    with _phase(f"pgtide throughput{ON_SERVICE}"), scratch_database(dsn) as db:
        pgtide.install(dsn=db)
        for _ in range(ROUNDS):
            best = max(best, _pgtide_throughput(db, CONCURRENCY))
    peers, _ = _peers(dsn, ON_SERVICE)
    running = [f for f in peers if f.value > 0]
    fastest = max(running, key=lambda f: f.value, default=None)
    mine = Figure(
        SUITE,
        C32 + ON_SERVICE,
        best,
        "events/s",
        baseline=None if fastest is None else fastest.name,
        note=f"PostgreSQL {version} at 127.0.0.1:5432 (its own settings); best of {ROUNDS}; "
        "vs the fastest peer on that server in this run (one run each); target >= 3x",
    )
    return [mine, *peers]


def run(dsn: str) -> list[Figure]:
    """Every figure of the suite, or the parts ``--only`` names: throughput, publish,
    latency (idle), paced, scale, peers (their throughput and idle latencies), service
    (pgtide and the peers again on the machine's PostgreSQL service)."""
    measured: dict[int, float] = {}
    limited = 0.0
    wal_per_event = 0.0
    with scratch_database(dsn) as db:
        pgtide.install(dsn=db)
        if wanted("throughput"):
            with _phase("pgtide throughput (concurrency 1, 8, 32; limits)"):
                measured = {c: _pgtide_throughput(db, c) for c in (1, 8)}
                measured[CONCURRENCY] = 0.0
                for _ in range(ROUNDS):  # in turns, the best of each: the ratio is fair
                    WAL_WRITTEN.clear()
                    measured[CONCURRENCY] = max(
                        measured[CONCURRENCY], _pgtide_throughput(db, CONCURRENCY)
                    )
                    wal_per_event = min(WAL_WRITTEN, default=0.0)
                    limited = max(limited, _pgtide_throughput(db, CONCURRENCY, limits=LIMITS))
        with _phase("pgtide publish and latencies"):
            publish = _pgtide_publish(db) if wanted("publish") else None
            concurrent = _concurrent_publish(db) if wanted("publish") else None
            latency = _pgtide_latency(db) if wanted("latency") else None
            paced = _pgtide_paced(db) if wanted("paced") else None
            bare_paced = _bare_paced(db) if wanted("paced") else None
    scale = None
    if wanted("scale"):
        with _phase("pgtide with 2M finished and 100k unhandled events"):
            scale = _scale(dsn)
    peers, latencies = _peers(dsn) if wanted("peers") else ([], {})
    figures = _throughput_figures(measured, limited, peers)
    if measured:
        figures.append(
            Figure(
                SUITE,
                "pgtide worker WAL written per event, concurrency 32",
                wal_per_event,
                "bytes",
                higher_is_better=False,
                note="claim and outcome of one no-op event (the server's WAL over the run, "
                "last round); see docs/events.md, Performance",
            )
        )
    service = _service(dsn) if wanted("service") else None
    if service is not None:
        figures += _on_service(service)
    if scale is not None:
        empty, loaded, scale_note = scale
        figures += [
            Figure(SUITE, EMPTY, empty, "events/s"),
            Figure(
                SUITE,
                "pgtide worker, concurrency 32, 2M finished + 100k unhandled events",
                loaded,
                "events/s",
                baseline=EMPTY,
                note=scale_note,
            ),
        ]
    if publish is not None:
        single, batch = publish
        figures += [
            Figure(
                SUITE,
                "pgtide publish (single)",
                single,
                "events/s",
                note=f"one event a call; best of {ROUNDS} runs of {SINGLE:,}",
            ),
            Figure(
                SUITE,
                "pgtide publish_many",
                batch,
                "events/s",
                note=f"1,000 events a call; best of {ROUNDS} runs of {BACKLOG:,}, in turns "
                "with the single publishes; target >= 100k/s",
            ),
        ]
    if concurrent is not None:
        alone, waited, bare = concurrent
        bare_name = f"bare psycopg INSERT + NOTIFY, {PUBLISHERS} threads"
        figures += [
            Figure(
                SUITE,
                f"pgtide publish, {PUBLISHERS} threads, no worker waiting",
                alone,
                "events/s",
                baseline=bare_name,
                note="one event a call, each thread on a connection of its own; workers that "
                "are busy (claims coming back full) or absent hold no wake gate: no NOTIFY, "
                "whose database-wide commit lock would queue the publishers' commits",
            ),
            Figure(
                SUITE,
                f"pgtide publish, {PUBLISHERS} threads, a worker waiting",
                waited,
                "events/s",
                baseline=bare_name,
                note="the same while a worker waits (a connection holds its wake gate): "
                "every insert notifies",
            ),
            Figure(
                SUITE,
                bare_name,
                bare,
                "events/s",
                note="the reference: an INSERT and its NOTIFY in one autocommit statement "
                "per event, as a LISTEN/NOTIFY queue publishes; the same threads",
            ),
        ]
    figures += peers
    if paced is not None:
        points, achieved = paced
        for p, target in ((50, 2.0), (99, 5.0)):
            figures.append(
                Figure(
                    SUITE,
                    f"pgtide publish-to-handler p{p}, paced 1,000/s",
                    points[p],
                    "ms",
                    baseline=f"bare psycopg loop publish-to-handler p{p}, paced 1,000/s"
                    if bare_paced is not None
                    else None,
                    higher_is_better=False,
                    note=f"{PACED_EVENTS - PACED_WARMUP:,} samples, worker concurrency 32, "
                    f"from before publish() to the handler's start; published at "
                    f"{achieved:,.0f}/s (one publish() each, with its own commit, from "
                    f"{PUBLISHERS} threads on connections of their own); target <= "
                    f"{target:g} ms",
                )
            )
    if bare_paced is not None:
        points, achieved = bare_paced
        for p in (50, 99):
            figures.append(
                Figure(
                    SUITE,
                    f"bare psycopg loop publish-to-handler p{p}, paced 1,000/s",
                    points[p],
                    "ms",
                    higher_is_better=False,
                    note=f"the reference of the pgtide figure above, in the same run: the same "
                    f"paced publishers (INSERT + NOTIFY, one autocommit statement each; "
                    f"{achieved:,.0f}/s reached), one thread that LISTENs and claims up to "
                    f"{CONCURRENCY} rows with UPDATE ... FOR UPDATE SKIP LOCKED, calls the "
                    "handler inline and marks them done (no leases, retries nor limits)",
                )
            )
    idle = ([("pgtide", latency)] if latency is not None else []) + list(latencies.items())
    for label, points in idle:
        for p in (50, 99):
            figures.append(
                Figure(
                    SUITE,
                    f"{label} publish-to-handler p{p}, idle",
                    points[p],
                    "ms",
                    baseline=f"notified publish-to-handler p{p}, idle"
                    if label != "notified"
                    else None,
                    higher_is_better=False,
                    note="one event at a time, 5 ms apart",
                )
            )
    return figures


def _throughput_figures(
    measured: dict[int, float], limited: float, peers: list[Figure]
) -> list[Figure]:
    """pgtide's worker throughput figures, concurrency 32 against the fastest peer."""
    if not measured:
        return []
    running = [f for f in peers if f.value > 0 and f.name != NOTIFIED]
    fastest = max(running, key=lambda f: f.value, default=None)
    figures = []
    for concurrency, value in measured.items():
        if concurrency == CONCURRENCY and fastest is not None:
            figures.append(
                Figure(
                    SUITE,
                    C32,
                    value,
                    "events/s",
                    baseline=fastest.name,
                    note=f"best of {ROUNDS} (in turns with the limited handler); "
                    "vs the fastest peer of this run (one run each); target >= 3x",
                )
            )
        else:
            figures.append(
                Figure(
                    SUITE,
                    f"pgtide worker, concurrency {concurrency}",
                    value,
                    "events/s",
                    baseline=NOTIFIED,
                )
            )
    figures.append(
        Figure(
            SUITE,
            "pgtide worker, concurrency 32, limits set (not reached)",
            limited,
            "events/s",
            baseline=C32,
            note=f"handler with concurrency={LIMITS['concurrency']:,}, "
            f"rate={LIMITS['rate']!r}; best of {ROUNDS}, in turns with the unlimited "
            "handler (whose figure is also the best of as many); target >= 0.7x",
        )
    )
    return figures
