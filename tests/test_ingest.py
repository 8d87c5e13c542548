"""Ingest: lines appended to files land in a table exactly once (DESIGN 3.4 and section 5)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pgtide_testing import Killable, RestartableServer

import pgtide
import pgtide.aio
import pgtide.ingest
from pgtide.ingest import _core, _writer


def sql(dsn: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(query.encode(), params)
        return cur.fetchall() if cur.description else []


def wait_for(condition: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    """Poll ``condition`` until it holds (no fixed sleeps: the deadline only bounds failure)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.02)


def floats(dsn: str, table: str = "t") -> list[float]:
    return [r[0] for r in sql(dsn, f"SELECT v FROM {table} ORDER BY n")]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def table(dsn: str) -> str:
    """A target table whose identity column records arrival order."""
    sql(dsn, "CREATE TABLE t (n bigint GENERATED ALWAYS AS IDENTITY, v float8)")
    return "t"


def append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(text)


def offsets(dsn: str) -> dict[str, tuple[int, int]]:
    rows = sql(dsn, "SELECT path, byte_offset, line_count FROM pgtide.file_offsets")
    return {Path(r[0]).name: (r[1], r[2]) for r in rows}


# -- reading complete lines -------------------------------------------------------------------


def test_lines_land_typed_without_newlines(dsn: str, data: Path) -> None:
    sql(dsn, "CREATE TABLE words (w text, x float8)")
    (data / "a.txt").write_text("alpha\nbeta  \r\ngam\\ma\n\nd\telta\n")
    watcher = pgtide.FileWatcher(data, table="words", columns=["w"], dsn=dsn)
    assert watcher.catch_up() == 4
    assert [r[0] for r in sql(dsn, "SELECT w FROM words")] == [
        "alpha",
        "beta  ",
        "gam\\ma",
        "d\telta",
    ]
    assert offsets(dsn) == {"a.txt": ((data / "a.txt").stat().st_size, 5)}


def test_chunks_that_split_lines_midway(dsn: str, table: str, data: Path) -> None:
    rng = random.Random(7)
    values = [f"{rng.uniform(-1e6, 1e6):.6f}" for _ in range(400)]
    text = "".join(v + "\n" for v in values)
    watcher = pgtide.FileWatcher(data, table=table, columns=["v"], dsn=dsn, batch_bytes=1024)
    pos = 0
    with (data / "a.txt").open("a") as f:
        while pos < len(text):
            cut = min(len(text), pos + rng.randint(1, 300))
            f.write(text[pos:cut])
            f.flush()
            pos = cut
            watcher.catch_up()
            landed = floats(dsn)
            complete = text[:pos].count("\n")
            assert landed == [float(v) for v in values[:complete]]  # never half a line
    assert floats(dsn) == [float(v) for v in values]


def test_partial_last_line_waits_then_flush_after(dsn: str, table: str, data: Path) -> None:
    (data / "a.txt").write_text("1.5\n12")
    watcher = pgtide.FileWatcher(data, table=table, columns=["v"], dsn=dsn)
    watcher.catch_up()
    assert floats(dsn) == [1.5]
    append(data / "a.txt", "34\n")
    watcher.catch_up()
    assert floats(dsn) == [1.5, 1234.0]  # one value, not '12' and '34'

    append(data / "a.txt", "7")  # this writer never ends its last line
    flushing = pgtide.FileWatcher(
        data, table=table, columns=["v"], dsn=dsn, flush_after=0.2, rescan_every=0.1
    )
    with flushing:
        wait_for(lambda: floats(dsn) == [1.5, 1234.0, 7.0], what="the unterminated line")


# -- exactly once across crashes ---------------------------------------------------------------


def _watch_forever(dsn: str, directory: str) -> None:
    pgtide.FileWatcher(directory, table="t", columns=["v"], dsn=dsn, batch_bytes=2048).run()


def test_sigkilled_watcher_restarted_twice_lands_each_line_once(
    dsn: str, table: str, data: Path, killable: Killable
) -> None:
    total = 30_000
    lines = [str(i) for i in range(total)]
    path = data / "a.txt"
    written = 0

    def write(upto: int) -> None:
        nonlocal written
        with path.open("a") as f:
            for i in range(written, upto):
                f.write(lines[i] + "\n")
        written = upto

    def count() -> int:
        return int(sql(dsn, "SELECT count(*) FROM t")[0][0])

    write(10_000)
    for round_, upto in enumerate((20_000, total)):
        proc = killable.start(_watch_forever, dsn, str(data))
        floor = count()
        wait_for(
            lambda f=floor: count() > f + 1_000, timeout=40, what="the watcher to make progress"
        )
        write(upto)  # more lines arrive while it works
        killable.kill(proc)  # SIGKILL mid-stream, between or inside a batch
        assert proc.exitcode == -9, f"round {round_}"
    proc = killable.start(_watch_forever, dsn, str(data))
    wait_for(lambda: count() >= total, timeout=40, what="every line")
    killable.kill(proc)
    rows = sql(dsn, "SELECT count(*), count(DISTINCT v), min(v), max(v) FROM t")[0]
    assert rows == (total, total, 0.0, float(total - 1))
    assert offsets(dsn) == {"a.txt": (path.stat().st_size, total)}


