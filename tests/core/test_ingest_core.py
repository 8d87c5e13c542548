"""Ingest's pure parts: arguments, signatures, formats (no database needed)."""

from __future__ import annotations

import inspect
import os
import warnings
from pathlib import Path
from typing import Any

import pytest

import pgtide
import pgtide.aio
from pgtide import session
from pgtide.ingest import _writer
from pgtide.ingest._formats import (
    CsvOptions,
    complete_end,
    copyable,
    parse_csv,
    parse_jsonl,
    parse_lines,
    raw_copy_payload,
)
from pgtide.ingest._writer import NotRaw, Stream
from pgtide.names import TableName


def test_aio_signature_is_the_blocking_one() -> None:
    blocking = inspect.signature(pgtide.FileWatcher)
    assert inspect.signature(pgtide.aio.FileWatcher) == blocking
    params = blocking.parameters
    assert list(params)[:2] == ["path", "table"]
    assert all(p.kind is p.KEYWORD_ONLY for n, p in params.items() if n != "path")
    assert params["dsn"].default is None and params["batch_bytes"].default == 64 << 20


def test_the_constructor_neither_resolves_nor_connects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("resolved or connected in a constructor")

    monkeypatch.setattr(session, "resolve", refuse)
    monkeypatch.setattr(session, "connect", refuse)
    for face in (pgtide.FileWatcher, pgtide.aio.FileWatcher):
        face(tmp_path, table="t", columns=["v"])
        face(tmp_path, sql="INSERT INTO t VALUES (%s)", dsn="postgresql://nowhere:1/x")


def test_positional_arguments_still_work_with_a_deprecation_warning(tmp_path: Path) -> None:
    with pytest.warns(DeprecationWarning, match=r"table, columns, .* by position is deprecated"):
        old = pgtide.FileWatcher(tmp_path, "schema.t", ["v"], "*.log", "lines", None, "end")
    s = old.settings
    assert (s.target.table, s.target.columns, s.pattern, s.start) == (
        TableName("schema", "t"),
        ("v",),
        "*.log",
        "end",
    )
    with pytest.warns(DeprecationWarning):
        aio = pgtide.aio.FileWatcher(tmp_path, "t", dsn="postgresql://nowhere:1/x")
    assert aio.settings.target.table == TableName(None, "t")
    with pytest.raises(TypeError, match="positional arguments"):
        pgtide.FileWatcher(tmp_path, *range(9))  # type: ignore[misc]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pgtide.FileWatcher(tmp_path, table="t")  # the keyword form warns nothing


def test_table_names_go_through_the_one_parser(tmp_path: Path) -> None:
    watcher = pgtide.FileWatcher(tmp_path, table='sales."Big Table"', columns=["v"])
    assert watcher.settings.target.table == TableName("sales", "Big Table")
    assert watcher.settings.target.label == "sales.Big Table"  # as names.TableName reads back
    with pytest.raises(pgtide.InvalidName):
        pgtide.FileWatcher(tmp_path, table="a.b.c")
    assert "aio.FileWatcher(" in repr(pgtide.aio.FileWatcher(tmp_path, table="t"))


def test_lines_format() -> None:
    rows, rejects = parse_lines(b"a\r\n\nb\xff\nc\n", 10)
    assert [(r.line_no, r.values) for r in rows] == [(10, ("a",)), (13, ("c",))]
    assert [r.line_no for r in rejects] == [12]


def test_csv_and_jsonl_formats() -> None:
    options = CsvOptions(header=True, delimiter=";")
    rows, rejects = parse_csv(b'id;name\n1;"a;b"\n2;\n', 1, options)
    assert [r.values for r in rows] == [("1", "a;b"), ("2", None)] and not rejects
    rows, rejects = parse_jsonl(b'{"a": 1, "b": [1]}\n[1]\nnope\n', 1, ["b", "a"])
    assert [r.values for r in rows] == [("[1]", 1)]
    assert [r.line_no for r in rejects] == [2, 3]


def test_complete_end_and_the_copy_fast_path() -> None:
    csv = CsvOptions()
    assert complete_end(b"1\n2\n3", "lines", csv) == 4
    assert complete_end(b'1,"x\ny"\n2,"open\n', "csv", csv) == 8
    assert raw_copy_payload(b"1\n2\n", "lines", 1, csv) == b"1\n2\n"
    assert raw_copy_payload(b"1\n\n2\n", "lines", 1, csv) is None
    assert raw_copy_payload(b"a\tb\n", "lines", 1, csv) is None
    assert raw_copy_payload(b"h\n1\n", "csv", 1, CsvOptions(header=True)) == b"1\n"


