"""Run every benchmark suite against one database and write bench/results/latest.md.

``python -m bench listen feed`` runs some suites and writes bench/results/partial/ instead.

The database is the one pgtide resolves (the embedded server by default); set PGTIDE_DSN to
measure another. Suites are modules of this package with ``SUITE`` and ``run(dsn)``.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
import time

import psycopg

from pgtide.connect import resolve

from . import _harness
from ._harness import Figure, write_report

SUITES = ["foundation", "listen", "feed", "events", "ingest", "web"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("suites", nargs="*", default=SUITES, help="suites to run (default: all)")
    args = parser.parse_args(argv)
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
    header = (
        f"PostgreSQL {version} ({chosen.source}), Python {platform.python_version()}, "
        f"{platform.machine()}, run took {time.perf_counter() - began:.0f} s. "
        f"Command: `{command}`."
    )
    if args.suites != SUITES:
        # a partial run must not replace the committed full report
        _harness.RESULTS = _harness.RESULTS / "partial"
    report = write_report(figures, header)
    print(report.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
