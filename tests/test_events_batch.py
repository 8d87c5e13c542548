"""Events in batches: one round trip and one transaction per worker round (claims, outcomes
and starts together), fenced batch outcomes, attempts folded into outcomes, publish_many as
one JSON array, and payloads decoded in one call."""

from __future__ import annotations

import asyncio
import datetime
import enum
import inspect
import json
import threading
import uuid
from collections import Counter
from typing import Any

import psycopg
import pytest
from events_helpers import count, wait_for

import pgtide
import pgtide.aio
from pgtide.errors import ConfigError, EventPayloadError
from pgtide.events import _sql
from pgtide.events._model import decode_payloads, encode_array, to_json


@pytest.fixture
def events(dsn: str) -> Any:
    ev = pgtide.Events(dsn=dsn, poll_interval=0.05, retry_delay=0.01, max_retry_delay=0.05)
    yield ev
    ev.close()


def _claim(conn: psycopg.Connection[Any], owner: str) -> dict[int, int]:
    """Claim every waiting ``job`` (and lapsed lease) as ``owner``: id -> fencing token."""
    params = {"source": "", "names": ["job"], "limit": 100, "owner": owner, "lease": 30.0}
    return {int(r[0]): int(r[6]) for r in conn.execute(_sql.CLAIM, params).fetchall()}


def _complete(
    conn: psycopg.Connection[Any], owner: str, held: dict[int, int], starts: int = 1
) -> None:
    ids = sorted(held)
    params = {
        "ids": _sql.csv(ids),
        "tokens": _sql.csv(held[i] for i in ids),
        "results": [f'{{"by": "{owner}"}}' for _ in ids],
        "starts": _sql.csv(starts for _ in ids),
        "owner": owner,
    }
    conn.execute(_sql.COMPLETE, params)


def test_a_stale_workers_batch_complete_is_refused_and_its_starts_still_count(
    events: pgtide.Events, dsn: str
) -> None:
    ids = events.publish_many("job", [1, 2, 3])
    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn, autocommit=True) as b:
        stale = _claim(a, "A")
        assert sorted(stale) == ids
        # A's leases lapse (an outage, say) and B takes the events over with new tokens
        a.execute("UPDATE pgtide.events SET lease_expires = now() - interval '1 s'")
        fresh = _claim(b, "B")
        assert sorted(fresh) == ids
        assert all(fresh[i] == stale[i] + 1 for i in ids)
        _complete(a, "A", stale)  # refused: the rows carry B's owner and tokens
        assert count(dsn, "SELECT count(*) FROM pgtide.events WHERE state = 'running'") == 3
        # A's handlers did start: those attempts count although their outcomes do not
        assert count(dsn, "SELECT sum(attempts) FROM pgtide.events") == 3
        _complete(a, "A", fresh, starts=0)  # B's tokens but A's name: refused as well
        assert count(dsn, "SELECT count(*) FROM pgtide.events WHERE state = 'done'") == 0
        _complete(b, "B", fresh)
    for id_ in ids:
        record = events.get(id_)
        assert record is not None
        assert (record.state, record.attempts, record.result) == ("done", 2, {"by": "B"})
        assert record.started_at is not None and record.finished_at is not None


def _started(conn: psycopg.Connection[Any], held: dict[int, int]) -> None:
    """A round's STARTED: one start of each event, under the token ``held`` gives it."""
    ids = sorted(held)
    params = {"ids": ids, "tokens": [held[i] for i in ids], "counts": [1 for _ in ids]}
    conn.execute(_sql.STARTED, params)


def test_a_round_sent_again_after_its_commit_counts_no_start_twice(
    events: pgtide.Events, dsn: str
) -> None:
    """The server stopped between a round's commit and its reply: the worker sends the round
    again. Its starts and outcomes were recorded the first time; nothing is counted twice.
    A start written after another claim took its event over still counts, and leaves that
    claim's own start to be counted."""
    running, quick, late = events.publish_many("job", [1, 2, 3])
    attempts = "SELECT attempts FROM pgtide.events WHERE id = %s"
    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn, autocommit=True) as b:
        held = _claim(a, "A")
        _started(a, {running: held[running]})  # a long handler's start, before its outcome
        _started(a, {running: held[running]})  # the same round again
        assert count(dsn, attempts, running) == 1
        _complete(a, "A", {quick: held[quick]})  # a quick handler: start and outcome at once
        _complete(a, "A", {quick: held[quick]})  # again: refused, and its start not recounted
        assert count(dsn, attempts, quick) == 1
        assert events.get(quick).state == "done"  # type: ignore[union-attr]
        # the leases lapse and B takes both others over; A's start of `late` is written
        # only now (the database was away when it began)
        a.execute("UPDATE pgtide.events SET lease_expires = now() - interval '1 s'")
        fresh = _claim(b, "B")
        assert fresh == {running: held[running] + 1, late: held[late] + 1}
        _started(a, {late: held[late]})  # another claim's token now: counted all the same
        assert count(dsn, attempts, late) == 1
        _started(b, fresh)  # B's own starts: counted once each, however often sent
        _started(b, fresh)
        assert (count(dsn, attempts, running), count(dsn, attempts, late)) == (2, 2)
        _complete(a, "A", {running: held[running], late: held[late]}, starts=0)  # refused
        _complete(b, "B", fresh, starts=0)
    for id_, expected in ((running, 2), (quick, 1), (late, 2)):
        record = events.get(id_)
        assert record is not None and (record.state, record.attempts) == ("done", expected)
    assert events.get(late).result == {"by": "B"}  # type: ignore[union-attr]


