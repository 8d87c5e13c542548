"""Helpers shared by the listen tests: waiting on a condition, a collecting callback."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

import pgtide


def wait_until(condition: Callable[[], Any], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``condition`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(0.005)


class Collector:
    """A callback that keeps every notification it receives (thread-safe)."""

    def __init__(self) -> None:
        self.notes: list[pgtide.Notification] = []
        self._lock = threading.Lock()

    def __call__(self, note: pgtide.Notification) -> None:
        with self._lock:
            self.notes.append(note)

    @property
    def payloads(self) -> list[Any]:
        with self._lock:
            return [n.payload for n in self.notes]

    def __len__(self) -> int:
        with self._lock:
            return len(self.notes)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Any]:
        wait_until(lambda: len(self) >= count, timeout, f"{count} notifications (have {len(self)})")
        return self.payloads


def listener_backends(dsn: str) -> list[int]:
    """Backend pids of pgtide listener connections to the database of ``dsn``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity"
            " WHERE application_name = 'pgtide-listen' AND datname = current_database()"
        ).fetchall()
    return [r[0] for r in rows]


def pgtide_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("pgtide-listen")]
