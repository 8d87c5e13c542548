"""What every stage of the tour shares: a rate meter, the shop's names, and the Part base."""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from ...connect import Resolved


class Meter:
    """A thread-safe counter that also knows its rate over the last couple of seconds."""

    def __init__(self, window: float = 3.0) -> None:
        self._lock = threading.Lock()
        self._window = window
        self._marks: deque[tuple[float, int]] = deque()
        self.count = 0

    def add(self, n: int = 1) -> None:
        now = time.monotonic()
        with self._lock:
            self.count += n
            self._marks.append((now, n))
            self._trim(now)

    def rate(self) -> float:
        """Events per second over the window while they flow (0 once they stopped)."""
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            if len(self._marks) < 2:
                return 0.0
            span = self._marks[-1][0] - self._marks[0][0]
            return sum(n for _, n in list(self._marks)[1:]) / span if span > 0 else 0.0

    def _trim(self, now: float) -> None:
        while self._marks and now - self._marks[0][0] > self._window:
            self._marks.popleft()


@dataclass(frozen=True)
class Shop:
    """The unique names of one tour run, so that tours never meet each other's objects."""

    db: Resolved
    tag: str  # e.g. "a1b2c3d4"
    folder: Path

    @property
    def orders(self) -> str:
        return f"pgtide_demo_orders_{self.tag}"

    @property
    def readings(self) -> str:
        return f"pgtide_demo_readings_{self.tag}"

    @property
    def channel(self) -> str:
        return f"pgtide-demo-{self.tag}"

    def event(self, name: str) -> str:
        return f"demo-{self.tag}.{name}"


@dataclass
class Line:
    """One line of the live view: the feature, what it does, a count, a rate, details."""

    feature: str
    doing: str
    count: int
    rate: float
    detail: str


class Part(ABC):
    """One feature's stage. The tour calls: start, then write (each tick of the shop, in the
    shop's transaction), then settle (wait until everything written has arrived), then
    stop, summary and cleanup. Parts must not raise from ``line()`` or ``summary()``."""

    feature = ""
    doing = ""

    def __init_subclass__(cls, *, feature: str, doing: str, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.feature, cls.doing = feature, doing

    def __init__(self, shop: Shop) -> None:
        self.shop = shop
        self.written = 0  # what the shop produced for this stage
        self.seen = Meter()  # what the stage's consumer received of it
        self._lock = threading.Lock()
        self.setup()

    @abstractmethod
    def setup(self) -> None:
        """The stage's own state (called by the constructor)."""

    @abstractmethod
    def start(self) -> None:
        """Create what the stage needs and start its background work."""

    def write(self, conn: psycopg.Connection[Any], tick: int) -> None:
        """Do this stage's share of one shop tick, inside the shop's open transaction."""
        return None

    def after_commit(self, tick: int) -> None:
        """Work outside the database transaction (for example, appending to a file)."""
        return None

    def settled(self) -> bool:
        """True when everything written so far has been seen by the stage's consumer."""
        return self.seen.count >= self.written

    @abstractmethod
    def stop(self) -> None:
        """Stop background work (idempotent)."""

    def line(self) -> Line:
        """The stage's line in the live view."""
        detail = self.detail()  # may bring the meter up to date first
        return Line(self.feature, self.doing, self.seen.count, self.seen.rate(), detail)

    @abstractmethod
    def detail(self) -> str:
        """The end of the stage's line: what it wrote, what is late."""

    counted = ("written", "seen")
    """The names of the summary's two counts: what the shop wrote, what the stage saw of it."""

    def summary(self) -> dict[str, Any]:
        """Figures for the final table and ``--json``: the two counts, the stage's own
        :meth:`figures`, ``ok`` (everything written was seen, at least once, and
        :meth:`healthy`) and ``text``."""
        seen = self.seen.count
        wrote, saw = self.counted
        return {
            wrote: self.written,
            saw: seen,
            **self.figures(),
            "ok": seen == self.written and seen > 0 and self.healthy(),
            "text": self.outcome(seen),
        }

    def figures(self) -> dict[str, Any]:
        """The stage's own figures in its summary, between the counts and ``ok``."""
        return {}

    def healthy(self) -> bool:
        """The stage's own condition for ``ok``, beyond "everything written was seen"."""
        return True

    def outcome(self, seen: int) -> str:
        """The summary's ``text``: one line for a person."""
        return f"{seen} of {self.written} seen"

    @abstractmethod
    def cleanup(self, conn: psycopg.Connection[Any]) -> None:
        """Remove what the stage created (tables, consumers, events, offsets)."""
