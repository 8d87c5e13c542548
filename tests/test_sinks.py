"""Sinks with the real brokers: NATS JetStream, Redis Streams and a local webhook receiver."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import threading
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import psycopg
import pytest
from sink_servers import (
    MACHINE_NATS,
    MACHINE_REDIS,
    Broker,
    LossyProxy,
    Receiver,
    free_port,
    jetstream_messages,
    redis_entries,
    wait_for,
)

import pgtide
import pgtide.aio
from pgtide import sinks
from pgtide.errors import ConfigError
from pgtide.feed import Change
from pgtide.sinks.signature import sign, verify


def make_table(dsn: str, name: str = "items", rows: int = 0) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id bigint PRIMARY KEY, v text)")
    pgtide.track(name, dsn=dsn)
    insert(dsn, name, range(rows))


def insert(dsn: str, table: str, ids: range, per_tx: int = 10) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for at in range(ids.start, ids.stop, per_tx):
            chunk = range(at, min(at + per_tx, ids.stop))
            with conn.transaction():
                conn.cursor().executemany(
                    f"INSERT INTO {table} (id, v) VALUES (%s, %s)", [(i, f"v{i}") for i in chunk]
                )


def change(row: dict[str, Any], op: str = "insert", table: str = "public.t") -> Change:
    return Change(7, table, op, row, None, 1234, datetime(2024, 5, 1, 12, 0, 0, 250000, UTC))


# -- the one encoder ------------------------------------------------------------------------
def test_encoder_keeps_exact_types() -> None:
    row = {
        "n": Decimal("12345678901234567890.000000000000000001"),
        "small": Decimal("0.1"),
        "nan": Decimal("NaN"),
        "at": datetime(2024, 5, 1, 12, 0, 0, 123456, UTC),
        "b": b"\x00\xffbytes",
        "u": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "d": timedelta(days=1, hours=2, seconds=3.5),
        "big": 2**70,
        "j": {"nested": [1, Decimal("2.50")]},
    }
    body = sinks.encode(change(row))
    assert body is not None
    text = body.decode()
    assert '"n":12345678901234567890.000000000000000001' in text
    assert '"small":0.1' in text and '"nan":"NaN"' in text
    assert '"big":1180591620717411303424' in text
    decoded = json.loads(text, parse_float=Decimal)
    assert decoded["row"]["n"] == row["n"]
    assert decoded["row"]["at"] == "2024-05-01T12:00:00.123456+00:00"
    assert base64.b64decode(decoded["row"]["b"]) == row["b"]
    assert decoded["row"]["u"] == str(row["u"])
    assert decoded["row"]["d"] == "P1DT2H3.5S"
    assert decoded["row"]["j"] == {"nested": [1, Decimal("2.50")]}
    assert decoded["key"] == "1234-7" == sinks.change_key(change(row))
    assert decoded["at"] == "2024-05-01T12:00:00.250000+00:00"
    assert {"id", "xid", "table", "op", "row", "old", "at", "key"} == set(decoded)


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="not a nats/tls/ws/wss URL"):
        sinks.nats("http://x")
    with pytest.raises(ConfigError, match="not a valid URL"):
        sinks.redis("redis://h:notaport")
    with pytest.raises(ConfigError, match=r"\{tabel\}"):
        sinks.redis(stream="pg:{tabel}")
    with pytest.raises(ConfigError, match="each op must be one of"):
        sinks.nats(ops=["upsert"])
    with pytest.raises(ConfigError, match="callable"):
        sinks.nats(where="x > 1")
    with pytest.raises(TypeError, match="unexpected keyword argument 'maxlength'"):
        sinks.redis(maxlength=5)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="retries"):
        sinks.webhook("http://127.0.0.1/x", retries=-1)
    with pytest.raises(ConfigError, match="needs a stream name"):
        sinks.nats(create_stream=True)


def test_secrets_never_shown() -> None:
    nats_sink = sinks.nats("nats://alice:s3cret@127.0.0.1:4222")
    redis_sink = sinks.redis("redis://:hunter2@127.0.0.1:6379/0")
    hook = sinks.webhook("https://example.com/hook?token=abc123", secret="topsecret")
    shown = " ".join(map(str, [nats_sink, redis_sink, hook])) + repr((nats_sink, redis_sink, hook))
    for secret in ("s3cret", "hunter2", "abc123", "topsecret"):
        assert secret not in shown
    assert "alice:***@" in shown and "token" not in shown


def test_unreachable_broker_at_start_is_one_clear_line() -> None:
    port = free_port()
    for sink in (
        sinks.nats(f"nats://u:pw@127.0.0.1:{port}"),
        sinks.redis(f"redis://127.0.0.1:{port}"),
    ):
        with pytest.raises(sinks.BrokerUnreachable) as caught, sink:
            sink.open()
        message = str(caught.value)
        assert f"127.0.0.1:{port}" in message and "\n" not in message and "pw" not in message


# -- NATS JetStream -------------------------------------------------------------------------
def test_nats_publishes_each_change_once_with_its_key(dsn: str, unique: str) -> None:
    make_table(dsn, rows=25)
    sink = sinks.nats(
        MACHINE_NATS, subject=f"{unique}.{{table}}.{{op}}", stream=unique, create_stream=True
    )
    feed = pgtide.Feed("to-nats", ["items"], dsn=dsn)
    batches: list[Any] = []

    def keep(batch: Any) -> None:
        batches.append(batch)
        sink(batch)

    with sink:
        feed.run(keep, stop="end", max_changes=10)
        got = jetstream_messages(MACHINE_NATS, unique)
        assert [m[2]["row"]["id"] for m in got] == list(range(25))
        assert all(m[0] == f"{unique}.public.items.insert" for m in got)
        assert [m[1] for m in got] == [m[2]["key"] for m in got]
        assert len({m[1] for m in got}) == 25
        # the same batches again (a crash before the acknowledgement): nothing new
        for batch in batches:
            sink(batch)
        assert sink.counts.duplicates == 25 and sink.counts.delivered == 25
    assert len(jetstream_messages(MACHINE_NATS, unique)) == 25
    assert feed.saved() is not None


def test_nats_resend_in_another_order_stores_the_new(dsn: str, unique: str) -> None:
    """After a crash the feed may re-read from the saved position up to a newer snapshot:
    the batch sent again holds a transaction that committed late between two delivered
    ones, and more after them. A chain sent again can then end in messages stored after
    the last one delivered before, while the late one in its middle was refused: its
    acknowledgement must not pass for the chain's (that lost the late transaction)."""
    make_table(dsn, rows=5)  # A: delivered before the crash
    subject = f"{unique}.{{table}}"
    with psycopg.connect(dsn) as early:  # X: commits late, with an xid between A's and B's
        early.execute("INSERT INTO items (id, v) VALUES (1000, 'late')")
        insert(dsn, "items", range(5, 10))  # B: delivered before the crash
        feed = pgtide.Feed("again", ["items"], dsn=dsn)
        with sinks.nats(MACHINE_NATS, subject=subject, stream=unique, create_stream=True) as sink:
            first = next(iter(feed.batches(max_changes=100)))
            assert [c.row["id"] for c in first] == list(range(10))
            sink(first)  # delivered, never acknowledged: a crash
        early.commit()
    insert(dsn, "items", range(10, 13))  # C: after them
    with sinks.nats(MACHINE_NATS, subject=subject, stream=unique) as sink:
        pgtide.Feed("again", ["items"], dsn=dsn).run(sink, stop="end")
        assert sink.counts.delivered == 4 and sink.counts.duplicates == 10
    ids = [m[2]["row"]["id"] for m in jetstream_messages(MACHINE_NATS, unique)]
    assert ids == [*range(10), 1000, *range(10, 13)]


