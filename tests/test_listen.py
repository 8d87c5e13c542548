"""pgtide.Listener against a real server: decoding, channels, subscribers, dispatch, stop."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import psycopg
import pytest
from listen_helpers import Collector, listener_backends, pgtide_threads, wait_until

import pgtide

ODD_NAMES = [
    "my-channel",
    "MixedCase",
    'with "quotes"',
    "with space",
    "ünïcødé ✓",
    "semi;colon",
    "x" * 63,
]


def send(dsn: str, *messages: tuple[str, str]) -> None:
    """Raw NOTIFY from another connection, as any client would send it."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for channel, payload in messages:
            conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))


@pytest.mark.parametrize(
    ("codec", "expected"),
    [
        ("json", ["plain text", {"ok": True, "none": None}, None, "", [1, 2]]),
        ("text", ["plain text", '{"ok": true, "none": null}', "null", "", "[1,2]"]),
        ("literal", ["plain text", '{"ok": true, "none": null}', "null", "", [1, 2]]),
    ],
)
def test_bad_payloads_never_stop_the_listener(dsn: str, codec: str, expected: list[Any]) -> None:
    got = Collector()
    with pgtide.Listener(dsn=dsn, decode=codec) as listener:  # type: ignore[arg-type]
        listener.subscribe("ch", got)
        send(dsn, ("ch", "plain text"), ("ch", '{"ok": true, "none": null}'), ("ch", "null"))
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute('NOTIFY "ch"')  # an empty NOTIFY
        send(dsn, ("ch", "[1,2]"))
        assert got.wait_for(5) == expected
        assert listener.status()["running"] and listener.status()["connected"]
    errors = [n.error for n in got.notes]
    if codec == "literal":  # the strict codec notes why, and hands over the raw text
        assert [e is not None for e in errors] == [True, True, True, True, False]
        assert [n.raw for n in got.notes[:4]] == got.payloads[:4]
    else:
        assert errors == [None] * 5


def test_seed_002_scenario_in_pgtide_form(dsn: str) -> None:
    """pgnotifier's README: three channels, several subscribers, literal-style payloads."""
    by_sub: dict[Any, list[Any]] = {}

    def record(sub: Any) -> Any:
        return lambda note: by_sub.setdefault(sub, []).append((note.channel, note.payload))

    with pgtide.Listener(dsn=dsn) as listener:
        assert listener.subscribe("ch1", record(42), id=42) == 42
        listener.subscribe("ch2", record("an_id"), id="an_id")
        listener.subscribe("ch2", record((2, "another_id")), id=(2, "another_id"))
        listener.subscribe("ch3", record("three"), id="three")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("select pg_notify('ch1', '\"WARNING: Something really bad happened\"')")
            conn.execute(
                'select pg_notify(\'ch1\', \'{"topic": "abc", "data": "some data", '
                '"something": "else"}\')'
            )
            conn.execute(
                'select pg_notify(\'ch2\', \'{"topic": "xyz", "notice": "update", '
                '"data": [2, "stuff"]}\')'
            )
            conn.execute("select pg_notify('ch2', '[1,2,3,4,5]')")
            conn.execute("select pg_notify('ch3', '[1,2,3,4,5]')")
        wait_until(lambda: sum(len(v) for v in by_sub.values()) == 7)
    assert by_sub[42] == [
        ("ch1", "WARNING: Something really bad happened"),
        ("ch1", {"topic": "abc", "data": "some data", "something": "else"}),
    ]
    xyz = {"topic": "xyz", "notice": "update", "data": [2, "stuff"]}
    assert by_sub["an_id"] == by_sub[(2, "another_id")] == [("ch2", xyz), ("ch2", [1, 2, 3, 4, 5])]
    assert by_sub["three"] == [("ch3", [1, 2, 3, 4, 5])]


def test_odd_channel_names_work_and_are_quoted(dsn: str) -> None:
    collectors = {name: Collector() for name in ODD_NAMES}
    with pgtide.Listener(dsn=dsn) as listener:
        for name, got in collectors.items():
            listener.subscribe(name, got)
        assert sorted(listener.status()["listening"]) == sorted(ODD_NAMES)
        for name in ODD_NAMES:
            pgtide.notify(name, {"to": name}, dsn=dsn)
        for name, got in collectors.items():
            assert got.wait_for(1) == [{"to": name}]
        # a name that differs only by case is another channel
        assert "mixedcase" not in listener.channels()
    with pytest.raises(pgtide.InvalidChannel, match="63 bytes"):
        pgtide.Listener(dsn=dsn).subscribe("y" * 64, print)


