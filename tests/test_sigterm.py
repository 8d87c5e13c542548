"""Every long-running command stops gracefully on SIGTERM, as on Ctrl-C: exit 0, work kept."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

SIGNALS = [signal.SIGTERM, signal.SIGINT]


@contextmanager
def running(*args: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgtide", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def stop(proc: subprocess.Popen[str], sig: signal.Signals) -> tuple[str, str]:
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    return out, err


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_follow_acknowledges_what_it_printed(dsn: str, sig: signal.Signals) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    subprocess.run([sys.executable, "-m", "pgtide", "track", "orders", "--dsn", dsn], check=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO orders VALUES (1)")
    with running("follow", "-c", "svc", "--dsn", dsn) as proc:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline())["row"] == {"id": 1}
        stop(proc, sig)
    with running("follow", "-c", "svc", "--timeout", "0.3", "--dsn", dsn) as again:
        out, _ = again.communicate(timeout=30)
    assert out == ""  # the change printed before the signal was acknowledged


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_ingest_lands_then_exits(dsn: str, tmp_path: Path, sig: signal.Signals) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (v int)")
    (tmp_path / "a.txt").write_text("1\n2\n")
    with running("ingest", str(tmp_path), "-t", "t", "-c", "v", "--dsn", dsn) as proc:
        assert proc.stdout is not None
        while json.loads(proc.stdout.readline())["rows_written"] < 2:
            pass
        out, _ = stop(proc, sig)
    assert json.loads(out.splitlines()[-1])["rows_written"] == 2