def test_nats_missing_stream_is_a_clear_error(unique: str) -> None:
    with (
        pytest.raises(sinks.SinkError, match=f"no stream '{unique}'.*create_stream"),
        sinks.nats(MACHINE_NATS, stream=unique) as sink,
    ):
        sink.open()


# -- Redis Streams --------------------------------------------------------------------------
def test_redis_adds_each_change_once_in_order(dsn: str, unique: str) -> None:
    make_table(dsn, rows=30)
    make_table(dsn, "other", rows=5)
    sink = sinks.redis(MACHINE_REDIS, stream=f"{unique}:{{table}}", state_key=f"{unique}:s")
    batches: list[Any] = []

    def keep(batch: Any) -> None:
        batches.append(batch)
        sink(batch)

    with sink:
        pgtide.Feed("to-redis", ["items", "other"], dsn=dsn).run(keep, stop="end", max_changes=7)
        for batch in batches:  # sent again: refused, counted as already delivered
            sink(batch)
        assert sink.counts.delivered == 35 and sink.counts.duplicates == 35
    items = redis_entries(MACHINE_REDIS, f"{unique}:public.items")
    assert [c["row"]["id"] for _, c in items] == list(range(30))
    assert len(redis_entries(MACHINE_REDIS, f"{unique}:public.other")) == 5
    ids = [eid for eid, _ in items]
    assert ids == sorted(ids, key=lambda e: tuple(map(int, e.split("-"))))


def test_redis_resend_in_another_order_adds_only_the_new(dsn: str, unique: str) -> None:
    """After a crash the feed may re-read from the saved position up to a newer snapshot,
    so that the batch sent again holds more changes, in another order: only those not yet
    delivered are added, after the others."""
    make_table(dsn, rows=0)
    url, stream = MACHINE_REDIS, f"{unique}:{{table}}"
    with psycopg.connect(dsn) as early:  # a transaction that commits late, with a low xid
        early.execute("INSERT INTO items (id, v) VALUES (1000, 'late')")
        insert(dsn, "items", range(5))
        feed = pgtide.Feed("again", ["items"], dsn=dsn)
        with sinks.redis(url, stream=stream, state_key=f"{unique}:s") as sink:
            first = next(iter(feed.batches(max_changes=100)))
            sink(first)  # delivered, never acknowledged: a crash
        early.commit()
    insert(dsn, "items", range(5, 8))
    with sinks.redis(url, stream=stream, state_key=f"{unique}:s") as sink:
        pgtide.Feed("again", ["items"], dsn=dsn).run(sink, stop="end")
    ids = [c["row"]["id"] for _, c in redis_entries(url, f"{unique}:public.items")]
    assert sorted(ids) == [*range(8), 1000] and ids[:5] == list(range(5))


