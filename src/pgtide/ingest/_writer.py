"""Writing rows: COPY into ``table(columns)`` or the user's ``sql=`` template, in batches.

A batch goes in one statement when it can. When the server refuses it because of a row
(bad value, constraint), the batch is split with savepoints: COPY names the line it failed
on, so that row is rejected and the rows around it go on in bulk; without such a hint (the
``sql=`` mode) the batch is bisected, and only rows that fail on their own become rejects.
The round trips grow with the number of bad rows, not with the size of the batch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from socket import SO_SNDBUF, SOL_SOCKET
from typing import Any, TypeAlias

import psycopg
from psycopg import sql

from ..errors import IngestError
from ..names import TableName
from ._formats import (
    CsvOptions,
    Format,
    Reject,
    Row,
    complete_end,
    copyable,
    parse_csv,
    parse_jsonl,
    parse_lines,
    raw_copy_payload,
    text_lines,
)

log = logging.getLogger("pgtide.ingest")

ROW_ERRORS: tuple[type[Exception], ...] = (
    psycopg.errors.DataError,
    psycopg.errors.IntegrityError,
    psycopg.errors.ProgramLimitExceeded,
)
"""Errors that one row can cause; anything else is a problem with the setup, not the data."""

_COPY_LINE = re.compile(r"\bline (\d+)\b")


@dataclass(frozen=True)
class Target:
    """Where rows go: a table and its columns (COPY), or a SQL template (executemany)."""

    table: TableName | None
    columns: tuple[str, ...] | None
    template: str | None

    @property
    def label(self) -> str:
        return str(self.table) if self.table is not None else "sql template"


Transform: TypeAlias = Callable[[str, str], Any]
"""``fn(line, path)``: a row (tuple or dict), a list of rows, or None to skip the line."""


@dataclass(frozen=True)
class Part:
    """A block of complete lines of one file, to land: its first line's number, the columns
    of its rows (None for an ``sql=`` template without columns) and the file's path."""

    payload: bytes
    first_line: int
    columns: Sequence[str] | None
    path: str


def describe(
    target: Target,
    fmt: Format,
    csv_options: CsvOptions,
    columns: Sequence[str] | None,
    transform: Transform | None,
) -> str:
    """How a line is written, as JSON (kept with each reject, read back by a retry)."""
    table = target.table
    return json.dumps(
        {
            "schema": table.schema if table is not None else None,
            "table": table.name if table is not None else None,
            "columns": list(columns) if columns is not None else None,
            "sql": target.template,
            "format": fmt,
            "header": csv_options.header,
            "delimiter": csv_options.delimiter,
            "quote": csv_options.quote,
            "transform": _name_of(transform) if transform is not None else None,
        }
    )


def _name_of(fn: Transform) -> str:
    module = getattr(fn, "__module__", None) or "?"
    return f"{module}.{getattr(fn, '__qualname__', repr(fn))}"


COPY_PIECE = 1 << 20
"""COPY data is sent in pieces of about this size (cut at record ends)."""


class NotRaw(Exception):
    """A piece of a block cannot go to COPY unchanged: the block is parsed instead."""


STREAM_REFUSALS: tuple[type[Exception], ...] = (NotRaw, *ROW_ERRORS)
"""What makes a streamed batch fall back to being read whole and parsed."""

FIRST_PIECE = 1 << 18
"""A stream's first piece is smaller, so that COPY starts as soon as possible."""


