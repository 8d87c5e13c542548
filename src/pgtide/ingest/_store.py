"""pgtide's ingest tables: file offsets, rejects, and the target table's description.

Every function here is database work free of I/O (an :data:`~pgtide.session.Io`). The
engine runs them inside the transaction of a batch, so that a batch's rows, its rejects and
the file's new offset commit together or not at all.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from ..errors import IngestError
from ..names import TableName, columns, lookup
from ..overview import Section
from ..session import Io, one, query
from ._formats import Reject

LOAD_OFFSETS = """
SELECT path, device, inode, fingerprint, fingerprint_len, byte_offset, line_count,
       rows_written, rejected, version, rotated_from
FROM pgtide.file_offsets WHERE watcher = %s
"""
PREPARED = """
SELECT current_setting('client_encoding'),
       ARRAY(SELECT version FROM pgtide.schema_version),
       to_regclass(%(table)s) IS NOT NULL,
       ARRAY(SELECT a.attname::text FROM pg_attribute a
             WHERE a.attrelid = to_regclass(%(table)s) AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum),
       ARRAY(SELECT a.atttypid::regtype::text FROM pg_attribute a
             WHERE a.attrelid = to_regclass(%(table)s) AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum),
       o.path, o.device, o.inode, o.fingerprint, o.fingerprint_len, o.byte_offset,
       o.line_count, o.rows_written, o.rejected, o.version, o.rotated_from
FROM (VALUES (1)) AS one (x)
LEFT JOIN pgtide.file_offsets o ON o.watcher = %(watcher)s
"""
INSERT_OFFSET = """
INSERT INTO pgtide.file_offsets (watcher, path, device, inode, fingerprint, fingerprint_len,
                                 byte_offset, line_count, rows_written, rejected, target,
                                 rotated_from)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (watcher, path) DO NOTHING
RETURNING version
"""
_STATES = """json_to_recordset(%s::json)
     AS u (path text, device numeric, inode numeric, fingerprint text, fingerprint_len integer,
           byte_offset bigint, line_count bigint, added_rows bigint, added_rejects bigint,
           version bigint, rotated_from text)"""
INSERT_OFFSETS = f"""
INSERT INTO pgtide.file_offsets AS f (watcher, path, device, inode, fingerprint,
                                      fingerprint_len, byte_offset, line_count, rows_written,
                                      rejected, target, rotated_from)
SELECT %s, u.path, u.device, u.inode, decode(u.fingerprint, 'hex'), u.fingerprint_len,
       u.byte_offset, u.line_count, u.added_rows, u.added_rejects, %s, u.rotated_from
FROM {_STATES}
RETURNING f.path, f.version
"""
UPDATE_OFFSETS = f"""
UPDATE pgtide.file_offsets AS f
SET device = u.device, inode = u.inode, fingerprint = decode(u.fingerprint, 'hex'),
    fingerprint_len = u.fingerprint_len, byte_offset = u.byte_offset,
    line_count = u.line_count, rows_written = f.rows_written + u.added_rows,
    rejected = f.rejected + u.added_rejects, version = f.version + 1, updated_at = now()
FROM {_STATES}
WHERE f.watcher = %s AND f.path = u.path AND f.version = u.version
RETURNING f.path, f.version
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
UPDATE pgtide.file_offsets
SET path = %s, rotated_from = %s, version = version + 1, updated_at = now()
WHERE watcher = %s AND path = %s AND version = %s
RETURNING version
"""
DROP_OFFSET = "DELETE FROM pgtide.file_offsets WHERE watcher = %s AND path = %s"
INSERT_REJECTS = """
INSERT INTO pgtide.rejects (watcher, path, line_no, line, raw, error, target)
SELECT %s, r.path, r.line_no, r.line, r.raw, r.error, r.target::jsonb
FROM unnest(%s::text[], %s::bigint[], %s::text[], %s::bytea[], %s::text[], %s::text[])
     AS r (path, line_no, line, raw, error, target)
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
    rotated_from: str | None = None


class Conflict(Exception):
    """Another watcher with the same name moved this file's offset first."""


def _saved(row: tuple[Any, ...]) -> Saved:
    fp_len, offset, lines, rows, rejected, version = (int(v) for v in row[4:10])
    return Saved(
        row[0],
        int(row[1]),
        int(row[2]),
        bytes(row[3]),
        fp_len,
        offset,
        lines,
        rows,
        rejected,
        version,
        row[10],
    )


def load_all(watcher: str) -> Io[dict[str, Saved]]:
    """Every file this watcher has committed an offset for, by path."""
    rows = yield from query(LOAD_OFFSETS, (watcher,))
    return {row[0]: _saved(row) for row in rows}


