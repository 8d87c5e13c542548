"""``FileWatcher(..., transform=fn)``: a Python hook per line that keeps COPY and exactly-once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_ingest import offsets, sql

import pgtide


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def readings(dsn: str) -> str:
    sql(dsn, "CREATE TABLE readings (sensor text, value float8, source text)")
    return "readings"


def rows(dsn: str) -> list[tuple[Any, ...]]:
    return sql(dsn, "SELECT sensor, value, source FROM readings ORDER BY sensor, value")


def rejects(dsn: str) -> list[tuple[Any, ...]]:
    return sql(dsn, "SELECT line_no, raw, error FROM pgtide.rejects ORDER BY line_no")


def test_each_return_kind(dsn: str, readings: str, data: Path) -> None:
    def fn(line: str, path: str) -> Any:
        kind, _, rest = line.partition(" ")
        name = Path(path).name
        if kind == "tuple":  # one row, values in column order
            return (rest, 1.0, name)
        if kind == "dict":  # one row by column name; a missing column is NULL
            return {"sensor": rest, "value": 2.0}
        if kind == "list":  # several rows from one line
            return [(rest, float(i), name) for i in range(3)]
        if kind == "skip":
            return None
        raise ValueError(f"unknown kind {kind!r}")

    (data / "a.txt").write_text("tuple t\ndict d\nlist l\nskip s\n\nboom b\n")
    watcher = pgtide.FileWatcher(data, table=readings, transform=fn, dsn=dsn)
    assert watcher.catch_up() == 5
    assert rows(dsn) == [
        ("d", 2.0, None),
        ("l", 0.0, "a.txt"),
        ("l", 1.0, "a.txt"),
        ("l", 2.0, "a.txt"),
        ("t", 1.0, "a.txt"),
    ]
    assert rejects(dsn) == [(6, b"boom b", "transform raised ValueError: unknown kind 'boom'")]
    assert offsets(dsn) == {"a.txt": (len((data / "a.txt").read_bytes()), 6)}
    status = watcher.status()
    assert (status.rows_written, status.rejected, status.lines_read) == (5, 1, 6)


def test_rows_that_do_not_fit_are_rejects_and_the_rest_lands(
    dsn: str, readings: str, data: Path
) -> None:
    def fn(line: str, path: str) -> Any:
        return json.loads(line)["row"]

    lines = [
        {"row": ["a", 1, "x"]},  # a list of one value per column is a list of rows: wrong
        {"row": {"sensor": "b", "value": 2}},
        {"row": {"sensor": "c", "nope": 1}},  # unknown column
        {"row": "text"},  # not a row
        {"row": {"sensor": "d", "value": "not a number"}},  # the server refuses it
        {"row": [["e", 5, "y"]]},  # a list holding a list, not a tuple
        {"row": {"sensor": "f", "value": 6}},
    ]
    (data / "a.txt").write_text("".join(json.dumps(line) + "\n" for line in lines) + "{bad\n")
    watcher = pgtide.FileWatcher(data, table=readings, transform=fn, dsn=dsn)
    assert watcher.catch_up() == 2
    assert rows(dsn) == [("b", 2.0, None), ("f", 6.0, None)]
    found = rejects(dsn)
    assert [r[0] for r in found] == [1, 3, 4, 5, 6, 8]
    errors = [r[2] for r in found]
    assert "returned str" in errors[0] and "a tuple, a dict, a list of them" in errors[0]
    assert "unknown column 'nope'" in errors[1]
    assert "returned str" in errors[2]
    assert "double precision" in errors[3]
    assert "returned list" in errors[4]
    assert "JSONDecodeError" in errors[5]


def test_with_columns_and_with_an_sql_template(dsn: str, readings: str, data: Path) -> None:
    (data / "a.txt").write_text("a=1\nb=2\n")

    def split(line: str, path: str) -> tuple[str, float]:
        key, value = line.split("=")
        return key, float(value)

    pgtide.FileWatcher(
        data, table=readings, columns=["sensor", "value"], transform=split, dsn=dsn
    ).catch_up()
    assert rows(dsn) == [("a", 1.0, None), ("b", 2.0, None)]

    def named(line: str, path: str) -> dict[str, Any]:
        key, value = line.split("=")
        return {"s": key.upper(), "v": float(value) * 10}

    pgtide.FileWatcher(
        data,
        sql="INSERT INTO readings (sensor, value) VALUES (%(s)s, %(v)s)",
        transform=named,
        name="template",
        dsn=dsn,
    ).catch_up()
    assert rows(dsn)[:2] == [("A", 10.0, None), ("B", 20.0, None)]


def test_bad_bytes_never_reach_the_transform(dsn: str, readings: str, data: Path) -> None:
    seen: list[str] = []

    def fn(line: str, path: str) -> tuple[str, float, str]:
        seen.append(line)
        return (line, 0.0, "")

    (data / "a.txt").write_bytes(b"ok\n\x00\n\xff\nfine\n")
    pgtide.FileWatcher(data, table=readings, transform=fn, dsn=dsn).catch_up()
    assert seen == ["ok", "fine"]
    assert [(r[0], r[1]) for r in rejects(dsn)] == [(2, b"\x00"), (3, b"\xff")]


def test_transform_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(pgtide.ConfigError, match="use format='lines'"):
        pgtide.FileWatcher(tmp_path, table="t", format="csv", transform=lambda line, path: None)
    with pytest.raises(pgtide.ConfigError, match="must be a function"):
        pgtide.FileWatcher(tmp_path, table="t", transform="upper")  # type: ignore[arg-type]
    several = pgtide.FileWatcher(
        tmp_path, table="t", columns=["a", "b"], transform=lambda line, path: None
    )  # several columns are fine: the transform makes the rows
    assert several.settings.target.columns == ("a", "b")