def test_redis_reply_lost_after_the_script_ran(dsn: str, unique: str) -> None:
    """The broker applies a batch but its reply is lost (the connection breaks): the retry
    finds the batch already there, adds nothing twice and goes on."""
    make_table(dsn, rows=30)
    proxy = LossyProxy(int(MACHINE_REDIS.rsplit(":", 1)[1]), b"EVALSHA")
    sink = sinks.redis(proxy.url, stream=f"{unique}:{{table}}", state_key=f"{unique}:s")
    sent = 0

    def lossy(batch: Any) -> None:
        nonlocal sent
        sent += 1
        if sent == 2:
            proxy.lose.set()
        sink(batch)

    try:
        with sink:
            pgtide.Feed("lossy", ["items"], dsn=dsn).run(lossy, stop="end", max_changes=10)
    finally:
        proxy.close()
    assert proxy.lost == 1 and sink.counts.retries == 1
    assert sink.counts.delivered == 20 and sink.counts.duplicates == 10
    items = redis_entries(MACHINE_REDIS, f"{unique}:public.items")
    assert [c["row"]["id"] for _, c in items] == list(range(30))


def test_redis_sends_any_bytes_as_a_body(dsn: str, unique: str) -> None:
    """Each body is an argument of its own on the wire: bytes that look like the protocol
    (CRLF, ``$`` lengths), every byte value and an empty body arrive as they were."""
    make_table(dsn, rows=4)
    odd = [b"", b"\r\n$3\r\nxyz\r\n*2\r\n", bytes(range(256)), "é\n".encode() * 3]

    def shape(change: Change) -> bytes:
        return odd[(change.row or {})["id"]]

    import redis

    with sinks.redis(
        MACHINE_REDIS, stream=f"{unique}:{{table}}", state_key=f"{unique}:s", transform=shape
    ) as sink:
        pgtide.Feed("odd", ["items"], dsn=dsn).run(sink, stop="end", max_changes=3)
    client = redis.Redis.from_url(MACHINE_REDIS)
    try:
        entries = client.xrange(f"{unique}:public.items")
    finally:
        client.close()
    assert [fields[b"change"] for _, fields in entries] == odd


def test_redis_loads_its_script_again_when_redis_forgot_it(dsn: str, redis_server: Broker) -> None:
    """Redis forgets scripts (SCRIPT FLUSH, a restart without them): the next batch loads the
    script again and is delivered, with no retry counted and nothing lost or doubled."""
    import redis

    make_table(dsn)
    insert(dsn, "items", range(6), per_tx=2)
    sent = 0
    admin = redis.Redis.from_url(redis_server.url)
    with sinks.redis(redis_server.url) as sink:

        def forgetting(batch: Any) -> None:
            nonlocal sent
            sent += 1
            if sent > 1:
                admin.script_flush()
            sink(batch)

        pgtide.Feed("forgot", ["items"], dsn=dsn).run(forgetting, stop="end", max_changes=2)
        assert sent == 3 and sink.counts.delivered == 6 and sink.counts.retries == 0
    admin.close()
    items = redis_entries(redis_server.url, "pg:public.items")
    assert [c["row"]["id"] for _, c in items] == list(range(6))


def test_redis_resend_with_a_repeat_first_keeps_each_stream_its_own(dsn: str, unique: str) -> None:
    """A batch sent again whose first change of one table is a repeat: each table's new
    changes still go to its own stream, and a later batch finds every stream where its
    record says. (The restart race of issue 15: they went into each other's stream, and a
    change captured earlier but committed later then stopped the sink with "already has
    entries ... past what this sink recorded".)"""
    make_table(dsn, "aa", rows=1)
    make_table(dsn, "bb")
    url, stream, state = MACHINE_REDIS, f"{unique}:{{table}}", f"{unique}:s"
    feed = pgtide.Feed("mixed", ["aa", "bb"], dsn=dsn)
    with sinks.redis(url, stream=stream, state_key=state) as sink:
        sink(next(iter(feed.batches())))  # delivered, never acknowledged: a crash
    feed.close()
    with psycopg.connect(dsn) as early, psycopg.connect(dsn, autocommit=True) as clock:
        early.execute("INSERT INTO bb (id, v) VALUES (9, 'captured first, committed last')")
        began = early.execute("SELECT now()").fetchone()
        wait_for(  # the next changes are captured in a later millisecond
            lambda: bool(
                clock.execute("SELECT clock_timestamp() > %s + interval '2 ms'", began).fetchone()[
                    0
                ]  # type: ignore[index]
            )
        )
        insert(dsn, "bb", range(1))
        insert(dsn, "aa", range(1, 2))
        with sinks.redis(url, stream=stream, state_key=state) as sink:
            pgtide.Feed("mixed", ["aa", "bb"], dsn=dsn).run(sink, stop="end")  # aa0 bb0 aa1
            early.commit()
            pgtide.Feed("mixed", ["aa", "bb"], dsn=dsn).run(sink, stop="end")  # bb9
    for table, ids in (("aa", [0, 1]), ("bb", [0, 9])):
        held = redis_entries(url, f"{unique}:public.{table}")
        assert [(c["table"], c["row"]["id"]) for _, c in held] == [
            (f"public.{table}", i) for i in ids
        ]


class OldBatch(list[Change]):
    """A batch of another history: a feed position that has seen every xid below 10**9."""

    start = pgtide.Position.beginning()
    position = pgtide.Position.parse("1000000000:1000000000:")


