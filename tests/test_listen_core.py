"""The listener core and the json codec, without a database: registrations, delivery,
iterators, the constructor both faces share, and orjson giving exactly json's values."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import warnings
from collections.abc import Awaitable
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg.pq.misc import PGnotify

import pgtide
import pgtide.aio
from pgtide import codecs
from pgtide.channel import (
    RECONNECTED,
    BatchQueue,
    Marker,
    Notification,
    Receiver,
    Registry,
    Settings,
    SocketCopy,
    Stats,
)
from pgtide.connect import Resolved
from pgtide.listen._core import END, Face, ListenerCore

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
FACES = [pgtide.Listener, pgtide.aio.Listener]


def core(decode: codecs.Codec = "json", on_reconnect: Any = None) -> ListenerCore:
    return ListenerCore(
        None,
        decode=decode,
        on_reconnect=on_reconnect,
        queue_size=100,
        when_full="block",
        settings=Settings("test"),
        sync_timeout=1.0,
    )


def batch(*notes: tuple[str, str], pid: int = 7) -> tuple[datetime, str, list[PGnotify]]:
    return AT, "utf-8", [PGnotify(ch.encode(), pid, payload.encode()) for ch, payload in notes]


def run(c: ListenerCore, item: Any) -> list[Any]:
    """Deliver ``item``; return what it yielded (the awaitables of async callbacks)."""
    return list(c.deliver(item))


# -- the constructor both faces share -----------------------------------------------------


@pytest.mark.parametrize("face", FACES)
def test_a_positional_dsn_still_works_with_a_deprecation_warning(face: type[Face]) -> None:
    with pytest.warns(DeprecationWarning, match=r"dsn=") as caught:
        listener = face("postgresql://u@127.0.0.1:1/x")
    assert caught[0].filename == __file__  # points at the caller's line
    assert listener._core._dsn == "postgresql://u@127.0.0.1:1/x"
    assert not listener.running  # nothing connects in a constructor


@pytest.mark.parametrize("face", FACES)
def test_dsn_keyword_gives_no_warning_and_twice_is_an_error(face: type[Face]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert face(dsn="postgresql://u@127.0.0.1:1/x")._core._dsn == "postgresql://u@127.0.0.1:1/x"
    with pytest.raises(pgtide.ConfigError, match="dsn"):
        face("postgresql://a@h/x", dsn="postgresql://b@h/x")


def test_close_and_stop_are_one_verb() -> None:
    assert pgtide.Listener.stop is pgtide.Listener.close
    assert pgtide.aio.Listener.stop is pgtide.aio.Listener.close
    assert asyncio.iscoroutinefunction(pgtide.aio.Listener.close)


def test_registrations_on_a_stopped_listener_do_not_wait() -> None:
    listener = pgtide.Listener(dsn="postgresql://u@127.0.0.1:1/x")
    assert listener.subscribe("a", print, id="p") == "p"
    assert listener.subscribe("b", print) == 1
    listener.mute("a")
    assert listener.active_channels() == ["b"]
    listener.unmute("a")
    listener.mute_subscriber("p")
    assert listener.subscribers() == {"a": {"p": True}, "b": {1: False}}
    listener.unmute_subscriber("p", "a")
    assert listener.unsubscribe("p") is True and listener.unsubscribe("p") is False
    assert listener.remove_channel("b") is True
    assert listener.channels() == [] and not listener.status()["running"]


def test_the_asyncio_face_registers_the_same_way() -> None:
    async def main() -> None:
        listener = pgtide.aio.Listener()
        assert await listener.subscribe("a", print, id=3) == 3
        await listener.mute("a")
        assert listener.active_channels() == [] and listener.channels() == ["a"]
        assert await listener.remove_channel("a") is True
        assert "pgtide.aio.Listener stopped" in repr(listener)

    asyncio.run(main())


# -- the registration results -------------------------------------------------------------


def test_changes_carry_the_result_the_version_and_whether_to_wait() -> None:
    c = core()
    first = c.subscribe("a", print, None)
    assert (first.result, first.confirm) == (1, True) and first.version == 1
    same = c.subscribe("a", print, "x")  # the LISTEN set did not change
    assert same.version == first.version
    muted = c.mute("a")
    assert (muted.result, muted.confirm, muted.version) == (None, False, 2)
    assert c.unmute("a").confirm and not c.unsubscribe("x", None).confirm
    assert c.must_wait(c.subscribe("b", print, None), lambda: None) is False  # not running


# -- delivery -----------------------------------------------------------------------------


def test_deliver_decodes_routes_and_counts() -> None:
    c = core()
    got: list[Notification] = []
    c.subscribe("orders", got.append, None)
    c.subscribe("orders", lambda n: got.append(n), None)
    assert run(c, batch(("orders", '{"id": 1}'), ("nobody", "x"), ("orders", "plain"))) == []
    assert [(n.channel, n.payload, n.raw, n.pid, n.received_at) for n in got] == [
        ("orders", {"id": 1}, '{"id": 1}', 7, AT),
        ("orders", {"id": 1}, '{"id": 1}', 7, AT),
        ("orders", "plain", "plain", 7, AT),
        ("orders", "plain", "plain", 7, AT),
    ]
    # each subscriber gets its own Notification (note.subscriber differs); the payload is shared
    assert got[0] is not got[1] and got[0].payload is got[1].payload
    assert [n.subscriber for n in got] == [1, 2, 1, 2]
    assert (c.stats.counts["dispatched"], c.stats.counts["unrouted"]) == (3, 1)


def test_a_strict_codec_hands_over_the_raw_text_with_the_error() -> None:
    c = core(decode="literal")
    got: list[Notification] = []
    c.subscribe("x", got.append, None)
    run(c, batch(("x", "(1, 2)"), ("x", "true")))
    assert [(n.payload, n.error is None) for n in got] == [((1, 2), True), ("true", False)]
    assert got[1].error is not None and got[1].error.startswith("ValueError")


def test_a_raising_callback_is_counted_and_the_others_still_run() -> None:
    c = core()
    got: list[Any] = []

    def broken(note: Notification) -> None:
        raise RuntimeError("nope")

    c.subscribe("x", broken, "broken")
    c.subscribe("x", lambda n: got.append(n.payload), "fine")
    run(c, batch(("x", "1"), ("x", "2")))
    assert got == [1, 2]
    assert c.stats.counts["callback_errors"] == 2 and c.stats.errors_by_subscriber == {"broken": 2}


def test_async_callbacks_are_yielded_in_order_for_the_face_to_await() -> None:
    c = core()
    order: list[Any] = []

    async def later(note: Notification) -> None:
        order.append(("async", note.payload))

    c.subscribe("x", later, "a")
    c.subscribe("x", lambda n: order.append(("plain", n.payload)), "p")
    pending = c.deliver(batch(("x", "1"), ("x", "2")))
    for awaitable, sub, note in pending:
        assert sub is not None and sub.id == "a" and note is not None
        asyncio.run(_await(awaitable))
    assert order == [("async", 1), ("plain", 1), ("async", 2), ("plain", 2)]  # server order


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def test_a_mute_from_a_callback_applies_to_the_rest_of_the_batch() -> None:
    c = core()
    got: list[Any] = []

    def first(note: Notification) -> None:
        got.append(note.payload)
        c.mute("x")

    c.subscribe("x", first, None)
    run(c, batch(("x", "1"), ("x", "2")))
    assert got == [1] and c.stats.counts["unrouted"] == 1


def test_route_changes_from_a_callback_apply_to_the_next_notification() -> None:
    """deliver looks a channel up again only when the channel or the routes change."""
    c = core()
    got: list[Any] = []

    def first(note: Notification) -> None:
        got.append(("first", note.payload))
        if note.payload == 1:  # one subscriber -> two
            c.subscribe("x", lambda n: got.append(("second", n.payload)), "second")
        if note.payload == 2:  # two -> one (the other one)
            c.unsubscribe("first", "x")

    c.subscribe("x", first, "first")
    c.subscribe("y", lambda n: got.append(("y", n.payload)), None)
    run(c, batch(("x", "1"), ("y", "10"), ("x", "2"), ("x", "3"), ("y", "11"), ("z", "0")))
    assert got == [
        ("first", 1),
        ("y", 10),
        ("first", 2),
        ("second", 2),
        ("second", 3),
        ("y", 11),
    ]
    assert (c.stats.counts["dispatched"], c.stats.counts["unrouted"]) == (6, 1)


def test_closing_stops_delivery_mid_batch() -> None:
    c = core()
    got: list[Any] = []

    def stop_after_first(note: Notification) -> None:
        got.append(note.payload)
        c.closing = True

    c.subscribe("x", stop_after_first, None)
    run(c, batch(("x", "1"), ("x", "2"), ("x", "3")))
    assert got == [1] and c.stats.counts["dispatched"] == 1


def test_the_reconnected_marker_calls_on_reconnect_and_counts_its_errors() -> None:
    calls: list[str] = []
    c = core(on_reconnect=lambda: calls.append("gap"))
    assert run(c, RECONNECTED) == [] and calls == ["gap"]

    def broken() -> None:
        raise RuntimeError("resync failed")

    c = core(on_reconnect=broken)
    run(c, RECONNECTED)
    assert c.stats.errors_by_subscriber == {"on_reconnect": 1}


def test_a_pull_ends_on_end_and_unsubscribes_once() -> None:
    c = core()
    inbox: list[Any] = []
    pull = c.pull("feed", 1.5, inbox.append)
    assert (pull.state, pull.timeout, pull.id) == ("new", 1.5, ("iter", "feed", 1))
    assert pull.subscribe().result == ("iter", "feed", 1)
    run(c, batch(("feed", "[1]")))
    [note] = inbox
    assert pull.take(note) is note
    c.end_pulls()
    assert inbox[-1] is END and pull.take(END) is None
    assert pull.state == "closed" and c.registry.channels() == []
    assert pull.take(note) is None  # closed: nothing more
    assert c.pull("feed", None, inbox.append).id == ("iter", "feed", 2)


# -- the json codec: orjson's speed, json's values ----------------------------------------

TRICKY = [
    '{"i": 12345, "kind": "order", "qty": 4}',
    "18446744073709551615",  # the largest integer orjson keeps exact
    "18446744073709551616",  # orjson: a float; json: the exact integer
    "-9223372036854775809",
    '{"id": 123456789012345678901234567890, "ok": true}',
    '["x", 1.5, -0.0, 1E5, 100000000000000000000.5]',
    "NaN",
    "[Infinity, -Infinity]",
    "1e400",
    '"\\ud800"',  # a lone surrogate escape: json accepts it, orjson does not
    "[" * 5000,  # too deep: the text
    "plain text",
    "",
    "null",
    ' {"spaced": [1, 2]} ',
    "2026-01-02T03:04:05.123456789012345678",
]


@pytest.mark.parametrize("raw", TRICKY, ids=lambda r: r[:30])
def test_the_json_codec_gives_exactly_what_json_gives(raw: str) -> None:
    try:
        expected = json.loads(raw)
    except (ValueError, RecursionError):
        expected = raw
    decoded = codecs.decode_json(raw)
    assert repr(decoded) == repr(expected)
    assert _types(decoded) == _types(expected)
    # ... and so does the listener's batch path
    c = core()
    got: list[Notification] = []
    c.subscribe("x", got.append, None)
    run(c, batch(("x", raw), ("x", '{"small": 1}')))
    assert repr(got[0].payload) == repr(expected) and _types(got[0].payload) == _types(expected)


def _types(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _types(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_types(v) for v in value]
    return type(value)


def test_a_batch_without_long_digit_runs_skips_the_per_payload_check() -> None:
    fast, rescue = codecs.for_batch(codecs.decode_json, [b'{"i": 123456789}', b"[1, 2]"])
    assert fast is not codecs.decode_json and fast is not None and rescue is not None
    assert fast('{"i": 1}') == {"i": 1}
    assert rescue("text") == "text" and rescue("NaN") != rescue("NaN")  # what orjson refuses
    assert codecs.for_batch(codecs.decode_json, [b"1", b"1234567890123456789"]) == (
        codecs.decode_json,
        None,
    )
    # digits split by a payload boundary are not a run
    assert codecs.for_batch(codecs.decode_json, [b"123456789", b"0123456789"])[1] is not None
    literal = codecs.decoder("literal")
    assert codecs.for_batch(literal, [b"1" * 30]) == (literal, None)
    assert codecs.for_batch(None, [b"x"]) == (None, None)


def test_delivered_notifications_have_every_field_set() -> None:
    """deliver fills notifications in without __init__: a new field must be set there too."""
    for decode in ("json", "text", "literal"):
        c = core(decode=decode)  # type: ignore[arg-type]
        got: list[Notification] = []
        c.subscribe("x", got.append, None)
        c.subscribe("x", got.append, None)  # a second subscriber: a copy each
        run(c, batch(("x", "[1]"), ("x", "NaN"), ("x", "not a literal")))
        for note in got:
            built = Notification(**{f.name: getattr(note, f.name) for f in fields(Notification)})
            assert built.to_dict() == note.to_dict() and built.subscriber == note.subscriber
        assert [n.subscriber for n in got] == [1, 2] * 3
        strict = decode == "literal"
        assert [n.error is None for n in got[::2]] == [True, not strict, not strict]
        assert [n.error for n in got[::2]] == [n.error for n in got[1::2]]


# -- the receiver's batches ---------------------------------------------------------------


class FakePG:
    """libpq's side of _drain: parsed notifications, and more once input is consumed."""

    def __init__(self, parsed: int, arriving: list[int], fail: bool = False) -> None:
        self._parsed = [PGnotify(b"x", 1, b"%d" % i) for i in range(parsed)]
        self._arriving = arriving
        self._fail = fail
        self._next = parsed
        self.reads = 0
        self.socket = -1  # a file number, for the dispatcher to wait on (take_now)

    def notifies(self) -> PGnotify | None:
        return self._parsed.pop(0) if self._parsed else None

    def consume_input(self) -> None:
        self.reads += 1
        if self._fail:
            raise psycopg.OperationalError("consuming input failed")
        count = self._arriving.pop(0) if self._arriving else 0
        self._parsed += [PGnotify(b"x", 1, b"%d" % (self._next + i)) for i in range(count)]
        self._next += count


