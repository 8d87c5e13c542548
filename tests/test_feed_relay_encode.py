"""The relay's encoding of pgoutput messages into COPY records, without a server: the fast
way (plain tables, values there or NULL) writes exactly the records the general way does."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from pgtide.feed.pgoutput import UNCHANGED, Decoder
from pgtide.feed.wal import Relay, _Plan, _Shape

_TEXT, _INT8, _FLOAT8, _NUMERIC, _BOOL, _JSONB = 25, 20, 701, 1700, 16, 3802
_OID = 16384


def _begin(xid: int) -> bytes:
    return b"B" + struct.pack(">QqI", 0, 0, xid)


def _commit(end: int) -> bytes:
    return b"C" + struct.pack(">BQQq", 0, end - 1, end, 0)


def _relation(columns: list[tuple[str, int]], oid: int = _OID, name: bytes = b"t") -> bytes:
    head = b"R" + struct.pack(">I", oid) + b"public\0" + name + b"\0d"
    head += struct.pack(">H", len(columns))
    return head + b"".join(
        b"\1" + name.encode() + b"\0" + struct.pack(">Ii", oid, -1) for name, oid in columns
    )


def _tuple(values: list[Any]) -> bytes:
    out = [struct.pack(">H", len(values))]
    for value in values:
        if value is None:
            out.append(b"n")
        elif value is UNCHANGED:
            out.append(b"u")
        else:
            data = value.encode()
            out.append(b"t" + struct.pack(">i", len(data)) + data)
    return b"".join(out)


def _insert(values: list[Any], oid: int = _OID) -> bytes:
    return b"I" + struct.pack(">I", oid) + b"N" + _tuple(values)


def _update(values: list[Any], old: list[Any] | None = None) -> bytes:
    before = b"" if old is None else b"O" + _tuple(old)
    return b"U" + struct.pack(">I", _OID) + before + b"N" + _tuple(values)


def _delete(old: list[Any]) -> bytes:
    return b"D" + struct.pack(">I", _OID) + b"O" + _tuple(old)


COLUMNS = [("id", _INT8), ("t", _TEXT), ("f", _FLOAT8), ("n", _NUMERIC), ("b", _BOOL)]
TEXTS = ["plain", "", 'quote " here', "back\\slash", "tab\tnew\nline\x01", "é ü 日本", "\x7f"]
NUMBERS = ["1.5", "-2e-05", "NaN", "Infinity", "-Infinity", "0"]


def _rows() -> list[list[Any]]:
    rows: list[list[Any]] = []
    for i, text in enumerate(TEXTS):
        for j, number in enumerate(NUMBERS):
            rows.append([str(i * 10 + j), text, number, number, "tf"[j % 2]])
    rows.append(["99", None, "1", "1", "t"])  # a NULL: the fast way too
    return rows


def _expected(messages: list[bytes], relayed: int) -> tuple[bytes, int]:
    """The records the general way writes: each change decoded, then _Shape.fields."""
    decoder = Decoder()
    out, count = [], 0
    for data in messages:
        txn = decoder.feed(data)
        if txn is None or txn.end_lsn <= relayed:
            continue
        for rel, op, new, old in txn.changes:
            shape = _Shape.of(rel)
            out.append(
                shape.heads(False)[op] + shape.fields(new, False)[0] + shape.fields(old, False)[0]
            )
            count += 1
    return b"".join(out), count


def _slow_changes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the changes the general way encodes (into the returned list's one item)."""
    count = [0]
    slow_way = Relay._slow_way

    def counting(self: Relay, changes: list[Any], *args: Any) -> None:
        count[0] += len(changes)
        slow_way(self, changes, *args)

    monkeypatch.setattr(Relay, "_slow_way", counting)
    return count


def _encode(
    messages: list[bytes],
    relayed: int = 0,
    ops: set[str] | None = None,
    wanted: dict[str, tuple[set[str], bool]] | None = None,
) -> Any:
    ops = {"insert", "update", "delete", "truncate"} if ops is None else ops
    plan = _Plan(relayed, wanted or {"public.t": (ops, True)})
    out = b"".join(Relay()._encode([(m,) for m in messages], plan))
    return out, plan


def test_fast_way_writes_the_records_of_the_general_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slow = _slow_changes(monkeypatch)
    rows = _rows()
    messages = [_begin(1), _relation(COLUMNS)]
    messages += [_insert(r) for r in rows]
    messages += [_update(r) for r in rows]  # no old row: the fast way too
    messages += [_update(rows[0], old=rows[1]), _delete(rows[2]), _commit(100)]
    out, plan = _encode(messages)
    want, count = _expected(messages, 0)
    assert out == want
    assert plan.count == count == 2 * len(rows) + 2
    assert plan.end == 100 and plan.transactions == 1
    assert plan.notify == {"public.t"} and not plan.slow
    assert slow[0] == 3  # the first change (it makes the fast way), the update and delete


