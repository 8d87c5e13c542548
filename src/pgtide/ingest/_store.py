"""pgtide's ingest tables: file offsets, rejects, and the target table's description.

Every statement here runs inside the caller's transaction, so that a batch's rows, its
rejects and the file's new offset commit together or not at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from ..errors import IngestError
from ._formats import Reject

LOAD_OFFSETS = """
SELECT path, device, inode, fingerprint, fingerprint_len, byte_offset, line_count,
       rows_written, rejected, version
FROM pgtide.file_offsets WHERE watcher = %s
"""
LOAD_OFFSET = LOAD_OFFSETS + " AND path = %s"
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
INSERT_REJECT = """
INSERT INTO pgtide.rejects (watcher, path, line_no, line, error) VALUES (%s, %s, %s, %s, %s)
"""
OVERVIEW = """
SELECT watcher, path, byte_offset, line_count, rows_written, rejected, target,
       date_trunc('second', updated_at) AS updated_at
FROM pgtide.file_offsets ORDER BY watcher, path
"""
TABLE_COLUMNS = """
SELECT a.attname FROM pg_attribute a
WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""


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


def load_all(conn: psycopg.Connection[Any], watcher: str) -> dict[str, Saved]:
    return {row[0]: _saved(row) for row in conn.execute(LOAD_OFFSETS, (watcher,)).fetchall()}


def load(conn: psycopg.Connection[Any], watcher: str, path: str) -> Saved | None:
    row = conn.execute(LOAD_OFFSET, (watcher, path)).fetchone()
    return _saved(row) if row else None


def save(
    conn: psycopg.Connection[Any],
    watcher: str,
    target: str,
    state: Saved,
    added_rows: int,
    added_rejects: int,
) -> int:
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
        row = conn.execute(
            INSERT_OFFSET,
            (watcher, state.path, *fields, added_rows, added_rejects, target),
        ).fetchone()
    else:
        row = conn.execute(
            UPDATE_OFFSET, (*fields, added_rows, added_rejects, watcher, state.path, state.version)
        ).fetchone()
    if row is None:
        raise Conflict(state.path)
    return int(row[0])


def move(conn: psycopg.Connection[Any], watcher: str, old: str, new: str, version: int) -> int:
    conn.execute(DROP_OFFSET, (watcher, new))
    row = conn.execute(MOVE_OFFSET, (new, watcher, old, version)).fetchone()
    if row is None:
        raise Conflict(old)
    return int(row[0])


def forget(conn: psycopg.Connection[Any], watcher: str, path: str) -> None:
    conn.execute(DROP_OFFSET, (watcher, path))


def add_rejects(
    conn: psycopg.Connection[Any], watcher: str, path: str, rejects: Sequence[Reject]
) -> None:
    if rejects:
        with conn.cursor() as cur:
            cur.executemany(
                INSERT_REJECT, [(watcher, path, r.line_no, r.line, r.error) for r in rejects]
            )


def overview(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]] | None:
    """Every watched file of every watcher, or None when ingest was never installed."""
    found = conn.execute("SELECT to_regclass('pgtide.file_offsets') IS NOT NULL").fetchone()
    if not found or not found[0]:
        return None
    return list(conn.execute(OVERVIEW).fetchall())


def table_identifier(name: str) -> sql.Identifier:
    """``schema.table`` or ``table`` as a quoted identifier (never formatted as text)."""
    parts = name.split(".")
    if not 1 <= len(parts) <= 2 or not all(parts):
        raise IngestError(
            f"table name {name!r} is not valid; write it as 'table' or 'schema.table'"
        )
    return sql.Identifier(*parts)


def table_columns(conn: psycopg.Connection[Any], name: str) -> list[str]:
    """The columns of an existing table, in order; a clear error when there is no such table."""
    ident = table_identifier(name)
    quoted = ident.as_string(conn)
    row = conn.execute("SELECT to_regclass(%s)", (quoted,)).fetchone()
    if not row or row[0] is None:
        raise IngestError(
            f"table {name!r} does not exist in database {conn.info.dbname!r}; create it first "
            "(for example CREATE TABLE ... (value text)) or name an existing table with table="
        )
    return [r[0] for r in conn.execute(TABLE_COLUMNS, (quoted,)).fetchall()]