@pytest.mark.parametrize(
    ("parsed", "arriving", "fail", "sizes", "reads"),
    [
        (0, [], False, [], 0),  # nothing parsed: no read, no batch
        (3, [], False, [3], 1),  # idle: one non-blocking read, one batch
        (3, [2, 4], False, [9], 3),  # what arrives meanwhile joins the batch
        (4000, [200, 5], False, [4200], 1),  # past BATCH: no more reading into it
        (3, [2], True, [3], 1),  # a failing read: what was read is handed over
    ],
)
def test_the_receiver_hands_over_what_the_socket_holds_as_one_batch(
    parsed: int, arriving: list[int], fail: bool, sizes: list[int], reads: int
) -> None:
    queue = BatchQueue(100_000, "block")
    receiver = Receiver(
        Resolved("host=h dbname=d", "test"),
        Registry(),
        queue,
        Stats(),
        Settings("test"),
    )
    try:
        pg = FakePG(parsed, arriving, fail)
        receiver._drain(pg, "utf-8")  # type: ignore[arg-type]
        receiver._drain(pg, "utf-8")  # type: ignore[arg-type]
        got = []
        while (item := queue.get(timeout=0)) is not None:
            assert not isinstance(item, Marker)
            got.append([int(n.extra) for n in item[2]])
        assert [len(b) for b in got] == sizes
        assert [i for b in got for i in b] == list(range(sum(sizes)))  # in order, no loss
        assert pg.reads == reads
    finally:
        receiver.stop()


