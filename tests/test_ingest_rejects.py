"""``pgtide rejects``: list, show the raw bytes, retry into the target, purge (through the CLI)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_ingest import floats, sql

import pgtide
from pgtide.ingest import rejects


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def table(dsn: str) -> str:
    sql(dsn, "CREATE TABLE t (n bigint GENERATED ALWAYS AS IDENTITY, v float8)")
    return "t"


def ingest(dsn: str, data: Path, text: bytes, name: str = "default", file: str = "a.txt") -> None:
    directory = data / name  # each watcher its own directory
    directory.mkdir(exist_ok=True)
    (directory / file).write_bytes(text)
    pgtide.FileWatcher(directory, table="t", columns=["v"], name=name, dsn=dsn).catch_up()


def listed(cli: Any, dsn: str, *args: str) -> list[dict[str, Any]]:
    done = cli("rejects", *args, "--dsn", dsn)
    assert done.returncode == 0, done.stderr
    found: list[dict[str, Any]] = json.loads(done.stdout)  # JSON when piped
    return found


def test_list_filter_and_show_the_raw_bytes(dsn: str, table: str, data: Path, cli: Any) -> None:
    assert listed(cli, dsn) == []
    ingest(dsn, data, b"1\nnot a number\n2\nbad\x00nul\n\xff\xfe\n", name="w1")
    ingest(dsn, data, b"x\n", name="w2", file="b.txt")
    found = listed(cli, dsn)
    assert [(Path(r["path"]).name, r["line_no"], r["watcher"]) for r in found] == [
        ("a.txt", 2, "w1"),
        ("a.txt", 4, "w1"),
        ("a.txt", 5, "w1"),
        ("b.txt", 1, "w2"),
    ]
    assert [r["line"] for r in found] == ["not a number", "bad\\x00nul", "\\xff\\xfe", "x"]
    assert "double precision" in found[0]["error"] and "NUL" in found[1]["error"]
    assert found[0]["target"] == "t (v)"
    assert [r["line_no"] for r in listed(cli, dsn, "--watcher", "w2")] == [1]
    assert len(listed(cli, dsn, "--path", str(data / "w1" / "a.txt"))) == 3

    shown = cli("rejects", "show", str(found[1]["id"]), "--json", "--dsn", dsn)
    assert shown.returncode == 0, shown.stderr
    assert bytes.fromhex(json.loads(shown.stdout)["raw_hex"]) == b"bad\x00nul"
    missing = cli("rejects", "show", "999999", "--dsn", dsn)
    assert missing.returncode == 1
    assert (
        missing.stderr.strip()
        == "pgtide: error: there is no reject with id 999999 (see pgtide rejects)"
    )


def test_retry_lands_fixed_lines_through_the_same_writer(
    dsn: str, table: str, data: Path, cli: Any
) -> None:
    ingest(dsn, data, b"1\n1e999\nfoo\nbad\x00\n")
    by_line = {r["line_no"]: r["id"] for r in listed(cli, dsn)}
    assert sorted(by_line) == [2, 3, 4]

    nothing = cli("rejects", "retry", "--dsn", dsn)
    assert nothing.returncode == 1 and "give --all" in nothing.stderr

    sql(dsn, "UPDATE pgtide.rejects SET raw = '3' WHERE id = %s", (by_line[3],))  # fix a line
    one = cli("rejects", "retry", str(by_line[3]), "--dsn", dsn)
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout) == {"landed": [by_line[3]], "failed": []}
    assert floats(dsn) == [1.0, 3.0]

    every = cli("rejects", "retry", "--all", "--dsn", dsn)  # the others still fail
    assert every.returncode == 1
    result = json.loads(every.stdout)
    assert result["landed"] == []
    assert [f["id"] for f in result["failed"]] == [by_line[2], by_line[4]]
    assert "out of range" in result["failed"][0]["error"]
    assert [r["line_no"] for r in listed(cli, dsn)] == [2, 4]  # kept, with their error

    sql(dsn, "ALTER TABLE t ALTER v TYPE numeric")  # fix the table instead
    again = cli("rejects", "retry", "--all", "--dsn", dsn)
    assert json.loads(again.stdout)["landed"] == [by_line[2]]
    assert sql(dsn, "SELECT count(*) FROM t") == [(3,)]
    assert [r["line_no"] for r in listed(cli, dsn)] == [4]  # a NUL line never lands


def test_retry_of_a_transform_watchers_lines(dsn: str, data: Path, cli: Any) -> None:
    sql(dsn, "CREATE TABLE kv (k text PRIMARY KEY, v int)")

    def split(line: str, path: str) -> tuple[str, int]:
        key, value = line.split("=")
        return key, int(value)

    (data / "a.txt").write_text("a=1\nb=x\na=2\n")
    pgtide.FileWatcher(data, table="kv", transform=split, dsn=dsn).catch_up()
    ids = [r.id for r in rejects.find(dsn=dsn)]
    assert len(ids) == 2
    cli_retry = cli("rejects", "retry", "--all", "--dsn", dsn)
    assert cli_retry.returncode == 1 and "retry it from Python" in cli_retry.stdout

    sql(dsn, "DELETE FROM kv")  # make room for a=2
    done = rejects.retry(transform=split, dsn=dsn)
    assert done.landed == [ids[1]]
    assert [r.id for r in done.failed] == [ids[0]]
    assert "ValueError" in done.failed[0].error
    assert sql(dsn, "SELECT k, v FROM kv") == [("a", 2)]


def test_purge(dsn: str, table: str, data: Path, cli: Any) -> None:
    ingest(dsn, data, b"x\ny\n", name="w1")
    ingest(dsn, data, b"z\n", name="w2", file="b.txt")

    def purge(*args: str) -> int:
        done = cli("rejects", "purge", *args, "--dsn", dsn)
        assert done.returncode == 0, done.stderr
        deleted: int = json.loads(done.stdout)["deleted"]
        return deleted

    assert purge("--older-than", "7d") == 0
    sql(dsn, "UPDATE pgtide.rejects SET at = now() - interval '8 days' WHERE line_no = 1")
    assert purge("--older-than", "7d") == 2
    assert purge("--watcher", "w1") == 1
    assert purge() == 0
    bad = cli("rejects", "purge", "--older-than", "soon", "--dsn", dsn)
    assert bad.returncode == 2 and "'soon' is not a duration" in bad.stderr