def test_server_restart_and_outage_while_watching(
    restartable: RestartableServer, data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dsn = restartable.dsn
    caplog.set_level(logging.INFO, logger="pgtide.session")  # retries after the first: INFO
    sql(dsn, "CREATE TABLE t (n bigint GENERATED ALWAYS AS IDENTITY, v float8)")
    watcher = pgtide.FileWatcher(data, table="t", columns=["v"], dsn=dsn, rescan_every=0.2)
    (data / "a.txt").write_text("".join(f"{i}\n" for i in range(100)))
    with watcher:
        wait_for(lambda: len(floats(dsn)) == 100, what="the first lines")
        restartable.restart()
        append(data / "a.txt", "".join(f"{i}\n" for i in range(100, 200)))
        wait_for(lambda: len(floats(dsn)) >= 200, what="lines after the restart")

        restartable.stop()  # an outage: lines keep coming, reconnecting fails for a while
        append(data / "a.txt", "".join(f"{i}\n" for i in range(200, 300)))
        wait_for(
            lambda: sum("connection lost" in r.getMessage() for r in caplog.records) >= 2,
            what="failed reconnection attempts",
        )
        restartable.start()
        wait_for(lambda: len(floats(dsn)) >= 300, what="lines after the outage")
        assert watcher.status().running
    assert floats(dsn) == [float(i) for i in range(300)]


def test_two_watchers_with_one_name_share_the_work(dsn: str, table: str, data: Path) -> None:
    (data / "a.txt").write_text("".join(f"{i}\n" for i in range(5000)))
    a = pgtide.FileWatcher(data, table=table, columns=["v"], dsn=dsn, batch_bytes=1024)
    b = pgtide.FileWatcher(data, table=table, columns=["v"], dsn=dsn, batch_bytes=1024)
    with a, b:
        wait_for(lambda: offsets(dsn).get("a.txt", (0, 0))[1] == 5000, what="all lines")
    assert sorted(floats(dsn)) == [float(i) for i in range(5000)]


# -- truncation, rotation, deletion ----------------------------------------------------------


def test_truncate_and_rewrite_starts_over(dsn: str, table: str, data: Path) -> None:
    path = data / "a.txt"
    path.write_text("1\n2\n3\n")
    watcher = pgtide.FileWatcher(data, table=table, columns=["v"], dsn=dsn)
    watcher.catch_up()
    path.write_text("4\n")  # truncated: shorter than the offset
    watcher.catch_up()
    assert floats(dsn) == [1, 2, 3, 4]
    path.write_text("5\n6\n7\n8\n")  # rewritten longer before anyone looked: new first bytes
    watcher.catch_up()
    assert floats(dsn) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert offsets(dsn) == {"a.txt": (8, 4)}


def test_rotation_finishes_old_tail_then_reads_new_file(dsn: str, table: str, data: Path) -> None:
    path = data / "a.txt"
    path.write_text("1\n2\n")
    # rotated_grace=0: the rotated file is let go at once (by default it is read on for a while)
    watcher = pgtide.FileWatcher(data, table=table, columns=["v"], dsn=dsn, rotated_grace=0)
    watcher.catch_up()
    append(path, "3\n4\n")  # written before the rotation, never read yet
    path.rename(data / "a.txt.1")  # not a watched name any more
    path.write_text("5\n6\n")
    watcher.catch_up()
    assert floats(dsn) == [1, 2, 3, 4, 5, 6]
    assert offsets(dsn) == {"a.txt": (4, 2)}


def test_rotation_while_running_and_writer_keeps_old_handle(
    dsn: str, table: str, data: Path
) -> None:
    path = data / "a.txt"
    watcher = pgtide.FileWatcher(data, table=table, columns=["v"], dsn=dsn, rescan_every=0.2)
    with watcher:
        with path.open("a") as old:
            old.write("1\n2\n")
            old.flush()
            wait_for(lambda: len(floats(dsn)) == 2, what="the first lines")
            os.rename(path, data / "a.log")
            old.write("3\n")  # the writer finishes its file after the rename
            old.flush()
            path.write_text("4\n")
        wait_for(lambda: sorted(floats(dsn)) == [1, 2, 3, 4], what="tail and new file")
        wait_for(lambda: set(offsets(dsn)) == {"a.txt"}, what="the old file to be forgotten")


def test_rename_to_a_watched_name_is_followed_not_reread(dsn: str, table: str, data: Path) -> None:
    (data / "a.txt").write_text("1\n2\n")
    watcher = pgtide.FileWatcher(data, table=table, columns=["v"], dsn=dsn)
    watcher.catch_up()
    (data / "a.txt").rename(data / "b.txt")
    append(data / "b.txt", "3\n")
    watcher.catch_up()
    assert floats(dsn) == [1, 2, 3]
    assert offsets(dsn) == {"b.txt": (6, 3)}


def test_deleted_file_is_forgotten(dsn: str, table: str, data: Path) -> None:
    (data / "a.txt").write_text("1\n")
    (data / "b.txt").write_text("2\n")
    watcher = pgtide.FileWatcher(data, table=table, columns=["v"], dsn=dsn)
    watcher.catch_up()
    (data / "a.txt").unlink()
    watcher.catch_up()
    assert set(offsets(dsn)) == {"b.txt"}
    (data / "a.txt").write_text("3\n")  # a new file under the old name starts at its line 1
    watcher.catch_up()
    assert sorted(floats(dsn)) == [1, 2, 3]


# -- rejects ---------------------------------------------------------------------------------


def test_bad_lines_go_to_rejects_with_line_numbers(dsn: str, table: str, data: Path) -> None:
    (data / "a.txt").write_text("1\nnot a number\n2\n\n3e999\n3\n")
    watcher = pgtide.FileWatcher(data, table=table, columns=["v"], dsn=dsn)
    assert watcher.catch_up() == 3
    assert floats(dsn) == [1, 2, 3]
    rejects = sql(dsn, "SELECT path, line_no, line, error, at FROM pgtide.rejects ORDER BY line_no")
    assert [(Path(r[0]).name, r[1], r[2]) for r in rejects] == [
        ("a.txt", 2, "not a number"),
        ("a.txt", 5, "3e999"),
    ]
    assert "double precision" in rejects[0][3] and rejects[0][4] is not None
    status = watcher.status()
    assert (status.rows_written, status.rejected) == (3, 2)


def test_bad_rows_found_without_one_row_per_statement(
    dsn: str, table: str, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [str(i) for i in range(20_000)]
    bad = {1234, 9876, 15000}
    for i in bad:
        lines[i] = "oops"
    (data / "a.txt").write_text("\n".join(lines) + "\n")
    attempts = []
    original = _writer.Writer._attempt

    def counting(self: _writer.Writer, conn: Any, rows: Any, columns: Any) -> None:
        attempts.append(len(rows))
        original(self, conn, rows, columns)

    monkeypatch.setattr(_writer.Writer, "_attempt", counting)
    pgtide.FileWatcher(data, table=table, columns=["v"], dsn=dsn).catch_up()
    assert len(floats(dsn)) == 20_000 - len(bad)
    assert sorted(r[0] for r in sql(dsn, "SELECT line_no FROM pgtide.rejects")) == sorted(
        i + 1 for i in bad
    )
    assert len(attempts) < 50  # a few dozen statements for three bad rows, not 20,000
    assert sum(attempts) < 3 * 20_000  # and the rows are not sent again and again


@pytest.mark.slow
def test_many_bad_lines_all_land_or_are_kept(dsn: str, table: str, data: Path) -> None:
    lines = [str(i) if i % 10 else f"bad{i}" for i in range(50_000)]
    (data / "a.txt").write_text("\n".join(lines) + "\n")
    assert pgtide.FileWatcher(data, table=table, columns=["v"], dsn=dsn).catch_up() == 45_000
    assert sql(dsn, "SELECT count(*) FROM pgtide.rejects") == [(5_000,)]


# -- formats and the sql= template -------------------------------------------------------------


def test_csv_with_header_delimiter_and_quotes(dsn: str, data: Path) -> None:
    sql(dsn, "CREATE TABLE m (id int, name text, score numeric, note text)")
    (data / "m.csv").write_text(
        'id;name;score;note\n1;ann;1.5;"semi; colon"\n2;bob;;"two\nlines"\n'
        'three;x;1;y\n3;"c""d";2;\n'
    )
    watcher = pgtide.FileWatcher(
        data, table="m", pattern="*.csv", format="csv", header=True, delimiter=";", dsn=dsn
    )
    watcher.catch_up()
    rows = sql(dsn, "SELECT id, name, score::text, note FROM m ORDER BY id")
    assert rows == [
        (1, "ann", "1.5", "semi; colon"),
        (2, "bob", None, "two\nlines"),
        (3, 'c"d', "2", None),
    ]
    assert sql(dsn, "SELECT line_no, line FROM pgtide.rejects") == [(5, "three;x;1;y")]


def test_csv_without_header_into_named_columns(dsn: str, data: Path) -> None:
    sql(dsn, "CREATE TABLE m (a int, b text, c int DEFAULT 7)")
    (data / "m.csv").write_text("1,x\n2,y\n")
    pgtide.FileWatcher(
        data, table="m", columns="a,b", pattern="*.csv", format="csv", dsn=dsn
    ).catch_up()
    assert sql(dsn, "SELECT a, b, c FROM m ORDER BY a") == [(1, "x", 7), (2, "y", 7)]


def test_jsonl_keys_map_to_columns(dsn: str, data: Path) -> None:
    sql(dsn, "CREATE TABLE j (id int, name text, tags jsonb, ok boolean)")
    objects = [
        {"id": 1, "name": "a", "tags": ["x"], "ok": True, "extra": 1},
        {"id": 2, "tags": {"k": 1}},
    ]
    (data / "j.jsonl").write_text(
        "\n".join(json.dumps(o) for o in objects) + '\n{"id": \n[1, 2]\n{"id": "nope"}\n'
    )
    pgtide.FileWatcher(
        data,
        table="j",
        columns=["id", "name", "tags", "ok"],
        pattern="*.jsonl",
        format="jsonl",
        dsn=dsn,
    ).catch_up()
    assert sql(dsn, "SELECT id, name, tags, ok FROM j ORDER BY id") == [
        (1, "a", ["x"], True),
        (2, None, {"k": 1}, None),
    ]
    rejects = sql(dsn, "SELECT line_no, error FROM pgtide.rejects ORDER BY line_no")
    assert [r[0] for r in rejects] == [3, 4, 5]
    assert "JSON" in rejects[0][1] and "object" in rejects[1][1] and "integer" in rejects[2][1]


def test_sql_template_mode_seed_004(dsn: str, data: Path) -> None:
    sql(dsn, "CREATE TABLE IF NOT EXISTS data_container (ID FLOAT PRIMARY KEY NOT NULL)")
    (data / "fake_data.txt").write_text("1.5\n2.5\n1.5\n3.5\n")  # a duplicate: kept in rejects
    watcher = pgtide.FileWatcher(data, sql="INSERT INTO data_container (ID) VALUES (%s)", dsn=dsn)
    assert watcher.catch_up() == 3
    assert sql(dsn, "SELECT id FROM data_container ORDER BY id") == [(1.5,), (2.5,), (3.5,)]
    assert sql(dsn, "SELECT line_no FROM pgtide.rejects") == [(3,)]


def test_sql_template_with_named_jsonl_keys(dsn: str, data: Path) -> None:
    sql(dsn, "CREATE TABLE k (id int, doubled int)")
    (data / "k.jsonl").write_text('{"id": 1}\n{"id": 2}\n')
    pgtide.FileWatcher(
        data,
        sql="INSERT INTO k (id, doubled) VALUES (%(id)s, %(id)s * 2)",
        pattern="*.jsonl",
        format="jsonl",
        dsn=dsn,
    ).catch_up()
    assert sql(dsn, "SELECT id, doubled FROM k ORDER BY id") == [(1, 2), (2, 4)]


# -- start, errors, status ---------------------------------------------------------------------


def test_start_from_end_skips_existing_content_only(dsn: str, table: str, data: Path) -> None:
    (data / "a.txt").write_text("1\n2\n3")  # '3' is a line still being written
    watcher = pgtide.FileWatcher(data, table=table, columns=["v"], start="end", dsn=dsn)
    watcher.catch_up()
    assert floats(dsn) == []
    append(data / "a.txt", "4\n5\n")
    (data / "b.txt").write_text("6\n")  # a file that appears later is read whole
    watcher.catch_up()
    assert sorted(floats(dsn)) == [5, 6, 34]
    assert offsets(dsn)["a.txt"] == (9, 4)


def test_clear_errors(dsn: str, data: Path, tmp_path: Path) -> None:
    with pytest.raises(pgtide.ConfigError, match="does not exist; create the directory"):
        pgtide.FileWatcher(tmp_path / "nowhere", table="t", dsn=dsn)
    with pytest.raises(pgtide.IngestError, match="table 'missing' does not exist"):
        pgtide.FileWatcher(data, table="missing", dsn=dsn).start()
    sql(dsn, "CREATE TABLE two (a int, b int)")
    with pytest.raises(pgtide.IngestError, match="has no column 'c'; its columns are a, b"):
        pgtide.FileWatcher(data, table="two", columns=["c"], dsn=dsn).catch_up()
    with pytest.raises(pgtide.IngestError, match="has 2 columns; say which one"):
        pgtide.FileWatcher(data, table="two", dsn=dsn).catch_up()
    with pytest.raises(pgtide.ConfigError, match=r"either table= .* or sql="):
        pgtide.FileWatcher(data, dsn=dsn)
    (data / "a.txt").write_text("1\n")
    with pytest.raises(pgtide.IngestError, match='relation "nope" does not exist'):
        pgtide.FileWatcher(data, sql="INSERT INTO nope VALUES (%s)", dsn=dsn).catch_up()
    assert sql(dsn, "SELECT count(*) FROM pgtide.file_offsets") == [(0,)]


def test_status_reports_files_offsets_rows_and_rejects(dsn: str, table: str, data: Path) -> None:
    (data / "a.txt").write_text("1\n2\nx\n")
    (data / "b.txt").write_text("3\n4")
    watcher = pgtide.FileWatcher(data, table=table, columns=["v"], dsn=dsn)
    watcher.catch_up()
    status = watcher.status()
    assert not status.running
    assert [(Path(f.path).name, f.offset, f.size, f.line_count) for f in status.files] == [
        ("a.txt", 6, 6, 3),
        ("b.txt", 2, 3, 1),
    ]
    assert (status.rows_written, status.rejected, status.lines_read) == (3, 1, 4)
    assert status.bytes_behind == 1


# -- watching ---------------------------------------------------------------------------------


@pytest.mark.parametrize("poll", [False, True], ids=["events", "polling"])
def test_running_watcher_lands_appends_promptly(
    dsn: str, table: str, data: Path, poll: bool
) -> None:
    (data / "sub").mkdir()
    watcher = pgtide.FileWatcher(
        data, table=table, columns=["v"], recursive=True, poll=poll, rescan_every=0.1, dsn=dsn
    )
    with watcher:
        assert watcher.status().running
        for i in range(5):
            append(data / "sub" / "a.txt", f"{i}\n")
            began = time.monotonic()
            wait_for(lambda i=i: len(floats(dsn)) == i + 1, timeout=5, what=f"line {i}")
            assert time.monotonic() - began < 2.0
        append(data / "b.txt", "10\n")
        wait_for(lambda: len(floats(dsn)) == 6, what="a second file")
    assert not watcher.status().running


def test_async_face(dsn: str, table: str, data: Path) -> None:
    async def main() -> pgtide.ingest.WatcherStatus:
        watcher = pgtide.aio.FileWatcher(data, table=table, columns=["v"], dsn=dsn)
        (data / "a.txt").write_text("1\n2\n")
        assert await watcher.catch_up() == 2
        async with watcher:
            append(data / "a.txt", "3\n")
            while len(await asyncio.to_thread(floats, dsn)) < 3:
                await asyncio.sleep(0.02)
        task = asyncio.create_task(watcher.run())
        append(data / "a.txt", "4\n")
        while len(await asyncio.to_thread(floats, dsn)) < 4:
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return watcher.status()

    status = asyncio.run(asyncio.wait_for(main(), 30))
    assert floats(dsn) == [1, 2, 3, 4]
    assert not status.running and status.rows_written == 4


# -- the command line -------------------------------------------------------------------------


def test_cli_ingest_once_and_status(dsn: str, table: str, data: Path, cli: Any) -> None:
    (data / "a.txt").write_text("1\n2\nbad\n")
    done = cli("ingest", str(data), "--table", table, "--columns", "v", "--once", "--dsn", dsn)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.splitlines()[-1])  # JSON lines when piped
    assert (summary["rows_written"], summary["rejected"], summary["lines_read"]) == (2, 1, 3)
    assert floats(dsn) == [1, 2]

    status = cli("status", "--json", "--dsn", dsn)
    assert status.returncode == 0, status.stderr
    files = json.loads(status.stdout)["ingested_files"]
    assert [
        (Path(f["path"]).name, f["offset"], f["lines"], f["rows"], f["rejected"]) for f in files
    ] == [("a.txt", 8, 3, 2, 1)]


def test_cli_ingest_sql_template_from_end(dsn: str, data: Path, cli: Any) -> None:
    sql(dsn, "CREATE TABLE data_container (ID FLOAT PRIMARY KEY NOT NULL)")
    (data / "fake_data.txt").write_text("1.0\n")
    template = "INSERT INTO data_container (ID) VALUES (%s)"
    args = ("ingest", str(data), "--sql", template, "--once", "--dsn", dsn)
    assert cli(*args, "--from", "end").returncode == 0
    append(data / "fake_data.txt", "2.0\n")
    assert cli(*args).returncode == 0
    assert sql(dsn, "SELECT id FROM data_container") == [(2.0,)]


def test_cli_errors_are_one_clear_line(dsn: str, data: Path, tmp_path: Path, cli: Any) -> None:
    missing_dir = cli("ingest", str(tmp_path / "nowhere"), "--table", "t", "--dsn", dsn)
    assert missing_dir.returncode != 0
    assert missing_dir.stderr.strip().splitlines() == [
        f"pgtide: error: {tmp_path / 'nowhere'} does not exist; create the directory first "
        "or give the path to watch"
    ]
    missing_table = cli("ingest", str(data), "--table", "nope", "--once", "--dsn", dsn)
    assert missing_table.returncode != 0
    assert "table 'nope' does not exist" in missing_table.stderr
    assert len(missing_table.stderr.strip().splitlines()) == 1


def test_line_longer_than_a_batch_and_jsonl_into_all_columns(dsn: str, data: Path) -> None:
    sql(dsn, "CREATE TABLE long (s text)")
    big = "x" * 5000
    (data / "a.txt").write_text(f"short\n{big}\nend\n")
    pgtide.FileWatcher(data, table="long", batch_bytes=1024, dsn=dsn).catch_up()
    assert [r[0] for r in sql(dsn, "SELECT s FROM long")] == ["short", big, "end"]

    sql(dsn, "CREATE TABLE j (a int, b text)")
    (data / "j.jsonl").write_text('{"b": "x", "a": 1}\n')
    pgtide.FileWatcher(data, table="j", pattern="*.jsonl", format="jsonl", dsn=dsn).catch_up()
    assert sql(dsn, "SELECT a, b FROM j") == [(1, "x")]


def _open_under(directory: Path) -> int:
    """Descriptors this process holds on files under ``directory``."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith(str(directory))
        except OSError:
            continue
    return count


def test_many_files_with_few_descriptors(
    dsn: str, table: str, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_core, "MAX_OPEN_FILES", 2)
    for i in range(6):
        (data / f"f{i}.txt").write_text(f"{i}\n")
    watcher = pgtide.FileWatcher(data, table=table, columns=["v"], rescan_every=0.1, dsn=dsn)
    with watcher:
        wait_for(lambda: len(floats(dsn)) == 6, what="one line of each file")
        assert _open_under(data) <= 2
        for i in range(6):
            append(data / f"f{i}.txt", f"{10 + i}\n")
        os.rename(data / "f0.txt", data / "f0.old")  # rotated, maybe while closed
        (data / "f0.txt").write_text("100\n")
        expected = sorted([*range(6), *range(10, 16), 100])
        wait_for(lambda: sorted(floats(dsn)) == expected, what="appends and the rotation")
        assert _open_under(data) <= 2
    assert sorted(floats(dsn)) == expected


def test_cli_progress_line_renders() -> None:
    from rich.console import Console

    from pgtide.cli import ingest as command

    out = Console(record=True, width=160, force_terminal=False)
    display = command._Display(out)
    files = (pgtide.ingest.FileStatus("/d/a.txt", 2_000_000, 5_000_000, 100_000, 99_990, 10),)
    with display.progress:
        display.update(pgtide.ingest.WatcherStatus(True, files, 100_000))
    text = out.export_text()
    assert "1 files" in text and "3.0 MB left" in text and "99,990 rows, 10 rejected" in text


def test_cli_ingest_watches_until_interrupted(
    dsn: str, table: str, data: Path, tmp_path: Path
) -> None:
    (data / "a.txt").write_text("1\n")
    command = [sys.executable, "-m", "pgtide", "ingest", str(data), "-t", table, "-c", "v"]
    proc = subprocess.Popen(
        [*command, "--dsn", dsn], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        lines = proc.stdout
        assert lines is not None

        def until(rows: int) -> None:
            while json.loads(lines.readline())["rows_written"] < rows:
                pass

        until(1)  # JSON lines when piped, one each time something landed
        append(data / "a.txt", "2\n")
        until(2)
        proc.send_signal(signal.SIGINT)  # Ctrl-C: stop after the current batch
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert json.loads(out.splitlines()[-1])["rows_written"] == 2
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert floats(dsn) == [1, 2]


# -- the consolidated API ---------------------------------------------------------------------


def test_overview_is_database_work_returning_sections(dsn: str, table: str, data: Path) -> None:
    from pgtide.session import run

    with psycopg.connect(dsn, autocommit=True) as conn:
        pgtide.install(conn=conn)
        assert run(conn, pgtide.ingest.overview()) == []  # installed, never used: no section
        (data / "a.txt").write_text("1\n2\nx\n")
        pgtide.FileWatcher(data, table=table, columns=["v"], dsn=dsn, name="w1").catch_up()
        (section,) = run(conn, pgtide.ingest.overview())
        assert section.title == "ingested files"
        assert section.columns == [
            "watcher",
            "path",
            "offset",
            "lines",
            "rows",
            "rejected",
            "target",
            "updated",
        ]
        ((watcher, path, offset, lines, rows, rejected, target, updated),) = section.rows
        assert (watcher, Path(path).name, offset, lines, rows, rejected, target) == (
            "w1",
            "a.txt",
            6,
            3,
            2,
            1,
            "t",
        )
        assert updated.microsecond == 0


def test_overview_without_the_schema_has_no_section(bare_dsn: str) -> None:
    from pgtide.session import run

    with psycopg.connect(bare_dsn, autocommit=True) as conn:
        assert run(conn, pgtide.ingest.overview()) == []


def test_close_stops_and_releases_and_the_watcher_can_start_again(
    dsn: str, table: str, data: Path
) -> None:
    watcher = pgtide.FileWatcher(data, table=table, columns=["v"], dsn=dsn, rescan_every=0.1)
    watcher.start()
    append(data / "a.txt", "1\n")
    wait_for(lambda: floats(dsn) == [1.0], what="the first line")
    watcher.close()
    assert not watcher.status().running
    connections = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgtide ingest'"
    released = lambda: sql(dsn, connections) == [(0,)]  # noqa: E731 (a backend ends just after)
    wait_for(released, what="the connection to be released")
    append(data / "a.txt", "2\n")
    with watcher:  # start() again after close()
        wait_for(lambda: floats(dsn) == [1.0, 2.0], what="the line after a restart")
    wait_for(released, what="the connection to be released again")


def test_async_close_and_schema_qualified_quoted_names(dsn: str, data: Path) -> None:
    sql(dsn, 'CREATE SCHEMA "my.schema"')
    sql(dsn, 'CREATE TABLE "my.schema"."Odd Table" ("Value" float8)')
    (data / "a.txt").write_text("1\n2\n")

    async def main() -> None:
        watcher = pgtide.aio.FileWatcher(
            data, table='"my.schema"."Odd Table"', columns=["Value"], dsn=dsn
        )
        await watcher.start()
        while len(await asyncio.to_thread(sql, dsn, 'SELECT 1 FROM "my.schema"."Odd Table"')) < 2:
            await asyncio.sleep(0.02)
        await watcher.close()
        assert not watcher.status().running

    asyncio.run(asyncio.wait_for(main(), 30))
    assert sql(dsn, 'SELECT "Value" FROM "my.schema"."Odd Table"') == [(1.0,), (2.0,)]


def test_an_unreachable_database_fails_at_once_not_in_the_constructor(data: Path) -> None:
    watcher = pgtide.FileWatcher(data, table="t", dsn="postgresql://u@127.0.0.1:1/x")
    began = time.monotonic()
    with pytest.raises(pgtide.ConnectionFailed):
        watcher.catch_up()
    with pytest.raises(pgtide.ConnectionFailed):
        watcher.start()
    assert time.monotonic() - began < 10 and not watcher.status().running


# -- any byte sequence is safe ----------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["lines", "csv"])
def test_nul_bytes_and_invalid_utf8_go_to_rejects_with_their_bytes(
    dsn: str, data: Path, fmt: str
) -> None:
    sql(dsn, "CREATE TABLE words (w text)")
    nul, latin1 = b"bad\x00line", b"caf\xe9 \xff"
    (data / "a.txt").write_bytes(b"one\n" + nul + b"\ntwo\n" + latin1 + b"\nthree\n")
    watcher = pgtide.FileWatcher(data, table="words", columns=["w"], format=fmt, dsn=dsn)
    assert watcher.catch_up() == 3
    assert sql(dsn, "SELECT w FROM words") == [("one",), ("two",), ("three",)]
    rejects = sql(dsn, "SELECT line_no, raw, line, error FROM pgtide.rejects ORDER BY line_no")
    assert [(r[0], r[1]) for r in rejects] == [(2, nul), (4, latin1)]
    assert all(r[2] and r[3] for r in rejects)  # a readable text and a reason as well
    assert "NUL" in rejects[0][3] and "UTF-8" in rejects[1][3]
    assert watcher.status().rejected == 2


def test_a_nul_line_never_stops_a_running_watcher(dsn: str, table: str, data: Path) -> None:
    with pgtide.FileWatcher(data, table=table, columns=["v"], rescan_every=0.1, dsn=dsn) as w:
        append(data / "a.txt", "1\n")
        wait_for(lambda: floats(dsn) == [1.0], what="the first line")
        with (data / "a.txt").open("ab") as f:
            f.write(b"\x00\n2\n\xc3\x28\n{\\u0000}\n3\n")
        wait_for(lambda: floats(dsn) == [1.0, 2.0, 3.0], what="the lines after the bad ones")
        assert w.status().running
    raw = [r[0] for r in sql(dsn, "SELECT raw FROM pgtide.rejects ORDER BY line_no")]
    assert raw == [b"\x00", b"\xc3\x28", b"{\\u0000}"]


def test_jsonl_nul_escapes_and_the_sql_template_reject_cleanly(dsn: str, data: Path) -> None:
    sql(dsn, "CREATE TABLE j (a text)")
    good, escaped = b'{"a": "x"}', b'{"a": "\\u0000"}'
    (data / "a.jsonl").write_bytes(good + b"\n" + escaped + b"\n" + b"\xff\n" + good + b"\n")
    pgtide.FileWatcher(
        data, table="j", columns=["a"], format="jsonl", pattern="*.jsonl", dsn=dsn
    ).catch_up()
    (data / "b.txt").write_bytes(b"y\n\x00z\n\xfe\nw\n")
    pgtide.FileWatcher(data, sql="INSERT INTO j (a) VALUES (%s)", dsn=dsn, name="s").catch_up()
    assert sorted(r[0] for r in sql(dsn, "SELECT a FROM j")) == ["w", "x", "x", "y"]
    rejects = sql(dsn, "SELECT raw FROM pgtide.rejects ORDER BY path, line_no")
    assert [r[0] for r in rejects] == [escaped, b"\xff", b"\x00z", b"\xfe"]


# -- large batches streamed into COPY ----------------------------------------------------------


@pytest.fixture
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stream batches in tiny pieces, so that a small file takes many of them."""
    monkeypatch.setattr(_core, "FIRST_PIECE", 512)
    monkeypatch.setattr(_writer, "COPY_PIECE", 2048)


def test_streamed_batch_lands_complete_lines_once(
    dsn: str, table: str, data: Path, small_pieces: None
) -> None:
    values = [f"{i}.5" for i in range(3000)]
    body = "".join(f"{v}\n" for v in values)
    (data / "a.txt").write_text(body + "3000")  # the last line is not complete yet
    watcher = pgtide.FileWatcher(data, table=table, columns=["v"], dsn=dsn)
    streamed = []
    original = _writer.Writer.stream

    def spying(self: _writer.Writer, conn: Any, stream: Any, columns: Any) -> int:
        streamed.append(stream.limit)
        return original(self, conn, stream, columns)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_writer.Writer, "stream", spying)
        assert watcher.catch_up() == 3000
    assert streamed  # the batch went through the streaming path
    assert floats(dsn) == [float(v) for v in values]
    assert offsets(dsn) == {"a.txt": (len(body), 3000)}
    append(data / "a.txt", ".5\n")
    assert watcher.catch_up() == 1
    assert offsets(dsn) == {"a.txt": (len(body) + 7, 3001)}
    assert len(floats(dsn)) == 3001