def _receiver(queue: BatchQueue) -> Receiver:
    return Receiver(Resolved("host=h dbname=d", "test"), Registry(), queue, Stats(), Settings("t"))


def test_the_dispatcher_reads_the_socket_itself_only_when_nothing_is_queued() -> None:
    queue = BatchQueue(100_000, "block")
    receiver = _receiver(queue)
    forgotten: list[int] = []
    copy = SocketCopy(forgotten.append)
    ours, server = socket.socketpair()
    try:
        pg = FakePG(0, [3, 2])
        pg.socket = ours.fileno()
        assert receiver.take_now(queue, copy) is False  # not serving a connection: no lane
        assert not receiver._direct and copy.fd == -1
        receiver._live = pg  # type: ignore[assignment]  # as serve() sets it between polls
        receiver._connection = 1
        queue.put_marker(RECONNECTED)
        assert receiver.take_now(queue, copy) is False and pg.reads == 0  # the queue goes first
        assert not receiver._direct
        assert queue.get(timeout=0) is RECONNECTED
        first = receiver.take_now(queue, copy)
        assert not isinstance(first, bool) and [int(n.extra) for n in first[2]] == [0, 1, 2, 3, 4]
        assert receiver._direct and receiver._stats.counts["received"] == 5
        # nothing more: the dispatcher may wait on (its duplicate of) the socket itself, and
        # the receiver keeps leaving the socket to it
        assert receiver.take_now(queue, copy) is True
        idle = copy.fd
        assert idle >= 0 and idle != ours.fileno()
        assert os.path.sameopenfile(idle, ours.fileno()) and receiver._direct
        # the same connection: the same duplicate, kept from one wait to the next
        assert receiver.take_now(queue, copy) is True and copy.fd == idle and not forgotten
        receiver.leave_socket()  # the dispatcher cannot wait on it: the receiver reads again
        assert not receiver._direct
        with receiver._reading:  # the receiver is using the connection: never waits for it
            assert receiver.take_now(queue, copy) is False
        assert not receiver._direct and copy.fd == idle
        failing = FakePG(0, [1], fail=True)
        failing.socket = ours.fileno()
        receiver._live = failing  # type: ignore[assignment]
        assert receiver.take_now(queue, copy) is False  # a failing connection: the receiver
        assert not receiver._direct  # notices
        # another connection (a reconnect): the old duplicate is forgotten (unwatched) and
        # closed, and the new socket duplicated
        other, far = socket.socketpair()
        try:
            fresh = FakePG(0, [])
            fresh.socket = other.fileno()
            receiver._live = fresh  # type: ignore[assignment]
            receiver._connection = 2
            assert receiver.take_now(queue, copy) is True and forgotten == [idle]
            assert os.path.sameopenfile(copy.fd, other.fileno())
            receiver._live = None  # gone, and no new one yet: the duplicate is kept meanwhile
            assert receiver.take_now(queue, copy) is False and copy.fd >= 0
            receiver._connection = 3
            assert receiver.take_now(queue, copy) is False and copy.fd == -1
            assert len(forgotten) == 2
        finally:
            other.close()
            far.close()
    finally:
        copy.close()
        receiver.stop()
        ours.close()
        server.close()
    dropping = BatchQueue(10, "drop_oldest")
    dropper = _receiver(dropping)
    dropper._live = FakePG(2, [])  # type: ignore[assignment]
    try:
        assert dropper.take_now(dropping, copy) is False  # drop policies: only the thread reads
    finally:
        dropper.stop()


