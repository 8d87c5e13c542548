"""Run every benchmark suite against one database and write bench/results/latest.md.

``python -m bench listen feed`` runs some suites and writes bench/results/partial/ instead.

The database is the one pgtide resolves (the embedded server by default); set PGTIDE_DSN to
measure another. Suites are modules of this package with ``SUITE`` and ``run(dsn)``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime

import psycopg

from pgtide.connect import resolve

from . import _harness
from ._harness import Figure, write_report

SUITES = ["foundation", "listen", "feed", "events", "ingest", "sinks", "web"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("suites", nargs="*", default=SUITES, help="suites to run (default: all)")
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated parts of the suites to run (those a suite knows, such as the "
        "events suite's throughput, publish, latency, paced, scale, peers); a cheap partial run",
    )
    args = parser.parse_args(argv)
    if args.only:
        _harness.ONLY = frozenset(p.strip() for p in args.only.split(",") if p.strip())
    chosen = resolve()
    with psycopg.connect(chosen.dsn) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    figures: list[Figure] = []
    began = time.perf_counter()
    for name in args.suites:
        module = importlib.import_module(f"bench.{name}")
        print(f"running {name} ...", file=sys.stderr, flush=True)
        figures.extend(module.run(chosen.dsn))
    command = "make bench" if args.suites == SUITES else f"python -m bench {' '.join(args.suites)}"
    if args.only:
        command += f" --only {args.only}"
    header = (
        f"Run on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC at commit {_commit()}, on {_machine()}; "
        f"PostgreSQL {version} ({chosen.source}), Python {platform.python_version()}; "
        f"the run took {time.perf_counter() - began:.0f} s. Command: `{command}`."
    )
    if args.suites != SUITES or args.only:
        # a partial run must not replace the committed full report
        _harness.RESULTS = _harness.RESULTS / "partial"
    report = write_report(figures, header)
    print(report.read_text())
    return 0


def _commit() -> str:
    """The commit measured (with "+changes" when the work tree differs from it)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{head}+changes" if dirty else head


def _machine() -> str:
    """Cores, memory and processor, as the report needs them to be compared."""
    model = ""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):  # noqa: SIM115 (read once)
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores, {memory:.0f} GiB, {platform.machine()}" + (
        f" ({model})" if model else ""
    )


if __name__ == "__main__":
    raise SystemExit(main())
