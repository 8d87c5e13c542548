"""Turning complete lines into rows: the ``lines``, ``csv`` and ``jsonl`` formats.

Each parser takes a block of complete lines (bytes ending with a newline) and the number of
its first line, and returns the rows it holds and the lines it could not parse. A row keeps
its line number and its text, so that a line the server refuses can be kept in the rejects.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Format = Literal["lines", "csv", "jsonl"]
FORMATS: tuple[Format, ...] = ("lines", "csv", "jsonl")


@dataclass(frozen=True)
class CsvOptions:
    """How a CSV file is written: a header line, the delimiter and the quote character."""

    header: bool = False
    delimiter: str = ","
    quote: str = '"'


@dataclass(frozen=True)
class Row:
    """One record: where it was, its bytes as written, and its values (a tuple, or a dict for
    ``jsonl``)."""

    line_no: int
    raw: bytes
    values: tuple[Any, ...] | dict[str, Any]

    def reject(self, error: str) -> Reject:
        return Reject(self.line_no, self.raw, error)


@dataclass(frozen=True)
class Reject:
    """A line that did not land, and why; ``raw`` holds its exact bytes (any bytes at all)."""

    line_no: int
    raw: bytes
    error: str

    @property
    def line(self) -> str:
        """The line as readable text (the ``line`` column, which cannot hold NUL or invalid
        UTF-8: those become ``\\0`` and U+FFFD; ``raw`` keeps the bytes)."""
        return self.raw.decode("utf-8", "replace").replace("\x00", "\\0")


NUL_ERROR = "holds a NUL byte (0x00), which PostgreSQL text cannot store"


def split_lines(payload: bytes) -> list[bytes]:
    """The lines of a block of complete lines, without their newline (nor a carriage return
    before it)."""
    lines = payload.split(b"\n")
    return [line[:-1] if line.endswith(b"\r") else line for line in lines[:-1]]


_lines = split_lines


def line_text(raw: bytes) -> str | Reject:
    """A line's text, or why it cannot be text in PostgreSQL (a reject numbered 0)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Reject(0, raw, f"not UTF-8: {exc.reason}")
    if "\x00" in text:
        return Reject(0, raw, NUL_ERROR)
    return text


def parse_lines(payload: bytes, first_line: int) -> tuple[list[Row], list[Reject]]:
    """One value per line; the newline (and a carriage return before it) is not part of it.

    Empty lines are skipped."""
    rejects: list[Reject] = []
    rows = [
        Row(number, raw, (text,)) for number, raw, text in text_lines(payload, first_line, rejects)
    ]
    return rows, rejects


def text_lines(
    payload: bytes, first_line: int, rejects: list[Reject]
) -> Iterator[tuple[int, bytes, str]]:
    """Each non-empty line as (number, raw, text); one that is not text is added to
    ``rejects`` instead."""
    for number, raw in enumerate(_lines(payload), first_line):
        if not raw:
            continue
        text = line_text(raw)
        if isinstance(text, Reject):
            rejects.append(Reject(number, raw, text.error))
            continue
        yield number, raw, text


def _json_value(value: Any) -> Any:
    """A JSON value as a column value: objects and arrays stay JSON (for json/jsonb columns)."""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return value


def parse_jsonl(
    payload: bytes, first_line: int, columns: Sequence[str] | None
) -> tuple[list[Row], list[Reject]]:
    """One JSON object per line; its keys are mapped to ``columns`` (a missing key is NULL,
    other keys are ignored). Without columns the row is the object itself (for ``sql=``
    templates with named placeholders)."""
    rows: list[Row] = []
    rejects: list[Reject] = []
    for number, raw in enumerate(_lines(payload), first_line):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            rejects.append(Reject(number, raw, f"not valid JSON: {exc}"))
            continue
        if not isinstance(obj, dict):
            kind = type(obj).__name__
            rejects.append(Reject(number, raw, f"a JSON object was expected, not {kind}"))
            continue
        if b"\\u0000" in raw and _holds_nul(obj):
            rejects.append(Reject(number, raw, NUL_ERROR + " (\\u0000)"))
            continue
        if columns is None:
            rows.append(Row(number, raw, {k: _json_value(v) for k, v in obj.items()}))
        else:
            rows.append(Row(number, raw, tuple(_json_value(obj.get(c)) for c in columns)))
    return rows, rejects


def parse_csv(
    payload: bytes, first_line: int, options: CsvOptions
) -> tuple[list[Row], list[Reject]]:
    """CSV records (a quoted field may hold newlines). An empty field is NULL. The header line
    (line 1, when ``options.header``) is not a row."""
    lines = payload.decode("utf-8", "surrogateescape").splitlines(keepends=True)
    reader = csv.reader(iter(lines), delimiter=options.delimiter, quotechar=options.quote)
    rows: list[Row] = []
    rejects: list[Reject] = []
    consumed = 0
    while True:
        start = consumed
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            consumed = reader.line_num
            text = "".join(lines[start:consumed]).rstrip("\r\n")
            rejects.append(Reject(first_line + start, _bytes(text), f"not valid CSV: {exc}"))
            continue
        consumed = reader.line_num
        number = first_line + start
        if options.header and number == 1:
            continue
        if not record:
            continue
        text = "".join(lines[start:consumed]).rstrip("\r\n")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            rejects.append(Reject(number, _bytes(text), "not UTF-8"))
            continue
        if "\x00" in text:
            rejects.append(Reject(number, _bytes(text), NUL_ERROR))
            continue
        rows.append(Row(number, _bytes(text), tuple(v if v != "" else None for v in record)))
    return rows, rejects


