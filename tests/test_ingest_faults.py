"""Ingest under real use: rotation with a writer on the old handle, more files than open
descriptors, status that never goes backwards, and signals (issue 11)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
from test_ingest import append, floats, offsets, sql, wait_for

import pgtide
from pgtide.ingest import _core


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def table(dsn: str) -> str:
    sql(dsn, "CREATE TABLE t (n bigint GENERATED ALWAYS AS IDENTITY, v float8)")
    return "t"


def rotated(dsn: str) -> dict[str, str | None]:
    rows = sql(dsn, "SELECT path, rotated_from FROM pgtide.file_offsets")
    return {Path(r[0]).name: r[1] and Path(r[1]).name for r in rows}


# -- rotation with a writer on the old handle ---------------------------------------------------


def test_lines_written_through_a_rotated_files_old_handle_all_land(
    dsn: str, table: str, data: Path
) -> None:
    path = data / "x.log"
    watcher = pgtide.FileWatcher(
        data,
        table=table,
        columns=["v"],
        pattern="*.log",
        rescan_every=0.1,
        rotated_grace=1.0,
        dsn=dsn,
    )
    new_lines = [1000.0 + i for i in range(5)]
    old_lines = [float(i) for i in range(1, 21)]
    with watcher, path.open("a") as old:
        old.write("0\n")
        old.flush()
        wait_for(lambda: floats(dsn) == [0.0], what="the first line")
        os.rename(path, data / "x.log.1")  # not matched by the pattern any more
        path.write_text("".join(f"{v:g}\n" for v in new_lines))
        wait_for(lambda: len(floats(dsn)) == 6, what="the new file (the rotation was seen)")
        for v in old_lines[:10]:  # the writer goes on through its open handle
            old.write(f"{v:g}\n")
            old.flush()
        wait_for(lambda: len(floats(dsn)) == 16, what="the first lines after the rotation")
        for v in old_lines[10:]:
            old.write(f"{v:g}\n")
            old.flush()
        wait_for(lambda: len(floats(dsn)) == 26, what="every line of the old handle")
        old.close()
        wait_for(lambda: set(offsets(dsn)) == {"x.log"}, what="the quiet old file let go")
        assert watcher.status().rows_written == 26
    assert sorted(floats(dsn)) == sorted([0.0, *old_lines, *new_lines])  # each exactly once


def test_a_rotated_file_survives_a_restart_and_a_second_rotation(
    dsn: str, table: str, data: Path
) -> None:
    path = data / "a.txt"
    path.write_text("1\n")

    def watcher(grace: float) -> pgtide.FileWatcher:
        return pgtide.FileWatcher(data, table=table, columns=["v"], dsn=dsn, rotated_grace=grace)

    watcher(60).catch_up()
    with path.open("a") as old:
        os.rename(path, data / "a.txt.1")
        old.write("2\n")
        old.flush()
        watcher(60).catch_up()
        assert floats(dsn) == [1, 2]
        assert rotated(dsn) == {"a.txt.1": "a.txt"}  # kept, under its new name
        old.write("3\n")  # written while no watcher ran
        old.flush()
        os.rename(data / "a.txt.1", data / "a.txt.2")  # and rotated once more
        old.write("4")  # an unterminated last line
        old.flush()
        watcher(60).catch_up()  # a new process resumes the rotated file
        assert floats(dsn) == [1, 2, 3]
        assert rotated(dsn) == {"a.txt.2": "a.txt"}
    watcher(0).catch_up()  # quiet long enough: its last line as it is, then let go
    assert floats(dsn) == [1, 2, 3, 4]
    assert rotated(dsn) == {}


# -- more files than open descriptors ------------------------------------------------------------


def test_every_file_is_served_while_writing_goes_on_beyond_the_open_file_limit(
    dsn: str, table: str, data: Path
) -> None:
    n_files = 300
    assert n_files > _core.MAX_OPEN_FILES
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        seq = 0
        while not stop.is_set():
            for f in range(n_files):
                with (data / f"f{f:03}.txt").open("a") as out:
                    out.write(f"{f * 1_000_000 + seq}\n")
            seq += 1
            written[0] = seq * n_files

    def files_with_rows() -> int:
        rows = sql(dsn, "SELECT count(DISTINCT floor(v / 1000000)) FROM t")
        return int(rows[0][0])

    with pgtide.FileWatcher(data, table=table, columns=["v"], dsn=dsn) as watcher:
        thread = threading.Thread(target=writer)
        thread.start()
        try:
            wait_for(
                lambda: files_with_rows() == n_files,
                timeout=60,
                what="rows from every file while they are still being written",
            )
            assert thread.is_alive()
        finally:
            stop.set()
            thread.join()
        total = written[0]
        wait_for(lambda: watcher.status().rows_written == total, timeout=60, what="every line")
    assert sql(dsn, "SELECT count(*), count(DISTINCT v) FROM t") == [(total, total)]


def test_many_files_in_one_transaction_a_bad_line_and_csv_headers(
    dsn: str, table: str, data: Path
) -> None:
    for i in range(6):
        (data / f"f{i}.txt").write_text("".join(f"{i}{j}\n" for j in range(3)))
    append(data / "f3.txt", "oops\n4\n")  # one bad line: the others still go in bulk
    watcher = pgtide.FileWatcher(data, table=table, columns=["v"], dsn=dsn)
    assert watcher.catch_up() == 19
    assert sql(dsn, "SELECT line_no, line FROM pgtide.rejects") == [(4, "oops")]
    assert offsets(dsn)["f3.txt"] == (len((data / "f3.txt").read_bytes()), 5)

    sql(dsn, "CREATE TABLE m (a int, b text)")
    csvdir = data / "csv"
    csvdir.mkdir()
    (csvdir / "x.csv").write_text("a,b\n1,x\n2,y\n")
    (csvdir / "y.csv").write_text("b,a\nz,3\n")  # other columns, other order
    (csvdir / "z.csv").write_text('a,b\n4,"q\nr"\n')  # a quoted newline: rows counted apart
    pgtide.FileWatcher(
        csvdir, table="m", pattern="*.csv", format="csv", header=True, name="csv", dsn=dsn
    ).catch_up()
    assert sql(dsn, "SELECT a, b FROM m ORDER BY a") == [(1, "x"), (2, "y"), (3, "z"), (4, "q\nr")]
    rows = sql(dsn, "SELECT path, rows_written FROM pgtide.file_offsets WHERE watcher = 'csv'")
    assert sorted((Path(p).name, n) for p, n in rows) == [("x.csv", 2), ("y.csv", 1), ("z.csv", 1)]


# -- status never goes backwards -----------------------------------------------------------------


def test_rows_written_never_goes_backwards(dsn: str, table: str, data: Path) -> None:
    (data / "a.txt").write_text("1\n2\n3\n4\n")
    watcher = pgtide.FileWatcher(data, table=table, columns=["v"], dsn=dsn)
    watcher.catch_up()
    assert watcher.status().rows_written == 4
    (data / "b.txt").write_text("5\n")  # (first: a new file could reuse a.txt's inode)
    (data / "a.txt").unlink()  # deleted: forgotten, but its rows were written
    watcher.catch_up()
    status = watcher.status()
    assert (status.rows_written, status.finished_rows) == (5, 4)

    seen: list[int] = []
    stop = threading.Event()
    running = pgtide.FileWatcher(
        data, table=table, columns=["v"], dsn=dsn, rescan_every=0.1, rotated_grace=0.2
    )

    def sample() -> None:
        while not stop.is_set():
            seen.append(running.status().rows_written)

    with running:
        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            append(data / "b.txt", "6\n7\n")
            wait_for(lambda: len(floats(dsn)) == 7, what="the appended lines")
            os.rename(data / "b.txt", data / "b.txt.1")  # rotated: read on, then let go
            (data / "b.txt").write_text("8\n")
            wait_for(lambda: set(offsets(dsn)) == {"b.txt"}, what="the rotated file let go")
            wait_for(lambda: running.status().rows_written == 4, what="the new file")
        finally:
            stop.set()
            sampler.join()
    assert seen == sorted(seen), "rows_written went backwards"
    assert len(floats(dsn)) == 8


# -- signals -------------------------------------------------------------------------------------

RUN_SCRIPT = """
import sys, pgtide
watcher = pgtide.FileWatcher(sys.argv[1], table="t", columns=["v"], dsn=sys.argv[2])
print("ready", flush=True)
watcher.run()
print("stopped", watcher.status().rows_written, flush=True)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_run_stops_gracefully_on_ctrl_c_and_sigterm(
    dsn: str, table: str, data: Path, sig: signal.Signals
) -> None:
    (data / "a.txt").write_text("1\n2\n")
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN_SCRIPT, str(data), dsn],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        wait_for(lambda: len(floats(dsn)) == 2, what="the lines")
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert out.split() == ["stopped", "2"]


