"""Sinks: changes per second into NATS JetStream and Redis Streams, beside the bare clients.

Runs in a scratch database, against the brokers on this machine (``PGTIDE_BENCH_NATS``,
default nats://127.0.0.1:4222; ``PGTIDE_BENCH_REDIS``, default redis://127.0.0.1:6379),
with stream names of its own that it deletes afterwards. Parts: ``nats`` and ``redis``
(``python -m bench sinks --only redis``). Figures, for N changes:
- the whole path: ``Feed.run(sink)`` from the change log to the broker, acks included;
- the sink alone: the same batches, already read, through the sink;
- the bare client: the same message bodies, published by the best plain loop of each
  client: nats-py ``publish_async`` with ``Nats-Msg-Id`` and a large pending window
  (``WINDOW``), then every acknowledgement awaited; redis-py ``XADD`` with explicit ids in
  non-transactional pipelines of 1,000 (a feed batch).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from typing import Any

import psycopg

import pgtide
from pgtide import sinks

from ._harness import Figure, rate, scratch_database, wanted

SUITE = "sinks"
N = 100_000
NATS_URL = os.environ.get("PGTIDE_BENCH_NATS", "nats://127.0.0.1:4222")
REDIS_URL = os.environ.get("PGTIDE_BENCH_REDIS", "redis://127.0.0.1:6379")
WINDOW = 20_000
"""Publishes in flight in the bare nats-py loop: 5x nats-py's default; a window as large as
the run is no faster, and on a busy machine the server cuts a client that reads no
acknowledgement for that long."""


def _prepare(dsn: str) -> None:
    pgtide.install(dsn=dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, customer text, total numeric, "
            "at timestamptz DEFAULT now())"
        )
        pgtide.track("orders", dsn=dsn)
        for start in range(0, N, 1000):
            conn.execute(
                "INSERT INTO orders (id, customer, total) SELECT i, 'customer ' || i %% 977, "
                "(i %% 10000) / 100.0 FROM generate_series(%s::bigint, %s::bigint - 1) i",
                (start, start + 1000),
            )
    _read(dsn)  # every figure then reads rows read before (their hint bits set)


def _read(dsn: str) -> list[pgtide.Batch]:
    """The changes as batches of 1000, read once for the bare client and the sink alone
    (after the whole path was timed: the harness's own 100,000 changes, alive meanwhile,
    would make the feed's garbage collections walk them too)."""
    return list(pgtide.Feed("bench-read", dsn=dsn).batches(start="beginning", stop="end"))


def _timed_feed(dsn: str, consumer: str, sink: sinks.Sink) -> float:
    feed = pgtide.Feed(consumer, ["orders"], dsn=dsn)
    began = time.perf_counter()
    feed.run(sink, start="beginning", stop="end")
    return time.perf_counter() - began


def _timed_batches(batches: list[pgtide.Batch], sink: sinks.Sink) -> float:
    began = time.perf_counter()
    for batch in batches:
        sink(batch)
    return time.perf_counter() - began


async def _nats_bare(messages: list[sinks.Message], stream: str) -> float:
    import nats

    nc = await nats.connect(NATS_URL, skip_subject_validation=True)
    try:
        js = nc.jetstream(publish_async_max_pending=WINDOW)
        began = time.perf_counter()
        futures = [
            await js.publish_async(m.dest, m.body, headers={"Nats-Msg-Id": m.key}) for m in messages
        ]
        await asyncio.wait_for(asyncio.gather(*futures), 120)
        return time.perf_counter() - began
    finally:
        await nc.close()


async def _nats_admin(stream: str, subjects: list[str] | None) -> None:
    import nats

    nc = await nats.connect(NATS_URL)
    try:
        js = nc.jetstream()
        with contextlib.suppress(Exception):
            await js.delete_stream(stream)
        if subjects:
            await js.add_stream(name=stream, subjects=subjects)
    finally:
        await nc.close()


def _nats(dsn: str) -> list[Figure]:
    tag = uuid.uuid4().hex[:8]
    figures: list[Figure] = []
    base = "raw nats-py JetStream publish_async loop"
    runs: dict[str, float] = {}
    batches: list[pgtide.Batch] = []
    for what in ("feed", "raw", "sink"):
        stream = f"BENCH{tag}{what}"
        subject = f"bench{tag}{what}.{{table}}.{{op}}"
        asyncio.run(_nats_admin(stream, [f"bench{tag}{what}.>"]))
        sink = sinks.nats(NATS_URL, subject=subject, stream=stream)
        try:
            if what == "raw":
                batches = _read(dsn)
                messages = [m for b in batches for m in sink.messages(b)]
                runs[what] = asyncio.run(_nats_bare(messages, stream))
                del messages
            elif what == "feed":
                runs[what] = _timed_feed(dsn, f"bench-nats-{tag}", sink)
            else:
                runs[what] = _timed_batches(batches, sink)
        finally:
            sink.close()
            asyncio.run(_nats_admin(stream, None))
    figures.append(Figure(SUITE, base, rate(N, runs["raw"]), "changes/s"))
    figures.append(
        Figure(
            SUITE,
            "JetStream: pgtide Feed.run(sinks.nats)",
            rate(N, runs["feed"]),
            "changes/s",
            base,
            note="read from PostgreSQL, publish, acks, feed ack",
        )
    )
    figures.append(
        Figure(
            SUITE,
            "JetStream: pgtide sink alone (batches already read)",
            rate(N, runs["sink"]),
            "changes/s",
            base,
        )
    )
    return figures


def _redis_bare(messages: list[sinks.Message], stream: str) -> float:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        began = time.perf_counter()
        for at in range(0, len(messages), 1000):
            pipe = client.pipeline(transaction=False)
            for seq, m in enumerate(messages[at : at + 1000], at + 1):
                pipe.xadd(stream, {"change": m.body}, id=f"1-{seq}")
            pipe.execute()
        return time.perf_counter() - began
    finally:
        client.delete(stream)
        client.close()


def _redis(dsn: str) -> list[Figure]:
    import redis

    tag = uuid.uuid4().hex[:8]
    base = "raw redis-py pipelined XADD loop"
    runs: dict[str, float] = {}
    batches: list[pgtide.Batch] = []
    for what in ("feed", "raw", "sink"):
        prefix = f"bench:{tag}:{what}"
        sink = sinks.redis(REDIS_URL, stream=prefix + ":{table}", state_key=prefix + ":state")
        try:
            if what == "raw":
                batches = _read(dsn)
                messages = [m for b in batches for m in sink.messages(b)]
                runs[what] = _redis_bare(messages, prefix + ":public.orders")
                del messages
            elif what == "feed":
                runs[what] = _timed_feed(dsn, f"bench-redis-{tag}", sink)
            else:
                runs[what] = _timed_batches(batches, sink)
        finally:
            sink.close()
            client = redis.Redis.from_url(REDIS_URL)
            client.delete(prefix + ":public.orders", prefix + ":state")
            client.close()
    return [
        Figure(SUITE, base, rate(N, runs["raw"]), "changes/s"),
        Figure(
            SUITE,
            "Redis: pgtide Feed.run(sinks.redis)",
            rate(N, runs["feed"]),
            "changes/s",
            base,
            note="read from PostgreSQL, XADD script, feed ack",
        ),
        Figure(
            SUITE,
            "Redis: pgtide sink alone (batches already read)",
            rate(N, runs["sink"]),
            "changes/s",
            base,
        ),
    ]


def run(dsn: str) -> list[Figure]:
    """Both parts (``--only nats`` or ``--only redis``: one)."""
    with scratch_database(dsn, "pgtide_bench_sinks") as db:
        _prepare(db)
        return (_nats(db) if wanted("nats") else []) + (_redis(db) if wanted("redis") else [])


def main(argv: Any = None) -> None:
    from pgtide.connect import resolve

    for figure in run(resolve().dsn):
        print(f"{figure.name}: {figure.value:,.0f} {figure.unit} {figure.note}")


if __name__ == "__main__":
    main()