def test_a_start_recorded_by_a_round_whose_reply_was_lost_is_not_counted_with_the_outcome(
    events: pgtide.Events, dsn: str
) -> None:
    """A round counts a start (STARTED) and commits, but its reply is lost: the worker keeps
    the start as not counted, and by its next round the handler has ended, so the start goes
    with the outcome. The outcome is recorded; the start is not counted a second time."""
    (id_,) = events.publish_many("job", [1])
    with psycopg.connect(dsn, autocommit=True) as a:
        held = _claim(a, "A")
        _started(a, held)  # recorded; the worker never saw the reply
        _complete(a, "A", held, starts=1)  # the same start, folded into the outcome
    record = events.get(id_)
    assert record is not None and (record.state, record.attempts) == ("done", 1)
    assert record.started_at is not None


def test_a_round_sent_again_after_its_event_was_taken_over_counts_no_start_twice(
    events: pgtide.Events, dsn: str
) -> None:
    """A round is recorded, its reply lost, and before the worker sends it again another
    claim takes its events over (a lapsed lease, or the retry of a failure): the starts in
    it now carry an old token. Each is counted once: not again when it had been counted
    under its own token, and once (not at each sending) when it is first written late."""
    counted, retried, late, refused = events.publish_many("job", [1, 2, 3, 4])
    attempts = "SELECT attempts FROM pgtide.events WHERE id = %s"
    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn, autocommit=True) as b:
        held = _claim(a, "A")
        _started(a, {counted: held[counted], retried: held[retried]})
        fail = {
            "ids": [retried],
            "tokens": [held[retried]],
            "states": ["failed"],
            "errors": ["boom"],
            "delays": [0.0],
            "owner": "A",
        }
        a.execute(_sql.FAIL, fail)  # retried at once: the next claim takes it again
        a.execute("UPDATE pgtide.events SET lease_expires = now() - interval '1 s'")
        fresh = _claim(b, "B")
        assert fresh == {i: held[i] + 1 for i in (counted, retried, late, refused)}
        for _ in range(2):  # A's round, then the same round sent again
            _started(a, {counted: held[counted], retried: held[retried], late: held[late]})
            _complete(a, "A", {refused: held[refused]})  # refused; its start counts once
            got = [count(dsn, attempts, i) for i in (counted, retried, late, refused)]
            assert got == [1, 1, 1, 1]
        _started(b, fresh)  # B's own starts: counted once each, however often sent
        _started(b, fresh)
        _complete(b, "B", fresh, starts=0)
    for id_ in (counted, retried, late, refused):
        record = events.get(id_)
        assert record is not None and (record.state, record.attempts) == ("done", 2)


def test_each_start_counts_once_whether_written_with_its_outcome_or_before(
    events: pgtide.Events, dsn: str
) -> None:
    calls: Counter[int] = Counter()
    lock = threading.Lock()
    gate = threading.Event()

    def handler(event: pgtide.Event) -> None:
        with lock:
            calls[event.id] += 1
        if event.payload == "slow":
            gate.wait(20)

    events.register("job", handler)
    quick = events.publish_many("job", list(range(300)))
    slow = events.publish("job", "slow")
    events.start(concurrency=8)
    # the slow handler's start is written while it runs (not with its outcome)
    wait_for(
        lambda: count(dsn, "SELECT attempts FROM pgtide.events WHERE id = %s", slow) == 1,
        what="the running handler's attempt counted",
    )
    assert events.get(slow).state == "running"  # type: ignore[union-attr]
    gate.set()
    events.wait(slow, timeout=20)
    wait_for(lambda: events.status()["done"] == 301, what="every event done")
    assert calls == Counter({i: 1 for i in [*quick, slow]})
    assert count(dsn, "SELECT count(*) FROM pgtide.events WHERE attempts <> 1") == 0
    assert (
        count(
            dsn,
            "SELECT count(*) FROM pgtide.events "
            "WHERE started_at IS NULL OR started_at > finished_at",
        )
        == 0
    )


