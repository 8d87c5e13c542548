"""What this process's workers did: outcomes and handler durations, counted in memory.

:class:`Histogram` is the one duration histogram of pgtide: the workers' own
(:meth:`pgtide.Events.worker_stats`) and the console's (``pgtide_event_duration_seconds``)
count in the same :data:`BUCKETS`.
"""

from __future__ import annotations

import bisect
import itertools
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
"""Upper bounds (seconds) of a duration histogram's buckets (+Inf added)."""

OUTCOMES = ("done", "failed", "dead", "cancelled")
"""What a handler run ends as: ``failed`` will retry; ``dead`` will not."""


@dataclass
class Histogram:
    """Observations counted in :data:`BUCKETS` (each counted once, in its own bucket)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus' buckets: (``le``, observations <= it), +Inf last."""
        bounds = [*(str(b) for b in BUCKETS), "+Inf"]
        return list(zip(bounds, itertools.accumulate(self.counts), strict=True))

    def copy(self) -> Histogram:
        return Histogram(list(self.counts), self.total)


class WorkerStats:
    """Counters shared by every worker of one ``Events`` object (thread-safe; they only
    grow, whatever the number of workers started and stopped)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._outcomes: Counter[tuple[str, str]] = Counter()
        self._durations: dict[str, Histogram] = {}

    def finished(self, name: str, outcome: str, seconds: float) -> None:
        """A handler run of event ``name`` ended as ``outcome`` after ``seconds``."""
        with self._lock:
            self._outcomes[name, outcome] += 1
            histogram = self._durations.get(name)
            if histogram is None:
                histogram = self._durations[name] = Histogram()
            histogram.observe(seconds)

    def snapshot(self, workers: int, running: int) -> dict[str, Any]:
        """What :meth:`pgtide.Events.worker_stats` returns (copies: safe to keep)."""
        with self._lock:
            by_name: dict[str, dict[str, int]] = {}
            for (name, outcome), n in sorted(self._outcomes.items()):
                by_name.setdefault(name, dict.fromkeys(OUTCOMES, 0))[outcome] = n
            totals = {o: sum(c[o] for c in by_name.values()) for o in OUTCOMES}
            return {
                "workers": workers,
                "running": running,
                **totals,
                "by_name": by_name,
                "durations": {n: h.copy() for n, h in sorted(self._durations.items())},
            }