def test_raising_callback_beside_a_healthy_one(dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    healthy = Collector()

    def broken(note: pgtide.Notification) -> None:
        raise RuntimeError(f"boom {note.payload}")

    with (
        caplog.at_level(logging.ERROR, logger="pgtide.listen"),
        pgtide.Listener(dsn=dsn) as listener,
    ):
        listener.subscribe("orders", broken, id="broken")
        listener.subscribe("orders", healthy, id="healthy")
        pgtide.notify_many([("orders", i) for i in range(3)], dsn=dsn)
        assert healthy.wait_for(3) == [0, 1, 2]
        status = listener.status()
    assert status["callback_errors"] == 3
    assert status["errors_by_subscriber"] == {"broken": 3}
    logged = [r for r in caplog.records if "raised" in r.getMessage()]
    assert len(logged) == 3
    assert "'broken'" in logged[0].getMessage() and "'orders'" in logged[0].getMessage()


def test_subscribing_while_thousands_stream_loses_nothing(dsn: str) -> None:
    total = 4000
    stream = Collector()
    extra: dict[str, Collector] = {}
    with pgtide.Listener(dsn=dsn) as listener:
        listener.subscribe("stream", stream)
        backend = listener.status()["backend_pid"]

        def produce() -> None:
            with psycopg.connect(dsn, autocommit=True) as conn:
                for start in range(0, total, 20):  # many small transactions
                    conn.execute(
                        "SELECT pg_notify('stream', g::text)"
                        " FROM generate_series(%s::int, %s::int) g",
                        (start, start + 19),
                    )

        producer = threading.Thread(target=produce)
        producer.start()
        for i in range(60):  # add (and drop) channels while the stream flows
            extra[f"new-{i}"] = Collector()
            listener.subscribe(f"new-{i}", extra[f"new-{i}"])
            if i % 3 == 1:
                listener.remove_channel(f"new-{i - 1}")
        producer.join()
        assert stream.wait_for(total, timeout=30) == list(range(total))
        assert listener.status()["backend_pid"] == backend  # never reconnected
        assert listener.status()["reconnects"] == 0
        live = listener.channels()
        pgtide.notify_many([(ch, ch) for ch in live if ch != "stream"], dsn=dsn)
        for ch in live:
            if ch != "stream":
                assert extra[ch].wait_for(1) == [ch]


def test_stop_is_prompt_and_leaves_no_thread(dsn: str) -> None:
    before = set(threading.enumerate())
    listener = pgtide.Listener(dsn=dsn)
    listener.subscribe("a", print)
    listener.start()
    assert len(pgtide_threads()) == 2
    assert len(listener_backends(dsn)) == 1  # one connection, named pgtide-listen
    began = time.monotonic()
    listener.stop()
    assert time.monotonic() - began < 0.5
    assert set(threading.enumerate()) <= before
    assert not listener.running
    listener.stop()  # twice is fine
    wait_until(lambda: not listener_backends(dsn), what="the connection to close")


def test_stop_from_inside_a_callback(dsn: str) -> None:
    listener = pgtide.Listener(dsn=dsn)
    listener.subscribe("quit", lambda note: listener.stop())
    listener.start()
    pgtide.notify("quit", "now", dsn=dsn)
    wait_until(lambda: not pgtide_threads(), what="the threads to end")
    assert not listener.running


def test_run_forever_returns_after_stop(dsn: str) -> None:
    listener = pgtide.Listener(dsn=dsn)
    got = Collector()

    def on_note(note: pgtide.Notification) -> None:
        got(note)
        listener.stop()

    listener.subscribe("jobs", on_note)
    threading.Timer(0.3, lambda: pgtide.notify("jobs", "last", dsn=dsn)).start()
    listener.run_forever()
    assert got.payloads == ["last"]
    assert not pgtide_threads()


def test_mute_and_unmute_a_channel(dsn: str) -> None:
    got = Collector()
    with pgtide.Listener(dsn=dsn) as listener:
        listener.subscribe("news", got, id="reader")
        listener.mute("news")
        assert listener.channels() == ["news"] and listener.active_channels() == []
        wait_until(lambda: listener.status()["listening"] == [], what="UNLISTEN")
        pgtide.notify("news", "while muted", dsn=dsn)
        listener.unmute("news")
        assert listener.status()["listening"] == ["news"]  # unmute returns once LISTENed
        pgtide.notify("news", "after", dsn=dsn)
        assert got.wait_for(1) == ["after"]
        time.sleep(0.2)
        assert got.payloads == ["after"]


def test_mute_subscriber_everywhere_and_unmute_on_one_channel(dsn: str) -> None:
    a, b, other = Collector(), Collector(), Collector()
    with pgtide.Listener(dsn=dsn) as listener:
        listener.subscribe("a", a, id=42)
        listener.subscribe("b", b, id=42)
        listener.subscribe("b", other, id=7)
        listener.mute_subscriber(42)
        # "a" has no subscriber left that is not muted: it is no longer LISTENed
        assert listener.active_channels() == ["b"]
        assert listener.status()["muted_subscribers"] == {"a": [42], "b": [42]}
        listener.unmute_subscriber(42, "a")
        assert listener.active_channels() == ["a", "b"]
        pgtide.notify_many([("a", 1), ("b", 2)], dsn=dsn)
        assert a.wait_for(1) == [1] and other.wait_for(1) == [2]
        time.sleep(0.2)
        assert b.payloads == []  # still muted on "b"
        with pytest.raises(pgtide.UnknownSubscriber, match="99"):
            listener.mute_subscriber(99)
        with pytest.raises(pgtide.UnknownSubscriber):
            listener.unmute_subscriber(7, "a")


def test_unsubscribe_on_one_channel_keeps_the_others(dsn: str) -> None:
    a, b = Collector(), Collector()
    with pgtide.Listener(dsn=dsn) as listener:
        listener.subscribe("a", a, id="s")
        listener.subscribe("b", b, id="s")
        assert listener.unsubscribe("s", "a") is True
        assert listener.subscribers() == {"b": {"s": False}}
        assert listener.unsubscribe("s", "a") is False
        pgtide.notify_many([("a", 1), ("b", 2)], dsn=dsn)
        assert b.wait_for(1) == [2]
        assert listener.unsubscribe("s") is True
        assert listener.channels() == []
        wait_until(lambda: listener.status()["listening"] == [], what="UNLISTEN")
    assert a.payloads == []


def test_concurrent_subscribes_from_many_threads_lose_nothing(dsn: str) -> None:
    hits: list[tuple[int, int]] = []
    lock = threading.Lock()
    with pgtide.Listener(dsn=dsn) as listener:
        barrier = threading.Barrier(16)

        def worker(t: int) -> None:
            barrier.wait()
            for i in range(25):

                def cb(note: pgtide.Notification, key: tuple[int, int] = (t, i)) -> None:
                    with lock:
                        hits.append(key)

                listener.subscribe(f"c{i % 5}", cb, id=(t, i))

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        subs = listener.subscribers()
        assert sum(len(s) for s in subs.values()) == 16 * 25
        assert listener.status()["listening"] == [f"c{i}" for i in range(5)]
        pgtide.notify_many([(f"c{i}", "go") for i in range(5)], dsn=dsn)
        wait_until(lambda: len(hits) == 16 * 25, what="every subscriber")
    assert sorted(hits) == sorted((t, i) for t in range(16) for i in range(25))


def test_subscribe_from_inside_a_callback(dsn: str) -> None:
    later = Collector()
    with pgtide.Listener(dsn=dsn) as listener:

        def on_hello(note: pgtide.Notification) -> None:
            listener.subscribe(note.payload["next"], later)

        listener.subscribe("hello", on_hello)
        pgtide.notify("hello", {"next": "second"}, dsn=dsn)
        wait_until(lambda: listener.status()["listening"] == ["hello", "second"])
        pgtide.notify("second", "reached", dsn=dsn)
        assert later.wait_for(1) == ["reached"]


def test_async_callbacks_run_in_the_blocking_listener(dsn: str) -> None:
    got: list[Any] = []

    async def on_note(note: pgtide.Notification) -> None:
        got.append(note.payload)

    with pgtide.Listener(dsn=dsn) as listener:
        listener.subscribe("a", on_note)
        pgtide.notify_many([("a", 1), ("a", 2)], dsn=dsn)
        wait_until(lambda: got == [1, 2])


@pytest.mark.parametrize(
    ("when_full", "delivered"),
    [
        ("drop_newest", list(range(1, 10))),  # 0 was being handled, 1..9 fit in the queue
        ("drop_oldest", list(range(91, 100))),  # the newest 9 fit in the queue
        ("block", list(range(1, 100))),  # nothing lost: receipt paused, PostgreSQL kept them
    ],
)
def test_slow_callback_and_the_queue_policy(dsn: str, when_full: str, delivered: list[int]) -> None:
    release = threading.Event()
    got = Collector()
    fast = Collector()

    def slow(note: pgtide.Notification) -> None:
        got(note)
        release.wait(10)

    listener = pgtide.Listener(dsn=dsn, queue_size=9, when_full=when_full)  # type: ignore[arg-type]
    with listener:
        listener.subscribe("slow", slow)
        pgtide.notify("slow", 0, dsn=dsn)
        got.wait_for(1)  # the callback is now stuck
        with psycopg.connect(dsn, autocommit=True) as conn:
            for i in range(1, 100):
                conn.execute("SELECT pg_notify('slow', %s)", (str(i),))
        if when_full == "block":
            wait_until(lambda: listener.status()["queued"] == 9, what="a full queue")
        else:
            # receipt goes on while the callback is stuck
            wait_until(lambda: listener.status()["received"] == 100, what="receipt")
            assert listener.status()["dropped"] == 90
        # registration still works while the callback is stuck
        listener.subscribe("other", fast)
        release.set()
        expected = [0, *delivered]
        assert got.wait_for(len(expected)) == expected
        time.sleep(0.1)
        assert got.payloads == expected
        assert listener.status()["queue_high_water"] == 9


def test_iter_pulls_beside_callbacks(dsn: str) -> None:
    pushed = Collector()
    with pgtide.Listener(dsn=dsn) as listener:
        listener.subscribe("feed", pushed)
        with listener.iter("feed", timeout=0.5) as notes:
            pgtide.notify_many([("feed", i) for i in range(3)], dsn=dsn)
            pulled = [n.payload for n in notes]
        assert pulled == [0, 1, 2]
        assert pushed.wait_for(3) == [0, 1, 2]
        assert listener.subscribers() == {"feed": {1: False}}  # the iterator unsubscribed


def test_iter_ends_when_the_listener_stops(dsn: str) -> None:
    listener = pgtide.Listener(dsn=dsn)
    threading.Timer(0.3, listener.stop).start()
    began = time.monotonic()
    assert list(listener.iter("never")) == []
    assert time.monotonic() - began < 5


def test_a_listener_can_start_again(dsn: str) -> None:
    got = Collector()
    listener = pgtide.Listener(dsn=dsn)
    listener.subscribe("again", got)
    for round in range(2):
        with listener:
            pgtide.notify("again", round, dsn=dsn)
            got.wait_for(round + 1)
    assert got.payloads == [0, 1]
    assert not pgtide_threads()


def test_unreachable_database_fails_at_start(bare_dsn: str) -> None:
    listener = pgtide.Listener(dsn="postgresql://nobody:secret@127.0.0.1:1/x")
    with pytest.raises(pgtide.ConnectionFailed) as caught:
        listener.start()
    assert "secret" not in str(caught.value) and "127.0.0.1:1" in str(caught.value)
    assert not pgtide_threads()
    assert "secret" not in repr(listener)


def test_status_counts_listener_connections(dsn: str, cli: Any) -> None:
    with pgtide.Listener(dsn=dsn) as listener:
        listener.subscribe("x", print)
        backend = listener.status()["backend_pid"]
        done = cli("status", "--json", "--dsn", dsn)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["database"][0]["listener_connections"] >= 1  # counted server-wide
    [row] = report["listeners"]
    assert row["backend_pid"] == backend and row["application"] == "pgtide-listen"


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"decode": "yaml"}, "codec"),
        ({"queue_size": 0}, "queue_size"),
        ({"when_full": "explode"}, "when_full"),
        ({"probe_interval": 0}, "probe_interval"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs: dict[str, Any], named: str) -> None:
    with pytest.raises(pgtide.ConfigError, match=named):
        pgtide.Listener(**kwargs)