def test_copyable_looks_at_the_complete_lines_only() -> None:
    csv, header = CsvOptions(), CsvOptions(header=True)
    block = b"1\n2\n\n3"  # an empty line past ``end`` does not count
    assert copyable(block, 4, "lines", 1, csv) == (0, 4)
    assert copyable(block, 7, "lines", 1, csv) is None
    assert copyable(b"a,b\r\n1,2\r\n", 10, "csv", 1, csv) == (0, 10)  # CRLF alone is fine
    assert copyable(b"a,b\r\n\r\n1,2\r\n", 15, "csv", 1, csv) is None  # an empty CRLF line
    assert copyable(b"x\r\n", 3, "lines", 1, csv) is None  # lines: a CR needs escaping
    assert copyable(b"id,v\n1,2\n", 9, "csv", 1, header) == (5, 9)  # the header is left out
    assert copyable(b"1,2\n", 4, "csv", 2, header) == (0, 4)  # not the file's first line
    assert copyable(b"1\x00\n", 3, "csv", 1, csv) is None
    assert copyable(b"", 0, "lines", 1, csv) is None
    assert copyable(b'{"a": 1}\n', 9, "jsonl", 1, csv) is None


def _stream(path: Path, data: bytes, fmt: Any, options: CsvOptions) -> Stream:
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    return Stream(fd, 0, len(data), os.pread(fd, 8, 0), 1, fmt, options)


def test_a_stream_sends_views_of_its_pieces_and_counts_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_writer, "COPY_PIECE", 8)
    data = b'id,v\n1,"a\nb"\n2,c\n3,d\n4'  # a header, a quoted newline, an unfinished line
    stream = _stream(tmp_path / "a.csv", data, "csv", CsvOptions(header=True))
    try:
        pieces = list(stream.pieces())
    finally:
        os.close(stream.fd)
    assert all(isinstance(p, memoryview) for p in pieces)
    # the header's piece holds no quote: its rows would tell its lines; the next piece holds
    # one, so the stream ends before it (it needs counting, the first did not count)
    assert b"".join(pieces) == b"" and stream.stopped
    assert (stream.sent, stream.lines, stream.lines_in(0)) == (5, 1, 1)
    # the next batch starts there and counts every newline it sends
    stream = Stream(
        os.open(tmp_path / "a.csv", os.O_RDONLY),
        5,
        len(data) - 5,
        b"",
        2,
        "csv",
        CsvOptions(header=True),
    )
    stream.first = os.pread(stream.fd, 8, 5)
    try:
        pieces = list(stream.pieces())
    finally:
        os.close(stream.fd)
    assert b"".join(pieces) == b'1,"a\nb"\n2,c\n3,d\n'  # no unfinished line
    assert (stream.sent, stream.lines, stream.counted) == (len(data) - 6, 4, True)
    assert stream.lines_in(3) == 4  # CSV: the lines counted, not the rows

    stream = _stream(tmp_path / "b.txt", b"1\n2\n3\tx\n", "lines", CsvOptions())
    try:
        with pytest.raises(NotRaw):  # the piece with a tab needs escaping: parsed instead
            list(stream.pieces())
    finally:
        os.close(stream.fd)


def test_a_stream_checks_its_first_piece_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller checked the first piece to decide to stream: the stream does not scan it
    again (the later pieces it reads are checked as they come)."""
    monkeypatch.setattr(_writer, "COPY_PIECE", 4)
    data = b"1\n2\n3\n4\n"
    stream = _stream(tmp_path / "a.txt", data, "lines", CsvOptions())
    stream.first = data[:4]
    stream.first_span = (4, (0, 4))
    checked: list[bytes] = []
    real = _writer.copyable

    def counting(window: bytes, *args: Any, **kwargs: Any) -> tuple[int, int] | None:
        checked.append(bytes(window))
        return real(window, *args, **kwargs)

    monkeypatch.setattr(_writer, "copyable", counting)
    try:
        pieces = [bytes(p) for p in stream.pieces()]
    finally:
        os.close(stream.fd)
    assert pieces == [b"1\n2\n", b"3\n4\n"]
    assert checked == [b"3\n4\n"]  # the first piece was not scanned a second time
    assert stream.sent == len(data)


def test_bad_bytes_are_rejected_with_their_exact_bytes() -> None:
    rows, rejects = parse_lines(b"a\n\x00b\nc\xff\nd\n", 1)
    assert [r.values for r in rows] == [("a",), ("d",)]
    assert [(r.line_no, r.raw) for r in rejects] == [(2, b"\x00b"), (3, b"c\xff")]
    assert [r.line for r in rejects] == ["\\0b", "c\ufffd"]  # readable text for the line column
    assert "NUL" in rejects[0].error and "UTF-8" in rejects[1].error
    rows, rejects = parse_csv(b'1,x\n2,"\x00"\n3,\xe9\n', 1, CsvOptions())
    assert [r.values for r in rows] == [("1", "x")]
    assert [r.raw for r in rejects] == [b'2,"\x00"', b"3,\xe9"]
    rows, rejects = parse_jsonl(b'{"a": "\\u0000"}\n{"a": "\\\\u0000"}\n', 1, ["a"])
    assert [r.values for r in rows] == [("\\u0000",)]
    assert [r.raw for r in rejects] == [b'{"a": "\\u0000"}']
    assert raw_copy_payload(b"1\n\x00\n", "lines", 1, CsvOptions()) is None
