"""Writing rows: COPY into ``table(columns)`` or the user's ``sql=`` template, in batches.

A batch goes in one statement when it can. When the server refuses it because of a row
(bad value, constraint), the batch is split with savepoints: COPY names the line it failed
on, so that row is rejected and the rows around it go on in bulk; without such a hint (the
``sql=`` mode) the batch is bisected, and only rows that fail on their own become rejects.
The round trips grow with the number of bad rows, not with the size of the batch.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from ..errors import IngestError
from ..names import TableName
from ._formats import (
    CsvOptions,
    Format,
    Reject,
    Row,
    parse_csv,
    parse_jsonl,
    parse_lines,
    raw_copy_payload,
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

    def __init__(self, target: Target, fmt: Format, csv_options: CsvOptions) -> None:
        self.target = target
        self.fmt = fmt
        self.csv = csv_options

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

    def write(
        self,
        conn: psycopg.Connection[Any],
        payload: bytes,
        first_line: int,
        columns: Sequence[str] | None,
    ) -> tuple[int, list[Reject]]:
        """Land ``payload`` (complete lines, the first numbered ``first_line``) inside the
        caller's transaction."""
        try:
            if self.target.table is not None:
                assert columns is not None
                raw = raw_copy_payload(payload, self.fmt, first_line, self.csv)
                if raw is not None:
                    landed = self._copy_raw(conn, raw, columns)
                    if landed is not None:
                        return landed, []
            rows, rejects = self._parse(payload, first_line, columns)
            landed, refused = self._land(conn, rows, columns)
            return landed, rejects + refused
        except ROW_ERRORS:
            raise
        except (psycopg.OperationalError, psycopg.InterfaceError):
            raise  # the connection, not the data: the session's outage rule decides
        except psycopg.Error as exc:
            raise IngestError(
                f"the server refused to write into {self.target.label}: {_message(exc)}; "
                "check the table, the columns and the sql template"
            ) from None

    def _copy_raw(
        self, conn: psycopg.Connection[Any], raw: bytes, columns: Sequence[str]
    ) -> int | None:
        try:
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy(self._copy(columns, csv_format=self.fmt == "csv")) as copy:
                    copy.write(raw)
                return cur.rowcount
        except ROW_ERRORS as exc:
            log.debug("batch refused as a whole (%s); finding the bad rows", _message(exc))
            return None

    def _parse(
        self, payload: bytes, first_line: int, columns: Sequence[str] | None
    ) -> tuple[list[Row], list[Reject]]:
        if self.fmt == "lines":
            return parse_lines(payload, first_line)
        if self.fmt == "csv":
            return parse_csv(payload, first_line, self.csv)
        return parse_jsonl(payload, first_line, columns)

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