def test_a_dropped_iterator_unsubscribes(dsn: str) -> None:
    import gc

    with pgtide.Listener(dsn=dsn) as listener:
        notes = listener.iter("dropped", timeout=0.1)
        assert listener.channels() == ["dropped"]
        del notes
        gc.collect()
        assert listener.channels() == []


def test_close_is_the_closing_verb(dsn: str) -> None:
    got = Collector()
    listener = pgtide.Listener(dsn=dsn)
    listener.subscribe("c", got)
    listener.start()
    pgtide.notify("c", 1, dsn=dsn)
    assert got.wait_for(1) == [1]
    notes = listener.iter("c")
    listener.close()
    assert list(notes) == []  # open iterators end
    assert not listener.running and not pgtide_threads()
    listener.close()  # twice is fine
    wait_until(lambda: not listener_backends(dsn), what="the connection to close")
    with listener:  # and it starts again
        pgtide.notify("c", 2, dsn=dsn)
        assert got.wait_for(2) == [1, 2]


def test_dsn_may_be_a_dict_of_libpq_keywords_or_a_psycopg_connection(dsn: str) -> None:
    from psycopg.conninfo import conninfo_to_dict

    with psycopg.connect(dsn) as conn:
        for given in (conninfo_to_dict(dsn), conn):
            got = Collector()
            with pgtide.Listener(dsn=given) as listener:
                listener.subscribe("kinds", got)
                pgtide.notify("kinds", {"from": type(given).__name__}, dsn=dsn)
                assert got.wait_for(1) == [{"from": type(given).__name__}]