def test_streamed_batch_with_bad_and_odd_lines_rejects_only_the_bad(
    dsn: str, table: str, data: Path, small_pieces: None
) -> None:
    lines = [str(i) for i in range(3000)]
    lines[2500] = "oops"  # refused by the server, late in the stream
    lines[2700] = ""  # skipped: this piece cannot go to COPY unchanged
    (data / "a.txt").write_text("\n".join(lines) + "\n")
    watcher = pgtide.FileWatcher(data, table=table, columns=["v"], dsn=dsn)
    assert watcher.catch_up() == 2998
    assert floats(dsn) == [float(v) for v in lines if v not in ("oops", "")]
    assert sql(dsn, "SELECT line_no, line FROM pgtide.rejects") == [(2501, "oops")]
    assert offsets(dsn)["a.txt"][1] == 3000
    assert (watcher.status().rows_written, watcher.status().rejected) == (2998, 1)


@pytest.mark.parametrize("bad", [b"20\x0000", b"\xc3\x28"], ids=["nul", "not-utf8"])
def test_a_bad_line_late_in_a_stream_lands_the_lines_before_it_as_sent(
    dsn: str,
    table: str,
    data: Path,
    small_pieces: None,
    monkeypatch: pytest.MonkeyPatch,
    bad: bytes,
) -> None:
    lines = [str(i).encode() for i in range(3000)]
    lines[2000] = bad  # a NUL, or bytes that are not UTF-8: both are seen before sending
    body = b"\n".join(lines) + b"\n"
    (data / "a.txt").write_bytes(body)
    parsed: list[int] = []
    original = _writer.Writer._parse

    def spying(self: _writer.Writer, payload: bytes, *args: Any) -> Any:
        parsed.append(len(payload))
        return original(self, payload, *args)

    monkeypatch.setattr(_writer.Writer, "_parse", spying)
    watcher = pgtide.FileWatcher(data, table=table, columns=["v"], dsn=dsn)
    assert watcher.catch_up() == 2999
    # the lines before the bad one landed as streamed (not rolled back, read again, parsed)
    assert len(parsed) == 1 and parsed[0] < len(body) - len(b"\n".join(lines[:1900]))
    assert floats(dsn) == [float(v) for i, v in enumerate(lines) if i != 2000]
    rejects = sql(dsn, "SELECT line_no, raw FROM pgtide.rejects ORDER BY line_no")
    assert rejects == [(2001, bad)]
    assert offsets(dsn)["a.txt"][1] == 3000


