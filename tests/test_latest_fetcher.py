"""LatestFetcher: the newest row of a tracked table after each change, bursts coalesced."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import pgtide


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def readings(dsn: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE readings (id serial PRIMARY KEY, value numeric)")
        conn.execute("INSERT INTO readings (value) VALUES (1)")  # before tracking: unseen
    pgtide.track("readings", dsn=dsn)
    return "readings"


def test_process_gets_each_newest_row(dsn: str, readings: str) -> None:
    rows: list[Any] = []
    fetcher = pgtide.LatestFetcher(readings, rows.append, dsn=dsn, poll_interval=30)
    with fetcher, psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO readings (value) VALUES (2)")
        wait_for(lambda: len(rows) == 1)
        conn.execute("INSERT INTO readings (value) VALUES (3)")
        wait_for(lambda: len(rows) == 2)  # woken by NOTIFY, not by the 30 s poll
        conn.execute("TRUNCATE readings")
        wait_for(lambda: len(rows) == 3)
    assert [r and r["id"] for r in rows] == [2, 3, None]


def test_a_burst_makes_few_calls_and_ends_on_the_last_row(dsn: str, readings: str) -> None:
    seen: list[int] = []
    gate = threading.Event()

    class Slow(pgtide.LatestFetcher):
        def process(self, row: dict[str, Any] | None) -> None:
            gate.wait(10)  # a slow consumer while the burst commits
            assert row is not None
            seen.append(row["id"])

    fetcher = Slow(readings, dsn=dsn, poll_interval=30)
    fetcher.start()
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO readings (value) VALUES (0)")
            for i in range(50):
                conn.execute("INSERT INTO readings (value) VALUES (%s)", (i,))
        gate.set()
        wait_for(lambda: bool(seen) and seen[-1] == 52)
    finally:
        fetcher.stop()
    assert len(seen) <= 3 and seen == sorted(seen)


def test_a_raising_process_does_not_stop_it(dsn: str, readings: str) -> None:
    calls: list[int] = []

    def flaky(row: dict[str, Any] | None) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("boom")

    with (
        pgtide.LatestFetcher(readings, flaky, dsn=dsn),
        psycopg.connect(dsn, autocommit=True) as conn,
    ):
        conn.execute("INSERT INTO readings (value) VALUES (2)")
        wait_for(lambda: len(calls) == 1)
        conn.execute("INSERT INTO readings (value) VALUES (3)")
        wait_for(lambda: len(calls) == 2)


def test_untracked_table_is_a_clear_error(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE plain (id int)")
    with pytest.raises(pgtide.UnknownTable, match="not tracked"):
        pgtide.LatestFetcher("plain", print, dsn=dsn).run()
    with pytest.raises(pgtide.ConfigError, match="needs process="):
        pgtide.LatestFetcher("plain", dsn=dsn).process({})