# -- pgnotifier parity --------------------------------------------------------------------


def test_an_added_channel_is_listened_counted_and_reaches_iter(dsn: str) -> None:
    with pgtide.Listener(dsn=dsn) as listener:
        listener.add_channel("audit", ["jobs", "Jobs"])  # no subscriber on any of them
        assert listener.status()["listening"] == ["Jobs", "audit", "jobs"]
        assert listener.channels() == ["audit", "jobs", "Jobs"]
        send(dsn, ("audit", "1"), ("audit", "2"))
        wait_until(lambda: listener.status()["without_subscriber"] == {"audit": 2})
        assert listener.status()["unrouted"] == 0
        with listener.iter("jobs", timeout=5.0) as notes:
            send(dsn, ("jobs", '{"id": 1}'))
            assert next(notes).payload == {"id": 1}
        assert "jobs" in listener.status()["listening"]  # the iterator left; the channel stays
        listener.remove_channel("audit", "jobs", "Jobs")
        assert listener.channels() == []
        wait_until(lambda: listener.status()["listening"] == [], what="UNLISTEN")


def test_mute_and_remove_several_or_all_on_the_live_connection(dsn: str) -> None:
    got = Collector()
    with pgtide.Listener(dsn=dsn) as listener:
        for name in ("a", "b", "c"):
            listener.subscribe(name, got)
        listener.mute(["a", "b"])  # UNLISTEN: applied without waiting
        wait_until(lambda: listener.status()["listening"] == ["c"], what="UNLISTEN")
        listener.unmute()
        assert listener.status()["listening"] == ["a", "b", "c"]
        listener.mute()
        send(dsn, ("a", "1"), ("b", "2"), ("c", "3"))
        listener.unmute("c")
        send(dsn, ("c", "4"))
        assert got.wait_for(1) == [4]  # nothing of what was sent while all were muted
        assert listener.remove_channel() is True and listener.muted_channels() == []
        wait_until(lambda: listener.status()["listening"] == [], what="UNLISTEN")


