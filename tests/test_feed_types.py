"""Typed rows: Feed rows, latest() and ``pgtide follow`` hold what ``SELECT *`` returns."""

from __future__ import annotations

import asyncio
import base64
import copy
import dataclasses
import json
import pickle
import threading
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from pgtide_testing import CliRunner
from psycopg.rows import dict_row

import pgtide
import pgtide.aio
from pgtide.feed import to_json

SCHEMA = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN positive AS int CHECK (VALUE > 0);
CREATE TABLE everything (
    id int PRIMARY KEY, i2 int2, i8 int8, num numeric(30, 10), huge numeric, f4 float4,
    f8 float8, t text, vc varchar(20), ch char(4), b bool, bin bytea, u uuid, d date,
    tm time, tmtz timetz, ts timestamp, tstz timestamptz, iv interval, j json, jb jsonb,
    ints int[], texts text[], nums numeric[], grid int[][], stamps timestamptz[],
    feeling mood, feelings mood[], pos positive, addr inet, net cidr, nothing text
)
"""
FULL = """
INSERT INTO everything VALUES (
    1, -32768, 9223372036854775807, 0.1000000001,
    12345678901234567890.123456789012345678901234567890, 0.1, 1.2345678901234567,
    'text with "quotes", {braces} and é', 'varchar', 'ab', true, '\\xdeadbeef00',
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2024-02-29', '12:34:56.789', '12:34:56+02',
    '2024-02-29 12:34:56.123456', '2024-02-29 12:34:56.5+05:30',
    '1 year 2 mons 3 days 04:05:06.789', '{"a": 1.5, "b": [1, "x", null], "c": {"d": 1e3}}',
    '{"k": 0.1, "n": 12345678901234567890, "s": "v"}', '{1, NULL, 3}', '{"a b", "", NULL}',
    '{0.1000000001, 2}', '{{1, 2}, {3, 4}}', '{"2024-01-01 00:00:00+00"}', 'happy',
    '{sad, happy}', 7, '192.168.0.1/24', '10.0.0.0/8', NULL
), (2, NULL, NULL, 'NaN', NULL, 'Infinity', '-Infinity', '', NULL, NULL, false, '\\x', NULL,
    NULL, NULL, NULL, NULL, NULL, '-1 days', 'null', '[]', '{}', '{}', NULL, NULL, NULL, NULL,
    '{}', NULL, '::1', NULL, NULL)