@dataclass
class Stream:
    """The complete records of one file from byte ``start`` (at most ``limit`` bytes), read
    piece by piece while COPY sends them: reading overlaps the server's work, and each byte
    is checked and counted once, just before it is sent. ``first`` holds the bytes already
    read from ``start``, ``fd`` is the file's open descriptor and ``columns`` the number of
    columns its rows go to. Once the pieces are spent, ``sent`` bytes went to COPY, holding
    the lines :meth:`lines_in` tells. A later piece that needs parsing ends the
    stream early (``stopped``): the pieces before it land, and the next batch starts at it;
    :class:`NotRaw` is raised when the first piece does. So does ``stop`` once set (a stop
    asked for lands what was sent, without waiting for the rest of a large batch).
    ``first_span``: where ``first`` ends and its span, when the caller has checked it
    already (see :func:`copyable`): it is not checked twice."""

    fd: int
    start: int
    limit: int
    first: bytes
    first_line: int
    fmt: Format
    csv: CsvOptions
    columns: int = 1
    empty_refused: bool = False
    stop: threading.Event | None = None
    first_span: tuple[int, tuple[int, int]] | None = None
    sent: int = 0
    lines: int = 0
    counted: bool = False
    stopped: bool = False

    def lines_in(self, rows: int) -> int:
        """The lines sent, given the rows COPY made of them. A piece COPY takes as it is
        holds no empty line, so in the ``lines`` format each line is one row, and so is each
        CSV line of a stream without a quote or a backslash (no field holds a newline): no
        second pass over the bytes counts them; ``lines`` then holds the lines of a header
        left out. A CSV stream whose first piece holds a quote or a backslash is
        ``counted``: ``lines`` holds every newline sent."""
        return self.lines if self.counted else self.lines + rows

    def _count(self, window: bytes, cut: int, span: tuple[int, int], first: bool) -> bool:
        """Count the lines of a CSV piece when rows cannot tell them (see :meth:`lines_in`);
        False when the stream must end before this piece: it needs counting and pieces
        already sent were not counted."""
        if not self.counted:
            quote = self.csv.quote.encode()
            if window.find(quote, 0, cut) < 0 and window.find(b"\\", 0, cut) < 0:
                self.lines += window.count(b"\n", 0, span[0])  # a header line left out
                return True
            if not first:
                return False  # the next batch starts here, and counts
            self.counted = True
        self.lines += window.count(b"\n", 0, cut)
        return True

    def pieces(self) -> Iterator[memoryview]:
        """The pieces, each a view of the bytes read (COPY sends them without a copy)."""
        stop = self.start + self.limit
        pos, window = self.start, self.first
        span: tuple[int, int] | None
        while window:
            checked = self.first_span if pos == self.start else None
            if checked is not None:
                cut, span = checked
            else:
                cut = complete_end(window, self.fmt, self.csv)
                if cut == 0:
                    return  # a record longer than a piece: the next batch reads it whole
                first_line = self.first_line if pos == self.start else 0
                span = copyable(
                    window,
                    cut,
                    self.fmt,
                    first_line,
                    self.csv,
                    columns=self.columns,
                    empty_refused=self.empty_refused,
                )
            if span is None:
                if pos == self.start:
                    raise NotRaw
                self.stopped = True
                return
            if self.fmt == "csv" and not self._count(window, cut, span, pos == self.start):
                self.stopped = True
                return
            self.sent += cut
            yield memoryview(window)[span[0] : span[1]]
            pos += cut
            if pos < stop and self.stop is not None and self.stop.is_set():
                self.stopped = True
                return
            window = os.pread(self.fd, min(COPY_PIECE, stop - pos), pos) if pos < stop else b""


SEND_BUFFER = 4 << 20
"""The room asked for in a Unix-domain socket's send buffer while streaming (the kernel
caps it at ``net.core.wmem_max``): the server then has megabytes of COPY data queued, not
the default ~200 KiB, and goes on working while this process reads, checks, or waits for a
CPU on a busy machine. TCP sockets are left alone (setting a size would stop the kernel's
own tuning)."""


def roomy(conn: psycopg.Connection[Any]) -> None:
    """Make the connection's send buffer :data:`SEND_BUFFER` bytes, if it is a Unix-domain
    socket with less room (best effort: any refusal leaves it as it is)."""
    try:
        fd = os.dup(conn.pgconn.socket)
    except (OSError, psycopg.Error):
        return
    try:
        sock = socket.socket(fileno=fd)  # closing this duplicate leaves the connection open
    except OSError:
        os.close(fd)
        return
    with sock, contextlib.suppress(OSError):
        unix = getattr(socket, "AF_UNIX", None)
        if sock.family == unix and sock.getsockopt(SOL_SOCKET, SO_SNDBUF) < SEND_BUFFER:
            sock.setsockopt(SOL_SOCKET, SO_SNDBUF, SEND_BUFFER)


