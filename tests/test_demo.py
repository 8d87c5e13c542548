"""``pgtide demo``: the tour runs every feature, checks it out, cleans up, and fits 80 columns."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from pgtide_testing import CliRunner
from web_helpers import live_client

from pgtide.cli.demo._tour import PARTS

FEATURES = ["listen", "follow", "events", "ingest"]
LEFTOVERS = {
    "tables": "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'pgtide\\_demo\\_%'",
    "offsets": "SELECT count(*) FROM pgtide.file_offsets WHERE watcher LIKE 'pgtide-demo-%'",
    "rejects": "SELECT count(*) FROM pgtide.rejects WHERE watcher LIKE 'pgtide-demo-%'",
    "events": "SELECT count(*) FROM pgtide.events WHERE name LIKE 'demo-%'",
    "changes": "SELECT count(*) FROM pgtide.changes WHERE table_name LIKE '%pgtide_demo_%'",
    "consumers": "SELECT count(*) FROM pgtide.consumers WHERE name LIKE 'pgtide-demo-%'",
    "tracked": "SELECT count(*) FROM pgtide.tracked WHERE table_name LIKE '%pgtide_demo_%'",
    "workers": "SELECT count(*) FROM pgtide.event_workers"
    " WHERE EXISTS (SELECT 1 FROM unnest(names) AS n WHERE n LIKE 'demo-%')",
}
NOTHING_LEFT = dict.fromkeys(LEFTOVERS, 0)


def _leftovers(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return {name: conn.execute(q).fetchone()[0] for name, q in LEFTOVERS.items()}  # type: ignore[index]


def test_demo_json_shows_every_feature_at_work(cli: CliRunner, dsn: str) -> None:
    done = cli("demo", "--dsn", dsn, "--seconds", "3", "--json", timeout=90)
    assert done.returncode == 0, done.stderr
    summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["ok"] is True and summary["settled"] is True and summary["cleaned_up"]
    assert summary["orders"] >= 40  # 20 orders a second for 3 s, give or take the start
    features = summary["features"]
    assert list(features) == FEATURES and all(f["ok"] for f in features.values())
    assert [p.feature for p in PARTS] == FEATURES
    ingest = features["ingest"]
    assert ingest["rows_landed"] > 0 and ingest["rejected"] == 1
    assert ingest["rows_landed"] + ingest["rejected"] == ingest["lines_written"]
    assert features["listen"]["received"] == features["listen"]["sent"] == summary["orders"]
    follow = features["follow"]
    assert follow["changes"] == follow["inserts"] == summary["orders"]
    assert follow["latest_order"] == summary["orders"] and follow["lag_p50_ms"] > 0
    events = features["events"]
    assert events["done"] == events["published"] == 2 * summary["orders"]
    assert events["failed_attempts"] >= 1
    assert events["retried_then_done"] == events["failed_attempts"]
    assert _leftovers(dsn) == NOTHING_LEFT


def test_demo_keep_leaves_its_data_for_the_web_console(cli: CliRunner, dsn: str) -> None:
    done = cli("demo", "--dsn", dsn, "--seconds", "2", "--json", "--keep", timeout=90)
    assert done.returncode == 0, done.stderr
    summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["ok"] is True and summary["kept"] is True and not summary["cleaned_up"]
    left = _leftovers(dsn)
    assert left["tables"] == 2  # the orders, and the table the instrument's file lands in
    assert left["tracked"] == left["consumers"] == left["offsets"] == 1
    assert left["rejects"] == 1 and left["events"] == 2 * summary["orders"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        consumer = conn.execute(
            "SELECT name FROM pgtide.consumers WHERE name LIKE 'pgtide-demo-%'"
        ).fetchone()[0]  # type: ignore[index]
        path = conn.execute("SELECT path FROM pgtide.file_offsets").fetchone()[0]  # type: ignore[index]
    shutil.rmtree(Path(path).parent)  # the demo's folder, left with the rest

    async def pages() -> dict[str, str]:  # what `pgtide web` shows of it
        async with live_client(dsn) as http:
            return {p: (await http.get(p)).text for p in ("/", "/feed", "/events", "/ingest")}

    shown = asyncio.run(pages())
    assert f'data-testid="pending-{consumer}">0<' in shown["/feed"]
    assert f'data-testid="events-done">{2 * summary["orders"]}<' in shown["/"]
    assert "demo-" in shown["/events"]
    assert Path(path).name in shown["/ingest"]


def test_demo_on_a_terminal_fits_80_columns(tmp_path: Path, dsn: str) -> None:
    env = {**os.environ, "COLUMNS": "80", "TERM": "xterm", "PGTIDE_DSN": dsn}
    done = subprocess.run(
        [sys.executable, "-m", "pgtide", "demo", "--seconds", "2"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, "\n".join(lines)
    text = done.stdout
    assert "pgtide demo: summary" in text and "every feature checked out" in text
    for feature in FEATURES:
        assert f"\n  {feature} " in text or f"\n {feature} " in text, feature


def test_demo_interrupted_removes_what_it_created(tmp_path: Path, dsn: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgtide", "demo", "--seconds", "60", "--json", "--dsn", dsn],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not _busy(dsn):
            time.sleep(0.05)
        assert _busy(dsn), "the demo did not start writing"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert _leftovers(dsn) == NOTHING_LEFT


def _busy(dsn: str) -> bool:
    """The shop has written orders, the feed has changes, and the file has landed rows."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM pgtide.changes)"
            " + (SELECT count(*) FROM pgtide.file_offsets)"
            " + (SELECT count(*) FROM pgtide.events)"
        ).fetchone()
    return bool(row and row[0] >= 3)