def test_redis_record_of_another_history_is_forgotten(dsn: str, unique: str) -> None:
    """A database reset starts its xids again, so that the record's positions (of the old
    history) would cover the new changes: a change newer than any entry the record added
    shows that, and the record's positions are forgotten instead of the changes."""
    make_table(dsn, rows=5)
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    old = [
        Change(i, "public.items", "insert", {"id": 100 + i}, None, 999_000_000 + i, hour_ago)
        for i in range(3)
    ]
    with sinks.redis(MACHINE_REDIS, stream=f"{unique}:{{table}}", state_key=f"{unique}:s") as sink:
        sink(OldBatch(old))
        pgtide.Feed("reset", ["items"], dsn=dsn).run(sink, stop="end")
        assert sink.counts.delivered == 8 and sink.counts.duplicates == 0
    items = redis_entries(MACHINE_REDIS, f"{unique}:public.items")
    assert [c["row"]["id"] for _, c in items] == [100, 101, 102, 0, 1, 2, 3, 4]


def test_redis_entry_ids_follow_the_change_times(unique: str) -> None:
    """Each entry's id is its change's time (ms) and a sequence number within that ms; a
    time not after the last id's goes on in the last id's ms (ids only increase). The
    script gets the ids as runs of consecutive ones: each id must come out the same."""
    base = datetime(2026, 1, 1, tzinfo=UTC)
    ms = int(base.timestamp() * 1000)

    def at(offset: int) -> datetime:
        return base + timedelta(milliseconds=offset)

    times = [0, 0, 0, 5, 5, 3, 9, 9, 9, 9]  # by transaction: one time each
    xids = [1, 1, 1, 2, 2, 3, 4, 4, 5, 5]
    batch = OldBatch(
        Change(i, "public.items", "insert", {"id": i}, None, 10 + x, at(t))
        for i, (t, x) in enumerate(zip(times, xids, strict=True))
    )
    with sinks.redis(MACHINE_REDIS, stream=f"{unique}:{{table}}", state_key=f"{unique}:s") as sink:
        sink(batch)
        sink(batch)  # again: nothing added
        assert sink.counts.delivered == 10 and sink.counts.duplicates == 10
    items = redis_entries(MACHINE_REDIS, f"{unique}:public.items")
    assert [c["row"]["id"] for _, c in items] == list(range(10))
    assert [eid for eid, _ in items] == [
        *(f"{ms}-{s}" for s in range(3)),
        *(f"{ms + 5}-{s}" for s in range(3)),  # the third one's time (3) is before 5
        *(f"{ms + 9}-{s}" for s in range(4)),
    ]


def test_redis_waits_while_down_and_loses_nothing(dsn: str, redis_server: Broker) -> None:
    make_table(dsn, rows=20)
    feed = pgtide.Feed("down", ["items"], dsn=dsn)
    sink = sinks.redis(redis_server.url, backoff_max=0.3)
    sink.open()
    redis_server.stop()
    runner = threading.Thread(target=feed.run, args=(sink,), kwargs={"max_changes": 5})
    runner.start()
    try:
        wait_for(lambda: sink.counts.retries >= 3, what="retries against the stopped server")
        assert feed.saved() is None or feed.saved() == pgtide.Position.beginning()
        redis_server.start()
        wait_for(lambda: sink.counts.delivered == 20, what="delivery after the restart")
    finally:
        feed.stop()
        runner.join(20)
        sink.close()
    assert [c["row"]["id"] for _, c in redis_entries(redis_server.url, "pg:public.items")] == list(
        range(20)
    )


def test_stop_ends_a_delivery_that_waits_for_the_broker(dsn: str, redis_server: Broker) -> None:
    make_table(dsn, rows=3)
    sink = sinks.redis(redis_server.url, backoff_max=0.2)
    sink.open()
    redis_server.stop()
    feed = pgtide.Feed("stopping", ["items"], dsn=dsn)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            feed.run(sink)
        except sinks.SinkStopped as exc:
            errors.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    wait_for(lambda: sink.counts.retries >= 1, what="a retry")
    sink.stop()
    feed.stop()
    runner.join(10)
    sink.close()
    assert not runner.is_alive() and len(errors) == 1
    assert feed.saved() in (None, pgtide.Position.beginning())


# -- filters, transform, key ----------------------------------------------------------------
def test_filters_transform_and_key(dsn: str, unique: str) -> None:
    make_table(dsn, rows=10)
    make_table(dsn, "other", rows=3)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE items SET v = 'x' WHERE id < 4")
        conn.execute("DELETE FROM items WHERE id = 9")
    sink = sinks.redis(
        MACHINE_REDIS,
        stream=f"{unique}:{{name}}:{{key}}",
        state_key=f"{unique}:s",
        tables=["public.items"],
        ops=["insert", "update"],
        where=lambda c: c.row is not None and c.row["id"] % 2 == 0,
        transform=lambda c: {"id": c.row["id"] if c.row else None, "op": c.op},
        key=lambda c: "low" if c.row and c.row["id"] < 5 else "high",
    )
    with sink:
        pgtide.Feed("shaped", dsn=dsn).run(sink, stop="end")
    low = [c for _, c in redis_entries(MACHINE_REDIS, f"{unique}:items:low")]
    high = [c for _, c in redis_entries(MACHINE_REDIS, f"{unique}:items:high")]
    assert low == [{"id": i, "op": "insert"} for i in (0, 2, 4)] + [
        {"id": i, "op": "update"} for i in (0, 2)
    ]
    assert high == [{"id": i, "op": "insert"} for i in (6, 8)]


