"""The pgoutput decoder: messages built byte by byte, as the server sends them (no database)."""

from __future__ import annotations

import struct
from datetime import UTC, datetime

import pytest

from pgtide.feed.pgoutput import (
    UNCHANGED,
    Decoder,
    ProtocolError,
    lsn_int,
    lsn_text,
    read_relation,
)


def _s(text: str) -> bytes:
    return text.encode() + b"\0"


def _tuple(*values: object) -> bytes:
    out = struct.pack(">H", len(values))
    for v in values:
        if v is None:
            out += b"n"
        elif v is UNCHANGED:
            out += b"u"
        else:
            data = str(v).encode()
            out += b"t" + struct.pack(">i", len(data)) + data
    return out


BEGIN = b"B" + struct.pack(">QqI", 0x10, 86_400_000_000, 42)
COMMIT = b"C" + struct.pack(">BQQq", 0, 0x10, 0x20, 86_400_000_000)
RELATION = (
    b"R"
    + struct.pack(">I", 7)
    + _s("public")
    + _s("t")
    + b"f"
    + struct.pack(">H", 2)
    + b"\x01"
    + _s("id")
    + struct.pack(">Ii", 23, -1)
    + b"\x00"
    + _s("big")
    + struct.pack(">Ii", 25, -1)
)


def _insert(*values: object) -> bytes:
    return b"I" + struct.pack(">I", 7) + b"N" + _tuple(*values)


def test_decoder_reads_every_message_kind_into_whole_transactions() -> None:
    d = Decoder()
    # a message outside any transaction (not transactional) is not relayed
    assert (
        d.feed(b"M\x00" + struct.pack(">Q", 5) + _s("loose") + struct.pack(">i", 1) + b"x") is None
    )
    assert d.feed(BEGIN) is None
    d.feed(RELATION)
    d.feed(_insert(1, "é"))
    # REPLICA IDENTITY FULL: the unchanged TOAST value comes from the old row
    d.feed(b"U" + struct.pack(">I", 7) + b"O" + _tuple(1, "x") + b"N" + _tuple(2, UNCHANGED))
    # default identity: no old row, the value stays UNCHANGED
    d.feed(b"U" + struct.pack(">I", 7) + b"N" + _tuple(2, UNCHANGED))
    d.feed(b"D" + struct.pack(">I", 7) + b"K" + _tuple(2, None))
    d.feed(b"T" + struct.pack(">IB", 1, 1) + struct.pack(">I", 7))
    d.feed(b"M\x01" + struct.pack(">Q", 6) + _s("pgtide") + struct.pack(">i", 2) + b"hb")
    d.feed(b"O" + struct.pack(">Q", 1) + _s("origin"))  # Origin: not needed
    txn = d.feed(COMMIT)
    assert txn is not None and (txn.xid, txn.end_lsn) == (42, 0x20)
    assert txn.commit_time == datetime(2000, 1, 2, tzinfo=UTC)
    rel = d.relations[7]
    assert (rel.schema, rel.name, rel.identity) == ("public", "t", "f")
    assert [(c.name, c.type_oid, c.key) for c in rel.columns] == [
        ("id", 23, True),
        ("big", 25, False),
    ]
    assert [(c.op, c.new, c.old) for c in txn.changes] == [
        ("insert", [b"1", "é".encode()], None),
        ("update", [b"2", b"x"], [b"1", b"x"]),
        ("update", [b"2", UNCHANGED], None),
        ("delete", None, [b"2", None]),
        ("truncate", None, None),
    ]
    assert all(c.relation is rel for c in txn.changes)
    assert [(m.prefix, m.content) for m in txn.messages] == [("pgtide", b"hb")]
    assert repr(UNCHANGED) == "UNCHANGED"


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (b"", "cannot read pgoutput 'empty'"),
        (b"Z", "unknown pgoutput message 'Z'"),
        (b"I" + struct.pack(">I", 99) + b"N" + _tuple(1), "relation 99 before its Relation"),
        (_insert()[:-2] + struct.pack(">H", 1) + b"t\x00\x00\x00\x09ab", "ends inside a tuple"),
        (_insert()[:-2] + struct.pack(">H", 1) + b"b\x00\x00\x00\x01a", "column kind 'b'"),
        (b"C" + struct.pack(">BQ", 0, 1), "cannot read pgoutput 'C'"),
        (RELATION[:10], "cannot read pgoutput 'R'"),
    ],
)
def test_what_the_decoder_cannot_read_is_a_clear_error(message: bytes, error: str) -> None:
    d = Decoder()
    d.feed(BEGIN)
    d.feed(RELATION)
    with pytest.raises(ProtocolError, match=error):
        d.feed(message)
    if message[:1] == b"R":  # the relay's look-ahead at the tables of a read says the same
        with pytest.raises(ProtocolError, match=error):
            read_relation(message)


def test_changes_outside_a_transaction_are_errors() -> None:
    d = Decoder()
    d.feed(RELATION)
    for message in (COMMIT, _insert(1, "x"), b"T" + struct.pack(">IB", 1, 0) + b"\0\0\0\7"):
        with pytest.raises(ProtocolError, match="outside a transaction"):
            d.feed(message)


def test_lsn_text_round_trip() -> None:
    assert lsn_text(lsn_int("16/B374D848")) == "16/B374D848"
    assert lsn_int("0/0") == 0
