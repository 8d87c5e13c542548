"""What every suite shares: a figure type, timing helpers, and the report writer."""

from __future__ import annotations

import contextlib
import json
import statistics
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

RESULTS = Path(__file__).parent / "results"

ONLY: frozenset[str] | None = None
"""Parts of the suites to run (``python -m bench events --only latency,publish``); None: all."""


def wanted(part: str) -> bool:
    """Whether a suite is to measure ``part`` (every part unless ``--only`` names others)."""
    return ONLY is None or part in ONLY


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


@contextlib.contextmanager
def scratch_database(dsn: str, prefix: str = "pgtide_bench") -> Iterator[str]:
    """A fresh database on the same server for one suite, dropped afterwards: a benchmark
    never touches the user's own tables, events or changes."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(dsn, dbname=name)
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.001) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; return whether it held."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def timed(fn: Callable[[], object]) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    """The shortest of ``repeat`` runs: the least disturbed by the other processes."""
    return min(timed(fn) for _ in range(repeat))


def in_turns(
    rounds: int,
    runs: dict[str, Callable[[], object]],
    between: Callable[[], object] | None = None,
) -> dict[str, float]:
    """The shortest time of each of ``runs`` over ``rounds`` rounds, the runs taking turns
    within each round (untimed ``between`` after each run, to put the tables back): a load
    that comes and goes on a shared machine falls on every run alike, where ``best_of`` one
    run after the other would hand it to whichever ran while it lasted. Every other round
    takes them in reverse order, so that none always comes first or after the same one. A run
    that returns a number of seconds timed itself (to leave its set-up out): that counts."""
    best = dict.fromkeys(runs, float("inf"))
    forward = list(runs.items())
    for turn in range(rounds):
        for key, fn in forward if turn % 2 == 0 else forward[::-1]:
            began = time.perf_counter()
            took = fn()
            seconds = took if isinstance(took, float) else time.perf_counter() - began
            best[key] = min(best[key], seconds)
            if between is not None:
                between()
    return best


def percentiles(samples: Iterable[float], points: Iterable[int] = (50, 95, 99)) -> dict[int, float]:
    ordered = sorted(samples)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return {p: cuts[p - 1] for p in points}


TIME_UNITS = ("ms", "s", "us", "µs")
# Words that mark a figure as a reference (a raw driver, psql, an older library, no pgtide).
REFERENCES = ("raw ", "psycopg", "asyncpg", "psql", "pgnotifier", "notified", "jumbo", "newt")
REFERENCES += ("pgqueuer", "procrastinate", "oban", "untracked", "row-level trigger")


def is_pgtide(figure: Figure) -> bool:
    """True for pgtide's own figures, False for the references they are compared with."""
    name = figure.name.lower()
    if "pgtide" in name or "tracked" in name.replace("untracked", ""):
        return True
    return not any(word in name for word in REFERENCES)


def _times(ratio: float) -> str:
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.2g}x"


def human(value: float) -> str:
    """3050000 -> 3.05M, 221779 -> 222k, 0.284 -> 0.284."""
    for cut, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= cut:
            return f"{value / cut:.3g}{suffix}"
    return f"{value:.3g}"


def _ratio(figure: Figure, by_name: dict[str, Figure]) -> float | None:
    """How many times better than its baseline (>1: faster, or lower latency); None if n/a."""
    if figure.baseline is None or figure.baseline not in by_name:
        return None
    base = by_name[figure.baseline].value
    if base == 0 or figure.value == 0:
        return None
    return figure.value / base if figure.higher_is_better else base / figure.value