def test_filters_alone_send_the_records_of_the_changes_they_let_through(dsn: str) -> None:
    """Without transform or key, the filters choose the changes and each goes as its
    record; ``where`` sees only the changes the ``tables`` and ``ops`` filters let through."""
    make_table(dsn, rows=6)
    make_table(dsn, "other", rows=3)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE items SET v = 'x' WHERE id < 3")
        conn.execute("DELETE FROM items WHERE id = 5")
    asked: list[tuple[str, str]] = []

    def even(change: Change) -> bool:
        asked.append((change.table, change.op))
        return change.row is not None and change.row["id"] % 2 == 0

    sink = sinks.redis(MACHINE_REDIS, tables=["items"], ops=["insert", "update"], where=even)
    batches = list(pgtide.Feed("filters", dsn=dsn).batches(stop="end"))
    messages = [m for b in batches for m in sink.messages(b)]
    assert set(asked) == {("public.items", "insert"), ("public.items", "update")}
    assert len(asked) == 9  # 6 inserts, 3 updates: never the other table, never the delete
    sent = [(m.change.op, json.loads(m.body)["row"]["id"]) for m in messages]
    assert sent == [("insert", 0), ("insert", 2), ("insert", 4), ("update", 0), ("update", 2)]
    for m in messages:
        assert m.dest == "pg:public.items" and m.key == sinks.change_key(m.change)
        assert json.loads(m.body) == json.loads(sinks.encode(m.change) or b"")


def test_own_sink_subclass_gets_each_message(dsn: str) -> None:
    """A subclass's ``_deliver`` gets the batch's messages: each a :class:`sinks.Message`
    (by index, slice or iteration), with the columns beside them."""
    make_table(dsn, rows=5)
    got: list[sinks.Message] = []

    class Collect(sinks.Sink):
        def _destination(self, change: Change, key: str | None) -> str:
            return f"to:{change.table}"

        async def _deliver(self, batch: sinks.BatchLike, messages: sinks.Messages) -> None:
            assert [m.key for m in messages[1:]] == messages.keys[1:]
            assert messages[-1].body == messages.bodies[-1]
            got.extend(messages)
            self.counts.delivered += len(messages)

    with Collect("collect://here") as sink:
        pgtide.Feed("subclass", ["items"], dsn=dsn).run(sink, stop="end")
    assert [json.loads(m.body)["row"]["id"] for m in got] == list(range(5))
    assert {m.dest for m in got} == {"to:public.items"}
    assert [m.key for m in got] == [sinks.change_key(m.change) for m in got]
    assert sink.counts.delivered == 5


def test_run_takes_the_batch_size_a_sink_asks_for(dsn: str) -> None:
    """Without ``max_changes``, ``run()`` reads batches of the size the callable (or the
    sink of a bound ``send``) asks for in its ``max_changes``; given, it wins; else 1000.
    Transactions stay whole either way."""
    make_table(dsn)
    insert(dsn, "items", range(12), per_tx=3)
    sizes: list[int] = []

    class Sizes(sinks.Sink):
        max_changes = 6

        def _destination(self, change: Change, key: str | None) -> str:
            return "here"

        async def _deliver(self, batch: sinks.BatchLike, messages: sinks.Messages) -> None:
            sizes.append(len(batch))

    with Sizes("sizes://here") as sink:
        pgtide.Feed("sized", ["items"], dsn=dsn).run(sink, stop="end")
        assert sizes == [6, 6]
        sizes.clear()
        pgtide.Feed("sized-given", ["items"], dsn=dsn).run(sink, stop="end", max_changes=4)
        assert sizes == [3, 3, 3, 3]  # whole transactions of 3, at most 4 changes

    def plain(batch: pgtide.Batch) -> None:
        sizes.append(len(batch))

    sizes.clear()
    pgtide.Feed("sized-plain", ["items"], dsn=dsn).run(plain, stop="end")
    assert sizes == [12]  # a callable that asks for nothing: 1000
    plain.max_changes = 9  # type: ignore[attr-defined]
    sizes.clear()
    pgtide.Feed("sized-plain-asks", ["items"], dsn=dsn).run(plain, stop="end")
    assert sizes == [9, 3]

    async def main() -> None:
        sink = Sizes("sizes://here")
        await pgtide.aio.Feed("sized-aio", ["items"], dsn=dsn).run(sink.send, stop="end")
        await sink.aclose()

    sizes.clear()
    asyncio.run(main())
    assert sizes == [6, 6]
    assert sinks.redis(MACHINE_REDIS).max_changes > sinks.Sink.max_changes


def test_own_sink_is_a_callable(dsn: str) -> None:
    make_table(dsn, rows=4)
    seen: list[bytes] = []

    def my_sink(batch: pgtide.Batch) -> None:
        seen.extend(body for c in batch if (body := sinks.encode(c)) is not None)

    pgtide.Feed("mine", ["items"], dsn=dsn).run(my_sink, stop="end")
    assert [json.loads(b)["row"]["id"] for b in seen] == [0, 1, 2, 3]


def test_async_face(dsn: str, unique: str) -> None:
    make_table(dsn, rows=6)
    sink = sinks.redis(MACHINE_REDIS, stream=f"{unique}:{{table}}", state_key=f"{unique}:s")

    async def main() -> None:
        await pgtide.aio.Feed("aio", ["items"], dsn=dsn).run(sink.send, stop="end")
        await sink.aclose()

    asyncio.run(main())
    assert len(redis_entries(MACHINE_REDIS, f"{unique}:public.items")) == 6


