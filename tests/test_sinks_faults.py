"""The sinks' promise under faults: 50,000 changes from 4 writers, the sink SIGKILLed three
times and the broker restarted once: each change is in the stream exactly once, in order
per table and writer. And ``pgtide sink`` as a command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pgtide_testing import Killable
from sink_servers import (
    MACHINE_REDIS,
    Broker,
    jetstream_messages,
    redis_entries,
    run_sink,
    wait_for,
)

import pgtide

WRITERS = 4
PER_TX = 5
TOTAL = 50_000
TABLES = ["public.left_side", "public.right_side"]


def _write(dsn: str, writer: int, stop: threading.Event) -> None:
    table = TABLES[writer % 2]
    with psycopg.connect(dsn, autocommit=True) as conn:
        for tx in range(TOTAL // WRITERS // PER_TX):
            if stop.is_set():
                return
            with conn.transaction():
                rows = [(writer, tx * PER_TX + i) for i in range(PER_TX)]
                conn.cursor().executemany(
                    f"INSERT INTO {table} (writer, seq) VALUES (%s, %s)", rows
                )


def _counts(kind: str, url: str, name: str) -> int:
    if kind == "redis":
        import redis

        client = redis.Redis.from_url(url)
        try:
            return sum(int(client.xlen(f"{name}:{t}")) for t in TABLES)
        except redis.RedisError:  # restarting, or loading its data
            return 0
        finally:
            client.close()
    import asyncio

    import nats

    async def count() -> int:
        nc = await nats.connect(url)
        try:
            return int((await nc.jetstream().stream_info(name)).state.messages)
        except Exception:
            return 0
        finally:
            await nc.close()

    try:
        return asyncio.run(count())
    except Exception:
        return 0


def _held(kind: str, url: str, name: str) -> dict[str, list[dict[str, Any]]]:
    """Each table's changes, in the order the broker holds them."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    if kind == "redis":
        for table in TABLES:
            out[table] = [c for _, c in redis_entries(url, f"{name}:{table}")]
    else:
        for subject, msg_id, change in jetstream_messages(url, name):
            assert msg_id == change["key"] and subject == f"{name}.{change['table']}"
            out[change["table"]].append(change)
    return out


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "kind",
    ["nats", "redis"],
)
def test_exactly_once_across_kills_and_a_broker_restart(
    dsn: str, kind: str, killable: Killable, request: pytest.FixtureRequest
) -> None:
    broker: Broker = request.getfixturevalue(f"{kind}_server")
    name = f"S{kind}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in TABLES:
            conn.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, writer int, seq int)")
    for table in TABLES:
        pgtide.track(table, dsn=dsn)
    stop = threading.Event()
    writers = [threading.Thread(target=_write, args=(dsn, w, stop)) for w in range(WRITERS)]
    args = (dsn, "faults", TABLES, kind, broker.url, name)
    sink = killable.start(run_sink, *args)
    for w in writers:
        w.start()
    try:
        for n, threshold in enumerate((4_000, 12_000, 20_000, 28_000)):
            wait_for(lambda t=threshold: _counts(kind, broker.url, name) >= t, 120, f"{threshold}")
            if n == 2:
                broker.restart()  # the running sink waits, then goes on
                continue
            killable.kill(sink)
            sink = killable.start(run_sink, *args)
        for w in writers:
            w.join(180)
        wait_for(lambda: _counts(kind, broker.url, name) >= TOTAL, 180, "every change")
    finally:
        stop.set()
    held = _held(kind, broker.url, name)
    keys = [c["key"] for changes in held.values() for c in changes]
    assert len(keys) == len(set(keys)) == TOTAL  # each change exactly once
    for table, changes in held.items():
        last: dict[int, int] = {}
        for change in changes:
            row = change["row"]
            assert change["table"] == table and row["writer"] % 2 == TABLES.index(table)
            assert row["seq"] == last.get(row["writer"], -1) + 1, "out of order or a gap"
            last[row["writer"]] = row["seq"]
        assert sum(last.values()) + len(last) == TOTAL // 2


def test_cli_sink_json_status_and_sigterm(dsn: str, unique: str, tmp_path: Path) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id bigint PRIMARY KEY)")
        pgtide.track("items", dsn=dsn)
        conn.execute("INSERT INTO items SELECT generate_series(1, 40)")
    command = [sys.executable, "-m", "pgtide", "sink", "redis", MACHINE_REDIS]
    command += ["--consumer", "cli-sink", "--table", "items", "--from", "beginning"]
    command += ["--stream", f"{unique}:{{table}}", "--every", "0.2", "--dsn", dsn]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(redis_entries(MACHINE_REDIS, f"{unique}:public.items")) == 40)
        assert process.stdout is not None
        first = json.loads(process.stdout.readline())
        assert {"sink", "consumer", "delivered", "changes_per_s", "lag_changes"} <= set(first)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    last = json.loads(out.strip().splitlines()[-1])
    assert last["stopped"] is True and last["delivered"] == 40 and last["lag_changes"] == 0
    status = subprocess.run(
        [sys.executable, "-m", "pgtide", "status", "--json", "--dsn", dsn],
        capture_output=True,
        text=True,
        env={**os.environ},
        timeout=60,
    )
    assert "cli-sink" in status.stdout


def test_cli_sink_bad_input_is_one_line(dsn: str) -> None:
    for args in (["nats", "http://nope", "-c", "x"], ["redis", "redis://127.0.0.1:1", "-c", "x"]):
        run = subprocess.run(
            [sys.executable, "-m", "pgtide", "sink", *args, "--dsn", dsn],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 1
        assert run.stderr.startswith("pgtide: error:") and run.stderr.count("\n") == 1