def _value(figure: Figure) -> str:
    if figure.value == 0 and figure.note.startswith(("failed", "not run")):
        return "not run"
    return f"{figure.value:,.0f}" if figure.value >= 100 else f"{figure.value:.3g}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_report(figures: list[Figure], header: str) -> Path:
    """Write results/latest.md (every comparison as a ratio, then every figure by suite),
    results/latest.json, and the plots."""
    RESULTS.mkdir(exist_ok=True)
    suites = list(dict.fromkeys(f.suite for f in figures))
    by_suite = {s: {f.name: f for f in figures if f.suite == s} for s in suites}
    lines = [
        f"# pgtide benchmark\n\n{header}\n",
        "A ratio says how many times better a figure is than the one it is compared with:",
        "above 1 is faster (or lower latency), below 1 slower. A reference library that did",
        "not install or run is marked *not run*, with the reason. pgtide's own figures are in",
        "bold (blue in the plots); the others are the references.\n",
        "## Every comparison, as ratios\n",
        "| suite | figure | vs | ratio |",
        "|---|---|---|---:|",
    ]
    for suite in suites:
        for f in by_suite[suite].values():
            ratio = _ratio(f, by_suite[suite])
            if ratio is not None:
                name = f"**{_cell(f.name)}**" if is_pgtide(f) else _cell(f.name)
                lines.append(f"| {suite} | {name} | {_cell(f.baseline or '')} | {_times(ratio)} |")
    for suite in suites:
        lines += [
            f"\n## {suite}\n",
            "| figure | value | unit | vs | ratio | note |",
            "|---|---:|---|---|---:|---|",
        ]
        for f in by_suite[suite].values():
            ratio = _ratio(f, by_suite[suite])
            lines.append(
                f"| {_cell(f.name)} | {_value(f)} | {f.unit} | {_cell(f.baseline or '')} | "
                f"{'' if ratio is None else _times(ratio)} | {_cell(f.note)} |"
            )
    plots = plot(figures)
    if plots:
        lines += ["\n## Plots\n", *(f"![{p.stem}]({p.name})\n" for p in plots)]
    report = RESULTS / "latest.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (RESULTS / "latest.json").write_text(
        json.dumps([asdict(f) for f in figures], indent=1), encoding="utf-8"
    )
    return report


def _kind(figure: Figure) -> str | None:
    """Which plot a figure belongs to: rates to throughput, times to latency, counts to none."""
    if figure.unit.endswith("/s"):
        return "throughput"
    if figure.unit in TIME_UNITS:
        return "latency"
    return None


def plot(figures: list[Figure]) -> list[Path]:
    """throughput.png and latency.png under results/: one panel per suite and unit, pgtide's
    bars in blue beside the references in grey, a log scale when values span 50x or more."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        return []
    written = []
    for kind in ("throughput", "latency"):
        chosen = [f for f in figures if _kind(f) == kind and f.value > 0]
        panels = list(dict.fromkeys((f.suite, f.unit) for f in chosen))
        if not panels:
            continue
        heights = [0.8 + 0.32 * sum(1 for f in chosen if (f.suite, f.unit) == p) for p in panels]
        total = sum(heights) + 0.8
        fig, axes = plt.subplots(
            len(panels),
            1,
            figsize=(11, total),
            squeeze=False,
            gridspec_kw={"height_ratios": heights},
        )
        for ax, (suite, unit) in zip(axes[:, 0], panels, strict=True):
            rows = [f for f in chosen if (f.suite, f.unit) == (suite, unit)]
            names = [_short(f.name) for f in rows]
            values = [f.value for f in rows]
            colors = ["#2f6fd0" if is_pgtide(f) else "#9a9a9a" for f in rows]
            ax.barh(names, values, color=colors)
            ax.invert_yaxis()
            if max(values) / min(values) >= 50:
                ax.set_xscale("log")
            better = "higher is better" if kind == "throughput" else "lower is better"
            ax.set_title(f"{suite}: {unit} ({better})", loc="left", fontsize=10)
            ax.tick_params(labelsize=8)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: human(v) if v > 0 else "0"))
            ax.margins(x=0.15)
            for y, f in enumerate(rows):
                ax.annotate(
                    human(f.value),
                    (f.value, y),
                    fontsize=7,
                    va="center",
                    xytext=(3, 0),
                    textcoords="offset points",
                )
        fig.suptitle(f"pgtide {kind} (blue: pgtide, grey: references)", fontsize=11)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / total))
        path = RESULTS / f"{kind}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _short(name: str, width: int = 60) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"