RETRY_ROWS = 1024
"""After a refusal, the rest of a batch is retried in parts of at most this many rows, so
each bad row costs at most this many rows sent again (not the whole rest of the batch)."""


def _pieces(lo: int, hi: int) -> list[tuple[int, int]]:
    """[lo, hi) cut into parts of at most RETRY_ROWS, last part first (``todo`` is a stack)."""
    return [(s, min(s + RETRY_ROWS, hi)) for s in range(lo, hi, RETRY_ROWS)][::-1]


def _hint(exc: Exception) -> int | None:
    """The 0-based row a COPY failed on, from the server's error context."""
    diag = getattr(exc, "diag", None)
    context = getattr(diag, "context", None) or ""
    first = context.splitlines()[0] if context else ""
    if not first.startswith("COPY "):
        return None
    match = _COPY_LINE.search(first)
    return int(match[1]) - 1 if match else None


def _message(exc: Exception) -> str:
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) or str(exc).strip().splitlines()[0]
    detail = getattr(diag, "message_detail", None)
    return f"{primary} ({detail})" if detail else primary


class Writer:
    """Lands the rows of a block of complete lines; returns how many landed and the rejects."""

    def __init__(
        self,
        target: Target,
        fmt: Format,
        csv_options: CsvOptions,
        transform: Transform | None = None,
    ) -> None:
        self.target = target
        self.fmt = fmt
        self.csv = csv_options
        self.transform = transform

    def _copy(self, columns: Sequence[str], *, csv_format: bool) -> sql.Composed:
        assert self.target.table is not None
        options: sql.Composable = sql.SQL("")
        if csv_format:
            options = sql.SQL(" (FORMAT csv, DELIMITER {}, QUOTE {})").format(
                sql.Literal(self.csv.delimiter), sql.Literal(self.csv.quote)
            )
        return sql.SQL("COPY {} ({}) FROM STDIN{}").format(
            self.target.table.identifier,
            sql.SQL(", ").join(sql.Identifier(c) for c in columns),
            options,
        )

    @contextmanager
    def _refusals(self) -> Iterator[None]:
        """A refusal of the whole statement (not of one row) is a setup problem: say so."""
        try:
            yield
        except ROW_ERRORS:
            raise
        except (psycopg.OperationalError, psycopg.InterfaceError):
            raise  # the connection, not the data: the session's outage rule decides
        except psycopg.Error as exc:
            raise IngestError(
                f"the server refused to write into {self.target.label}: {_message(exc)}; "
                "check the table, the columns and the sql template"
            ) from None

    def write(
        self,
        conn: psycopg.Connection[Any],
        payload: bytes,
        first_line: int,
        columns: Sequence[str] | None,
        path: str = "",
        *,
        raw: bool = True,
    ) -> tuple[int, list[Reject]]:
        """Land ``payload`` (complete lines, the first numbered ``first_line``, read from
        ``path``) inside the caller's transaction; ``raw=False`` when COPY is known to refuse
        it unchanged (it is parsed at once)."""
        with self._refusals():
            if raw and self.target.table is not None and self.transform is None:
                assert columns is not None
                landed = self._copy_raw(conn, self._raw_pieces(payload, first_line), columns)
                if landed is not None:
                    return landed, []
            rows, rejects = self._parse(payload, first_line, columns, path)
            landed, refused = self._land(conn, rows, columns)
            return landed, sorted(rejects + refused, key=lambda r: r.line_no)

    def write_many(
        self, conn: psycopg.Connection[Any], parts: Sequence[Part], *, raw: bool = True
    ) -> list[tuple[int, list[Reject]]]:
        """Land the blocks of several files inside the caller's transaction; one result per
        part. Blocks that COPY can take unchanged, whose row count is known, go in one COPY
        per set of columns; the rest (and a set the server refuses) go part by part."""
        results: list[tuple[int, list[Reject]] | None] = [None] * len(parts)
        if raw and self.target.table is not None and self.transform is None and len(parts) > 1:
            groups: dict[tuple[str, ...], list[int]] = {}
            for i, part in enumerate(parts):
                if part.columns is not None:
                    groups.setdefault(tuple(part.columns), []).append(i)
            for columns, members in groups.items():
                if len(members) < 2:
                    continue
                merged: list[tuple[int, int]] = []  # (part, rows) sent in the one COPY
                with self._refusals():
                    landed = self._copy_raw(conn, self._merged(parts, members, merged), columns)
                if landed is None:
                    continue  # a bad row somewhere: part by part finds it
                for i, rows in merged:
                    results[i] = (rows, [])
        done: list[tuple[int, list[Reject]]] = []
        for part, result in zip(parts, results, strict=True):
            if result is None:
                result = self.write(
                    conn, part.payload, part.first_line, part.columns, part.path, raw=raw
                )
            done.append(result)
        return done

    def _merged(
        self, parts: Sequence[Part], members: list[int], merged: list[tuple[int, int]]
    ) -> Iterator[bytes]:
        """The blocks of several parts as COPY data, in pieces of about COPY_PIECE bytes,
        checked as they go; a part that needs parsing (or whose rows cannot be counted) is
        left out (for :meth:`write`); ``merged`` records the parts sent, with their rows."""
        pieces: list[bytes] = []
        size = 0
        for i in members:
            part = parts[i]
            raw = raw_copy_payload(part.payload, self.fmt, part.first_line, self.csv)
            rows = self._row_count(raw)
            if raw is None or rows is None:
                continue
            merged.append((i, rows))
            pieces.append(raw)
            size += len(raw)
            if size >= COPY_PIECE:
                yield b"".join(pieces)
                pieces, size = [], 0
        if pieces:
            yield b"".join(pieces)

    def _row_count(self, raw: bytes | None) -> int | None:
        """Rows in a block COPY takes unchanged, when counting newlines tells (not for CSV
        with quotes, whose fields may hold newlines)."""
        if raw is None:
            return None
        if self.fmt == "csv" and self.csv.quote.encode() in raw:
            return None
        return raw.count(b"\n")

    def _copy_raw(
        self, conn: psycopg.Connection[Any], pieces: Iterable[bytes], columns: Sequence[str]
    ) -> int | None:
        """COPY blocks as they are, in one statement under a savepoint; None when the server
        refuses a row, or when a piece turns out to need parsing (``pieces`` raises
        :class:`NotRaw`)."""
        try:
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy(self._copy(columns, csv_format=self.fmt == "csv")) as copy:
                    for piece in pieces:
                        copy.write(piece)
                return cur.rowcount
        except NotRaw:
            return None
        except ROW_ERRORS as exc:
            log.debug("batch refused as a whole (%s); finding the bad rows", _message(exc))
            return None

    def stream(self, conn: psycopg.Connection[Any], stream: Stream, columns: Sequence[str]) -> int:
        """COPY a stream's pieces in the caller's transaction, without a savepoint: a refused
        row (one of ROW_ERRORS) or a piece that needs parsing (:class:`NotRaw`) is raised,
        and the caller rolls the whole transaction back."""
        roomy(conn)
        with self._refusals(), conn.cursor() as cur:
            with cur.copy(self._copy(columns, csv_format=self.fmt == "csv")) as copy:
                for piece in stream.pieces():
                    copy.write(piece)
            return cur.rowcount

    def _raw_pieces(self, payload: bytes, first_line: int) -> Iterator[bytes]:
        """``payload`` as COPY data, in pieces of about COPY_PIECE bytes cut at record ends,
        each checked just before it is sent, so that checking overlaps the server's work;
        raises :class:`NotRaw` at the first piece that needs parsing."""
        pos, size = 0, len(payload)
        while pos < size:
            piece = payload[pos:] if pos == 0 and size <= COPY_PIECE else b""
            if not piece:
                window = payload[pos : pos + COPY_PIECE]
                end = complete_end(window, self.fmt, self.csv) if len(window) == COPY_PIECE else 0
                piece = window[:end] if end else payload[pos:]
            raw = raw_copy_payload(piece, self.fmt, first_line if pos == 0 else 0, self.csv)
            if raw is None:
                raise NotRaw
            yield raw
            pos += len(piece)

    def _parse(
        self, payload: bytes, first_line: int, columns: Sequence[str] | None, path: str
    ) -> tuple[list[Row], list[Reject]]:
        if self.transform is not None:
            return self._transformed(payload, first_line, columns, path)
        if self.fmt == "lines":
            return parse_lines(payload, first_line)
        if self.fmt == "csv":
            return parse_csv(payload, first_line, self.csv)
        return parse_jsonl(payload, first_line, columns)

    def _transformed(
        self, payload: bytes, first_line: int, columns: Sequence[str] | None, path: str
    ) -> tuple[list[Row], list[Reject]]:
        """Each non-empty line through ``transform(line, path)``: its rows, or a reject when
        it raises or returns something that is not rows."""
        assert self.transform is not None
        rows: list[Row] = []
        rejects: list[Reject] = []
        for number, raw, text in text_lines(payload, first_line, rejects):
            try:
                out = self.transform(text, path)
            except Exception as exc:
                rejects.append(Reject(number, raw, f"transform raised {type(exc).__name__}: {exc}"))
                continue
            if out is None:
                continue
            try:
                values = [
                    self._values(item, columns)
                    for item in (out if isinstance(out, list) else [out])
                ]
            except ValueError as exc:
                rejects.append(Reject(number, raw, str(exc)))
                continue
            rows.extend(Row(number, raw, v) for v in values)
        return rows, rejects

    def _values(self, item: Any, columns: Sequence[str] | None) -> tuple[Any, ...] | dict[str, Any]:
        """One row returned by a transform, checked against the columns."""
        if isinstance(item, tuple):
            if columns is not None and len(item) != len(columns):
                raise ValueError(
                    f"transform returned {len(item)} values for {len(columns)} columns "
                    f"({', '.join(columns)})"
                )
            return item
        if isinstance(item, dict):
            if columns is None:
                return item
            unknown = [k for k in item if k not in columns]
            if unknown:
                raise ValueError(
                    f"transform returned unknown column {', '.join(map(repr, unknown))}; "
                    f"the columns are {', '.join(columns)}"
                )
            return tuple(item.get(c) for c in columns)
        raise ValueError(
            f"transform returned {type(item).__name__}; return a tuple, a dict, a list of "
            "them, or None to skip the line"
        )

    def _attempt(
        self, conn: psycopg.Connection[Any], rows: Sequence[Row], columns: Sequence[str] | None
    ) -> None:
        with conn.cursor() as cur:
            if self.target.template is not None:
                cur.executemany(
                    self.target.template.encode(),  # the user's own SQL, by design
                    [r.values for r in rows],
                )
                return
            assert columns is not None
            with cur.copy(self._copy(columns, csv_format=False)) as copy:
                for r in rows:
                    assert isinstance(r.values, tuple)
                    copy.write_row(r.values)

    def _land(
        self, conn: psycopg.Connection[Any], rows: list[Row], columns: Sequence[str] | None
    ) -> tuple[int, list[Reject]]:
        landed = 0
        rejects: list[Reject] = []
        todo = [(0, len(rows))]
        while todo:
            lo, hi = todo.pop()
            if lo >= hi:
                continue
            try:
                with conn.transaction():  # a savepoint: a refused part leaves the rest intact
                    self._attempt(conn, rows[lo:hi], columns)
                landed += hi - lo
            except ROW_ERRORS as exc:
                if hi - lo == 1:
                    rejects.append(rows[lo].reject(_message(exc)))
                    continue
                hint = _hint(exc) if self.target.template is None else None
                if hint is not None and 0 <= hint < hi - lo:
                    bad = lo + hint  # COPY names the row; those before it were fine
                    rejects.append(rows[bad].reject(_message(exc)))
                    todo += [*_pieces(bad + 1, hi), (lo, bad)]
                else:
                    mid = (lo + hi) // 2
                    todo += [*_pieces(mid, hi), *_pieces(lo, mid)]
        rejects.sort(key=lambda r: r.line_no)
        return landed, rejects