def test_a_batchs_failures_are_one_fenced_statement_each_with_its_own_outcome(
    events: pgtide.Events, dsn: str
) -> None:
    ids = events.publish_many("job", [1, 2, 3, 4])
    with psycopg.connect(dsn, autocommit=True) as conn:
        held = _claim(conn, "A")
        conn.execute("UPDATE pgtide.events SET cancel_requested = true WHERE id = %s", (ids[2],))
        params = {
            "ids": ids,
            "tokens": [held[ids[0]], held[ids[1]], held[ids[2]], held[ids[3]] + 1],
            "states": ["failed", "dead", "failed", "failed"],
            "errors": ["first", "second", "third", "stale"],
            "delays": [3600.0, 0.0, 0.0, 0.0],
            "owner": "A",
        }
        conn.execute(_sql.FAIL, params)
        rows = conn.execute(
            "SELECT state, error, run_after > now() + interval '1 hour' - interval '1 minute',"
            " finished_at IS NOT NULL FROM pgtide.events ORDER BY id"
        ).fetchall()
    assert rows == [
        ("failed", "first", True, False),  # retried after its own delay
        ("dead", "second", False, True),
        ("cancelled", "third", False, True),  # its cancel was asked: never retried
        ("running", None, False, False),  # another token: refused
    ]


def test_a_large_backlog_runs_each_event_once_with_batched_rounds(dsn: str) -> None:
    events = pgtide.Events(dsn=dsn, batch_size=500)
    seen: Counter[int] = Counter()
    lock = threading.Lock()

    def handler(event: pgtide.Event) -> dict[str, int]:
        with lock:
            seen[event.payload["n"]] += 1
        return {"double": event.payload["n"] * 2}

    events.register("job", handler)
    try:
        ids = events.publish_many("job", [{"n": n} for n in range(5000)])
        events.start(concurrency=32)
        wait_for(lambda: events.status()["done"] == 5000, timeout=60, what="5000 events done")
    finally:
        events.close()
    assert seen == Counter(range(5000))
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT id, (payload->>'n')::int, (result->>'double')::int, attempts "
            "FROM pgtide.events ORDER BY id"
        ).fetchall()
    assert [r[0] for r in rows] == ids
    assert all(double == 2 * n and attempts == 1 for _, n, double, attempts in rows)


def test_publish_many_keeps_order_values_and_names_the_bad_payload(
    events: pgtide.Events, dsn: str
) -> None:
    payloads: list[Any] = [{"n": n, "text": 'tab\tquote"back\\slash é'} for n in range(2000)]
    payloads[7] = None
    payloads[8] = [1, 2.5, True, "x"]
    payloads[9] = 123456789012345678901234567890  # beyond 64 bits: kept exactly
    ids = events.publish_many("job", payloads)
    assert ids == sorted(ids) and len(set(ids)) == 2000
    assert events.get(ids[9]).payload == payloads[9]  # type: ignore[union-attr]
    with psycopg.connect(dsn) as conn:
        stored = [r[0] for r in conn.execute("SELECT payload FROM pgtide.events ORDER BY id")]
    assert stored == payloads
    with pytest.raises(EventPayloadError, match="payload #3 of event 'job'"):
        events.publish_many("job", [1, 2, 3, {"when": object()}])
    with pytest.raises(EventPayloadError, match=r"payload #1 .*NUL"):
        events.publish_many("job", ["fine", {"a": "x\x00y"}])
    with pytest.raises(EventPayloadError, match="payload #0"):
        events.publish_many("job", [float("nan")])
    assert events.status()["pending"] == 2000  # nothing of the refused batches was inserted


def test_publish_many_with_dedupe_keys_uses_the_same_array(events: pgtide.Events) -> None:
    first = events.publish_many(
        "job", [{"a": 1}, {"b": 2}, {"c": 3}], dedupe_key=["k1", None, "k2"]
    )
    again = events.publish_many("job", [{"x": 1}, {"y": 2}], dedupe_key=["k2", "k3"])
    assert again[0] == first[2]
    assert events.get(again[1]).payload == {"y": 2}  # type: ignore[union-attr]
    assert events.get(first[1]).payload == {"b": 2}  # type: ignore[union-attr]


def test_payloads_decode_in_one_call_exactly_as_one_by_one() -> None:
    texts = ['{"n": 1}', "null", '"x"', "[1.5, 2]", '{"big": 12345678901234567890123}']
    assert decode_payloads(texts) == [
        {"n": 1},
        None,
        "x",
        [1.5, 2],
        {"big": 12345678901234567890123},
    ]
    assert decode_payloads([]) == []
    assert encode_array([{"a": "é"}, None, [1]], "job") == '[{"a":"é"},null,[1]]'