# -- pgnotifier parity: names, all channels, added channels, note.subscriber ---------------


@pytest.mark.parametrize("face", FACES)
def test_a_dsn_of_another_kind_is_a_clear_config_error_at_once(face: type[Face]) -> None:
    for bad in (42, b"host=h", ["host=h"], object()):
        with pytest.raises(pgtide.ConfigError, match="dict of libpq keywords"):
            face(dsn=bad)  # type: ignore[arg-type]
    with pytest.raises(pgtide.ConfigError, match="libpq does not know"):
        face(dsn={"host": "h", "nope": 1})


def test_mute_unmute_and_remove_take_one_name_several_an_iterable_or_none() -> None:
    listener = pgtide.Listener(dsn="postgresql://u@127.0.0.1:1/x")
    for name in ("a", "b", "c", "d"):
        listener.subscribe(name, print)
    listener.mute("a")  # the one-name calls of before
    listener.unmute(channel="a")
    listener.mute(channel="a")
    listener.mute("b", "c")
    assert listener.muted_channels() == ["a", "b", "c"] and listener.active_channels() == ["d"]
    listener.unmute(["a", "b"])
    listener.unmute({"c"}, "d")
    assert listener.muted_channels() == []
    listener.mute()  # every channel
    assert listener.muted_channels() == ["a", "b", "c", "d"] and listener.active_channels() == []
    listener.unmute()  # every muted channel
    assert listener.active_channels() == ["a", "b", "c", "d"]
    assert listener.remove_channel(("a", "b")) is True
    assert listener.remove_channel("zz") is False
    assert listener.channels() == ["c", "d"]
    assert listener.remove_channel() is True and listener.channels() == []
    with pytest.raises(TypeError, match="not bytes"):
        listener.mute(b"a")  # type: ignore[arg-type]
    assert not listener.is_running()


