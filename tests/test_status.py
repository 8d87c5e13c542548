"""``pgtide status``: one screen with every feature's state, once and live (--watch)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from pgtide_testing import CliRunner

import pgtide


def test_status_shows_every_feature(cli: CliRunner, dsn: str, tmp_path: Path) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE readings (value float8)")
    (tmp_path / "a.txt").write_text("1\n2\nnot a number\n")
    pgtide.FileWatcher(tmp_path, table="readings", dsn=dsn, name="status-test").catch_up()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    pgtide.track("orders", dsn=dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO orders VALUES (1), (2)")
    feed = pgtide.Feed("status-indexer", ["orders"], dsn=dsn)
    for batch in feed.batches(timeout=0.2):
        batch.ack()
    feed.close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO orders VALUES (3)")  # not yet read: a lag of one change
    events = pgtide.Events(dsn=dsn)
    events.publish("nobody_handles_this", {"n": 1})
    with pgtide.Listener(dsn=dsn) as listener:
        listener.subscribe("anything", print)
        done = cli("status", "--json", "--dsn", dsn)
    events.close()
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["database"][0]["listener_connections"] == 1  # in this database only
    assert len(status["listeners"]) == 1
    assert status["changes"][0]["rows"] == 3
    (consumer,) = status["consumers"]
    assert consumer["consumer"] == "status-indexer" and consumer["pending_changes"] == 1
    (own,) = [row for row in status["events"] if row["table"] == "pgtide.events"]
    assert own["pending"] == 1 and own["unhandled"] == 1
    (file,) = status["ingested_files"]
    assert file["watcher"] == "status-test" and file["path"].endswith("a.txt")
    assert (file["lines"], file["rows"], file["rejected"]) == (3, 2, 1)
    assert file["offset"] == len("1\n2\nnot a number\n")


def test_status_watch_refreshes_until_ctrl_c(tmp_path: Path, dsn: str) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pgtide",
            "status",
            "--watch",
            "--json",
            *("--interval", "0.1"),
            "--dsn",
            dsn,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        second = json.loads(proc.stdout.readline())  # a refresh: one document each
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "database" in first and "database" in second


def test_status_watch_on_a_terminal_stops_cleanly_on_ctrl_c(tmp_path: Path, dsn: str) -> None:
    env = {**os.environ, "COLUMNS": "100"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgtide", "status", "--watch", "--interval", "0.1", "--dsn", dsn],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    try:
        deadline = time.monotonic() + 20
        while not _connected(dsn) and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err  # output may be empty if Ctrl-C came before the first screen


def _connected(dsn: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        ).fetchone()
    return bool(row and row[0])