SLOW_TABLE = """
CREATE TABLE big (v text);
CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN PERFORM pg_sleep(0.004); RETURN NEW; END $$;
CREATE TRIGGER slow BEFORE INSERT ON big FOR EACH ROW EXECUTE FUNCTION slow();
"""


def copying(dsn: str, table: str) -> bool:
    """Whether a COPY into ``table`` is running (a batch in flight, not committed yet)."""
    return bool(sql(dsn, COPYING, (f"COPY %{table}%",))[0][0])


COPYING = "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_ingest_once_stops_gracefully_on_a_signal(
    dsn: str, data: Path, cli: Any, sig: signal.Signals
) -> None:
    sql(dsn, SLOW_TABLE)  # about 4 ms per 64 kB line: slow enough to interrupt
    total = 800  # 52 MB: one batch, streamed into COPY piece by piece
    (data / "a.txt").write_text("".join(f"{i:08}{'x' * 65_000}\n" for i in range(total)))
    command = [sys.executable, "-m", "pgtide", "ingest", str(data), "-t", "big", "--once"]
    proc = subprocess.Popen(
        [*command, "--dsn", dsn], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(lambda: copying(dsn, "big"), what="the batch being copied")
        proc.send_signal(sig)  # the stop lands what was sent, without the rest of the batch
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    summary = json.loads(out.splitlines()[-1])
    landed = sql(dsn, "SELECT count(*) FROM big")[0][0]
    assert 0 < landed < total  # it stopped early,
    assert summary["rows_written"] == landed  # says what is committed,
    assert offsets(dsn)["a.txt"][1] == landed  # and its offset with it: a rerun goes on
    sql(dsn, "DROP TRIGGER slow ON big")
    done = cli("ingest", str(data), "-t", "big", "--once", "--dsn", dsn)
    assert done.returncode == 0, done.stderr
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*), count(DISTINCT left(v, 8)) FROM big").fetchone()
    assert row == (total, total)