# -- webhooks -------------------------------------------------------------------------------
def test_webhook_retries_with_the_same_key_and_a_valid_signature(
    dsn: str, receiver: Receiver
) -> None:
    make_table(dsn, rows=30)
    receiver.fail = 2
    hook = sinks.webhook(receiver.url, secret="s3cret", backoff_max=0.05, retries=3)
    with hook:
        pgtide.Feed("hooks", ["items"], dsn=dsn).run(hook, stop="end", max_changes=10)
    assert len(receiver.accepted) == 3 and len(receiver.requests) == 9
    assert all(n == 3 for n in receiver.tries.values())
    ids = []
    for headers, body in receiver.requests:
        assert verify("s3cret", body, headers["Pgtide-Signature"])
        assert not verify("other", body, headers["Pgtide-Signature"])
        assert headers["Idempotency-Key"].startswith("pgtide-")
    for body in receiver.accepted.values():
        data = json.loads(body)
        assert set(data) == {"start", "end", "changes"}
        ids += [c["row"]["id"] for c in data["changes"]]
    assert sorted(ids) == list(range(30))


def test_webhook_gives_up_and_leaves_the_batch_unacked(dsn: str, receiver: Receiver) -> None:
    make_table(dsn, rows=5)
    receiver.fail = 10
    feed = pgtide.Feed("give-up", ["items"], dsn=dsn)
    with (
        pytest.raises(sinks.SinkError, match=r"gave up after 3 tries.*HTTP 503"),
        sinks.webhook(receiver.url, retries=2, backoff_max=0.05) as hook,
    ):
        feed.run(hook, stop="end")
    assert feed.saved() in (None, pgtide.Position.beginning())
    receiver.fail, receiver.status, receiver.tries = 1, 400, {}
    with pytest.raises(sinks.SinkError, match="HTTP 400"), sinks.webhook(receiver.url) as hook:
        feed.run(hook, stop="end")
    assert len(receiver.tries) == 1  # one batch, the same key on every try


def test_webhook_signature_verification_snippet() -> None:
    body = b'{"changes":[]}'
    header = sign("k", body, 1_700_000_000)
    assert verify("k", body, header, tolerance=None)
    assert not verify("k", body + b" ", header, tolerance=None)
    assert not verify("k", body, header)  # too old


# -- Feed.run with a sink: the next batch is read during a delivery -----------------------
class Pipelined:
    """A callable with ``submit`` as a sink has: each delivery runs in a thread, checks that
    it was handed over after the one before was confirmed and that its batch is not
    acknowledged before it is, and (but for the last) waits until the feed read on."""

    def __init__(self, dsn: str, feed: pgtide.Feed, last: int, fail_at: int | None = None) -> None:
        self.dsn, self.feed, self.last, self.fail_at = dsn, feed, last, fail_at
        self.pool = concurrent.futures.ThreadPoolExecutor(1)
        self.delivered: list[Any] = []
        self.read_ahead = 0
        self.running = threading.Event()

    def __call__(self, batch: Any) -> None:
        raise AssertionError("Feed.run hands a sink its batches through submit()")

    def submit(self, batch: Any) -> concurrent.futures.Future[None]:
        assert not self.running.is_set(), "a batch was handed over during a delivery"
        self.running.set()
        return self.pool.submit(self._deliver, batch)

    def _deliver(self, batch: Any) -> None:
        try:
            assert self._saved() <= batch.start  # nothing of it acknowledged yet
            if batch[-1].row["id"] < self.last:  # the next batch is read meanwhile
                wait_for(lambda: self.feed.position() > batch.position, 10)
                self.read_ahead += 1
            if len(self.delivered) == self.fail_at:
                raise RuntimeError("the broker refused it")
            assert self._saved() <= batch.start
            self.delivered.append(batch)
        finally:
            self.running.clear()

    def _saved(self) -> Any:
        with pgtide.Feed(self.feed.consumer, dsn=self.dsn) as other:
            return other.saved() or pgtide.Position.beginning()


def test_run_reads_the_next_batch_while_a_sink_delivers(dsn: str) -> None:
    make_table(dsn, rows=30)
    feed = pgtide.Feed("ahead", ["items"], dsn=dsn)
    sink = Pipelined(dsn, feed, last=29)
    feed.run(sink, stop="end", max_changes=10)
    assert len(sink.delivered) == 3 and sink.read_ahead == 2
    assert feed.saved() == sink.delivered[-1].position

    # a live feed acknowledges the batch in flight before it waits for new changes
    insert(dsn, "items", range(30, 45))
    sink.last = 44
    failures: list[BaseException] = []

    def live() -> None:
        try:
            feed.run(sink, max_changes=10)
        except BaseException as exc:
            failures.append(exc)

    runner = threading.Thread(target=live)
    runner.start()
    try:
        wait_for(lambda: len(sink.delivered) == 5, 10)
        wait_for(lambda: sink._saved() == sink.delivered[-1].position, 10)
    finally:
        feed.stop()
        runner.join(10)
    assert not runner.is_alive() and failures == []
    assert [c.row["id"] for b in sink.delivered for c in b] == list(range(45))

    # a delivery that fails: neither it nor the batch read meanwhile is acknowledged
    insert(dsn, "items", range(45, 75))
    failing = Pipelined(dsn, feed, last=74, fail_at=1)
    with pytest.raises(RuntimeError, match="refused"):
        feed.run(failing, stop="end", max_changes=10)
    assert len(failing.delivered) == 1 and feed.saved() == failing.delivered[0].position
    feed.close()


