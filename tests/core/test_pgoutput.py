"""The pgoutput parser: messages built byte by byte, as the server sends them (no database)."""

from __future__ import annotations

import struct

import pytest

from pgtide.feed.pgoutput import (
    UNCHANGED,
    Begin,
    Commit,
    Decoder,
    Delete,
    Insert,
    Message,
    ProtocolError,
    Relation,
    Truncate,
    Update,
    lsn_int,
    lsn_text,
    parse,
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


BEGIN = b"B" + struct.pack(">QqI", 0x10, 1_000_000, 42)
COMMIT = b"C" + struct.pack(">BQQq", 0, 0x10, 0x20, 1_000_000)
RELATION = (
    b"R"
    + struct.pack(">I", 7)
    + _s("public")
    + _s("t")
    + b"d"
    + struct.pack(">H", 2)
    + b"\x01"
    + _s("id")
    + struct.pack(">Ii", 23, -1)
    + b"\x00"
    + _s("big")
    + struct.pack(">Ii", 25, -1)
)


def test_messages_parse() -> None:
    begin = parse(BEGIN)
    assert isinstance(begin, Begin) and begin.xid == 42 and begin.final_lsn == 0x10
    assert begin.commit_time.year == 2000
    commit = parse(COMMIT)
    assert isinstance(commit, Commit) and commit.end_lsn == 0x20
    rel = parse(RELATION)
    assert isinstance(rel, Relation) and rel.schema == "public" and rel.name == "t"
    got = [(c.name, c.type_oid, c.key) for c in rel.columns]
    assert got == [("id", 23, True), ("big", 25, False)]
    ins = parse(b"I" + struct.pack(">I", 7) + b"N" + _tuple(1, "é"))
    assert isinstance(ins, Insert) and ins.new == ["1", "é"]
    upd = parse(b"U" + struct.pack(">I", 7) + b"O" + _tuple(1, "a") + b"N" + _tuple(1, UNCHANGED))
    assert isinstance(upd, Update) and upd.old == ["1", "a"] and upd.new == ["1", UNCHANGED]
    dele = parse(b"D" + struct.pack(">I", 7) + b"K" + _tuple(1, None))
    assert isinstance(dele, Delete) and dele.old == ["1", None] and dele.old_kind == "K"
    trunc = parse(b"T" + struct.pack(">IB", 2, 1) + struct.pack(">II", 7, 8))
    assert isinstance(trunc, Truncate) and trunc.relations == (7, 8) and trunc.cascade
    msg = parse(b"M\x01" + struct.pack(">Q", 5) + _s("pgtide") + struct.pack(">I", 2) + b"hb")
    assert isinstance(msg, Message) and msg.transactional and msg.content == b"hb"


def test_decoder_groups_whole_transactions_and_fills_unchanged_toast() -> None:
    d = Decoder()
    assert d.feed(BEGIN) is None
    d.feed(RELATION)
    d.feed(b"I" + struct.pack(">I", 7) + b"N" + _tuple(1, "x"))
    # REPLICA IDENTITY FULL: the unchanged TOAST value comes from the old row
    d.feed(b"U" + struct.pack(">I", 7) + b"O" + _tuple(1, "x") + b"N" + _tuple(1, UNCHANGED))
    # default identity: no old row, the value stays UNCHANGED
    d.feed(b"U" + struct.pack(">I", 7) + b"N" + _tuple(1, UNCHANGED))
    d.feed(b"T" + struct.pack(">IB", 1, 0) + struct.pack(">I", 7))
    txn = d.feed(COMMIT)
    assert txn is not None and txn.xid == 42 and txn.end_lsn == 0x20
    assert [c.op for c in txn.changes] == ["insert", "update", "update", "truncate"]
    assert txn.changes[1].new == ["1", "x"]
    assert txn.changes[2].new == ["1", UNCHANGED] and txn.changes[2].old is None
    assert repr(UNCHANGED) == "UNCHANGED"


def test_bad_messages_are_clear_errors() -> None:
    with pytest.raises(ProtocolError, match="unknown pgoutput message"):
        parse(b"Z")
    with pytest.raises(ProtocolError):
        parse(b"I" + struct.pack(">I", 7) + b"N" + struct.pack(">H", 1) + b"t\x00\x00\x00\x09ab")
    with pytest.raises(ProtocolError, match="before its Relation"):
        d = Decoder()
        d.feed(BEGIN)
        d.feed(b"I" + struct.pack(">I", 99) + b"N" + _tuple(1))
    with pytest.raises(ProtocolError, match="outside a transaction"):
        Decoder().feed(COMMIT)


def test_lsn_text_round_trip() -> None:
    assert lsn_text(lsn_int("16/B374D848")) == "16/B374D848"
    assert lsn_int("0/0") == 0