def _bytes(text: str) -> bytes:
    """The bytes a CSV record was read from (decoded with ``surrogateescape``)."""
    return text.encode("utf-8", "surrogateescape")


def _holds_nul(value: Any) -> bool:
    """Whether a decoded JSON value holds U+0000 anywhere (keys included)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(v) for v in value)
    return False


def csv_header(first_line: bytes, options: CsvOptions) -> list[str]:
    """The column names in a CSV header line."""
    text = first_line.decode("utf-8", "replace").rstrip("\r\n")
    return next(csv.reader([text], delimiter=options.delimiter, quotechar=options.quote), [])


def complete_end(data: bytes, fmt: Format, options: CsvOptions) -> int:
    """Where the last complete record of ``data`` ends (0 when there is none).

    A record is complete when its newline has been written; in CSV a newline inside a quoted
    field does not end a record, so the cut is moved back until the quotes are balanced."""
    end = data.rfind(b"\n") + 1
    if fmt != "csv" or end == 0:
        return end
    quote = options.quote.encode()
    if quote not in data:  # a quick scan: most CSV has no quoted field at all
        return end
    while end and data.count(quote, 0, end) % 2:
        end = data.rfind(b"\n", 0, end - 1) + 1
    return end


_EMPTY_LINE = re.compile(b"\n\n")
"""Twice as quick as ``b"\\n\\n" in payload`` on lines that are mostly short."""


def _utf8(data: bytes, end: int) -> bool:
    """Whether ``data[:end]`` is UTF-8 (at memory speed when it is all ASCII)."""
    if data.isascii():
        return True
    try:
        str(memoryview(data)[:end], "utf-8")
    except UnicodeDecodeError:
        return False
    return True


def raw_copy_payload(
    payload: bytes, fmt: Format, first_line: int, options: CsvOptions
) -> bytes | None:
    """The block itself when the server can take it as COPY data unchanged (the fast path);
    see :func:`copyable`."""
    span = copyable(payload, len(payload), fmt, first_line, options)
    if span is None:
        return None
    return payload if span == (0, len(payload)) else payload[span[0] : span[1]]


REFUSE_EMPTY = frozenset(
    {
        "smallint",
        "integer",
        "bigint",
        "real",
        "double precision",
        "numeric",
        "boolean",
        "date",
        "timestamp without time zone",
        "timestamp with time zone",
        "time without time zone",
        "interval",
        "uuid",
        "json",
        "jsonb",
    }
)
"""Column types (``regtype`` names) whose input refuses an empty string: ``lines`` going to
a column of one of them are not searched for empty lines before COPY (see :func:`copyable`)."""


def copyable(
    data: bytes,
    end: int,
    fmt: Format,
    first_line: int,
    options: CsvOptions,
    *,
    columns: int = 1,
    empty_refused: bool = False,
) -> tuple[int, int] | None:
    """The span of ``data[:end]`` (complete lines, the first numbered ``first_line``) that the
    server can take as COPY data unchanged, or None when it must be parsed. Each check is
    one scan of the bytes in place (no copy), the quick ones (a byte looked for) first.

    ``lines`` qualifies when no line needs escaping (no backslash, tab or carriage return)
    and none is empty; ``csv`` when no line is empty (its header line is left out of the
    span). ``jsonl`` always goes row by row. A NUL or bytes that are not UTF-8 anywhere send
    the block to the parser, which rejects those lines alone (COPY would refuse the whole
    block); ASCII, checked at memory speed, needs no decoding. CSV rows of two
    ``columns`` or more are not searched for empty lines: COPY refuses one itself ("missing
    data for column"), and the block is then parsed, which skips it. Nor are lines when
    ``empty_refused`` (their column's type refuses an empty string, see
    :data:`REFUSE_EMPTY`): that search is the one check slower than memory speed."""
    if fmt == "jsonl" or end == 0 or data.find(b"\x00", 0, end) >= 0:
        return None
    if not _utf8(data, end):
        return None
    if fmt == "lines":
        for special in (b"\\", b"\t", b"\r"):
            if data.find(special, 0, end) >= 0:
                return None
    if not empty_refused and (fmt == "lines" or columns < 2):  # else COPY refuses one
        if data.startswith(b"\n", 0, end) or _EMPTY_LINE.search(data, 0, end):
            return None  # an empty line, which is no row
        crlf = fmt == "csv" and data.find(b"\r", 0, end) >= 0  # the quick scan first
        if crlf and (data.find(b"\r\n\r\n", 0, end) >= 0 or data.startswith(b"\r\n", 0, end)):
            return None  # an empty line ending with CRLF
    if fmt == "csv" and options.header and first_line == 1:
        head = data[: data.find(b"\n", 0, end) + 1]
        cut = complete_end(head, fmt, options)
        return None if cut == 0 else (cut, end)
    return 0, end
