"""WAL capture: a publication and one logical replication slot per database, and the relay
that drains the slot into ``pgtide.changes``.

Psycopg 3 speaks no replication protocol, so the relay reads the slot through SQL functions:
``pg_logical_slot_peek_binary_changes`` (pgoutput, protocol 1) to read, and
``pg_replication_slot_advance`` to confirm. One relay step:

1. reads up to ``batch_rows`` messages after the slot's confirmed position (a peek: the slot
   does not move), and groups them into whole source transactions (:mod:`.pgoutput`);
2. writes their changes, in source commit order, and the end LSN of the last one into
   ``pgtide.wal.relayed_lsn``, in ONE transaction (with, while a feed waits, one wake-up
   NOTIFY per table);
3. only after that commit, advances the slot to that LSN.

A step of more than ``Relay.commit_changes`` changes does 2 in several transactions, each
ending with a whole source transaction and recording its end LSN, then 3 once: feeds read the
first ones while the relay writes the rest.

A crash before 2 commits leaves nothing written and the slot where it was: the same changes
are read again. A crash between 2 and 3 leaves the slot behind what is recorded: the next
step first advances the slot to ``relayed_lsn``, and skips any transaction that ends at or
before it (a crash between two transactions of a step is one between 2 and 3 for those
committed). So a ``kill -9`` anywhere neither loses nor repeats a change.

The changes of a relay transaction share its xid, which the feed reads by snapshot
visibility like any other: they become visible when the relay commits, each holds whole
source transactions only (the slot gives them whole, at their commit), and within it their
ids follow source commit order. So a batch never splits a source transaction, and changes
come in source commit order; ``change.xid`` is the relay transaction's.

Rows are stored as ``to_json`` writes them (the form :mod:`.rows` types): the text values
pgoutput sends are turned into JSON in Python, as bytes, for the types whose text form is
already their JSON form (integers, numeric, floats, bool, text, uuid, jsonb), and by the
server (``to_jsonb(jsonb_populate_record(NULL::table, ...))``, the column types' own input
functions) for a table with any other type. They go in with a binary COPY that the relay
feeds while it decodes the rest of the step, so the server writes while Python decodes.

What bounds the relay is that write: a COPY of the same rows into ``pgtide.changes`` costs
several times a bare read of the slot. Reading through the SQL functions costs one peek a
step, which decodes from the slot's restart point; the relay keeps that point close (see
:data:`RESTART_LAG_BYTES`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from json.encoder import encode_basestring
from typing import Any, cast

import psycopg
from psycopg import sql

from .. import schema
from ..channel._gate import FEED_GATE
from ..connect import DsnLike, Resolved, connect, needs_session
from ..errors import FeedError
from ..names import TableName
from ..overview import Section
from ..session import Io, Query, Session, Stopped, one, query, run, using
from ._worker import WorkerThread
from .pgoutput import (
    RELATION,
    UNCHANGED,
    Decoder,
    ProtocolError,
    Relation,
    RowChange,
    Tuple,
    lsn_int,
    lsn_text,
    read_relation,
)
from .track import _drop_triggers, existing, log

PUBLICATION = "pgtide_wal"
"""The publication of the WAL-captured tables (one per database)."""
HEARTBEAT_PREFIX = "pgtide"
UNCHANGED_TOAST = {"$pgtide": "unchanged-toast"}
"""Stored for an unchanged TOASTed value whose old value the WAL does not hold; typed rows
give :data:`pgtide.feed.pgoutput.UNCHANGED` for it."""
_LOCK_KEY = (0x70677469, 0x57414C)  # advisory lock: one relay per database
HEARTBEAT_BYTES = 1024 * 1024
"""Idle, the relay moves the slot as soon as this much WAL piles up behind it."""
LAG_WARNING_BYTES = 256 * 1024 * 1024
"""The slot lag (bytes of WAL retained) above which the relay logs a warning."""
RESTART_LAG_BYTES = 256 * 1024
"""Each read of the slot decodes the WAL from its restart point, which moves only past a
running-transactions record (the server writes one every 15 s) once the slot is confirmed
past that record: beyond this much WAL between the restart point and the end of the WAL
(what the slot confirmed, and what the step is about to read), the relay asks for one before
it reads (PostgreSQL 16+, ``pg_log_standby_snapshot()``, when the relay's role may call it),
in a heartbeat transaction that the same step confirms."""
SNAPSHOT_INTERVAL = 0.1
"""At least this many seconds between two running-transactions records the relay asks for.
Between them every step decodes again the WAL written since the last one (twice: its read
and its move of the slot), which costs the server far more than the record and its
heartbeat commit: 0.5 MB of single-row transactions, about 5 ms of CPU a step."""


RECOVERY = (
    "recover with `pgtide capture --reset` (or pgtide.feed.reset_slot()), which drops and "
    "re-creates the slot: changes written while the slot was lost are not in the feed, so "
    "re-read the WAL-captured tables (backfill) if consumers need them"
)


class SlotLost(FeedError):
    """The database's replication slot is gone or invalidated: changes were lost."""


class WalUnavailable(FeedError):
    """The server cannot do WAL capture (``wal_level`` is not ``logical``, no free slot)."""


# -- SQL ----------------------------------------------------------------------------------
_SETTINGS = (
    "SELECT current_setting('wal_level'), current_database(), "
    "current_setting('max_replication_slots')::int"
)
_PUBLICATION_EXISTS = "SELECT 1 FROM pg_publication WHERE pubname = %s"
_CREATE_PUBLICATION = "CREATE PUBLICATION {}"
_DROP_PUBLICATION = "DROP PUBLICATION IF EXISTS {}"
_IN_PUBLICATION = (
    "SELECT 1 FROM pg_publication_tables WHERE pubname = %s AND schemaname = %s AND tablename = %s"
)
_ADD_TABLE = "ALTER PUBLICATION {} ADD TABLE {}"
_DROP_TABLE = "ALTER PUBLICATION {} DROP TABLE {}"
_IDENTITY = "ALTER TABLE {} REPLICA IDENTITY {}"
_SLOT = "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s"
_CREATE_SLOT = "SELECT lsn::text FROM pg_create_logical_replication_slot(%s, 'pgoutput')"
_CREATE_FAILOVER_SLOT = (
    "SELECT lsn::text FROM pg_create_logical_replication_slot(%s, 'pgoutput', failover => true)"
)
_CAN_FAILOVER = (
    "SELECT current_setting('server_version_num')::int >= 170000 AND NOT pg_is_in_recovery()"
)
"""Failover slots (PostgreSQL 17+): a standby with ``sync_replication_slots = on`` keeps a
copy of the slot, so the slot survives a promotion instead of being lost with the primary.
On a primary without such standbys the flag changes nothing."""
_DROP_SLOT = (
    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s"
)
_WAL_ROW = "SELECT slot, publication, relayed_lsn::text FROM pgtide.wal"
_SAVE_WAL = """
INSERT INTO pgtide.wal (slot, publication, relayed_lsn) VALUES (%s, %s, %s::pg_lsn)
ON CONFLICT (slot) DO UPDATE SET publication = excluded.publication,
    relayed_lsn = excluded.relayed_lsn, checked_at = NULL, created_at = now()
"""
_FORGET_WAL = "DELETE FROM pgtide.wal"
_TRACKED_ROW = "SELECT ops, notify, capture, old_full FROM pgtide.tracked WHERE table_name = %s"
_SAVE_TRACKED = """
INSERT INTO pgtide.tracked (table_name, ops, notify, capture, old_full)
VALUES (%s, %s, %s, 'wal', %s)
ON CONFLICT (table_name) DO UPDATE SET ops = excluded.ops, notify = excluded.notify,
    capture = 'wal', old_full = excluded.old_full, tracked_at = now()
"""
_WAL_TABLES = "SELECT table_name, ops, notify FROM pgtide.tracked WHERE capture = 'wal'"
_ANY_WAL = "SELECT count(*) FROM pgtide.tracked WHERE capture = 'wal'"
_STATE = """
SELECT w.slot, w.publication, w.relayed_lsn::text, s.confirmed_flush_lsn::text,
       s.wal_status, to_jsonb(s) ->> 'invalidation_reason', to_jsonb(s) ->> 'conflicting',
       s.safe_wal_size, pg_current_wal_insert_lsn()::text,
       pg_wal_lsn_diff(pg_current_wal_insert_lsn(), s.confirmed_flush_lsn)::int8,
       extract(epoch FROM now() - w.checked_at)::float8, s.slot_name IS NOT NULL,
       (SELECT coalesce(json_agg(json_build_array(table_name, ops, notify)), '[]')
        FROM pgtide.tracked WHERE capture = 'wal'),
       pg_wal_lsn_diff(s.confirmed_flush_lsn, s.restart_lsn)::int8
FROM pgtide.wal w LEFT JOIN pg_replication_slots s ON s.slot_name = w.slot
"""
_PEEK = (
    "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, %s, 'proto_version', '1', "
    "'publication_names', %s, 'messages', 'true')"
)
_ADVANCE = "SELECT pg_replication_slot_advance(%s, %s::pg_lsn)"
_RECORD = """
WITH recorded AS (
    UPDATE pgtide.wal SET relayed_lsn = %(lsn)s::pg_lsn, relayed_at = now(),
        source_commit_at = coalesce(%(commit_at)s, source_commit_at),
        checked_at = CASE WHEN %(drained)s THEN now() ELSE checked_at END
    WHERE slot = %(slot)s AND relayed_lsn = %(expected)s::pg_lsn RETURNING 1
), waiting AS (
    SELECT CASE WHEN cardinality(%(notify)s::text[]) = 0 THEN false
                WHEN pg_try_advisory_lock(%(gate)s, %(gate_sub)s)
                THEN NOT pg_advisory_unlock(%(gate)s, %(gate_sub)s)
                ELSE true END AS somebody
)
SELECT (SELECT count(*) FROM recorded),
       (SELECT count(pg_notify('pgtide_changes', t))
        FROM unnest(%(notify)s::text[]) AS t, waiting WHERE waiting.somebody)
"""
"""Record the step's position; wake the feeds of its tables, only while a feed waits (the
feeds' wake gate, as the capture triggers test it: see pgtide.channel._gate). The test
comes after the step's changes are in the log, in the same transaction."""
_CHECKED = "UPDATE pgtide.wal SET checked_at = now() WHERE slot = %s"
_SNAPSHOT = "SELECT pg_log_standby_snapshot(), pg_logical_emit_message(true, 'pgtide', 'heartbeat')"
_HEARTBEAT = "SELECT pg_logical_emit_message(true, 'pgtide', 'heartbeat')"
_DURABLE = "SET synchronous_commit = on"
_TRY_LOCK = "SELECT pg_try_advisory_lock(%s, %s)"
_UNLOCK = "SELECT pg_advisory_unlock(%s, %s)"
_OVERVIEW = """
SELECT w.slot, coalesce(s.active, false),
       CASE WHEN s.slot_name IS NULL THEN 'missing' ELSE s.wal_status END,
       pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::int8,
       round(CASE WHEN a.age < 0 THEN 0 ELSE a.age END, 3)::float8, w.relayed_at,
       (to_jsonb(s) ->> 'failover')::boolean
FROM pgtide.wal w LEFT JOIN pg_replication_slots s ON s.slot_name = w.slot
CROSS JOIN LATERAL (SELECT extract(epoch FROM now() - greatest(w.checked_at, w.source_commit_at)))
    AS a (age)
"""
_OVERVIEW_COLUMNS = (
    "slot",
    "active",
    "wal status",
    "lag bytes",
    "lag seconds",
    "last relayed at",
    "failover",
)
"""``failover`` is None before PostgreSQL 17 (no failover slots there)."""
_WAL_INSTALLED = "SELECT to_regclass('pgtide.wal') IS NOT NULL"


def slot_name(database: str) -> str:
    """The replication slot of ``database`` (slot names are cluster-wide: a-z, 0-9, _)."""
    plain = re.sub(r"[^a-z0-9_]", "_", database.lower())
    name = f"pgtide_{plain}"
    if plain != database or len(name) > 63:
        digest = hashlib.sha1(database.encode()).hexdigest()[:8]
        name = f"{name[:54]}_{digest}"
    return name


# -- tracking -----------------------------------------------------------------------------
def check_server() -> Io[str]:
    """The database's slot name; a clear error when the server cannot do WAL capture."""
    row = yield from one(_SETTINGS)
    assert row is not None
    level, database, slots = row
    if level != "logical":
        raise WalUnavailable(
            f"capture='wal' needs the server setting wal_level = logical, and this server has "
            f"wal_level = {level}; set it (ALTER SYSTEM SET wal_level = logical, or in "
            "postgresql.conf) and restart the server, or track the table with triggers "
            "(capture='trigger')"
        )
    if slots < 1:
        raise WalUnavailable(
            "capture='wal' needs a replication slot, and max_replication_slots = 0; raise it "
            "and restart the server"
        )
    return slot_name(str(database))


def ensure_slot_io() -> Io[str]:
    """Create the publication, then the slot (in that order: the slot must never start
    before its publication exists), and record them; return the slot name. Run it in
    autocommit: a slot cannot be created in a transaction that wrote."""
    slot = yield from check_server()
    if (yield from one(_PUBLICATION_EXISTS, (PUBLICATION,))) is None:
        with contextlib.suppress(psycopg.errors.DuplicateObject):
            yield Query(sql.SQL(_CREATE_PUBLICATION).format(sql.Identifier(PUBLICATION)))
    found = yield from one(_SLOT, (slot,))
    if found is None:
        failover = yield from one(_CAN_FAILOVER)
        create = _CREATE_FAILOVER_SLOT if failover is not None and failover[0] else _CREATE_SLOT
        try:
            found = yield from one(create, (slot,))
        except psycopg.errors.DuplicateObject:
            found = yield from one(_SLOT, (slot,))
        except psycopg.errors.ActiveSqlTransaction as exc:
            raise FeedError(
                "the first track(..., capture='wal') of a database creates its replication "
                "slot, which cannot happen inside a transaction: call it in autocommit"
            ) from exc
        except psycopg.errors.ConfigurationLimitExceeded as exc:
            raise WalUnavailable(
                f"cannot create replication slot {slot}: {exc.diag.message_primary}; raise "
                "max_replication_slots (and restart the server) or drop unused slots"
            ) from None
        assert found is not None
        rows = yield from query(_WAL_ROW)
        if not rows or rows[0][0] != slot:
            yield Query(_FORGET_WAL)
            yield Query(_SAVE_WAL, (slot, PUBLICATION, found[0]))
        else:
            # the slot was re-created: the relay starts from its new position
            yield Query(_SAVE_WAL, (slot, PUBLICATION, found[0]))
        log.info("created replication slot %s (publication %s)", slot, PUBLICATION)
    elif not (yield from query(_WAL_ROW)):
        yield Query(_SAVE_WAL, (slot, PUBLICATION, found[0]))
    return slot


def track_wal_io(table: TableName, ops: list[str], notify: bool, old_full: bool) -> Io[bool]:
    """Capture ``table`` from the WAL (in one transaction, after :func:`ensure_slot_io`)."""
    name = yield from existing(table)
    row = yield from one(_TRACKED_ROW, (str(name),))
    if row is not None and (list(row[0]), row[1], row[2], row[3]) == (
        ops,
        notify,
        "wal",
        old_full,
    ):
        return False
    yield from _drop_triggers(name)  # it was captured by triggers
    member = yield from one(_IN_PUBLICATION, (PUBLICATION, name.schema, name.name))
    if member is None:
        yield Query(sql.SQL(_ADD_TABLE).format(sql.Identifier(PUBLICATION), name.identifier))
    if old_full or (row is not None and row[3]):
        identity = sql.SQL("FULL" if old_full else "DEFAULT")
        yield Query(sql.SQL(_IDENTITY).format(name.identifier, identity))
    yield Query(_SAVE_TRACKED, (str(name), ops, notify, old_full))
    log.info("tracking %s from the WAL (%s)", name, ", ".join(ops))
    return True


def leave_publication_io(name: TableName, old_full: bool) -> Io[None]:
    """Take ``name`` out of the publication (its WAL capture ends)."""
    member = yield from one(_IN_PUBLICATION, (PUBLICATION, name.schema, name.name))
    if member is not None:
        yield Query(sql.SQL(_DROP_TABLE).format(sql.Identifier(PUBLICATION), name.identifier))
    if old_full:
        yield Query(sql.SQL(_IDENTITY).format(name.identifier, sql.SQL("DEFAULT")))


def was_wal_io(name: TableName) -> Io[bool | None]:
    """None if ``name`` is not tracked, else whether it is captured from the WAL with
    ``REPLICA IDENTITY FULL`` set by pgtide (True) or not (False)... as (capture, old_full)."""
    row = yield from one(_TRACKED_ROW, (str(name),))
    if row is None or row[2] != "wal":
        return None
    return bool(row[3])


def drop_slot_if_unused_io() -> Io[bool]:
    """Drop the slot and publication when no table is captured from the WAL any more."""
    count = yield from one(_ANY_WAL)
    if count is not None and count[0]:
        return False
    rows = yield from query(_WAL_ROW)
    slot = rows[0][0] if rows else (yield from check_server_quiet())
    for attempt in range(100):
        try:
            yield Query(_DROP_SLOT, (slot,))
            break
        except psycopg.errors.ObjectInUse:
            if attempt == 99:
                raise
            time.sleep(0.05)  # a relay's read holds it for a moment
    yield Query(sql.SQL(_DROP_PUBLICATION).format(sql.Identifier(PUBLICATION)))
    yield Query(_FORGET_WAL)
    log.info("dropped replication slot %s: no table is captured from the WAL", slot)
    return True


def _wal_rows(statement: str) -> Io[list[tuple[Any, ...]]]:
    """The rows of ``statement`` over pgtide.wal (none where WAL capture is not installed)."""
    installed = yield from one(_WAL_INSTALLED)
    if not installed or not installed[0]:
        return []
    return (yield from query(statement))


def wal_in_use_io() -> Io[bool]:
    """Whether the database has a WAL slot recorded (so it may need dropping)."""
    return bool((yield from _wal_rows(_WAL_ROW)))


def check_server_quiet() -> Io[str]:
    row = yield from one(_SETTINGS)
    assert row is not None
    return slot_name(str(row[1]))


def track_wal(
    conn: psycopg.Connection[Any], table: TableName, ops: list[str], notify: bool, old_full: bool
) -> bool:
    """Set up WAL capture of ``table`` on ``conn`` (the slot first, then one transaction)."""
    run(conn, ensure_slot_io())
    with conn.transaction():
        return run(conn, track_wal_io(table, ops, notify, old_full))


def reset_slot(*, dsn: DsnLike = None, conn: psycopg.Connection[Any] | None = None) -> str:
    """Drop and re-create the database's replication slot (the recovery from a lost slot);
    return its name. Changes written meanwhile are not in the feed: backfill if needed."""
    with using(dsn, conn) as c:
        run(c, schema.ensure_io())
        slot = run(c, check_server())
        run(c, _drop_slot_io(slot))
        return run(c, ensure_slot_io())


def _drop_slot_io(slot: str) -> Io[None]:
    yield Query(_DROP_SLOT, (slot,))
    yield Query(_FORGET_WAL)


# -- rows as to_json writes them, in COPY's binary format ----------------------------------
def _number(text: bytes) -> bytes:
    """A number's JSON: its text, but NaN and the infinities as strings (as to_json)."""
    return text if 0x30 <= text[-1] <= 0x39 else b'"' + text + b'"'


def _string(text: bytes) -> bytes:
    return encode_basestring(text.decode()).encode()


_BOOL = {b"t": b"true", b"f": b"false"}
_FAST: dict[int, Callable[[bytes], bytes] | None] = {
    16: _BOOL.__getitem__,
    20: None,  # int8, int2, int4, oid: the text is the JSON
    21: None,
    23: None,
    26: None,
    700: _number,
    701: _number,
    1700: _number,
    18: _string,
    19: _string,
    25: _string,
    1042: _string,
    1043: _string,
    2950: _string,
    3802: None,  # jsonb
}
"""Types whose text output gives their to_json value directly (else the server converts);
None: the text as it is."""
_AS_JSON = (114, 3802)  # json, jsonb: given to the server as JSON, not as a string

_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # COPY binary header: no flags, no extension
_TRAILER = b"\xff\xff"
_NULL_FIELD = b"\xff\xff\xff\xff"
_SIZE = struct.Struct(">i")
_VALUE = struct.Struct(">Bi")  # a pgoutput value's kind and size
_JSONB_SIZE = struct.Struct(">ib")  # a jsonb field: its size, and jsonb's format version 1
_UNCHANGED_JSON = json.dumps(UNCHANGED_TOAST).encode()


def _text_field(text: str) -> bytes:
    data = text.encode()
    return _SIZE.pack(len(data)) + data


def _json_field(doc: bytes) -> bytes:
    """A json field of pgtide.changes: the text itself."""
    return _SIZE.pack(len(doc)) + doc


def _jsonb_field(doc: bytes) -> bytes:
    """A jsonb field of the staging table: jsonb's format version, then the text."""
    return _JSONB_SIZE.pack(len(doc) + 1, 1) + doc


_FIELD = {False: _json_field, True: _jsonb_field}  # by staged


_OPS = {op: _text_field(op) for op in ("insert", "update", "delete", "truncate")}


@dataclass
class _Shape:
    """How to write one relation's rows: its canonical name (and as a COPY field), and per
    column the JSON key and converter; ``slow``: the server types the row (its values go as
    JSON strings, but json and jsonb values as they are)."""

    table: str
    field: bytes
    keys: tuple[bytes, ...]
    convert: tuple[Callable[[bytes], bytes] | None, ...]
    slow: bool

    @classmethod
    def of(cls, relation: Relation) -> _Shape:
        types = [c.type_oid for c in relation.columns]
        slow = any(t not in _FAST for t in types)
        convert: tuple[Callable[[bytes], bytes] | None, ...]
        if slow:
            convert = tuple(None if t in _AS_JSON else _string for t in types)
        else:
            convert = tuple(_FAST[t] for t in types)
        keys = tuple(encode_basestring(c.name).encode() + b":" for c in relation.columns)
        table = str(TableName(relation.schema, relation.name))
        return cls(table, _text_field(table), keys, convert, slow)

    def fields(self, values: Tuple | None, staged: bool) -> tuple[bytes, bytes]:
        """The row as a COPY field (json into pgtide.changes, jsonb when ``staged``), and
        the patch for its unchanged TOAST values (a NULL field when there is none: a fast
        shape keeps their marker in the row)."""
        if values is None:
            return _NULL_FIELD, _NULL_FIELD
        field = _FIELD[staged]
        if None not in values and UNCHANGED not in values:  # the common case
            plain = zip(self.keys, self.convert, cast("list[bytes]", values), strict=False)
            parts = [k + (v if c is None else c(v)) for k, c, v in plain]
            return field(b"{" + b",".join(parts) + b"}"), _NULL_FIELD
        parts = []
        patch = []
        for key, convert, value in zip(self.keys, self.convert, values, strict=False):
            if value is None:
                parts.append(key + b"null")
            elif isinstance(value, bytes):
                parts.append(key + (value if convert is None else convert(value)))
            else:  # UNCHANGED
                patch.append(key + _UNCHANGED_JSON)
        if patch and not self.slow:
            return field(b"{" + b",".join(parts + patch) + b"}"), _NULL_FIELD
        return (
            field(b"{" + b",".join(parts) + b"}"),
            field(b"{" + b",".join(patch) + b"}") if patch else _NULL_FIELD,
        )

    def heads(self, staged: bool) -> dict[str, bytes]:
        """Per op, the start of a COPY record: the field count, table name and op."""
        return {op: _FIELDS[staged] + self.field + field for op, field in _OPS.items()}


_BEGIN = ord("B")
_OID = struct.Struct(">I")
_ESCAPE = re.compile(rb'[\x00-\x1f"\\\x7f-\xff]').search
"""Where a text value may need JSON escaping (else it goes between quotes as it is)."""
_RAW, _NUMBER, _STRING, _BOOLEAN = range(4)
_KINDS = {None: _RAW, _number: _NUMBER, _string: _STRING, _BOOL.__getitem__: _BOOLEAN}
_Record = Callable[[bytes], "bytes | None"]

# The fast way's reader of one shape of row, generated once per sequence of value kinds: one
# straight run of statements per column (no loop, no dispatch on the kind), as the common
# change's cost in Python is per column. ``p`` walks the message; ``d`` plus the offset ``p``
# at the end is the document's size: ``d0`` counts the JSON texts between values (``t0`` ..
# ``tN``, bound per table and op with the record's ``head``; ``tN`` ends with the NULL old
# row), less the message's 8 leading bytes and each value's kind byte and size (5 bytes), and
# a conversion that changes a value's size adds the difference; so the record is joined once,
# with no document of its own.
#
# Two readers per table and op: the first takes text values only ('t', 116), a string's
# quotes in the JSON texts around it; on anything else it hands the message to the second,
# which also takes NULLs ('n', 110: its kind byte alone, where a text value's kind and size
# take 5, so ``null`` adds 8 to ``d``), a string's quotes in its value (a NULL has none).
# That one returns None on anything else (an unchanged TOAST value, 'u': the general way).
# So a row without NULLs costs what it did before NULLs were taken, and one with NULLs is
# read twice up to its first NULL, still far cheaper than the general way.
_READ_VALUE = """
            k, n = value(data, p)
            if k != 116:
                return other(data)
            p += 5
            v{i} = data[p : p + n]
            p += n"""
_READ_VALUE_OR_NULL = """
            k = data[p]
            if k == 116:
                n = size(data, p + 1)[0]
                p += 5
                v{i} = data[p : p + n]
                p += n{convert}
            elif k == 110:
                p += 1
                v{i} = b"null"
                d += 8
            else:
                return None"""
_CONVERT = {
    _RAW: "",
    _STRING: """
            if escape(v{i}) is not None:
                w = string(v{i})[1:-1]
                d += len(w) - len(v{i})
                v{i} = w""",
    _NUMBER: """
            if not 48 <= v{i}[-1] <= 57:
                v{i} = b'"' + v{i} + b'"'
                d += 2""",
    _BOOLEAN: """
            w = boolean[v{i}]
            d += len(w) - len(v{i})
            v{i} = w""",
}
_QUOTE = """
            v{i} = b'"' + v{i} + b'"'
            d += 2"""
"""A string's quotes, in its value (the reader that takes NULLs)."""
_READER = """
def make(head, d0, other, {texts}):
    def read(data):
        p = 8
        d = d0
        try:{values}
        except (IndexError, KeyError, struct.error):
            return other(data)
        if p != len(data):
            return other(data)
        return b"".join((head, pack(d + p), {parts}))
    return read
"""
_READERS: dict[tuple[tuple[int, ...], bool], Callable[..., _Record]] = {}


def _column(i: int, kind: int, nulls: bool) -> str:
    """The statements that read and convert column ``i`` (see :data:`_READER`)."""
    if not nulls:
        return (_READ_VALUE + _CONVERT[kind]).format(i=i)
    convert = _CONVERT[kind] + (_QUOTE if kind == _STRING else "")
    return _READ_VALUE_OR_NULL.format(i=i, convert=convert.format(i=i).replace("\n", "\n    "))


def _reader(kinds: tuple[int, ...], nulls: bool) -> Callable[..., _Record]:
    """The generated reader of rows of these value kinds (see :data:`_READER`), taking NULLs
    or not, as a maker taking the record's head (field count, table, op), the document's
    fixed size, the reader of a message this one does not take, and the JSON texts between
    values. The source holds the kinds' fixed templates only: names and values are data,
    never code."""
    known = _READERS.get((kinds, nulls))
    if known is None:
        values = "".join(_column(i, k, nulls) for i, k in enumerate(kinds))
        texts = ", ".join(f"t{i}" for i in range(len(kinds) + 1))
        parts = ", ".join([f"t{i}, v{i}" for i in range(len(kinds))] + [f"t{len(kinds)}"])
        scope: dict[str, Any] = {
            "struct": struct,
            "value": _VALUE.unpack_from,
            "size": _SIZE.unpack_from,
            "pack": _SIZE.pack,
            "escape": _ESCAPE,
            "string": _string,
            "boolean": _BOOL,
        }
        source = _READER.format(values=values, texts=texts, parts=parts)
        name = f"<pgtide relay reader {kinds}{' with NULLs' if nulls else ''}>"
        exec(compile(source, name, "exec"), scope)
        known = _READERS[kinds, nulls] = cast("Callable[..., _Record]", scope["make"])
    return known


def _texts(
    keys: tuple[bytes, ...], kinds: tuple[int, ...], quoted: bool
) -> tuple[int, list[bytes]]:
    """The document's fixed size, and the JSON texts before each value and after the last
    one (ending with the record's last field, the NULL old row), with a string's quotes if
    ``quoted`` (see :data:`_READER`)."""
    texts, quote = [], b""
    for i, (key, kind) in enumerate(zip(keys, kinds, strict=True)):
        opening = b'"' if quoted and kind == _STRING else b""
        texts.append(quote + (b"{" if i == 0 else b",") + key + opening)
        quote = opening
    texts.append(quote + b"}")
    fixed = sum(map(len, texts)) - 8 - 5 * len(kinds)
    texts[-1] += _NULL_FIELD
    return fixed, texts


def _leave_out(_data: bytes) -> bytes:
    """The fast way's reader of a change of an op its table is not tracked for."""
    return b""


def _give_up(_data: bytes) -> None:
    """What the fast way does with a message it does not take: the general way takes it."""
    return None


@dataclass(frozen=True)
class _Fast:
    """The fast way for a table of plain types (not staged): per change message it takes,
    by the message's first 8 bytes (kind, relation oid, 'N' for a new row with no old one,
    column count), the reader of its rows (:func:`_reader`) that returns its whole COPY
    record (handing a row with NULLs to the reader that takes them), None for a row it does
    not take, or ``b""`` for an op the table is not tracked for (:func:`_leave_out`)."""

    readers: dict[bytes, _Record]
    touched: tuple[str, bool, bool]

    @classmethod
    def of(cls, oid: bytes, shape: _Shape, count: int, ops: set[str], notify: bool) -> _Fast:
        heads = shape.heads(False)
        kinds = tuple(_KINDS[c] for c in shape.convert)
        fixed, texts = _texts(shape.keys, kinds, quoted=True)
        fixed_nulls, texts_nulls = _texts(shape.keys, kinds, quoted=False)
        readers: dict[bytes, _Record] = {}
        if kinds:
            make, make_nulls = _reader(kinds, False), _reader(kinds, True)
            for message, op in ((b"I", "insert"), (b"U", "update")):
                read: _Record = _leave_out
                if op in ops:
                    head = heads[op]
                    nulls = make_nulls(head, fixed_nulls, _give_up, *texts_nulls)
                    read = make(head, fixed, nulls, *texts)
                readers[message + oid + b"N" + struct.pack(">H", count)] = read
        return cls(readers, (shape.table, notify, False))


@dataclass
class _Ways:
    """The fast ways of one step's tables: by relation oid (as a message holds it), and
    their readers by a message's first 8 bytes, with each reader's (table, notify, slow)."""

    fasts: dict[bytes, _Fast] = field(default_factory=dict)
    readers: dict[bytes, _Record] = field(default_factory=dict)
    tables: dict[_Record, tuple[str, bool, bool]] = field(default_factory=dict)

    def add(self, oid: bytes, fast: _Fast) -> None:
        self.fasts[oid] = fast
        self.readers.update(fast.readers)
        self.tables.update((read, fast.touched) for read in fast.readers.values())

    def drop(self, oid: bytes) -> None:
        fast = self.fasts.pop(oid, None)
        for key in fast.readers if fast is not None else ():
            del self.readers[key]


# The relay's writes into pgtide.changes: COPY straight in when every row of a step is
# already JSON; else COPY into a staging table and one INSERT ... SELECT that has the server
# type the rows (``to_jsonb(jsonb_populate_record(NULL::table, ...))``, the column types' own
# input functions). Both name the change log's columns through _CHANGE_COLUMNS.
_CHANGE_COLUMNS = "table_name, op, row, old"
_COPY_CHANGES = f"COPY pgtide.changes ({_CHANGE_COLUMNS}) FROM STDIN (FORMAT binary)"
_INSERT_TYPED_HEAD = sql.SQL(f"INSERT INTO pgtide.changes ({_CHANGE_COLUMNS}) SELECT c.t, c.op, ")
_INSERT_TYPED_TAIL = sql.SQL(" FROM pg_temp.pgtide_relay AS c ORDER BY c.n")
_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS pgtide_relay (t text, op text, r jsonb, o jsonb, "
    "rp jsonb, opatch jsonb, n int8 GENERATED ALWAYS AS IDENTITY) ON COMMIT DELETE ROWS"
)
_COPY_STAGE = "COPY pg_temp.pgtide_relay (t, op, r, o, rp, opatch) FROM STDIN (FORMAT binary)"
_FIELDS = {False: struct.pack(">h", 4), True: struct.pack(">h", 6)}  # fields of a record
_CHUNK = 8000  # parts of records (one to four each) encoded before they go to the server


def _value(column: str, patch: str, slow: list[str]) -> sql.Composable:
    """The SQL for a stored row from its staged JSON (server-typed for ``slow`` tables)."""
    plain = sql.SQL("c.{}").format(sql.SQL(column))
    whens = [
        sql.SQL("WHEN {} THEN to_jsonb(jsonb_populate_record(NULL::{}, c.{}))").format(
            sql.Literal(t), TableName.parse(t).identifier, sql.SQL(column)
        )
        for t in slow
    ]
    typed = sql.SQL(
        "CASE WHEN c.{col} IS NULL THEN NULL ELSE CASE c.t {whens} ELSE {plain} END END"
    ).format(col=sql.SQL(column), whens=sql.SQL(" ").join(whens), plain=plain)
    return sql.SQL("CASE WHEN c.{p} IS NULL THEN {typed} ELSE {typed} || c.{p} END").format(
        p=sql.SQL(patch), typed=typed
    )


@dataclass
class _Plan:
    """What one step relays, filled in while its changes are encoded (free of I/O)."""

    relayed: int  # the end LSN already relayed: transactions ending at or before it are skipped
    wanted: dict[str, tuple[set[str], bool]]  # table -> (ops, notify)
    staged: bool = False  # some rows need the server to type them: COPY into the stage
    end: int | None = None  # the end LSN of the last transaction read
    commit_at: datetime | None = None  # the commit time of the last one with changes
    transactions: int = 0
    count: int = 0
    slow: set[str] = field(default_factory=set)
    notify: set[str] = field(default_factory=set)
    written: int = 0  # changes in the step's transactions already written

    def part(self) -> _Part:
        """The step's next transaction, if it ended with what is encoded so far."""
        end = self.relayed if self.end is None else self.end
        return _Part(end, self.count - self.written, self.commit_at, sorted(self.notify))


@dataclass
class _Part:
    """One transaction of a step: the end LSN it records, its changes, the commit time of its
    last source transaction with changes, and the tables to wake feeds for."""

    end: int
    count: int
    commit_at: datetime | None
    notify: list[str] = field(default_factory=list)


# -- the relay ----------------------------------------------------------------------------
@dataclass
class StepResult:
    changes: int = 0
    transactions: int = 0
    more: bool = False  # the read was full: read again at once


@dataclass
class Relay:
    """Drains the database's slot into ``pgtide.changes`` (see the module docstring).

    :meth:`step` runs one step on a blocking autocommit connection; :meth:`run` loops,
    reconnecting, under the advisory lock that keeps one relay per database. It reads the
    slot again at once when the read was full (``batch_rows`` messages), after
    ``poll_interval`` seconds when it found nothing, and else, when the last step relayed
    something, after ``busy_ratio`` times what that step took, within ``busy_interval`` and
    ``busy_max``, and after ``busy_max`` when it relayed fewer than ``busy_changes`` changes:
    a step costs much the same to set up (its read and its move of the slot each decode the
    WAL from the slot's restart point, some 4 ms of CPU between the relay and its server
    backends, about what writing 1,000 changes costs) whether it carries ten changes or a
    thousand, so under a stream of small transactions the relay takes fewer, larger steps,
    leaving writers more of the CPU, for up to ``busy_max`` more from commit to batch; a
    step that carried a backlog is mostly its changes, and the next one comes sooner. A step
    of more than ``commit_changes`` changes commits them in several transactions (at source
    transaction boundaries, each with its position), so that feeds read a large backlog's
    first changes while the relay writes the rest."""

    dsn: DsnLike = None
    batch_rows: int = 200_000
    poll_interval: float = 0.05
    busy_interval: float = 0.01
    busy_ratio: float = 2.0
    busy_max: float = 0.025
    busy_changes: int = 1_000
    heartbeat: float = 5.0
    lag_warning_bytes: int = LAG_WARNING_BYTES
    commit_changes: int = 16_000  # past this many changes, a step commits and goes on
    name: str = "relay"
    shapes: dict[int, tuple[Relation, _Shape]] = field(default_factory=dict, repr=False)
    decoder: Decoder = field(default_factory=Decoder, repr=False)
    relayed: int = 0
    _lock_conn: int | None = None
    _flush: bool = False
    _warned_at: float = 0.0
    _snapshots: bool = True  # pg_log_standby_snapshot() is there and allowed
    _snapshot_at: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _reader: psycopg.Connection[Any] | None = field(default=None, repr=False)
    _reader_of: int | None = None

    # one step ------------------------------------------------------------------------------
    def step(self, conn: psycopg.Connection[Any]) -> StepResult:
        """Relay what the slot holds (up to ``batch_rows`` messages); see the module doc."""
        state = conn.execute(_STATE).fetchone()
        if state is None:
            return StepResult()  # no table is captured from the WAL
        slot, publication, relayed_text, confirmed_text, *_rest = state
        self._check(state)
        if self._flush:
            # everything committed so far is flushed (read by the slot) once this commits
            self._flush = False
            with conn.transaction():
                conn.execute(_CHECKED, (slot,))
                conn.execute(_HEARTBEAT)
        # the WAL the next reads decode from the restart point: what they confirmed, and
        # what this one is about to read (a burst's first step asks for the record too)
        self._unpin(conn, (state[13] or 0) + (state[9] or 0))
        relayed, confirmed = lsn_int(relayed_text), lsn_int(confirmed_text)
        reader = self._reading(conn)
        if confirmed < relayed:  # a crash came between the commit and the advance
            reader.execute(_ADVANCE, (slot, relayed_text))
        rows = reader.execute(_PEEK, (slot, self.batch_rows, publication), binary=True).fetchall()
        full = len(rows) >= self.batch_rows
        wanted = {t: (set(ops), notify) for t, ops, notify in state[12]}
        plan = _Plan(relayed, wanted, staged=self._needs_stage(rows, wanted))
        chunks = self._encode(rows, plan)
        first = next(chunks, None)  # encoding goes on while the server takes the first ones
        expected = relayed_text
        while first is not None:
            with conn.transaction():
                part, first = self._write(conn, plan, first, chunks)
                # the position, and the wake-up NOTIFYs (sent at commit), in one statement
                recorded = conn.execute(
                    _RECORD,
                    {
                        "lsn": lsn_text(part.end),
                        "commit_at": part.commit_at,
                        "drained": first is None and not full,
                        "slot": slot,
                        "expected": expected,
                        "notify": part.notify,
                        "gate": FEED_GATE[0],
                        "gate_sub": FEED_GATE[1],
                    },
                ).fetchone()
                if recorded is None or recorded[0] != 1:
                    raise FeedError(
                        f"another relay moved slot {slot} meanwhile; this one stops its step"
                    )
            expected = lsn_text(part.end)
            self.relayed += part.count
        if plan.end is None:  # no whole transaction past what is relayed
            if not full:
                self._idle(conn, state)
            return StepResult(more=full)
        reader.execute(_ADVANCE, (slot, lsn_text(plan.end)))  # after the commit(s)
        return StepResult(plan.count, plan.transactions, full)

    def _shape(self, relation: Relation) -> _Shape:
        known = self.shapes.get(relation.oid)
        if known is not None and (known[0] is relation or known[0] == relation):
            if known[0] is not relation:  # sent again by a new read: compare once
                self.shapes[relation.oid] = (relation, known[1])
            return known[1]
        shape = _Shape.of(relation)
        self.shapes[relation.oid] = (relation, shape)
        return shape

    def _needs_stage(self, rows: list[Any], wanted: dict[str, tuple[set[str], bool]]) -> bool:
        """Whether a captured table in this read needs the server to type its rows (each
        read sends the Relation of every table before its first change)."""
        for (data,) in rows:
            if data[0] == RELATION:
                shape = self._shape(read_relation(data))
                if shape.slow and shape.table in wanted:
                    return True
        return False

    def _encode(self, rows: list[Any], plan: _Plan) -> Iterator[bytes]:
        """The changes to write, in source commit order, as COPY binary records in chunks;
        fills in ``plan`` as it goes (free of I/O).

        A transaction's records are kept until its Commit says whether it is past what is
        relayed. The common change (an Insert, or an Update without the old row, of a table
        of plain types whose values are all there or NULL) goes the fast way
        (:class:`_Fast`): from the message's bytes to the record, with no object per change
        or value, and one lookup by the message's first bytes to find its reader."""
        decoder = self.decoder
        decoder.current = None  # a transaction a previous read cut short is read again
        chunk = min(_CHUNK, max(self.commit_changes, 1))
        ways = _Ways()
        readers = ways.readers
        out: list[bytes] = []
        records: list[bytes] = []  # of the current transaction
        append = records.append
        touched: set[tuple[str, bool, bool]] = set()  # its tables: (table, notify, slow)
        changed = False  # it has a change of a captured table (relayed or not)
        inside = False  # in a transaction (between a Begin and its Commit)
        last: _Record | None = None
        for (data,) in rows:
            read = readers.get(data[:8])
            if read is not None and inside:
                record = read(data)
                if record:
                    if read is not last:
                        last = read
                        touched.add(ways.tables[read])
                    append(record)
                    continue
                if record is not None:  # an op the table is not tracked for
                    changed = True
                    continue
            txn = decoder.feed(data)
            current = decoder.current
            inside = current is not None
            kind = data[0]
            if kind == _BEGIN:
                records, touched, changed, last = [], set(), False, None
                append = records.append
            elif kind == RELATION:
                ways.drop(data[1:5])  # the table may have changed: look again
            elif current is not None and current.changes:
                changed = True
                self._slow_way(current.changes, plan, ways, records, touched)
                current.changes.clear()
            elif txn is not None and txn.end_lsn > plan.relayed:  # a Commit
                plan.end = txn.end_lsn
                plan.transactions += 1
                if changed or records:
                    plan.commit_at = txn.commit_time
                # a staged change is two records: the row and its patch
                plan.count += len(records) // 2 if plan.staged else len(records)
                out += records
                for table, notify, slow in touched:
                    if notify:
                        plan.notify.add(table)
                    if slow:
                        plan.slow.add(table)
                if len(out) >= chunk:
                    yield b"".join(out)
                    out = []
        if out:
            yield b"".join(out)

    def _slow_way(
        self,
        changes: list[RowChange],
        plan: _Plan,
        ways: _Ways,
        records: list[bytes],
        touched: set[tuple[str, bool, bool]],
    ) -> None:
        """Encode ``changes`` (decoded) into ``records``; note a table the fast way can take
        from now on."""
        for rel, op, new, old in changes:
            shape = self._shape(rel)
            ops, notify = plan.wanted.get(shape.table, (set(), False))
            if shape.slow and ops and not plan.staged:
                raise ProtocolError(f"a change of {shape.table} came without its Relation")
            oid = _OID.pack(rel.oid)
            if not shape.slow and not plan.staged and oid not in ways.fasts:
                ways.add(oid, _Fast.of(oid, shape, len(rel.columns), ops, notify))
            if op not in ops:
                continue
            touched.add((shape.table, notify, shape.slow))
            heads = shape.heads(plan.staged)
            row, row_patch = shape.fields(new, plan.staged)
            old_row, old_patch = shape.fields(old, plan.staged)
            records.append(heads[op] + row + old_row)
            if plan.staged:
                records.append(row_patch + old_patch)

    def _write(
        self, conn: psycopg.Connection[Any], plan: _Plan, first: bytes, chunks: Iterator[bytes]
    ) -> tuple[_Part, bytes | None]:
        """COPY the changes in, in order, while the rest are encoded: straight into
        pgtide.changes when every row is already JSON, else through the staging table.

        Past ``commit_changes`` changes (not staged), it stops at the end of a chunk (the
        end of a source transaction): returns what it wrote, and the next chunk, for the
        step's next transaction (None: it wrote them all)."""
        if plan.staged:
            conn.execute(_STAGE)
        with conn.cursor().copy(_COPY_STAGE if plan.staged else _COPY_CHANGES) as copy:
            copy.write(_SIGNATURE + first)
            while True:
                # what is written so far: the generator stands just after this chunk's end
                part = plan.part()
                following = next(chunks, None)
                if following is None:  # all of it, with any transactions after the last change
                    part = plan.part()
                    break
                if not plan.staged and part.count >= self.commit_changes:
                    break
                copy.write(following)
            copy.write(_TRAILER)
        plan.written += part.count
        if plan.staged:
            chosen = sorted(plan.slow)
            typed = [_value("r", "rp", chosen), sql.SQL(", "), _value("o", "opatch", chosen)]
            conn.execute(sql.Composed([_INSERT_TYPED_HEAD, *typed, _INSERT_TYPED_TAIL]))
        return part, following

    def _check(self, state: tuple[Any, ...]) -> None:
        """Raise :class:`SlotLost` for a lost slot; warn about lag and a slot at risk."""
        slot, _pub, _relayed, _confirmed, status, reason, conflicting, safe, *_x = state
        lag, exists = state[9], state[11]
        if not exists:
            raise SlotLost(f"replication slot {slot} does not exist any more; {RECOVERY}")
        if status == "lost" or reason or conflicting == "true":
            why = reason or ("conflict" if conflicting == "true" else "wal_status lost")
            raise SlotLost(
                f"replication slot {slot} was invalidated ({why}: the server removed WAL it "
                f"still needed, e.g. max_slot_wal_keep_size was reached); {RECOVERY}"
            )
        now = time.monotonic()
        if now - self._warned_at < 30:
            return
        if status == "unreserved":
            self._warned_at = now
            log.error(
                "replication slot %s is about to be lost: it holds more WAL than "
                "max_slot_wal_keep_size allows (%s bytes left); is the relay running?",
                slot,
                safe,
            )
        elif lag is not None and lag > self.lag_warning_bytes:
            self._warned_at = now
            log.warning(
                "replication slot %s lags %d MB behind the WAL (threshold %d MB); "
                "is the relay keeping up? (pgtide status shows the lag)",
                slot,
                lag // 2**20,
                self.lag_warning_bytes // 2**20,
            )

    def _unpin(self, conn: psycopg.Connection[Any], behind: int | None) -> None:
        """Move the slot's restart point on (see :data:`RESTART_LAG_BYTES`): at most once in
        :data:`SNAPSHOT_INTERVAL`, and never again once the server refuses."""
        now = time.monotonic()
        if not self._snapshots or (behind or 0) < RESTART_LAG_BYTES:
            return
        if now - self._snapshot_at < SNAPSHOT_INTERVAL:
            return
        self._snapshot_at = now
        try:
            # the record counts once the slot is confirmed past it: the heartbeat transaction
            # that writes it ends after it, and this step reads and confirms that end even
            # when nothing else is written
            conn.execute(_SNAPSHOT)
        except (psycopg.errors.UndefinedFunction, psycopg.errors.InsufficientPrivilege) as exc:
            self._snapshots = False
            log.info(
                "the relay cannot call pg_log_standby_snapshot() (%s): each read of the slot "
                "decodes the WAL since the server's last running-transactions record",
                exc.diag.message_primary,
            )
            return

    def _idle(self, conn: psycopg.Connection[Any], state: tuple[Any, ...]) -> None:
        """Nothing pending: keep the slot moving (a heartbeat transaction, whose end the
        next step confirms) when WAL piles up behind it or the last check is old."""
        lag, checked_age = state[9] or 0, state[10]
        stale = checked_age is None or checked_age >= self.heartbeat
        if lag >= HEARTBEAT_BYTES or (lag > 0 and stale):
            with conn.transaction():
                conn.execute(_CHECKED, (state[0],))
                conn.execute(_HEARTBEAT)

    # the loop ------------------------------------------------------------------------------
    def _locked(self, conn: psycopg.Connection[Any]) -> bool:
        if self._lock_conn == id(conn):
            return True
        row = conn.execute(_TRY_LOCK, _LOCK_KEY).fetchone()
        if row is not None and row[0]:
            self._lock_conn = id(conn)
            # the relay's commits are durable whatever the server's default: a commit lost
            # in a crash after the slot moved would lose its changes
            conn.execute(_DURABLE)
            return True
        return False

    def _reading(self, conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
        """The connection that reads and moves the slot: in :meth:`run`, one of its own.
        Each call of a logical decoding function ends by dropping its backend's catalog
        caches, which the step's writes (the change log's 16 partitions and their indexes)
        then rebuilt: about 2 ms of server CPU a step, most of what an idle step cost."""
        return self._reader if self._reader_of == id(conn) and self._reader else conn

    def _turn(self, conn: psycopg.Connection[Any]) -> StepResult | None:
        if not self._locked(conn):
            return None
        if self._reader_of != id(conn) or self._reader is None or self._reader.closed:
            self._close_reader()
            self._reader = connect(conn, application_name="pgtide relay (decoding)")
            self._reader_of = id(conn)
        try:
            return self.step(conn)
        except psycopg.Error:
            reader = self._reader
            if reader is None or not (reader.closed or reader.broken):
                raise  # the relay's own connection (an outage: the session reconnects)
            # the decoding connection was lost, not this one: a new one next turn, which
            # also advances the slot over what this step committed, if it got that far
            self._close_reader()
            return StepResult(more=True)

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
        self._reader, self._reader_of = None, None

    def run(
        self,
        stop: threading.Event | None = None,
        *,
        until_idle: bool = False,
        on_step: Callable[[StepResult], Any] | None = None,
    ) -> None:
        """Relay until ``stop`` is set (or, ``until_idle``, until the slot is drained).
        Another relay holding the lock: wait, and take over when it goes away."""
        needs_session("the WAL relay (it holds the database's relay lock)")
        stop = stop or self._stop
        self._flush = until_idle
        session = Session(self.dsn, name=f"pgtide {self.name}", application_name="pgtide relay")
        session._stop = stop  # a stop interrupts a reconnect wait too
        try:
            while not stop.is_set():
                began = time.monotonic()
                try:
                    result = session.call(self._turn)
                except Stopped:
                    return
                if on_step is not None and result is not None:
                    on_step(result)
                if result is not None and result.more:
                    continue
                if until_idle and result is not None:
                    return
                if result is None:
                    stop.wait(1.0)
                elif result.transactions:  # changes keep coming: look again soon
                    stop.wait(self._busy_wait(time.monotonic() - began, result.changes))
                else:
                    stop.wait(self.poll_interval)
        finally:
            self._lock_conn = None
            self._close_reader()
            session.close()

    def _busy_wait(self, took: float, changes: int) -> float:
        """Seconds to wait after a step that took ``took`` and relayed ``changes`` changes
        (of one source transaction or more): a small step was mostly set-up."""
        if changes < self.busy_changes:
            return self.busy_max
        return min(max(self.busy_interval, took * self.busy_ratio), self.busy_max)

    def stop(self) -> None:
        self._stop.set()


class RelayThread(WorkerThread[Relay]):
    """The relay inside a Feed process (:class:`~._worker.WorkerThread`)."""

    def __init__(self, resolved: Resolved, consumer: str) -> None:
        super().__init__(Relay(resolved, name=f"relay of feed {consumer}"), "pgtide-relay")


def follows_wal_io(tables: list[str] | None) -> Io[bool]:
    """Whether a feed of ``tables`` (None: all) follows a table captured from the WAL."""
    rows = yield from query(_WAL_TABLES)
    return any(tables is None or t in tables for t, _o, _n in rows)


def overview_io() -> Io[list[Section]]:
    """The "capture" section of ``pgtide status``: the slot, whether a relay reads it, its
    WAL status, lag in bytes (WAL the slot retains) and seconds (since the relay last knew it
    had relayed everything), when the relay last wrote, and whether it is a failover slot."""
    rows = yield from _wal_rows(_OVERVIEW)
    return [Section("capture", list(_OVERVIEW_COLUMNS), [list(r) for r in rows])] if rows else []