# every kind of value: raw (int8, jsonb), string (text), number (float8, numeric), boolean
KINDS = [*COLUMNS, ("j", _JSONB)]
FULL = ["7", 'a "b"\\c\n\u00e9', "NaN", "-1.5e+300", "f", '{"k": [1, null]}']


def _null_rows() -> list[list[Any]]:
    """Rows of :data:`KINDS` with NULLs: in each column alone (first, middle, last), in
    each pair of columns, everywhere, and everywhere but one column."""
    width = len(FULL)
    rows = []
    for i in range(width):
        rows.append([None if c == i else v for c, v in enumerate(FULL)])
        rows.append([v if c == i else None for c, v in enumerate(FULL)])
        rows += [[None if c in (i, j) else v for c, v in enumerate(FULL)] for j in range(i)]
    rows.append([None] * width)
    rows.append(["8", "", "0", "0", "t", "null"])  # empty and JSON null texts: not NULLs
    return rows


def test_fast_way_writes_nulls_as_the_general_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """A NULL in any kind of column, anywhere in the row, is ``"col":null`` in the document,
    with the right size, as the general way writes it; and such rows go the fast way, but a
    row with an unchanged TOAST value still goes the general way."""
    slow = _slow_changes(monkeypatch)
    rows = _null_rows()
    messages = [_begin(1), _relation(KINDS), _insert(FULL)]
    for row in rows:
        messages += [_insert(row), _update(row), _insert(FULL)]
    toasted = [[None, UNCHANGED, *FULL[2:]], [*FULL[:5], UNCHANGED], [UNCHANGED, *[None] * 5]]
    messages += [_update(row) for row in toasted]
    messages.append(_commit(10))
    out, plan = _encode(messages)
    want, count = _expected(messages, 0)
    assert out == want
    assert plan.count == count == 1 + 3 * len(rows) + len(toasted)
    assert slow[0] == 1 + len(toasted)  # the first change (it makes the fast way), the TOASTed
    assert out.count(b'{"id":null,"t":null,"f":null,"n":null,"b":null,"j":null}') == 2
    assert b'"id":7,"t":null,"f":"NaN",' in out and b',"b":false,"j":null}' in out


def test_fast_way_follows_a_changed_relation_and_skips_what_is_relayed() -> None:
    three = COLUMNS[:3]
    messages = [_begin(1), _relation(three), _insert(["1", "a", "1"]), _insert(["2", "b", "2"])]
    messages += [_commit(10), _begin(2), _insert(["3", "c", "3"]), _insert(["4", "d", "4"])]
    messages += [_commit(20)]
    # ALTER TABLE ... ALTER COLUMN f TYPE text: a new Relation, the same number of columns
    messages += [_begin(3), _relation([*three[:2], ("f", _TEXT)]), _insert(["5", "e", "5"])]
    messages += [_insert(["6", "f", "6"]), _commit(30)]
    out, plan = _encode(messages, relayed=10)
    want, count = _expected(messages, 10)
    assert out == want
    assert b'"f":"6"' in out
    assert plan.count == count == 4
    assert plan.end == 30 and plan.transactions == 2


def test_fast_way_leaves_out_ops_the_table_is_not_tracked_for() -> None:
    messages = [_begin(1), _relation(COLUMNS[:2]), _insert(["1", "a"]), _insert(["2", "b"])]
    messages += [_update(["1", "c"]), _update(["2", "d"]), _commit(10)]
    out, plan = _encode(messages, ops={"update"})
    want, _count = _expected(messages[:2] + messages[4:], 0)
    assert out == want
    assert plan.count == 2
    assert plan.commit_at is not None


def test_fast_way_keeps_tables_apart_within_a_transaction() -> None:
    """Changes of two tables, interleaved: each goes through its own table's reader, in
    order, and each table is woken (or not) as it is tracked, also in a transaction whose
    changes all go the fast way (the first, already relayed, made the readers)."""
    all_ops = {"insert", "update", "delete", "truncate"}
    messages = [_relation(COLUMNS[:2]), _relation(COLUMNS[:3], 16385, b"u")]
    for xid, end in ((1, 10), (2, 20)):
        messages.append(_begin(xid))
        for i in range(4):
            messages += [_insert([str(i), "a"]), _insert([str(i), "b", f"{xid}.5"], 16385)]
        messages.append(_commit(end))
    wanted = {"public.t": (all_ops, True), "public.u": (all_ops, False)}
    out, plan = _encode(messages, relayed=10, wanted=wanted)
    want, count = _expected(messages, 10)
    assert out == want
    assert plan.count == count == 8
    assert plan.notify == {"public.t"}  # public.u is tracked without wake-ups
    assert out.index(b'"id":3,"t":"a"') < out.index(b'"id":3,"t":"b","f":2.5')