@pytest.mark.parametrize(
    "payloads",
    [
        [{"n": 1, "s": 'é\\"', "f": 1.5, "l": [True, False]}, "x", 7],
        [{"n": None}],  # null: written by json
        [{1: "int key"}, {"big": 2**70}],  # orjson refuses these; json writes them
        [{"s": "a\u2028b"}, -0.0, 1e300],
    ],
)
def test_payloads_encode_to_the_same_values_as_the_json_module(payloads: list[Any]) -> None:
    text = encode_array(payloads, "job")
    assert json.loads(text) == json.loads(json.dumps(payloads))
    for payload in payloads:
        assert json.loads(to_json(payload, "payload")) == json.loads(json.dumps(payload))


def test_uuid_and_enum_payloads_are_their_text_and_value_and_dates_still_refused() -> None:
    class Color(enum.Enum):
        RED = "red"

    key = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert json.loads(to_json({"id": key, "c": Color.RED}, "payload")) == {
        "id": str(key),
        "c": "red",
    }
    with pytest.raises(EventPayloadError, match="not JSON-serialisable"):
        to_json({"at": datetime.date(2024, 1, 1)}, "payload")


def test_both_faces_share_one_signature_and_check_the_connection_kind(dsn: str) -> None:
    for method in ("publish", "publish_many", "schedule", "run", "start"):
        blocking = inspect.signature(getattr(pgtide.Events, method))
        awaited = inspect.signature(getattr(pgtide.aio.Events, method))
        assert list(blocking.parameters) == list(awaited.parameters)
        assert inspect.iscoroutinefunction(getattr(pgtide.aio.Events, method))
        assert not inspect.iscoroutinefunction(getattr(pgtide.Events, method))
    assert "AsyncConnection" in str(inspect.signature(pgtide.aio.Events.publish))
    aio = pgtide.aio.Events(dsn=dsn)
    with (
        psycopg.connect(dsn) as blocking_conn,
        pytest.raises(ConfigError, match=r"conn must be a psycopg\.AsyncConnection"),
    ):
        asyncio.run(aio.publish("job", conn=blocking_conn))
    asyncio.run(aio.close())


def test_a_worker_claims_the_next_batch_while_a_whole_batch_still_waits(dsn: str) -> None:
    # a deep queue: the next batch is claimed before the handlers run dry (they never wait
    # for a claim's round trip), and no more than concurrency + 2 batches are held
    concurrency, batch = 2, 5
    events = pgtide.Events(dsn=dsn, batch_size=batch, poll_interval=0.05)
    release = threading.Event()
    events.register("job", lambda event: release.wait(30))
    running = "SELECT count(*) FROM pgtide.events WHERE state = 'running'"
    try:
        events.publish_many("job", list(range(30)))
        events.start(concurrency=concurrency)
        wait_for(
            lambda: count(dsn, running) >= concurrency + batch,
            what="a batch claimed beyond the running handlers",
        )
        assert count(dsn, running) <= concurrency + 2 * batch
        release.set()
        wait_for(lambda: events.status()["done"] == 30, what="30 events done")
    finally:
        release.set()
        events.close()


def test_a_stop_in_a_deep_backlog_gives_back_every_claimed_event(dsn: str) -> None:
    # a stop in the middle of a deep backlog (claims back to back, a batch waiting to start)
    # gives back every event claimed and not started: each event ran at most once, each run
    # is recorded done, the rest are pending with no attempt counted, none is left held
    events = pgtide.Events(dsn=dsn, batch_size=20, poll_interval=0.05)
    ran: Counter[int] = Counter()
    lock = threading.Lock()
    enough = threading.Event()

    def handler(event: pgtide.Event) -> None:
        with lock:
            ran[event.id] += 1
            if len(ran) >= 300:
                enough.set()

    events.register("job", handler)
    try:
        ids = events.publish_many("job", list(range(5000)))
        events.start(concurrency=4)
        assert enough.wait(60)
        events.stop()
        with psycopg.connect(dsn) as conn:
            rows = conn.execute(
                "SELECT id, state, attempts, lease_owner FROM pgtide.events ORDER BY id"
            ).fetchall()
    finally:
        events.close()
    assert [r[0] for r in rows] == ids
    assert all(n == 1 for n in ran.values())
    assert {r[0] for r in rows if r[1] == "done"} == set(ran)
    assert all(r[1] == "pending" and r[2] == 0 for r in rows if r[0] not in ran)
    assert all(r[3] is None for r in rows)
    assert len(ran) < len(ids)  # stopped in the middle
