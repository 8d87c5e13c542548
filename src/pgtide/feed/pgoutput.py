"""The pgoutput logical decoding messages (protocol version 1), decoded; no I/O.

A replication slot read through ``pg_logical_slot_peek_binary_changes(..., 'proto_version',
'1', 'publication_names', ...)`` returns one message per row. :class:`Decoder` follows a
stream of them and groups the changes into whole source transactions (:class:`Transaction`),
each with the LSN to confirm once it is relayed.

Decoding is the relay's hot loop, so it reads each message in place (one dispatch on its
kind byte, offsets into the buffer, no object per message but the change it yields) and
keeps column values as the bytes pgoutput sends: PostgreSQL's text output, UTF-8 (protocol 1
sends text). A NULL is None, and a TOASTed value that an UPDATE left unchanged (and so was
not logged) is :data:`UNCHANGED` unless the old row (``REPLICA IDENTITY FULL``) carries it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final, NamedTuple, TypeAlias

from ..errors import FeedError


class _Unchanged:
    """A TOASTed value an UPDATE did not change: the WAL does not hold it."""

    _instance: _Unchanged | None = None

    def __new__(cls) -> _Unchanged:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = _Unchanged()
"""The value of an unchanged TOASTed column whose old value the WAL does not carry."""

Value: TypeAlias = "bytes | _Unchanged | None"
Tuple: TypeAlias = "list[Value]"

_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
# the fixed parts of messages, after the kind byte
_BEGIN = struct.Struct(">QqI")  # final LSN, commit time, xid
_COMMIT = struct.Struct(">BQQq")  # flags, commit LSN, end LSN, commit time
_CHANGE = struct.Struct(">Ic")  # relation oid, tuple marker (Insert, Update, Delete)
_SIZE = struct.Struct(">i")  # a text value's length
_COLUMN = struct.Struct(">BH")  # a Relation's identity and column count
_TYPE = struct.Struct(">Ii")  # a column's type oid and typmod
_TRUNCATE = struct.Struct(">IB")  # relation count, options
_OID = struct.Struct(">I")
_MESSAGE = struct.Struct(">BQ")  # flags, LSN

# kind bytes
_B, _C, _I, _U, _D, _R, _T, _M, _O, _Y = b"BCIUDRTMOY"
_TEXT, _NULL, _TOAST = b"tnu"


class ProtocolError(FeedError):
    """A pgoutput message pgtide cannot read."""


def lsn_text(lsn: int) -> str:
    """An LSN as PostgreSQL writes it: ``16/B374D848``."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def lsn_int(text: str) -> int:
    """An LSN from its text form."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def timestamp(micros: int) -> datetime:
    """A PostgreSQL timestamp (microseconds since 2000-01-01 UTC)."""
    return _EPOCH + timedelta(microseconds=micros)


@dataclass(frozen=True)
class Column:
    name: str
    type_oid: int
    key: bool


@dataclass(frozen=True)
class Relation:
    oid: int
    schema: str
    name: str
    identity: str  # d(efault), n(othing), f(ull), i(ndex)
    columns: tuple[Column, ...]


class RowChange(NamedTuple):
    """One row change of a source transaction, with its table's relation."""

    relation: Relation
    op: str  # insert, update, delete, truncate
    new: Tuple | None = None
    old: Tuple | None = None


@dataclass
class Message:
    """A transactional ``pg_logical_emit_message`` of the transaction."""

    lsn: int
    prefix: str
    content: bytes


@dataclass
class Transaction:
    """One committed source transaction: its changes, in order, and where it ends."""

    xid: int
    commit_time: datetime
    end_lsn: int = 0
    changes: list[RowChange] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)


def _tuple(data: bytes, pos: int) -> tuple[Tuple, int]:
    """The column values of the tuple at ``pos``, and the offset after it."""
    count = (data[pos] << 8) | data[pos + 1]
    pos += 2
    values: Tuple = []
    append = values.append
    size = _SIZE.unpack_from
    for _ in range(count):
        kind = data[pos]
        if kind == _TEXT:
            start = pos + 5
            pos = start + size(data, pos + 1)[0]
            append(data[start:pos])
        elif kind == _NULL:
            append(None)
            pos += 1
        elif kind == _TOAST:
            append(UNCHANGED)
            pos += 1
        else:  # 'b' (binary) is sent only when asked for, and pgtide does not ask
            raise ProtocolError(f"unexpected pgoutput column kind {chr(kind)!r}")
    if pos > len(data):
        raise ProtocolError("pgoutput message ends inside a tuple")
    return values, pos


