"""The lines ingest could not land (``pgtide.rejects``): list them, show their bytes, retry
them into their target once fixed, and purge them. What ``pgtide rejects`` runs.

Every function takes ``dsn=`` (or ``conn=``, a connection of yours, left open). A retry
lands each line through the same writer as the watcher that rejected it (COPY into its
table and columns, or its ``sql=`` template), each line in its own savepoint, and deletes
the reject in the same transaction when the line lands; a line that fails again stays, with
the new error.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from .. import schema
from ..connect import DsnLike
from ..errors import IngestError
from ..names import TableName
from ..session import Io, query, run, using
from ._formats import CsvOptions, Format
from ._store import installed
from ._writer import Target, Transform, Writer

_FILTER = """
WHERE (%(watcher)s::text IS NULL OR watcher = %(watcher)s)
  AND (%(path)s::text IS NULL OR path = %(path)s)
  AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s))
  AND (%(age)s::interval IS NULL OR at < now() - %(age)s::interval)
"""
SELECT = f"""
SELECT id, watcher, path, line_no, line, raw, error, at, target FROM pgtide.rejects
{_FILTER}
ORDER BY id
LIMIT %(limit)s
"""
DELETE = f"DELETE FROM pgtide.rejects {_FILTER}"
DELETE_ONE = "DELETE FROM pgtide.rejects WHERE id = %s"
FAILED_AGAIN = "UPDATE pgtide.rejects SET error = %s, at = now() WHERE id = %s"


@dataclass(frozen=True)
class Rejected:
    """One line in ``pgtide.rejects``: where it was, why it did not land, and its bytes."""

    id: int
    watcher: str
    path: str
    line_no: int
    line: str
    raw: bytes | None
    error: str
    at: datetime
    target: dict[str, Any] | None

    @property
    def data(self) -> bytes:
        """The line's exact bytes (its text, for lines rejected before raw bytes were kept)."""
        return self.raw if self.raw is not None else self.line.encode()

    @property
    def printable(self) -> str:
        """The line as one printable string: bytes that are not UTF-8 as ``\\xNN``, control
        characters (a NUL, a tab) escaped."""
        text = self.data.decode("utf-8", "backslashreplace")
        return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


@dataclass(frozen=True)
class Retried:
    """What a retry did: the ids that landed (and left the rejects), and those that failed
    again (with their new error)."""

    landed: list[int]
    failed: list[Rejected]


