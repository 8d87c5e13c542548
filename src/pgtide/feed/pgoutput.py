"""The pgoutput logical decoding messages (protocol version 1), parsed; no I/O.

A replication slot read through ``pg_logical_slot_peek_binary_changes(..., 'proto_version',
'1', 'publication_names', ...)`` returns one message per row. :func:`parse` reads one;
:class:`Decoder` follows a stream of them and groups the changes into whole source
transactions (:class:`Transaction`), each with the LSN to confirm once it is relayed.

Column values come as PostgreSQL's text output (pgoutput sends text in protocol 1); a NULL is
None, and a TOASTed value that an UPDATE left unchanged (and so was not logged) is
:data:`UNCHANGED` unless the old row (``REPLICA IDENTITY FULL``) carries it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeAlias

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

Value: TypeAlias = "str | bytes | _Unchanged | None"
Tuple: TypeAlias = "list[Value]"

_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")
_BEGIN = struct.Struct(">QqI")
_COMMIT = struct.Struct(">BQQq")


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
class Begin:
    final_lsn: int
    commit_time: datetime
    xid: int


@dataclass(frozen=True)
class Commit:
    commit_lsn: int
    end_lsn: int
    commit_time: datetime


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


@dataclass(frozen=True)
class Insert:
    relation: int
    new: Tuple


@dataclass(frozen=True)
class Update:
    relation: int
    new: Tuple
    old: Tuple | None  # the key ('K') or the whole old row ('O'), as the identity gives
    old_kind: str | None


@dataclass(frozen=True)
class Delete:
    relation: int
    old: Tuple
    old_kind: str


@dataclass(frozen=True)
class Truncate:
    relations: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True)
class Message:
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


@dataclass(frozen=True)
class Other:
    """A message pgtide does not need (Origin, Type): its kind byte."""

    kind: str


Parsed: TypeAlias = (
    Begin | Commit | Relation | Insert | Update | Delete | Truncate | Message | Other
)


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = bytes(data)
        self.pos = 0

    def take(self, fmt: struct.Struct) -> Any:
        (value,) = fmt.unpack_from(self.data, self.pos)
        self.pos += fmt.size
        return value

    def string(self) -> str:
        end = self.data.index(0, self.pos)
        text = self.data[self.pos : end].decode()
        self.pos = end + 1
        return text

    def raw(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ProtocolError("pgoutput message ends inside a value")
        value = self.data[self.pos : self.pos + n]
        self.pos += n
        return value

    def tuple(self) -> Tuple:
        data = self.data
        (count,) = _U16.unpack_from(data, self.pos)
        pos = self.pos + 2
        values: Tuple = []
        append = values.append
        for _ in range(count):
            kind = data[pos]
            pos += 1
            if kind == 0x74:  # 't': text
                (size,) = _I32.unpack_from(data, pos)
                pos += 4
                append(data[pos : pos + size].decode())
                pos += size
            elif kind == 0x6E:  # 'n': NULL
                append(None)
            elif kind == 0x75:  # 'u': unchanged TOAST value
                append(UNCHANGED)
            elif kind == 0x62:  # 'b': binary (not asked for; kept as bytes)
                (size,) = _I32.unpack_from(data, pos)
                pos += 4
                append(data[pos : pos + size])
                pos += size
            else:
                raise ProtocolError(f"unknown pgoutput column kind {chr(kind)!r}")
        if pos > len(data):
            raise ProtocolError("pgoutput message ends inside a tuple")
        self.pos = pos
        return values


def parse(data: bytes | memoryview) -> Parsed:
    """One pgoutput message (protocol version 1)."""
    r = _Reader(data)
    if not r.data:
        raise ProtocolError("empty pgoutput message")
    kind = chr(r.data[0])
    r.pos = 1
    try:
        if kind == "B":
            final, ts, xid = _BEGIN.unpack_from(r.data, 1)
            return Begin(final, timestamp(ts), xid)
        if kind == "C":
            _flags, commit, end, ts = _COMMIT.unpack_from(r.data, 1)
            return Commit(commit, end, timestamp(ts))
        if kind == "I":
            oid = r.take(_U32)
            if r.take(_U8) != 0x4E:
                raise ProtocolError("pgoutput Insert without its new tuple")
            return Insert(oid, r.tuple())
        if kind == "U":
            oid = r.take(_U32)
            marker = chr(r.take(_U8))
            old: Tuple | None = None
            old_kind: str | None = None
            if marker in ("K", "O"):
                old, old_kind = r.tuple(), marker
                marker = chr(r.take(_U8))
            if marker != "N":
                raise ProtocolError("pgoutput Update without its new tuple")
            return Update(oid, r.tuple(), old, old_kind)
        if kind == "D":
            oid = r.take(_U32)
            marker = chr(r.take(_U8))
            if marker not in ("K", "O"):
                raise ProtocolError("pgoutput Delete without its old tuple")
            return Delete(oid, r.tuple(), marker)
        if kind == "R":
            oid = r.take(_U32)
            schema, name = r.string(), r.string()
            identity = chr(r.take(_U8))
            columns = []
            for _ in range(r.take(_U16)):
                flags = r.take(_U8)
                column = r.string()
                type_oid = r.take(_U32)
                r.take(_I32)  # typmod
                columns.append(Column(column, type_oid, bool(flags & 1)))
            return Relation(oid, schema, name, identity, tuple(columns))
        if kind == "T":
            count = r.take(_U32)
            options = r.take(_U8)
            oids = tuple(r.take(_U32) for _ in range(count))
            return Truncate(oids, bool(options & 1), bool(options & 2))
        if kind == "M":
            flags = r.take(_U8)
            lsn = r.take(_U64)
            prefix = r.string()
            content = r.raw(r.take(_U32))
            return Message(bool(flags & 1), lsn, prefix, content)
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"cannot read pgoutput {kind!r} message: {exc}") from None
    if kind in ("O", "Y"):
        return Other(kind)
    raise ProtocolError(f"unknown pgoutput message {kind!r}")


@dataclass
class RowChange:
    """One row change of a source transaction, with its table's relation."""

    relation: Relation
    op: str  # insert, update, delete, truncate
    new: Tuple | None = None
    old: Tuple | None = None


