"""pgtide's ingest tables: file offsets, rejects, and the target table's description.

Every function here is database work free of I/O (an :data:`~pgtide.session.Io`). The
engine runs them inside the transaction of a batch, so that a batch's rows, its rejects and
the file's new offset commit together or not at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import IngestError
from ..names import TableName, columns, lookup
from ..overview import Section
from ..session import Io, one, query
from ._formats import Reject

LOAD_OFFSETS = """
SELECT path, device, inode, fingerprint, fingerprint_len, byte_offset, line_count,
       rows_written, rejected, version
FROM pgtide.file_offsets WHERE watcher = %s
"""
INSERT_OFFSET = """
INSERT INTO pgtide.file_offsets (watcher, path, device, inode, fingerprint, fingerprint_len,
                                 byte_offset, line_count, rows_written, rejected, target)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (watcher, path) DO NOTHING
RETURNING version
"""
UPDATE_OFFSET = """
UPDATE pgtide.file_offsets
SET device = %s, inode = %s, fingerprint = %s, fingerprint_len = %s, byte_offset = %s,
    line_count = %s, rows_written = rows_written + %s, rejected = rejected + %s,
    version = version + 1, updated_at = now()
WHERE watcher = %s AND path = %s AND version = %s
RETURNING version
"""
MOVE_OFFSET = """
UPDATE pgtide.file_offsets SET path = %s, version = version + 1, updated_at = now()
WHERE watcher = %s AND path = %s AND version = %s
RETURNING version
"""
DROP_OFFSET = "DELETE FROM pgtide.file_offsets WHERE watcher = %s AND path = %s"
INSERT_REJECTS = """
INSERT INTO pgtide.rejects (watcher, path, line_no, line, raw, error)
SELECT %s, %s, r.line_no, r.line, r.raw, r.error
FROM unnest(%s::bigint[], %s::text[], %s::bytea[], %s::text[]) AS r (line_no, line, raw, error)
"""
INGEST_INSTALLED = "SELECT to_regclass('pgtide.file_offsets') IS NOT NULL"
OVERVIEW = """
SELECT watcher, path, byte_offset, line_count, rows_written, rejected, target,
       date_trunc('second', updated_at) AS updated_at
FROM pgtide.file_offsets ORDER BY watcher, path
"""
OVERVIEW_COLUMNS = ["watcher", "path", "offset", "lines", "rows", "rejected", "target", "updated"]


@dataclass
class Saved:
    """A file's committed state, as stored in ``pgtide.file_offsets``."""

    path: str
    device: int
    inode: int
    fingerprint: bytes
    fingerprint_len: int
    offset: int
    line_count: int
    rows_written: int
    rejected: int
    version: int


class Conflict(Exception):
    """Another watcher with the same name moved this file's offset first."""


def _saved(row: tuple[Any, ...]) -> Saved:
    return Saved(row[0], int(row[1]), int(row[2]), bytes(row[3]), *(int(v) for v in row[4:]))


def load_all(watcher: str) -> Io[dict[str, Saved]]:
    """Every file this watcher has committed an offset for, by path."""
    rows = yield from query(LOAD_OFFSETS, (watcher,))
    return {row[0]: _saved(row) for row in rows}


def _version(row: tuple[Any, ...] | None, path: str) -> int:
    if row is None:
        raise Conflict(path)
    return int(row[0])


def save(watcher: str, target: str, state: Saved, added_rows: int, added_rejects: int) -> Io[int]:
    """Store the file's new offset; return the new version. ``state.version`` is the version
    this process last saw (0: no row yet); anything else in the table raises Conflict."""
    fields = (
        state.device,
        state.inode,
        state.fingerprint,
        state.fingerprint_len,
        state.offset,
        state.line_count,
    )
    if state.version == 0:
        params: tuple[Any, ...] = (
            watcher,
            state.path,
            *fields,
            added_rows,
            added_rejects,
            target,
        )
        row = yield from one(INSERT_OFFSET, params)
    else:
        params = (*fields, added_rows, added_rejects, watcher, state.path, state.version)
        row = yield from one(UPDATE_OFFSET, params)
    return _version(row, state.path)


def move(watcher: str, old: str, new: str, version: int) -> Io[int]:
    """The offset of ``old`` now belongs to ``new`` (a rename); return the new version."""
    yield from query(DROP_OFFSET, (watcher, new))
    row = yield from one(MOVE_OFFSET, (new, watcher, old, version))
    return _version(row, old)


def forget(watcher: str, path: str) -> Io[None]:
    yield from query(DROP_OFFSET, (watcher, path))


def add_rejects(watcher: str, path: str, rejects: Sequence[Reject]) -> Io[None]:
    """Keep the lines that did not land, with their exact bytes (one statement, whatever
    their number)."""
    if rejects:
        numbers = [r.line_no for r in rejects]
        lines = [r.line for r in rejects]
        raw = [r.raw for r in rejects]
        errors = [r.error for r in rejects]
        yield from query(INSERT_REJECTS, (watcher, path, numbers, lines, raw, errors))


def overview() -> Io[list[Section]]:
    """The "ingested files" section: every watched file of every watcher (no section when
    ingest was never used)."""
    row = yield from one(INGEST_INSTALLED)
    if not row or not row[0]:
        return []
    rows = yield from query(OVERVIEW)
    if not rows:
        return []
    return [Section("ingested files", list(OVERVIEW_COLUMNS), [list(r) for r in rows])]


def target_columns(name: TableName) -> Io[list[str]]:
    """The columns of table ``name``, in order; a clear error when there is no such table."""
    found = yield from lookup(name)
    if found is None:
        db = yield from one("SELECT current_database()")
        raise IngestError(
            f"table {str(name)!r} does not exist in database {db[0] if db else '?'!r}; create "
            "it first (for example CREATE TABLE ... (value text)) or name an existing table "
            "with table="
        )
    return (yield from columns(found[0]))