def _params(
    watcher: str | None,
    path: str | None,
    ids: Iterable[int] | None,
    older_than: timedelta | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """The parameters of :data:`SELECT` and :data:`DELETE`: what narrows the choice."""
    return {
        "watcher": watcher,
        "path": path,
        "ids": list(ids) if ids is not None else None,
        "age": older_than,
        "limit": limit,
    }


def _installed() -> Io[bool]:
    """Whether ingest's tables exist (then the schema is brought up to date)."""
    if not (yield from installed()):
        return False
    yield from schema.ensure_io()
    return True


def _rejected(row: tuple[Any, ...]) -> Rejected:
    raw = bytes(row[5]) if row[5] is not None else None
    target = row[8] if isinstance(row[8], dict) else None
    return Rejected(int(row[0]), row[1], row[2], int(row[3]), row[4], raw, row[6], row[7], target)


def _find(selected: dict[str, Any]) -> Io[list[Rejected]]:
    """The rejects chosen by :func:`_params`, oldest first."""
    if not (yield from _installed()):
        return []
    rows = yield from query(SELECT, selected)
    return [_rejected(r) for r in rows]


def find(
    *,
    watcher: str | None = None,
    path: str | None = None,
    ids: Iterable[int] | None = None,
    older_than: timedelta | None = None,
    limit: int | None = None,
    dsn: DsnLike = None,
    conn: psycopg.Connection[Any] | None = None,
) -> list[Rejected]:
    """The rejects (oldest first), of one watcher, one file, some ids, or older than an age."""
    with using(dsn, conn) as c:
        return run(c, _find(_params(watcher, path, ids, older_than, limit)))


def get(
    reject_id: int, *, dsn: DsnLike = None, conn: psycopg.Connection[Any] | None = None
) -> Rejected:
    """One reject by id; :class:`~pgtide.IngestError` when there is none."""
    found = find(ids=[reject_id], dsn=dsn, conn=conn)
    if not found:
        raise IngestError(f"there is no reject with id {reject_id} (see pgtide rejects)")
    return found[0]


def purge(
    *,
    older_than: timedelta | None = None,
    watcher: str | None = None,
    path: str | None = None,
    ids: Iterable[int] | None = None,
    dsn: DsnLike = None,
    conn: psycopg.Connection[Any] | None = None,
) -> int:
    """Delete rejects (all of them, or those older than ``older_than``, of one watcher, one
    file, or some ids); return how many were deleted."""
    with using(dsn, conn) as c:
        if not run(c, _installed()):
            return 0
        return len(run(c, query(DELETE + " RETURNING id", _params(watcher, path, ids, older_than))))


def _writer(
    target: dict[str, Any] | None, transform: Transform | None
) -> tuple[Writer, list[str] | None]:
    """The writer a reject's watcher used, and the columns of its rows."""
    if target is None:
        raise ValueError(
            "its target was not recorded (rejected by an older pgtide): land it by hand"
        )
    if target.get("transform") and transform is None:
        raise ValueError(
            f"its watcher used transform {target['transform']}: retry it from Python with "
            "pgtide.ingest.rejects.retry(..., transform=fn)"
        )
    table = TableName(target.get("schema"), target["table"]) if target.get("table") else None
    columns = target.get("columns")
    if table is not None and columns is None:
        raise ValueError("its columns were not recorded: land it by hand")
    fmt: Format = target.get("format", "lines")
    options = CsvOptions(
        header=bool(target.get("header")),
        delimiter=target.get("delimiter") or ",",
        quote=target.get("quote") or '"',
    )
    writer = Writer(
        Target(table, tuple(columns) if columns else None, target.get("sql")),
        fmt,
        options,
        transform if target.get("transform") else None,
    )
    return writer, columns


def retry(
    ids: Sequence[int] | None = None,
    *,
    watcher: str | None = None,
    path: str | None = None,
    transform: Transform | None = None,
    dsn: DsnLike = None,
    conn: psycopg.Connection[Any] | None = None,
) -> Retried:
    """Land rejected lines again (those with these ``ids``, or every one of ``watcher`` or
    ``path``; all of them when nothing narrows it), through the writer of the watcher that
    rejected them, e.g. after fixing the table or the line (``UPDATE pgtide.rejects SET raw
    = ...``). A line that lands leaves the rejects; one that fails again stays with its new
    error. ``transform`` is needed for lines of a watcher that had one. Retried rows are
    not added to the watcher's counts (``rows_written``)."""
    with using(dsn, conn) as c:
        chosen = run(c, _find(_params(watcher, path, ids)))
        landed: list[int] = []
        failed: list[Rejected] = []
        for reject in chosen:
            error = _retry_one(c, reject, transform)
            if error is None:
                landed.append(reject.id)
            else:
                failed.append(_replace_error(reject, error))
        return Retried(landed, failed)


def _retry_one(
    conn: psycopg.Connection[Any], reject: Rejected, transform: Transform | None
) -> str | None:
    """Land one reject in one transaction (and delete it there); None, or why it failed."""
    try:
        writer, columns = _writer(reject.target, transform)
    except ValueError as exc:
        error = str(exc)
    else:
        first_line = max(reject.line_no, 2)  # never taken for a CSV header line
        with conn.transaction():
            _, refused = writer.write(conn, reject.data + b"\n", first_line, columns, reject.path)
            if not refused:
                conn.execute(DELETE_ONE, (reject.id,))
                return None
            error = refused[0].error
    conn.execute(FAILED_AGAIN, (error, reject.id))
    return error


def _replace_error(reject: Rejected, error: str) -> Rejected:
    return Rejected(
        reject.id,
        reject.watcher,
        reject.path,
        reject.line_no,
        reject.line,
        reject.raw,
        error,
        reject.at,
        reject.target,
    )


def describe_target(reject: Rejected) -> str:
    """Where a reject was going, for people: ``table (columns)`` or the sql template."""
    target = reject.target
    if target is None:
        return "?"
    if target.get("table"):
        name = str(TableName(target.get("schema"), target["table"]))
        return f"{name} ({', '.join(target.get('columns') or [])})"
    return str(target.get("sql") or json.dumps(target))