def test_the_asyncio_face_takes_names_the_same_way() -> None:
    async def main() -> None:
        listener = pgtide.aio.Listener(dsn="postgresql://u@127.0.0.1:1/x")
        await listener.add_channel(["a", "b"], "c")
        await listener.mute("a", "b")
        assert listener.muted_channels() == ["a", "b"]
        await listener.unmute()
        assert listener.active_channels() == ["a", "b", "c"]
        await listener.mute()
        assert listener.active_channels() == []
        assert await listener.remove_channel() is True and listener.channels() == []
        assert not listener.is_running()

    asyncio.run(main())


def test_an_added_channel_is_listened_without_subscribers_and_counted() -> None:
    c = core()
    change = c.add_channel(("quiet", ["loud"]))
    assert change.confirm and change.version == 1
    assert c.registry.channels() == ["quiet", "loud"]
    assert c.registry.active() == (1, frozenset({"quiet", "loud"}))
    got: list[Notification] = []
    c.subscribe("loud", got.append, "s")
    assert c.subscribe("loud", got.append, "s").version == 1  # already LISTENed
    run(c, batch(("quiet", "1"), ("quiet", "2"), ("loud", "3"), ("other", "4")))
    assert [n.payload for n in got] == [3]
    status = c.status()
    assert status["without_subscriber"] == {"quiet": 2} and status["unrouted"] == 1
    assert status["added_channels"] == ["quiet", "loud"] and status["subscribers"]["quiet"] == []
    c.unsubscribe("s", None)  # an added channel outlives its last subscriber
    assert c.registry.channels() == ["quiet", "loud"] and "loud" in c.registry.active()[1]
    c.mute(("quiet",))
    assert c.registry.active()[1] == {"loud"}
    c.remove_channel(("loud",))
    assert c.registry.channels() == ["quiet"] and c.registry.active()[1] == frozenset()