def test_a_files_batch_streams_in_one_transaction_up_to_batch_bytes(
    dsn: str, table: str, data: Path, small_pieces: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_core, "READ_BYTES", 4096)  # what a batch read whole may hold
    body = "".join(f"{i}.25\n" for i in range(3000))
    (data / "a.txt").write_text(body)
    (data / "b.txt").write_text(body)
    streamed: list[int] = []
    original = _writer.Writer.stream

    def spying(self: _writer.Writer, conn: Any, stream: Any, columns: Any) -> int:
        streamed.append(stream.limit)
        return original(self, conn, stream, columns)

    monkeypatch.setattr(_writer.Writer, "stream", spying)
    a = pgtide.FileWatcher(data / "a.txt", table=table, columns=["v"], dsn=dsn, name="a")
    assert a.catch_up() == 3000
    assert streamed == [len(body)]  # one transaction, however much more than READ_BYTES
    streamed.clear()
    b = pgtide.FileWatcher(
        data / "b.txt", table=table, columns=["v"], dsn=dsn, name="b", batch_bytes=4096
    )
    assert b.catch_up() == 3000
    assert len(streamed) == -(-len(body) // 4096) and max(streamed) <= 4096
    assert offsets(dsn) == {"a.txt": (len(body), 3000), "b.txt": (len(body), 3000)}


def test_a_stop_during_a_stream_lands_what_was_sent(
    dsn: str, table: str, data: Path, small_pieces: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = "".join(f"{i}.75\n" for i in range(3000))
    (data / "a.txt").write_text(body)
    watcher = pgtide.FileWatcher(data, table=table, columns=["v"], dsn=dsn)
    original = _writer.Stream.pieces

    def stopping(self: _writer.Stream) -> Any:
        for n, piece in enumerate(original(self)):
            if n == 1:
                watcher._engine.request_stop()  # as SIGTERM does, in the middle of the batch
            yield piece

    monkeypatch.setattr(_writer.Stream, "pieces", stopping)
    first = watcher.catch_up()
    assert 0 < first < 3000  # two pieces landed, not the whole batch
    assert offsets(dsn)["a.txt"][1] == first == len(floats(dsn))
    monkeypatch.undo()
    assert watcher.catch_up() == 3000 - first  # the rest, exactly once
    assert floats(dsn) == [i + 0.75 for i in range(3000)]


def test_streamed_csv_with_header_and_quoted_newlines(
    dsn: str, data: Path, small_pieces: None
) -> None:
    sql(dsn, "CREATE TABLE m (id int, note text)")
    rows = [(i, f"line\nbreak {i}" if i % 97 == 0 else f"note {i}") for i in range(2000)]
    text = "id,note\n" + "".join(f'{i},"{note}"\n' for i, note in rows)
    (data / "m.csv").write_text(text)
    watcher = pgtide.FileWatcher(
        data, table="m", pattern="*.csv", format="csv", header=True, dsn=dsn
    )
    assert watcher.catch_up() == 2000
    assert sql(dsn, "SELECT id, note FROM m ORDER BY id") == rows
    assert offsets(dsn) == {"m.csv": (len(text), text.count("\n"))}


def test_streamed_csv_with_empty_lines_left_to_copy(
    dsn: str, data: Path, small_pieces: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    sql(dsn, "CREATE TABLE m (id int, note text)")
    lines = [f"{i},note {i}" for i in range(2000)]
    lines[1500] = ""  # COPY refuses it (missing data for column note): parsed, skipped
    text = "\n".join(lines) + "\n"
    streamed: list[int] = []
    original = _writer.Writer.stream

    def spying(self: _writer.Writer, conn: Any, stream: Any, columns: Any) -> int:
        streamed.append(stream.limit)
        return original(self, conn, stream, columns)

    monkeypatch.setattr(_writer.Writer, "stream", spying)
    for name, body in (("m.csv", text.encode()), ("w.csv", text.replace("\n", "\r\n").encode())):
        (data / name).write_bytes(body)  # one file at a time: each batch is streamed
        watcher = pgtide.FileWatcher(
            data / name, table="m", columns=["id", "note"], format="csv", name=name, dsn=dsn
        )
        assert watcher.catch_up() == 1999
        assert offsets(dsn)[name] == (len(body), 2000)
    assert len(streamed) >= 2
    expected = sorted(2 * [(i, f"note {i}") for i in range(2000) if i != 1500])
    assert sql(dsn, "SELECT id, note FROM m ORDER BY id") == expected
    assert sql(dsn, "SELECT count(*) FROM pgtide.rejects")[0][0] == 0


def test_streamed_csv_lines_told_by_rows_until_a_piece_holds_a_quote(
    dsn: str, data: Path, small_pieces: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    sql(dsn, "CREATE TABLE m (id int, note text)")
    rows = [(i, f"note {i}") for i in range(2000)]
    rows[1500] = (1500, "two\nlines")  # the only quoted field, late in the stream
    text = "id,note\n" + "".join(f'{i},"{n}"\n' if "\n" in n else f"{i},{n}\n" for i, n in rows)
    (data / "m.csv").write_text(text)
    streams: list[tuple[bool, bool]] = []
    original = _writer.Writer.stream

    def spying(self: _writer.Writer, conn: Any, stream: Any, columns: Any) -> int:
        landed = original(self, conn, stream, columns)
        streams.append((stream.counted, stream.stopped))
        return landed

    monkeypatch.setattr(_writer.Writer, "stream", spying)
    watcher = pgtide.FileWatcher(
        data, table="m", pattern="*.csv", format="csv", header=True, dsn=dsn
    )
    assert watcher.catch_up() == 2000
    assert sql(dsn, "SELECT id, note FROM m ORDER BY id") == rows
    assert offsets(dsn) == {"m.csv": (len(text), text.count("\n"))}
    # no newline counted before the quote (rows told the lines); the stream ended at it
    assert streams[0] == (False, True)
    assert any(counted for counted, _ in streams[1:])


def test_a_stream_asks_for_room_in_a_unix_sockets_send_buffer_only(
    dsn: str, table: str, data: Path, small_pieces: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Conn:  # what roomy reads of a connection: its socket
        def __init__(self, sock: socket.socket) -> None:
            self.pgconn = type("PGconn", (), {"socket": sock.fileno()})()

    unix, _peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    _writer.roomy(Conn(unix))  # type: ignore[arg-type]
    ceiling = int(Path("/proc/sys/net/core/wmem_max").read_text())
    assert unix.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= min(_writer.SEND_BUFFER, ceiling)
    server = socket.create_server(("127.0.0.1", 0))
    with server, socket.create_connection(server.getsockname()) as tcp:
        before = tcp.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        _writer.roomy(Conn(tcp))  # type: ignore[arg-type]
        assert tcp.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == before
    unix.close()
    asked: list[Any] = []
    monkeypatch.setattr(_writer, "roomy", asked.append)
    (data / "a.txt").write_text("".join(f"{i}.5\n" for i in range(3000)))
    watcher = pgtide.FileWatcher(data, table=table, columns=["v"], dsn=dsn)
    assert watcher.catch_up() == 3000
    assert asked and all(isinstance(c, psycopg.Connection) for c in asked)


@pytest.mark.parametrize(
    ("kind", "searched"), [("float8", False), ("text", True)], ids=["float8", "text"]
)
def test_empty_lines_are_left_to_copy_only_when_the_columns_type_refuses_them(
    dsn: str,
    data: Path,
    small_pieces: None,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    searched: bool,
) -> None:
    sql(dsn, f"CREATE TABLE e (n bigint GENERATED ALWAYS AS IDENTITY, v {kind})")
    lines = [f"{i}.5" for i in range(3000)]
    lines[2200] = lines[2600] = ""  # skipped, whoever finds them (never a row of '')
    (data / "a.txt").write_text("\n".join(lines) + "\n")
    checks: list[bool] = []
    original = _writer.copyable

    def spying(*args: Any, **kwargs: Any) -> Any:
        checks.append(kwargs.get("empty_refused", False))
        return original(*args, **kwargs)

    monkeypatch.setattr(_writer, "copyable", spying)
    watcher = pgtide.FileWatcher(data, table="e", columns=["v"], dsn=dsn)
    assert watcher.catch_up() == 2998
    values = [r[0] for r in sql(dsn, "SELECT v FROM e ORDER BY n")]
    assert [str(v) for v in values] == [v for v in lines if v]
    assert offsets(dsn) == {"a.txt": (len("\n".join(lines)) + 1, 3000)}
    assert sql(dsn, "SELECT count(*) FROM pgtide.rejects")[0][0] == 0
    assert set(checks) == {not searched}  # float8: COPY refuses an empty line itself