def test_note_subscriber_tells_a_shared_callback_which_subscription(dsn: str) -> None:
    got = Collector()
    with pgtide.Listener(dsn=dsn) as listener:
        listener.subscribe("ch1", got, id=42)
        listener.subscribe("ch2", got, id="an_id")
        listener.subscribe("ch2", got, id=(2, "another_id"))
        send(dsn, ("ch1", "1"), ("ch2", "2"))
        got.wait_for(3)
    assert sorted((repr(n.subscriber), n.channel) for n in got.notes) == [
        ("'an_id'", "ch2"),
        ("(2, 'another_id')", "ch2"),
        ("42", "ch1"),
    ]


def test_restart_reconnects_listens_again_and_calls_on_reconnect(dsn: str) -> None:
    got, gaps = Collector(), threading.Event()
    listener = pgtide.Listener(dsn=dsn, on_reconnect=gaps.set)
    listener.subscribe("orders", got)
    assert not listener.is_running()
    listener.restart()  # not running: the same as start()
    assert listener.is_running() and not gaps.is_set()
    old = listener.status()["backend_pid"]
    with listener, listener.iter("orders", timeout=5.0) as notes:
        listener.restart()  # returns once the new connection listens
        assert listener.is_running()
        status = listener.status()
        assert status["backend_pid"] not in (None, old) and status["listening"] == ["orders"]
        wait_until(lambda: listener_backends(dsn) == [status["backend_pid"]], what="old gone")
        assert gaps.wait(5) and status["reconnects"] == 1
        pgtide.notify("orders", "after", dsn=dsn)
        assert got.wait_for(1) == ["after"]
        assert next(notes).payload == "after"  # open iterators are kept
    assert not listener.is_running() and not pgtide_threads()