def test_nats_chain_frames_store_what_the_client_publish_stores(dsn: str, unique: str) -> None:
    make_table(dsn, rows=25)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE items SET v = 'thé ☕ \"quoted\"' || chr(10) || id WHERE id % 3 = 0")
    feed = pgtide.Feed("frames", ["items"], dsn=dsn)
    batches = list(feed.batches(start="beginning", stop="end", max_changes=10))
    feed.close()
    stored = []
    for bulk in (True, False):
        stream = f"{unique}{int(bulk)}"
        sink = sinks.nats(
            MACHINE_NATS, subject=f"{stream}.{{table}}", stream=stream, create_stream=True
        )
        sink._bulk_frames = bulk  # type: ignore[misc]
        with sink:
            for batch in batches:
                sink(batch)
            assert sink.counts.delivered == 34 and sink._chain_after == 0  # no chain broke
        stored.append(
            [(m[0].split(".", 1)[1], m[1], m[2]) for m in jetstream_messages(MACHINE_NATS, stream)]
        )
    assert stored[0] == stored[1] and len(stored[0]) == 34  # 25 inserts, 9 updates
    assert [m[1] for m in stored[0]] == [sinks.change_key(c) for b in batches for c in b]
    assert stored[0][-1][2]["row"]["v"] == 'thé ☕ "quoted"\n24'


def _same_json(captured: Any, typed: Any) -> None:
    """Two JSON values that say the same (timestamps compared as instants)."""
    if isinstance(typed, dict):
        assert isinstance(captured, dict) and set(captured) == set(typed)
        for name, value in typed.items():
            _same_json(captured[name], value)
    elif isinstance(typed, str) and isinstance(captured, str) and captured != typed:
        assert datetime.fromisoformat(captured) == datetime.fromisoformat(typed)
    else:
        assert captured == typed and type(captured) is type(typed)


def test_messages_send_captured_json_only_where_it_says_what_typed_rows_say(dsn: str) -> None:
    """A feed's change types its rows at their first use; a sink sends the captured JSON of
    a table whose columns' JSON needs no re-encoding (never decoded: exact digits kept),
    and encodes the typed rows of any other table (bytea as base64, floats, intervals)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TYPE mood AS ENUM ('calm', 'angry'); CREATE DOMAIN price AS numeric;"
            "CREATE TABLE plain_t (id bigint PRIMARY KEY, v text, n price, m mood, u uuid,"
            " d date, ts timestamp, tz timestamptz, ok bool);"
            "CREATE TABLE typed_t (id int PRIMARY KEY, b bytea, f float8, i interval)"
        )
        pgtide.track("plain_t", dsn=dsn)
        pgtide.track("typed_t", dsn=dsn)
        conn.execute("SET TimeZone = 'Asia/Kolkata'")  # the captured JSON holds this offset
        conn.execute(
            "INSERT INTO plain_t VALUES (1, 'a\"b', 12345678901234567890.000000000000000010,"
            " 'calm', gen_random_uuid(), '2024-05-01', '2024-05-01 12:00:00.5',"
            " '2024-05-01 12:00:00.25+00', true), (2, NULL, 'NaN', NULL, NULL, NULL, NULL,"
            " 'infinity', NULL)"
        )
        conn.execute("UPDATE plain_t SET v = 'c' WHERE id = 1")
        conn.execute("INSERT INTO typed_t VALUES (1, '\\x00ff', 0.1, '1 day 2 hours')")
    sink = sinks.redis(MACHINE_REDIS)
    feed = pgtide.Feed("raw", ["plain_t", "typed_t"], dsn=dsn)
    batches = list(feed.batches(stop="end", max_changes=1))  # a transaction a batch
    made = [sink.messages(b) for b in batches]
    bodies = [body for m in made for body in m.bodies]
    columns = [(k, x, t) for m in made for k, x, t in zip(m.keys, m.xids, m.times, strict=True)]
    # the batches of plain_t were sent from their rows as read, making no Change
    sources = [b._captured() for b in batches]
    assert [s is not None and s.captured() is not None for s in sources] == [True, True, False]
    changes = [c for b in batches for c in b]
    assert len(changes) == 4
    assert columns == [(sinks.change_key(c), c.xid, c.at) for c in changes]
    assert [m.changes for m in made] == [b.changes for b in batches]
    # made of the changes (untyped yet), the same bytes
    assert [m.body for b in batches for m in sink.messages(b)] == bodies
    assert b'"n":12345678901234567890.000000000000000010' in bodies[0]  # the captured text,
    assert b'"tz":"2024-05-01T17:30:00.25+05:30"' in bodies[0]  # with the writer's offset
    for change, body in zip(changes[:3], bodies, strict=False):  # plain_t: captured JSON
        captured = change.captured_json()
        assert captured is not None
        fragments = [None if text is None else orjson.Fragment(text) for text in captured]
        fields = {"id": change.id, "xid": change.xid, "table": change.table, "op": change.op}
        made = {"key": sinks.change_key(change), **fields}
        expected = {**made, "row": fragments[0], "old": fragments[1], "at": change.at}
        assert body == sinks.dumps(expected)  # the same bytes as the record as JSON
    assert b'"row":{"id":1,"b":"AP8=","f":0.1,"i":"P1DT2H"}' in bodies[3]  # typed, then encoded
    for change, body in zip(changes, bodies, strict=True):
        typed = sinks.encode(change)  # types the rows: from now on, they are sent typed
        assert typed is not None
        _same_json(json.loads(body, parse_float=Decimal), json.loads(typed, parse_float=Decimal))
        assert [m.body for m in sink.messages([change])] == [typed]
    # the typed rows are those of SELECT * (each column in order)
    with psycopg.connect(dsn) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        rows = conn.execute("SELECT * FROM plain_t WHERE id = 1").fetchall()
        names = [c.name for c in conn.execute("SELECT * FROM plain_t LIMIT 0").description or ()]
    assert changes[2].row == dict(zip(names, rows[0], strict=True))
    assert list(changes[2].row or ()) == names and changes[2].old == changes[0].row


class AsyncPipelined:
    """As :class:`Pipelined`, for the asyncio face: a sink's ``send`` and ``asubmit``."""

    def __init__(self, dsn: str, feed: pgtide.aio.Feed, last: int, fail_at: int | None = None):
        self.dsn, self.feed, self.last, self.fail_at = dsn, feed, last, fail_at
        self.delivered: list[Any] = []
        self.read_ahead = 0
        self.running = False

    async def send(self, batch: Any) -> None:
        raise AssertionError("aio Feed.run hands a sink its batches through asubmit()")

    def asubmit(self, batch: Any) -> asyncio.Task[None]:
        assert not self.running, "a batch was handed over during a delivery"
        self.running = True
        return asyncio.ensure_future(self._deliver(batch))

    async def _deliver(self, batch: Any) -> None:
        try:
            assert await self._saved() <= batch.start  # nothing of it acknowledged yet
            if batch[-1].row["id"] < self.last:  # the next batch is read meanwhile
                for _ in range(1000):
                    if await self.feed.position() > batch.position:
                        break
                    await asyncio.sleep(0.01)
                assert await self.feed.position() > batch.position
                self.read_ahead += 1
            if len(self.delivered) == self.fail_at:
                raise RuntimeError("the broker refused it")
            assert await self._saved() <= batch.start
            self.delivered.append(batch)
        finally:
            self.running = False

    async def _saved(self) -> Any:
        return await asyncio.to_thread(Pipelined._saved, self)  # type: ignore[arg-type]