@dataclass
class Transaction:
    """One committed source transaction: its changes, in order, and where it ends."""

    xid: int
    commit_time: datetime
    end_lsn: int = 0
    changes: list[RowChange] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)


@dataclass
class Decoder:
    """Follows pgoutput messages and gives whole transactions (:meth:`feed`).

    Relations are remembered by oid, as the protocol requires (each read of the slot sends
    them again before their first change)."""

    relations: dict[int, Relation] = field(default_factory=dict)
    current: Transaction | None = None

    def feed(self, data: bytes | memoryview) -> Transaction | None:
        """Read one message; return the transaction it completes (at Commit), else None."""
        msg = parse(data)
        txn = self.current
        if isinstance(msg, Begin):
            self.current = Transaction(msg.xid, msg.commit_time)
            return None
        if isinstance(msg, Relation):
            self.relations[msg.oid] = msg
            return None
        if isinstance(msg, Other):
            return None
        if txn is None:
            if isinstance(msg, Message) and not msg.transactional:
                return None
            raise ProtocolError(f"pgoutput {type(msg).__name__} outside a transaction")
        if isinstance(msg, Commit):
            txn.end_lsn, txn.commit_time = msg.end_lsn, msg.commit_time
            self.current = None
            return txn
        if isinstance(msg, Insert):
            txn.changes.append(RowChange(self._relation(msg.relation), "insert", new=msg.new))
        elif isinstance(msg, Update):
            old = msg.old if msg.old_kind == "O" else None
            new = msg.new
            if UNCHANGED in new and old is not None:
                # REPLICA IDENTITY FULL: the old row holds the unchanged values
                new = [o if n is UNCHANGED else n for n, o in zip(new, old, strict=False)]
            txn.changes.append(
                RowChange(self._relation(msg.relation), "update", new=new, old=msg.old)
            )
        elif isinstance(msg, Delete):
            txn.changes.append(RowChange(self._relation(msg.relation), "delete", old=msg.old))
        elif isinstance(msg, Truncate):
            for oid in msg.relations:
                txn.changes.append(RowChange(self._relation(oid), "truncate"))
        elif isinstance(msg, Message):
            txn.messages.append(msg)
        return None

    def _relation(self, oid: int) -> Relation:
        found = self.relations.get(oid)
        if found is None:
            raise ProtocolError(f"pgoutput change for relation {oid} before its Relation message")
        return found
