"""pgtide web: feed changes relayed to browsers, NOTIFY to a browser stream, /metrics.

One ``pgtide web`` process (the real command, in a subprocess) serves a scratch database:

- Relay: 100,000 changes of an exposed table (100 transactions of 1,000 rows) are in the
  change log; 10 SSE clients connect at once to ``/sse/feed/{consumer}?start=beginning``
  (10 consumers) and read until each has every change. Figure: changes per second each
  client receives (target >= 20,000/s), and the sum over the 10 clients.
- NOTIFY latency: one client on ``/sse/channels/bench``; 1,000 NOTIFY at ~500/s from
  another connection, each carrying the sender's CLOCK_MONOTONIC just before it is sent
  (autocommit: the NOTIFY goes out at once); each sample is the time until the client has
  parsed that event. Target: p99 <= 20 ms.
- /metrics with 100 consumers and 1,000,000 events: the time of one scrape (the figures
  come from the console's sample; the sample's own duration is reported beside it).

Clients are plain asyncio sockets counting events, so the client side costs little.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psycopg

import pgtide

from ._harness import Figure, percentiles, scratch_database, wait_until

SUITE = "web"
CHANGES = 100_000
CLIENTS = 10
NOTIFIES = 1000
EVENTS = 1_000_000
CONSUMERS = 100
MARK = b"event: change\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _web(dsn: str, *args: str) -> Iterator[int]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgtide", "web", "--port", str(port), "--dsn", dsn, *args],
        stderr=subprocess.DEVNULL,
    )
    try:

        def up() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                    s.sendall(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                    return b" 200 " in s.recv(100)
            except OSError:
                return False

        assert wait_until(up, 30, 0.05), "pgtide web did not start"
        yield port
    finally:
        proc.terminate()
        proc.wait(15)


async def _open(port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n"
    writer.write(request.encode() + b"\r\n")
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n", 1)[0], head
    return reader, writer


async def _count(port: int, path: str, want: int) -> float:
    """Read ``path`` until ``want`` change events arrived; the time it took."""
    began = time.perf_counter()
    reader, writer = await _open(port, path)
    seen, tail = 0, b""
    while seen < want:
        data = await reader.read(1 << 20)
        assert data, "the stream ended"
        chunk = tail + data
        seen += chunk.count(MARK)
        tail = chunk[-(len(MARK) - 1) :]
    writer.close()
    return time.perf_counter() - began


def _relay(db: str) -> list[Figure]:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE bench_orders (id int PRIMARY KEY, total numeric, note text)")
    pgtide.track("bench_orders", dsn=db)
    with psycopg.connect(db) as conn:
        for t in range(CHANGES // 1000):
            conn.execute(
                "INSERT INTO bench_orders SELECT g, g * 1.25, 'order ' || g"
                " FROM generate_series(%s::int, %s::int) g",
                (t * 1000, t * 1000 + 999),
            )
            conn.commit()
    with _web(db, "--expose", "bench_orders") as port:

        async def clients() -> list[float]:
            return await asyncio.gather(
                *(
                    _count(port, f"/sse/feed/reader-{i}?start=beginning", CHANGES)
                    for i in range(CLIENTS)
                )
            )

        began = time.perf_counter()
        times = asyncio.run(clients())
        wall = time.perf_counter() - began
    each = CHANGES / max(times)
    return [
        Figure(
            SUITE,
            f"pgtide web: feed changes/s to each of {CLIENTS} SSE clients",
            each,
            "changes/s",
            note=f"target >= 20,000/s; {CHANGES:,} changes, slowest client {max(times):.2f} s",
        ),
        Figure(
            SUITE,
            f"pgtide web: SSE change events/s, sum over {CLIENTS} clients",
            CLIENTS * CHANGES / wall,
            "events/s",
        ),
    ]


def _notify_latency(db: str) -> list[Figure]:
    with _web(db) as port:

        async def measure() -> list[float]:
            reader, writer = await _open(port, "/sse/channels/bench")
            await reader.readuntil(b": listening\n\n")
            samples: list[float] = []
            done = asyncio.Event()

            async def read() -> None:
                buffer = b""
                while len(samples) < NOTIFIES:
                    buffer += await reader.read(65536)
                    while b"\n\n" in buffer:
                        block, buffer = buffer.split(b"\n\n", 1)
                        for line in block.split(b"\n"):
                            if line.startswith(b"data: "):
                                samples.append(time.monotonic() - float(line[6:]))
                done.set()

            task = asyncio.create_task(read())
            conn = await psycopg.AsyncConnection.connect(db, autocommit=True)
            for _ in range(NOTIFIES):
                await conn.execute("SELECT pg_notify('bench', %s)", (repr(time.monotonic()),))
                await asyncio.sleep(0.002)
            async with asyncio.timeout(30):
                await done.wait()
            await task
            await conn.close()
            writer.close()
            return samples

        samples = asyncio.run(measure())
    cuts = percentiles(samples, (50, 99))
    return [
        Figure(
            SUITE,
            "pgtide web: NOTIFY to browser stream p50",
            cuts[50] * 1000,
            "ms",
            higher_is_better=False,
        ),
        Figure(
            SUITE,
            "pgtide web: NOTIFY to browser stream p99",
            cuts[99] * 1000,
            "ms",
            higher_is_better=False,
            note=f"target <= 20 ms; {NOTIFIES} notifications at ~500/s",
        ),
    ]


def _metrics(db: str) -> list[Figure]:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO pgtide.events (name, payload, state, attempts, started_at, finished_at)"
            " SELECT 'job_' || (g %% 20), jsonb_build_object('n', g),"
            " (ARRAY['done','done','done','done','dead','pending'])[1 + g %% 6], 1,"
            " now() - interval '1 s', now() FROM generate_series(1, %s) g",
            (EVENTS,),
        )
        conn.execute("ANALYZE pgtide.events")
    for i in range(CONSUMERS):
        feed = pgtide.Feed(f"consumer-{i}", ["bench_orders"], dsn=db)
        feed.seek("end" if i % 2 else "beginning")
        feed.close()
    with _web(db) as port:
        scrapes: list[float] = []
        sample = 0.0
        for _ in range(200):
            began = time.perf_counter()
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                body = b""
                while chunk := s.recv(1 << 16):
                    body += chunk
            scrapes.append(time.perf_counter() - began)
            assert b"pgtide_feed_consumer_pending_changes" in body
            for line in body.split(b"\n"):
                if line.startswith(b"pgtide_web_sample_duration_seconds "):
                    sample = float(line.split()[1])
        consumers = body.count(b"pgtide_feed_consumer_lag_seconds{")
    cuts = percentiles(scrapes, (50, 99))
    return [
        Figure(
            SUITE,
            f"pgtide web: /metrics p99, {CONSUMERS} consumers, {EVENTS // 1_000_000}M events",
            cuts[99] * 1000,
            "ms",
            higher_is_better=False,
            note=f"target <= 50 ms; p50 {cuts[50] * 1000:.1f} ms; {consumers} consumers listed; "
            f"served from the sample (the sample itself took {sample * 1000:.0f} ms, off the "
            "request path)",
        )
    ]


def run(dsn: str) -> list[Figure]:
    figures: list[Figure] = []
    with scratch_database(dsn, "pgtide_bench_web") as db:
        pgtide.install(dsn=db)
        figures += _relay(db)
        figures += _notify_latency(db)
        figures += _metrics(db)
    return figures


def main(argv: Any = None) -> None:
    from pgtide.connect import resolve

    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    for figure in run(resolve().dsn):
        print(f"{figure.name}: {figure.value:,.1f} {figure.unit} {figure.note}")


if __name__ == "__main__":
    main()
