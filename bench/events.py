"""Events: throughput with a no-op handler and publish-to-handler latency, beside references.

pgtide runs one worker (in this process) at concurrency 1, 8 and 32 over a backlog published
in one batch; publishing is measured single (one statement per event) and batched. The
references are notified (seed 003: one thread per event, trigger-fed table) and pgqueuer
(asyncpg), each on the same server, in a database of their own, when they are installed.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

import pgtide

from ._harness import Figure, percentiles, rate, scratch_database, wait_until

SUITE = "events"
BACKLOG = 20_000
SINGLE = 2_000
LATENCY_SAMPLES = 200
NOTIFIED_EVENTS = 2_000


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    if not wait_until(condition, timeout):
        raise TimeoutError(f"{what} did not happen within {timeout} s")


def _pgtide_throughput(dsn: str, concurrency: int) -> float:
    events = pgtide.Events(dsn=dsn, batch_size=500)
    seen = [0]
    events.register("noop", lambda e: seen.__setitem__(0, seen[0] + 1))
    events.publish_many("noop", [{"n": n} for n in range(BACKLOG)])
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE pgtide.events")
    began = time.perf_counter()
    events.start(concurrency)
    _wait(lambda: seen[0] >= BACKLOG, 120, "handlers")
    events.stop()  # flushes the last outcomes: every event is recorded done
    elapsed = time.perf_counter() - began
    assert events.status()["done"] >= BACKLOG
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE pgtide.events")
    events.close()
    return rate(BACKLOG, elapsed)


def _pgtide_publish(dsn: str) -> tuple[float, float]:
    events = pgtide.Events(dsn=dsn)
    events.publish("warm", None)
    began = time.perf_counter()
    for n in range(SINGLE):
        events.publish("single", {"n": n})
    single = rate(SINGLE, time.perf_counter() - began)
    payloads = [{"n": n} for n in range(BACKLOG)]
    began = time.perf_counter()
    for chunk in range(0, BACKLOG, 1000):
        events.publish_many("batch", payloads[chunk : chunk + 1000])
    batch = rate(BACKLOG, time.perf_counter() - began)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE pgtide.events")
    events.close()
    return single, batch


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


def _pgqueuer(dsn: str) -> tuple[float, dict[int, float]]:
    """pgqueuer with asyncpg: backlog throughput, and idle latency."""
    import asyncpg
    from pgqueuer import AsyncpgDriver, PgQueuer, Queries

    params = conninfo_to_dict(dsn)
    kwargs = {
        "host": params.get("host"),
        "port": int(params.get("port") or 5432),
        "user": params.get("user"),
        "password": params.get("password"),
        "database": params.get("dbname"),
    }

    async def main() -> tuple[float, dict[int, float]]:
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
        runner = asyncio.create_task(pgq.run(batch_size=100))
        while len(arrived) < BACKLOG:
            await asyncio.sleep(0.001)
        throughput = rate(BACKLOG, time.perf_counter() - began)
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
        pgq.shutdown.set()
        await asyncio.wait_for(runner, 30)
        return throughput, percentiles(samples)

    return asyncio.run(main())


def run(dsn: str) -> list[Figure]:
    figures: list[Figure] = []
    with scratch_database(dsn) as db:
        pgtide.install(db)
        for concurrency in (1, 8, 32):
            figures.append(
                Figure(
                    SUITE,
                    f"pgtide worker, concurrency {concurrency}",
                    _pgtide_throughput(db, concurrency),
                    "events/s",
                    baseline="notified server",
                )
            )
        single, batch = _pgtide_publish(db)
        figures.append(Figure(SUITE, "pgtide publish (single)", single, "events/s"))
        figures.append(Figure(SUITE, "pgtide publish_many", batch, "events/s"))
        latency = _pgtide_latency(db)
    references: dict[str, Any] = {}
    for label, measure in (("notified", _notified), ("pgqueuer", _pgqueuer)):
        with scratch_database(dsn) as db:
            try:
                references[label] = measure(db)
            except Exception as exc:  # reported as such, never faked
                print(f"events: {label} failed: {exc!r}", file=sys.stderr)
                references[label] = exc
    notified = references["notified"]
    if isinstance(notified, tuple):
        figures.append(Figure(SUITE, "notified server", notified[0], "events/s"))
    else:
        figures.append(
            Figure(SUITE, "notified server", 0.0, "events/s", note=f"failed: {notified}")
        )
    pgq = references["pgqueuer"]
    if isinstance(pgq, tuple):
        figures.append(
            Figure(
                SUITE,
                "pgqueuer (asyncpg), batch 100",
                pgq[0],
                "events/s",
                baseline="notified server",
            )
        )
    else:
        figures.append(Figure(SUITE, "pgqueuer (asyncpg)", 0.0, "events/s", note=f"failed: {pgq}"))
    for label, result in (("pgtide", latency), ("notified", notified), ("pgqueuer", pgq)):
        points = (
            result
            if isinstance(result, dict)
            else (result[1] if isinstance(result, tuple) else None)
        )
        if points is None:
            continue
        for p in (50, 99):
            figures.append(
                Figure(
                    SUITE,
                    f"{label} publish-to-handler p{p}",
                    points[p],
                    "ms",
                    baseline=f"notified publish-to-handler p{p}" if label != "notified" else None,
                    higher_is_better=False,
                )
            )
    return figures