def test_note_subscriber_names_the_subscription_a_shared_callback_serves() -> None:
    c = core()
    got: list[tuple[Any, Any]] = []

    def shared(note: Notification) -> None:
        got.append((note.subscriber, note.payload))

    async def later(note: Notification) -> None:
        got.append((note.subscriber, note.payload))

    c.subscribe("one", shared, "only")
    c.subscribe("many", shared, 42)
    c.subscribe("many", later, (2, "another_id"))
    c.subscribe("many", shared, "an_id")
    pending = run(c, batch(("one", "1"), ("many", "2")))
    assert got == [("only", 1), (42, 2), ("an_id", 2)]
    [(awaitable, sub, note)] = pending
    assert sub.id == note.subscriber == (2, "another_id")  # read after the others ran
    asyncio.run(awaitable)  # type: ignore[arg-type]
    assert got[-1] == ((2, "another_id"), 2)
    assert Notification("c", 1, "1", 1, AT).subscriber is None


def test_a_channel_name_with_capitals_warns_once_per_listener(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("WARNING", logger="pgtide.listen")
    listener = pgtide.Listener(dsn="postgresql://u@127.0.0.1:1/x")
    listener.subscribe("MyChannel", print)
    listener.subscribe("MyChannel", print)
    listener.add_channel("MyChannel", "lower_case", "ünïcødé")
    listener.iter  # noqa: B018 (iter() would start the listener)
    [record] = caplog.records
    message = record.getMessage()
    assert "'MyChannel' has capital letters" in message
    assert "NOTIFY MyChannel" in message and "'mychannel'" in message
    assert 'NOTIFY "MyChannel"' in message  # what to write instead
    other = pgtide.Listener(dsn="postgresql://u@127.0.0.1:1/x")
    other.add_channel("MyChannel")  # once per listener: another listener says it again
    assert len(caplog.records) == 2