def _string(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(0, pos)
    return data[pos:end].decode(), end + 1


RELATION: Final = _R
"""The kind byte of a Relation message (a table's name and columns)."""


_READ_ERRORS = (struct.error, ValueError, IndexError, UnicodeDecodeError)


def _unreadable(data: bytes, exc: Exception) -> ProtocolError:
    kind = chr(data[0]) if data else "empty"
    return ProtocolError(f"cannot read pgoutput {kind!r} message: {exc}")


def read_relation(data: bytes) -> Relation:
    """A Relation message."""
    try:
        return _relation(data)
    except _READ_ERRORS as exc:
        raise _unreadable(data, exc) from None


def _relation(data: bytes) -> Relation:
    (oid,) = _OID.unpack_from(data, 1)
    schema, pos = _string(data, 5)
    name, pos = _string(data, pos)
    identity, count = _COLUMN.unpack_from(data, pos)
    pos += _COLUMN.size
    columns = []
    for _ in range(count):
        flags = data[pos]
        column, pos = _string(data, pos + 1)
        type_oid, _typmod = _TYPE.unpack_from(data, pos)
        pos += _TYPE.size
        columns.append(Column(column, type_oid, bool(flags & 1)))
    return Relation(oid, schema, name, chr(identity), tuple(columns))


@dataclass
class Decoder:
    """Follows pgoutput messages and gives whole transactions (:meth:`feed`).

    Relations are remembered by oid, as the protocol requires (each read of the slot sends
    them again before their first change)."""

    relations: dict[int, Relation] = field(default_factory=dict)
    current: Transaction | None = None

    def feed(self, data: bytes) -> Transaction | None:
        """Read one message; return the transaction it completes (at Commit), else None."""
        try:
            return self._feed(data)
        except _READ_ERRORS as exc:
            raise _unreadable(data, exc) from None

    def _feed(self, data: bytes) -> Transaction | None:
        kind = data[0]
        txn = self.current
        if kind in (_I, _U, _D):  # the hot path: one row change
            if txn is None:
                raise ProtocolError(f"pgoutput {chr(kind)!r} change outside a transaction")
            oid, marker = _CHANGE.unpack_from(data, 1)
            relation = self._relation(oid)
            values, pos = _tuple(data, 6)
            if kind == _I:
                change = RowChange(relation, "insert", values)
            elif kind == _D:
                change = RowChange(relation, "delete", None, values)
            elif marker == b"N":
                change = RowChange(relation, "update", values)
            else:  # the key ('K') or the whole old row ('O'), then the new one
                new, _end = _tuple(data, pos + 1)
                if marker == b"O" and UNCHANGED in new:
                    # REPLICA IDENTITY FULL: the old row holds the unchanged values
                    new = [o if n is UNCHANGED else n for n, o in zip(new, values, strict=False)]
                change = RowChange(relation, "update", new, values)
            txn.changes.append(change)
            return None
        if kind == _B:
            _final, micros, xid = _BEGIN.unpack_from(data, 1)
            self.current = Transaction(xid, timestamp(micros))
            return None
        if kind == _C:
            if txn is None:
                raise ProtocolError("pgoutput Commit outside a transaction")
            _flags, _commit, end, micros = _COMMIT.unpack_from(data, 1)
            txn.end_lsn, txn.commit_time = end, timestamp(micros)
            self.current = None
            return txn
        if kind == _R:
            relation = _relation(data)
            self.relations[relation.oid] = relation
            return None
        if kind == _T:
            if txn is None:
                raise ProtocolError("pgoutput Truncate outside a transaction")
            count, _options = _TRUNCATE.unpack_from(data, 1)
            for i in range(count):
                (oid,) = _OID.unpack_from(data, 6 + 4 * i)
                txn.changes.append(RowChange(self._relation(oid), "truncate"))
            return None
        if kind == _M:
            flags, lsn = _MESSAGE.unpack_from(data, 1)
            prefix, pos = _string(data, 1 + _MESSAGE.size)
            (size,) = _SIZE.unpack_from(data, pos)
            content = data[pos + 4 : pos + 4 + size]
            if not flags & 1:
                return None  # not transactional: nothing to relay
            if txn is None:
                raise ProtocolError("pgoutput transactional Message outside a transaction")
            txn.messages.append(Message(lsn, prefix, content))
            return None
        if kind in (_O, _Y):  # Origin, Type: not needed
            return None
        raise ProtocolError(f"unknown pgoutput message {chr(kind)!r}")

    def _relation(self, oid: int) -> Relation:
        found = self.relations.get(oid)
        if found is None:
            raise ProtocolError(f"pgoutput change for relation {oid} before its Relation message")
        return found
