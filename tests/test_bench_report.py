"""The benchmark report: every figure, ratios beside the references, and the plots."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("bench_harness", ROOT / "bench" / "_harness.py")
assert _spec is not None and _spec.loader is not None
_harness = importlib.util.module_from_spec(_spec)
sys.modules["bench_harness"] = _harness  # dataclasses look their module up
_spec.loader.exec_module(_harness)
Figure = _harness.Figure

FIGURES = [
    Figure("listen", "raw psycopg notifies()", 200_000, "msgs/s"),
    Figure("listen", "pgtide.Listener", 300_000, "msgs/s", baseline="raw psycopg notifies()"),
    Figure("listen", "p99 raw psycopg", 1.0, "ms", higher_is_better=False),
    Figure(
        "listen",
        "p99 pgtide.Listener",
        2.0,
        "ms",
        baseline="p99 raw psycopg",
        higher_is_better=False,
    ),
    Figure("ingest", "psql \\copy (floats)", 3_000_000, "rows/s"),
    Figure(
        "ingest",
        "jumbo pattern",
        0.0,
        "rows/s",
        baseline="psql \\copy (floats)",
        note="failed: no module",
    ),
    Figure("feed", "race: rows missed", 0.0, "rows", higher_is_better=False),
]


def test_report_has_every_figure_with_its_ratio(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_harness, "RESULTS", tmp_path)
    text = _harness.write_report(FIGURES, "header line").read_text()
    assert "header line" in text
    assert "| listen | **pgtide.Listener** | raw psycopg notifies() | 1.50x |" in text
    assert "| listen | **p99 pgtide.Listener** | p99 raw psycopg | 0.50x |" in text  # slower
    assert (
        "| jumbo pattern | not run | rows/s | psql \\copy (floats) |  | failed: no module |" in text
    )
    assert all(f"| {f.name} |" in text or f"**{f.name}**" in text for f in FIGURES)
    assert [f["name"] for f in json.loads((tmp_path / "latest.json").read_text())] == [
        f.name for f in FIGURES
    ]
    plots = {p.name for p in tmp_path.glob("*.png")}
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    assert plots == ({"throughput.png", "latency.png"} if has_matplotlib else set())
    assert ("![latency](latency.png)" in text) is has_matplotlib


def test_figures_are_told_apart_from_references() -> None:
    assert _harness.is_pgtide(FIGURES[1]) and not _harness.is_pgtide(FIGURES[0])
    assert not _harness.is_pgtide(FIGURES[5])
    assert _harness.human(3_050_000) == "3.05M" and _harness.human(221_779) == "222k"


def test_in_turns_alternates_the_runs_and_keeps_each_ones_best() -> None:
    order: list[str] = []
    took = iter([0.5, 0.2, 0.1])  # the self-timed run's seconds, round by round

    def plain() -> None:
        order.append("plain")

    def self_timed() -> float:
        order.append("timed")
        return next(took)

    best = _harness.in_turns(
        3, {"plain": plain, "timed": self_timed}, between=lambda: order.append("-")
    )
    # in turns, every other round in reverse order
    rounds = [["plain", "-", "timed", "-"], ["timed", "-", "plain", "-"]]
    assert order == rounds[0] + rounds[1] + rounds[0]
    assert best["timed"] == 0.1  # its own seconds count, not the time around them
    assert 0 <= best["plain"] < 0.1
