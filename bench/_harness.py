"""What every suite shares: a figure type, timing helpers, and the report writer."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Figure:
    """One measured figure. ``baseline`` names the figure of the same suite it is compared to."""

    suite: str
    name: str
    value: float
    unit: str
    baseline: str | None = None
    higher_is_better: bool = True
    note: str = ""


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def timed(fn: Callable[[], object]) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    """The shortest of ``repeat`` runs: the least disturbed by the other processes."""
    return min(timed(fn) for _ in range(repeat))


def percentiles(samples: Iterable[float], points: Iterable[int] = (50, 95, 99)) -> dict[int, float]:
    ordered = sorted(samples)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return {p: cuts[p - 1] for p in points}


def _ratio(figure: Figure, by_name: dict[str, Figure]) -> str:
    if figure.baseline is None or figure.baseline not in by_name:
        return ""
    base = by_name[figure.baseline].value
    if base == 0 or figure.value == 0:
        return ""
    ratio = figure.value / base if figure.higher_is_better else base / figure.value
    return f"{ratio:.2f}x {figure.baseline}"


def write_report(figures: list[Figure], header: str) -> Path:
    """Write results/latest.md (a table with ratios) and results/latest.json."""
    RESULTS.mkdir(exist_ok=True)
    lines = [
        f"# pgtide benchmark\n\n{header}\n",
        "| suite | figure | value | unit | ratio |",
        "|---|---|---:|---|---|",
    ]
    for suite in dict.fromkeys(f.suite for f in figures):
        by_name = {f.name: f for f in figures if f.suite == suite}
        for f in by_name.values():
            value = f"{f.value:,.0f}" if f.value >= 100 else f"{f.value:.3f}"
            lines.append(f"| {suite} | {f.name} | {value} | {f.unit} | {_ratio(f, by_name)} |")
    plots = plot(figures)
    if plots:
        lines += ["", *(f"![{p.stem}]({p.name})" for p in plots)]
    report = RESULTS / "latest.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (RESULTS / "latest.json").write_text(
        json.dumps([asdict(f) for f in figures], indent=1), encoding="utf-8"
    )
    return report


def _is_latency(figure: Figure) -> bool:
    return not figure.higher_is_better


def plot(figures: list[Figure]) -> list[Path]:
    """Bar charts, one panel a suite: throughput.png and latency.png under results/."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    for kind, wanted in (("throughput", False), ("latency", True)):
        chosen = [f for f in figures if _is_latency(f) == wanted]
        suites = list(dict.fromkeys(f.suite for f in chosen))
        if not suites:
            continue
        fig, axes = plt.subplots(
            len(suites),
            1,
            figsize=(9, 1.2 + 0.45 * len(chosen) + 0.6 * len(suites)),
            squeeze=False,
        )
        for ax, suite in zip(axes[:, 0], suites, strict=True):
            rows = [f for f in chosen if f.suite == suite]
            names = [f"{f.name} ({f.unit})" for f in rows]
            ax.barh(names, [f.value for f in rows], color="#3b7dd8")
            ax.invert_yaxis()
            ax.set_title(suite, loc="left", fontsize=10)
            ax.tick_params(labelsize=8)
            for y, f in enumerate(rows):
                ax.annotate(
                    f"{f.value:,.3g}",
                    (f.value, y),
                    fontsize=7,
                    va="center",
                    xytext=(3, 0),
                    textcoords="offset points",
                )
        fig.tight_layout()
        path = RESULTS / f"{kind}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