def test_aio_run_reads_the_next_batch_while_a_sink_delivers(dsn: str) -> None:
    make_table(dsn, rows=30)

    async def main() -> None:
        feed = pgtide.aio.Feed("aio-ahead", ["items"], dsn=dsn)
        sink = AsyncPipelined(dsn, feed, last=29)
        await feed.run(sink.send, stop="end", max_changes=10)  # its bound send: read ahead
        assert len(sink.delivered) == 3 and sink.read_ahead == 2
        assert await feed.saved() == sink.delivered[-1].position
        assert [c.row["id"] for b in sink.delivered for c in b] == list(range(30))

        # a live feed acknowledges the batch in flight before it waits for new changes
        insert(dsn, "items", range(30, 45))
        sink.last = 44
        runner = asyncio.ensure_future(feed.run(sink, max_changes=10))
        for _ in range(1000):
            if len(sink.delivered) == 5 and await sink._saved() == sink.delivered[-1].position:
                break
            await asyncio.sleep(0.01)
        feed.stop()
        await asyncio.wait_for(runner, 10)
        assert await feed.saved() == sink.delivered[-1].position
        assert [c.row["id"] for b in sink.delivered for c in b] == list(range(45))

        # a delivery that fails: neither it nor the batch read meanwhile is acknowledged
        insert(dsn, "items", range(45, 75))
        failing = AsyncPipelined(dsn, feed, last=74, fail_at=1)
        with pytest.raises(RuntimeError, match="refused"):
            await feed.run(failing, stop="end", max_changes=10)
        assert len(failing.delivered) == 1
        assert await feed.saved() == failing.delivered[0].position
        await feed.close()

    asyncio.run(main())


def test_run_with_a_sink_acknowledges_without_waiting_for_the_flush(dsn: str) -> None:
    """``run(sink)`` acknowledges with a commit that does not wait for the WAL flush (a
    repeat after a server crash is harmless to a sink); ``batch.ack()`` still waits."""
    from pgtide.feed._core import Core
    from pgtide.session import run

    with psycopg.connect(dsn) as conn:
        conn.execute("SET synchronous_commit = on")  # the test server's default is off
        conn.commit()
        for durable, expected in ((True, "on"), (False, "off")):
            with conn.transaction(force_rollback=True):
                run(conn, Core("flush").save(pgtide.Position.beginning(), durable=durable))
                found = conn.execute("SELECT current_setting('synchronous_commit')").fetchone()
                assert found == (expected,)
            # transaction-local: the connection's setting is untouched
            assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)


def test_submit_makes_the_messages_in_the_callers_thread(dsn: str, unique: str) -> None:
    """The sink's own thread only talks to the broker: the messages of a batch are made
    where ``submit`` is called (the feed's thread), so the feed's reads never wait for the
    GIL behind the sink's work."""
    make_table(dsn, rows=5)
    threads: set[str] = set()

    def shape(change: Change) -> dict[str, Any]:
        threads.add(threading.current_thread().name)
        return {"id": (change.row or {})["id"]}

    with sinks.redis(
        MACHINE_REDIS, stream=f"{unique}:{{table}}", state_key=f"{unique}:s", transform=shape
    ) as sink:
        pgtide.Feed("caller", ["items"], dsn=dsn).run(sink, stop="end", max_changes=2)
    assert threads == {threading.current_thread().name}
    items = redis_entries(MACHINE_REDIS, f"{unique}:public.items")
    assert [c["id"] for _, c in items] == list(range(5))