"""
UPDATE = "UPDATE everything SET num = num + 1, t = 'changed', bin = '\\x00', jb = '{\"x\": 2.5}'"


def _select(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    return (
        conn.cursor(row_factory=dict_row).execute("SELECT * FROM everything ORDER BY id").fetchall()
    )


def _same(got: dict[str, Any] | None, want: dict[str, Any]) -> None:
    """Equal values of the same types, in the same column order (NaN equals NaN here)."""
    assert got is not None
    assert list(got) == list(want)
    for column, value in want.items():
        mine = got[column]
        assert type(mine) is type(value), (column, mine, value)
        if isinstance(value, Decimal) and value.is_nan():
            assert mine.is_nan(), column
        else:
            assert mine == value, (column, mine, value)
        if hasattr(value, "utcoffset") and value.utcoffset() is not None:
            assert mine.utcoffset() == value.utcoffset(), column  # the reader's time zone


def _write(dsn: str, **capture: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Insert, update and delete every row (tracked with ``capture`` options); return the rows
    after insert and after update."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)
    assert pgtide.track("everything", dsn=dsn, **capture)
    with (
        psycopg.connect(dsn, autocommit=True) as conn,
        psycopg.connect(dsn, autocommit=True) as reader,
    ):
        # the writer's settings must not change what readers get
        conn.execute("SET TimeZone = 'America/St_Johns'")
        conn.execute("SET DateStyle = 'SQL, DMY'")
        conn.execute(FULL)
        inserted = _select(reader)
        conn.execute(UPDATE)
        updated = _select(reader)
        conn.execute("DELETE FROM everything")
    return inserted, updated


def _check(
    changes: list[Any], inserted: list[dict[str, Any]], updated: list[dict[str, Any]]
) -> None:
    by_op: dict[str, list[Any]] = {}
    for change in changes:
        by_op.setdefault(change.op, []).append(change)
    assert [len(by_op[op]) for op in ("insert", "update", "delete")] == [2, 2, 2]
    for change, want in zip(
        sorted(by_op["insert"], key=lambda c: c.row["id"]), inserted, strict=True
    ):
        _same(change.row, want)
        assert change.old is None
    for change, new, old in zip(
        sorted(by_op["update"], key=lambda c: c.row["id"]), updated, inserted, strict=True
    ):
        _same(change.row, new)
        _same(change.old, old)
    for change, want in zip(
        sorted(by_op["delete"], key=lambda c: c.old["id"]), updated, strict=True
    ):
        _same(change.old, want)
        assert change.row is None


def test_feed_rows_equal_select_star_for_every_common_type(dsn: str) -> None:
    inserted, updated = _write(dsn)
    assert isinstance(inserted[0]["num"], Decimal) and isinstance(inserted[0]["bin"], bytes)
    feed = pgtide.Feed("typed", ["everything"], dsn=dsn)
    changes = [c for b in feed.batches(start="beginning", stop="end") for c in b]
    feed.close()
    _check(changes, inserted, updated)
    assert changes[0].row is not None and str(changes[0].row["num"]) == "0.1000000001"


def test_asyncio_feed_rows_equal_select_star(dsn: str) -> None:
    inserted, updated = _write(dsn)

    async def read() -> list[Any]:
        async with pgtide.aio.Feed("typed-aio", ["everything"], dsn=dsn) as feed:
            return [c async for b in feed.batches(start="beginning", stop="end") for c in b]

    _check(asyncio.run(read()), inserted, updated)


def test_latest_equals_select_star(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)
    pgtide.track("everything", dsn=dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(FULL)
        conn.execute(UPDATE + " WHERE id = 1")
        want = _select(conn)[0]
    _same(pgtide.latest("everything", dsn=dsn), want)


def test_latest_fetcher_gets_typed_rows(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE gauge (id int PRIMARY KEY, value numeric, raw bytea)")
    pgtide.track("gauge", dsn=dsn)
    rows: list[Any] = []
    done = threading.Event()

    def process(row: dict[str, Any] | None) -> None:
        rows.append(row)
        done.set()

    with pgtide.LatestFetcher("gauge", process, dsn=dsn, poll_interval=0.05):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO gauge VALUES (1, 0.1000000001, '\\x01')")
        assert done.wait(20)
    assert rows == [{"id": 1, "value": Decimal("0.1000000001"), "raw": b"\x01"}]


def test_old_changes_decode_after_the_table_is_altered(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE shifting (id int PRIMARY KEY, price numeric, gone text)")
    pgtide.track("shifting", dsn=dsn)
    feed = pgtide.Feed("shifting", ["shifting"], dsn=dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO shifting VALUES (1, 1.10, 'x')")
        first = _read(feed)
        assert first == [{"id": 1, "price": Decimal("1.10"), "gone": "x"}]
        conn.execute("ALTER TABLE shifting ADD COLUMN added timestamptz, DROP COLUMN gone")
        conn.execute("ALTER TABLE shifting ALTER COLUMN id TYPE numeric")
        conn.execute("INSERT INTO shifting VALUES (2.5, 2.20, now())")
        now = _select_one(conn, "SELECT added FROM shifting WHERE id = 2.5")
    # the running feed sees the table as it is now, without being told
    later = _read(feed)
    assert later == [{"id": Decimal("2.5"), "price": Decimal("2.20"), "added": now}]
    # old changes read again: the dropped column left out, the added one None
    again = [c.row for b in feed.batches(start="beginning", stop="end") for c in b]
    feed.close()
    assert again[0] == {"id": Decimal(1), "price": Decimal("1.10"), "added": None}
    assert feed._core.types.fetches == 2  # once at first, once after ALTER: never per read
    assert list(again[0]) == ["id", "price", "added"]


def _read(feed: pgtide.Feed) -> list[Any]:
    rows: list[Any] = []
    for batch in feed.batches(stop="end"):
        rows.extend(c.row for c in batch)
        batch.ack()
    return rows


def _select_one(conn: psycopg.Connection[Any], statement: str) -> Any:
    row = conn.execute(statement).fetchone()
    assert row is not None
    return row[0]


def test_a_dropped_tables_changes_come_as_json_values(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE doomed (id int, price numeric, at timestamptz)")
    pgtide.track("doomed", dsn=dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO doomed VALUES (1, 1.5, '2024-01-01 00:00:00+00')")
        conn.execute("DROP TABLE doomed")
    feed = pgtide.Feed("after-drop", dsn=dsn)
    rows = [c.row for b in feed.batches(start="beginning", stop="end") for c in b]
    feed.close()
    assert rows == [{"id": 1, "price": 1.5, "at": "2024-01-01T00:00:00+00:00"}]


def test_follow_prints_exact_numbers(dsn: str, cli: CliRunner) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE money (id int PRIMARY KEY, amount numeric(30, 10), big numeric, "
            "raw bytea, at timestamptz, took interval, f float8)"
        )
    pgtide.track("money", dsn=dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO money VALUES (1, 0.1000000001, 123456789012345678901234567890.5, "
            "'\\xdeadbeef', '2024-02-29 12:00:00+00', '1 day 02:03:04.5', 0.1)"
        )
    out = cli("follow", "-c", "exact", "--timeout", "0.3", "--dsn", dsn)
    assert out.returncode == 0, out.stderr
    [line] = out.stdout.splitlines()
    assert '"amount":0.1000000001,' in line
    assert '"big":123456789012345678901234567890.5,' in line
    row = json.loads(line, parse_float=Decimal)["row"]
    assert row["amount"] == Decimal("0.1000000001")
    assert base64.b64decode(row["raw"]) == b"\xde\xad\xbe\xef"
    assert row["took"] == "P1DT2H3M4.5S"
    assert row["at"].startswith("2024-02-29T") and row["f"] == Decimal("0.1")


def test_to_json_writes_every_type_as_documented() -> None:
    from datetime import date, datetime, time, timedelta
    from uuid import UUID

    value = {
        "n": Decimal("1E-7"),
        "nan": Decimal("NaN"),
        "inf": float("inf"),
        "list": [Decimal("0.10"), None, True],
        "b": b"\x00\xff",
        "d": date(2024, 2, 29),
        "t": time(1, 2, 3),
        "dt": datetime(2024, 2, 29, 1, 2, 3, 400000),
        "neg": timedelta(days=-1, seconds=1),
        "zero": timedelta(0),
        "u": UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        "é": "ü",
    }
    text = to_json(value)
    assert json.loads(text, parse_float=Decimal) == {
        "n": Decimal("1E-7"),
        "nan": "NaN",
        "inf": "Infinity",
        "list": [Decimal("0.10"), None, True],
        "b": "AP8=",
        "d": "2024-02-29",
        "t": "01:02:03",
        "dt": "2024-02-29T01:02:03.400000",
        "neg": "-PT23H59M59S",
        "zero": "PT0S",
        "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "é": "ü",
    }


def test_rows_of_one_column_no_column_and_shared_times(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE lone (at timestamptz)")
        conn.execute("CREATE TABLE bare ()")
    pgtide.track("lone", dsn=dsn)
    pgtide.track("bare", dsn=dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO lone SELECT now() FROM generate_series(1, 3)")  # one time
        conn.execute("INSERT INTO lone VALUES ('2024-01-01 00:00:00.5+02'), (NULL)")
        conn.execute("INSERT INTO bare DEFAULT VALUES")
        stamps = [r[0] for r in conn.execute("SELECT at FROM lone").fetchall()]
    feed = pgtide.Feed("shapes", ["lone", "bare"], dsn=dsn)
    rows = [(c.table, c.row) for b in feed.batches(start="beginning", stop="end") for c in b]
    feed.close()
    assert rows == [("public.lone", {"at": at}) for at in stamps] + [("public.bare", {})]
    # the same text read twice is the same value, in the reader's time zone
    assert rows[0][1]["at"] is rows[1][1]["at"] and rows[0][1]["at"].utcoffset() is not None
    assert stamps[3].utcoffset() == rows[3][1]["at"].utcoffset()


def test_a_read_change_copies_and_pickles_with_its_typed_rows(dsn: str) -> None:
    """A change read by a feed keeps its captured rows until they are typed; a copy, a
    pickle and a comparison carry the typed rows (never the decoder), and a change typed
    since offers no captured JSON."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (id int PRIMARY KEY, amount numeric, v text)")
    pgtide.track("kept", dsn=dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO kept VALUES (1, 1.10, 'a')")
        conn.execute("UPDATE kept SET v = 'b'")
    feed = pgtide.Feed("copies", ["kept"], dsn=dsn)
    read = [c for b in feed.batches(start="beginning", stop="end") for c in b]
    again = [c for b in feed.batches(start="beginning", stop="end") for c in b]
    feed.close()
    insert, update = read
    assert not hasattr(insert, "__dict__")  # slots: no dict per change
    assert insert.captured_json() == ('{"id":1,"amount":1.10,"v":"a"}', None)
    for made in (pickle.loads(pickle.dumps(update)), copy.copy(update), copy.deepcopy(update)):
        assert made == update == again[1]
        assert made.row == {"id": 1, "amount": Decimal("1.10"), "v": "b"}
        assert made.old == {"id": 1, "amount": Decimal("1.10"), "v": "a"}
    assert update.captured_json() is None  # typed now: the typed rows are its own
    assert dataclasses.replace(insert, op="read").row == {
        "id": 1,
        "amount": Decimal("1.10"),
        "v": "a",
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        insert.op = "delete"  # type: ignore[misc]


def test_rows_of_columns_with_any_names_equal_select_star(dsn: str) -> None:
    """Each table's rows are typed by a function made for its columns: names with quotes,
    backslashes, newlines or Python's own words come as they are, and a column added since
    a change was captured comes as None."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            'CREATE TABLE odd ("it\'s" text, "a""b" int, "new\nline" numeric, "v" float8, '
            '"def" text, "row" int, "\\x" bool)'
        )
    pgtide.track("odd", dsn=dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO odd VALUES ('x', 1, 1.10, 0, 'y', 2, true), "
            "(NULL, 3, NULL, 1.5, '', 4, NULL)"
        )
        want = conn.cursor(row_factory=dict_row).execute("SELECT * FROM odd").fetchall()
        conn.execute("ALTER TABLE odd ADD COLUMN later int")
    feed = pgtide.Feed("odd-names", ["odd"], dsn=dsn)
    rows = [c.row for b in feed.batches(start="beginning", stop="end") for c in b]
    feed.close()
    assert rows == [{**row, "later": None} for row in want]
    for got, row in zip(rows, want, strict=True):
        assert got is not None
        assert [type(v) for v in got.values()][:-1] == [type(v) for v in row.values()]


def test_a_batchs_rows_are_typed_together_at_first_use(dsn: str) -> None:
    """The first use of a row types the batch's other changes of its table (their captured
    JSON is gone), from any thread at once; a change of an earlier batch, left untyped,
    is typed alone at its first use."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE pairs (id int PRIMARY KEY, v text)")
    pgtide.track("pairs", dsn=dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(6):
            conn.execute("INSERT INTO pairs VALUES (%s, 'v'), (%s, 'w')", (2 * i, 2 * i + 1))
    feed = pgtide.Feed("together", ["pairs"], dsn=dsn)
    batches = feed.batches(start="beginning", stop="end", max_changes=2)
    first = list(next(batches))
    second = list(next(batches))
    assert all(c.captured_json() is not None for c in first + second)
    assert second[0].row == {"id": 2, "v": "v"}
    assert second[1].captured_json() is None  # typed with it
    assert first[1].captured_json() is not None  # another batch: untouched
    rest = [c for b in batches for c in b]
    feed.close()
    assert [c.row for c in first] == [{"id": 0, "v": "v"}, {"id": 1, "v": "w"}]
    start = threading.Barrier(8)
    seen: list[list[Any]] = []

    def read() -> None:
        start.wait()
        seen.append([c.row for c in reversed(rest)])

    threads = [threading.Thread(target=read) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    want = [{"id": i, "v": "vw"[i % 2]} for i in reversed(range(4, 12))]
    assert seen == [want] * 8


def test_a_batch_offers_its_rows_as_captured_only_when_their_json_is_the_typed_rows() -> None:
    """A sink may send a batch's rows as read (no Change made) only if every table's captured
    JSON says what its typed rows' JSON says, and no row or old row holds a value that WAL
    capture marked as unreadable (the typed rows say what it means)."""
    from pgtide.feed._core import MARK, Changes, _Typing

    at = (0).to_bytes(8, "big")
    row, marked = '{"id":1,"v":"a"}', '{"id":1,"v":{' + MARK + "}}"

    def read(*rows: tuple[str | None, str | None], plain: bool = True) -> Changes:
        typing = _Typing(json.loads, plain)
        return Changes(
            [(1, 7, "public.t", "update", r, o, at, 0) for r, o in rows], {"public.t": typing}, UTC
        )

    assert read((row, None), (None, row)).captured() is not None
    assert read((row, None), (marked, None)).captured() is None
    assert read((row, marked)).captured() is None
    assert read((None, marked)).captured() is None
    assert read((row, None), plain=False).captured() is None
    made = read((row, row))
    assert made.captured() is not None and made.made is None and len(made) == 1
    assert made[0].row == {"id": 1, "v": "a"} and made[0].at == datetime(2000, 1, 1, tzinfo=UTC)
    assert made.made is not None and list(made) == made.make()  # the same objects each time