@dataclass(frozen=True)
class Prepared:
    """What a new connection needs, read in one round trip: the client encoding, the schema
    migrations applied, the target table's columns (None when there is no such table) and
    their types (as ``regtype`` names), and every committed offset of the watcher."""

    encoding: str
    applied: frozenset[int]
    columns: list[str] | None
    saved: dict[str, Saved]
    types: list[str] | None = None


def prepared(watcher: str, table: TableName | None) -> Io[Prepared | None]:
    """:class:`Prepared` in one statement; None when it cannot be read that way (no schema
    yet, or one this role cannot read): the caller then takes the careful path, which
    installs what is missing or says what is wrong."""
    params = {"watcher": watcher, "table": table.quoted() if table is not None else None}
    try:
        rows = yield from query(PREPARED, params)
    except psycopg.errors.ProgrammingError:
        return None
    encoding, applied, found, names, types = rows[0][:5]
    return Prepared(
        str(encoding),
        frozenset(int(v) for v in applied),
        list(names) if found else None,
        {row[5]: _saved(row[5:]) for row in rows if row[5] is not None},
        list(types) if found else None,
    )


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
            state.rotated_from,
        )
        row = yield from one(INSERT_OFFSET, params)
    else:
        params = (*fields, added_rows, added_rejects, watcher, state.path, state.version)
        row = yield from one(UPDATE_OFFSET, params)
    return _version(row, state.path)


def save_many(
    watcher: str, target: str, states: Sequence[tuple[Saved, int, int]]
) -> Io[dict[str, int]]:
    """:func:`save` for many files in two statements at most: each ``(state, added_rows,
    added_rejects)``; return the new version of each path. Raises Conflict (and the caller's
    transaction is rolled back) when any file was moved by someone else."""
    versions: dict[str, int] = {}
    for fresh in (True, False):
        chosen = [s for s in states if (s[0].version == 0) == fresh]
        if not chosen:
            continue
        records = json.dumps(  # one parameter, however many files: quick to send and parse
            [
                {
                    "path": s.path,
                    "device": s.device,
                    "inode": s.inode,
                    "fingerprint": s.fingerprint.hex(),
                    "fingerprint_len": s.fingerprint_len,
                    "byte_offset": s.offset,
                    "line_count": s.line_count,
                    "added_rows": rows,
                    "added_rejects": rejects,
                    "version": s.version,
                    "rotated_from": s.rotated_from,
                }
                for s, rows, rejects in chosen
            ]
        )
        if fresh:
            try:  # a row there already: another watcher of this name got there first
                found = yield from query(INSERT_OFFSETS, (watcher, target, records))
            except psycopg.errors.UniqueViolation:
                raise Conflict(chosen[0][0].path) from None
        else:
            found = yield from query(UPDATE_OFFSETS, (records, watcher))
        done = {str(r[0]): int(r[1]) for r in found}
        missing = [s.path for s, _, _ in chosen if s.path not in done]
        if missing:
            raise Conflict(missing[0])
        versions.update(done)
    return versions


def move(watcher: str, old: str, new: str, version: int, rotated_from: str | None) -> Io[int]:
    """The offset of ``old`` now belongs to ``new`` (a rename; ``rotated_from`` is the watched
    name of a file rotated away, else None); return the new version."""
    yield from query(DROP_OFFSET, (watcher, new))
    row = yield from one(MOVE_OFFSET, (new, rotated_from, watcher, old, version))
    return _version(row, old)


def forget(watcher: str, path: str) -> Io[None]:
    yield from query(DROP_OFFSET, (watcher, path))


def add_rejects(watcher: str, rejects: Sequence[tuple[str, Reject, str]]) -> Io[None]:
    """Keep the lines that did not land, each ``(path, reject, target as JSON)``, with their
    exact bytes (one statement, whatever their number)."""
    if rejects:
        paths = [p for p, _, _ in rejects]
        numbers = [r.line_no for _, r, _ in rejects]
        lines = [r.line for _, r, _ in rejects]
        raw = [r.raw for _, r, _ in rejects]
        errors = [r.error for _, r, _ in rejects]
        targets = [t for _, _, t in rejects]
        yield from query(INSERT_REJECTS, (watcher, paths, numbers, lines, raw, errors, targets))


def installed() -> Io[bool]:
    """Whether ingest's tables (file offsets and rejects, made by one migration) exist."""
    row = yield from one(INGEST_INSTALLED)
    return bool(row and row[0])


def overview() -> Io[list[Section]]:
    """The "ingested files" section: every watched file of every watcher (no section when
    ingest was never used)."""
    files = (yield from query(OVERVIEW)) if (yield from installed()) else []
    section = Section("ingested files", list(OVERVIEW_COLUMNS), [list(r) for r in files])
    return [section] if files else []


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
