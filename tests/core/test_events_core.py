"""The events core without a database: its statements, its scheduling, its arguments."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from psycopg import sql

import pgtide
from pgtide._compat import positional_dsn
from pgtide.events import _sql
from pgtide.events._core import Core
from pgtide.events._model import Event, HandlerSpec
from pgtide.events._signatures import publish_args
from pgtide.events._source import Source, parse_table
from pgtide.events._worker import (
    Batch,
    Db,
    Pipe,
    Sleep,
    Target,
    Unlisten,
    WorkerCore,
    WorkerOptions,
    _Hold,
)
from pgtide.session import Query


def _core(**kwargs: Any) -> Core:
    options: dict[str, Any] = dict(
        table=None,
        id_column=None,
        name_column=None,
        payload_column=None,
        channel=None,
        poll_interval=None,
        lease=30.0,
        batch_size=100,
        retry_delay=1.0,
        max_retry_delay=300.0,
        listen=True,
    )
    options.update(kwargs)
    return Core(**options)


def _queries(io: Any, replies: list[Any]) -> list[Query]:
    """Drive an Io with canned rows; the queries it yielded."""
    seen = [next(io)]
    try:
        for rows in replies:
            seen.append(io.send(rows))
    except StopIteration:
        pass
    return seen


def test_publishing_to_your_table_is_one_statement_with_its_notify() -> None:
    core = _core(table="app.jobs", payload_column="data", channel="wake")
    assert core.source is not None
    core.checked = Source(parse_table("app.jobs"), payload_column="data", channel="wake")
    io = core.publish(publish_args("job", {"n": 1}))()
    (only,) = _queries(io, [])
    assert isinstance(only.statement, sql.Composed)
    text = only.statement.as_string(None)
    assert text.startswith("WITH inserted AS (INSERT INTO") and "pg_notify(%(channel)s, id)" in text
    assert only.params == {"name": "job", "payload": '{"n":1}', "channel": "wake"}
    with pytest.raises(StopIteration) as done:
        io.send([("7", None)])
    assert done.value.value == 7


def test_arguments_are_checked_before_any_connection() -> None:
    core = _core()
    with pytest.raises(pgtide.EventPayloadError):
        core.publish(publish_args("x", {"bad": object()}))
    with pytest.raises(pgtide.ConfigError, match="timezone-aware"):
        core.publish(publish_args("x", None, run_at=datetime(2030, 1, 1)))
    with pytest.raises(pgtide.ConfigError, match="unknown event state"):
        core.recent("sleeping", None, 5)
    with pytest.raises(pgtide.ConfigError, match="own events table"):
        _core(table="mine").purge(timedelta(0), False)
    with pytest.raises(pgtide.InvalidName, match=r"bad events table name 'a\.b\.c'"):
        _core(table="a.b.c")


def test_positional_dsn_is_deprecated() -> None:
    assert positional_dsn(None, "x", "Events") == "x"
    with pytest.warns(DeprecationWarning):
        assert positional_dsn("y", None, "Events") == "y"


def _worker(concurrency: int, limits: dict[str, int | None]) -> WorkerCore:
    handlers = {n: HandlerSpec(n, lambda e: None, concurrency=c) for n, c in limits.items()}
    options = WorkerOptions(
        concurrency=concurrency,
        batch_size=10,
        poll_interval=1.0,
        lease=30.0,
        stop_timeout=30.0,
        listen=True,
        retry_delay=1.0,
        max_retry_delay=300.0,
        keep_done=None,
    )
    return WorkerCore(Target("", None, ["pgtide_events"], None), handlers, options, _no_loop)


def _waiting(core: WorkerCore) -> WorkerCore:
    """The worker as once it took the wake gate and no transaction is to be watched."""
    assert core._gate is not None
    core._gate.pid = 4242
    core._gate_watch.open = frozenset()
    return core


def _no_loop() -> asyncio.AbstractEventLoop:
    raise AssertionError("no async handler here")


def _claim(core: WorkerCore, id_: int, name: str, valid_for: float = 60.0) -> None:
    """As a claim would: the event ready to start, its lease valid for ``valid_for`` s."""
    core._ready.append(Event(id_, name, None, 1, datetime.now(UTC)))
    core._held[id_] = _Hold(token=1, attempts=0, valid_until=time.monotonic() + valid_for)
    core._inflight += 1


def test_scheduling_keeps_id_order_within_both_limits() -> None:
    core = _worker(3, {"a": 1, "b": None})
    for i, n in enumerate("aabab"):
        _claim(core, i, n)
    taken, _ = core._take(10)
    assert [(e.id, e.name) for e in taken] == [(0, "a"), (2, "b"), (4, "b")]
    assert core._take(10) == ([], [])  # three running: the worker's limit
    core._running -= 1
    core._by_name["a"] -= 1  # the first "a" finished
    assert [e.id for e in core._take(10)[0]] == [1]
    assert [e.id for e in core._ready] == [3]  # a blocked event keeps its place


def test_a_claimed_event_whose_lease_may_have_lapsed_is_never_started() -> None:
    """Fencing at start: the worker starts a handler only while the lease is surely valid
    (counted from when the claim was sent); the attempt is counted when it starts."""
    core = _worker(4, {"a": None})
    _claim(core, 1, "a")
    _claim(core, 2, "a", valid_for=-0.001)  # lapsed: the database was out of reach
    _claim(core, 3, "a")
    taken, lapsed = core._take(10)
    assert [(e.id, e.attempt) for e in taken] == [(1, 1), (3, 1)] and lapsed == [2]
    assert 2 not in core._held and core._inflight == 2 and not core._ready
    assert core._starts == [(1, 1), (3, 1)]  # (id, token): counted by the next round
    core._finish(taken[0], time.perf_counter(), None, None)  # 1 ended: counted with it
    batch = core.round()
    started, complete = batch.queries[:2]
    assert started.params == {"ids": [3], "tokens": [1], "counts": [1]}
    assert isinstance(complete.params, dict)
    assert (complete.params["ids"], complete.params["starts"]) == ("1", "1")
    assert complete.params["results"] is None  # no handler returned anything
    assert _reply(batch, [[], [("", None)]], [[]]) is False
    assert core._held.keys() == {3}
    assert not core._threads  # nothing was ready: no pool thread started


def _reply(batch: Batch, outcomes: list[Any], claims: list[Any], xip: str = "") -> Any:
    """Finish a round with canned rows: the outcomes', the wake gate's (``xip`` the
    snapshot's open transactions), then the claims'."""
    gate = batch.queries[len(outcomes) : len(batch.queries) - len(claims)]
    replies = {
        "pg_current_snapshot()::text": [(f"10:20:{xip}",)],
        "pg_advisory_unlock_shared(%s,": [(True,)],  # left
    }
    return batch.done([*outcomes, *(replies[str(q.statement).split()[1]] for q in gate), *claims])


def _row(id_: int, attempts: int) -> tuple[Any, ...]:
    """A claim's row: id, name, payload, created_at, key, source_id, token, attempts,
    priority, trace."""
    return (id_, "a", "null", datetime.now(UTC), None, None, 1, attempts, 0, None)


def test_plan_claims_sleeps_and_shuts_down_in_order() -> None:
    core = _worker(2, {"a": None})
    plan = core.plan()
    assert isinstance(next(plan), Db)  # chores
    step = plan.send(None)
    assert isinstance(step, Pipe)  # claims (and outcomes), in one round trip
    batch = step.make()
    assert isinstance(batch, Batch) and len(batch.queries) == 1
    step = plan.send(_reply(batch, [], [[]]))  # nothing claimed
    assert isinstance(step, Sleep) and step.seconds <= core.options.lease / 3
    core.request_stop()
    assert isinstance(plan.send(False), Unlisten)
    steps = [plan.send(None)]
    while True:
        try:
            steps.append(plan.send(None))
        except StopIteration:
            break
    assert [type(s) for s in steps] == [Db, Pipe, Db]  # settle, record, forget: nothing ran


def test_a_claim_is_sent_only_when_it_may_find_something() -> None:
    """A round woken only to record an outcome claims nothing (an empty claim would delay
    the claim of the next publish behind it); a NOTIFY, a poll, a full claim and the outcome
    of a keyed event make a claim due again."""
    core = _waiting(_worker(2, {"a": None}))
    assert len(core._claims()) == 1  # at start
    assert core._claims() == []  # nothing new since
    assert core.on_notify("pgtide_events", "") is True
    assert len(core._claims()) == 1  # a publish
    assert core._claims() == []
    core._next_schedule = float("inf")  # no schedule, no heartbeat due: the poll alone
    core._next_poll = 0.0
    assert list(core.chores()) == []
    assert len(core._claims()) == 1  # a poll
    assert core.on_notify("pgtide_events_cancel", "7") is False
    assert core._claims() == []  # a cancel is no reason to claim
    assert core.on_notify("pgtide_events", "") is True
    batch = core.round()  # a full claim: more may be waiting
    rows = [_row(i, 0) for i in range(10)]
    assert _reply(batch, [], [rows]) is True
    assert len(core._claims()) == 1
    core._ready.clear()
    core._inflight = 0
    event = Event(50, "a", None, 1, datetime.now(UTC), key="k")
    core._held[50] = _Hold(token=1, attempts=0, valid_until=time.monotonic() + 60)
    core._done.append((event, None))
    core._next_flush = 0.0
    batch = core.round(claim=False)
    batch.done([[("", None)]])  # the keyed event's outcome is recorded
    assert len(core._claims()) == 1  # the next event of its key may run now
    assert core._claims() == []
    core.on_notify("pgtide_events", "")
    batch = core.round()
    assert batch.queries and core._claims() == []
    batch.undo()  # the round failed: its claim was not made
    assert len(core._claims()) == 1


def test_limited_names_are_claimed_alone_and_yield_only_while_their_limit_binds() -> None:
    """A worker whose handlers are all limited sends one claim a round (the claim of the
    other names would find nothing); after an outcome of a limited name it leaves the freed
    slot to the other workers (a pause before it claims the name again) only when that
    name's last claim came back short, never while its limit is not reached."""
    core = _worker(16, {"a": 10})  # room for the whole limit (a claim takes what can start)
    core._launch = lambda: None  # type: ignore[method-assign]  # no handler runs: claimed events stay ready
    ids = iter(range(100, 200))
    claims = core._claims()
    assert [(q.statement, want, name) for q, want, name in claims] == [
        (_sql.CLAIM_LIMITED, 10, "a")
    ]

    def outcome_then_claim(rows: int) -> bool:
        """A round that claims ``rows`` events of "a", one of which then ends."""
        batch = core.round()
        _reply(batch, [], [[_row(next(ids), 0) for _ in range(rows)]])
        event = core._ready.popleft()
        core._inflight -= 1
        core._done.append((event, None))
        core._next_flush = 0.0
        batch = core.round(claim=False)
        assert _sql.WAKE in [q.statement for q in batch.queries]  # the others are told
        batch.done([[("", None)], []])
        return time.monotonic() < core._yield_until

    assert outcome_then_claim(10) is False  # a full claim: the limit is not reached
    assert len(core._claims()) == 1  # claimed again at once
    assert outcome_then_claim(3) is True  # a short claim: it may bind
    assert core._claims() == []  # the others try first
    mixed = _worker(4, {"a": 10, "b": None})
    assert [q.statement for q, _, _ in mixed._claims()] == [_sql.CLAIM, _sql.CLAIM_LIMITED]
    assert [q.params["names"] for q, _, _ in mixed._claims() if isinstance(q.params, dict)] == [
        ["b"]
    ]  # not due: the limited name's claim alone, and "a" is never in the other claim


def _kinds(batch: Batch) -> list[str]:
    """The first words of a batch's statements that name them (snapshot, leave, claim)."""
    names = {"pg_current_snapshot()::text": "snapshot", "id,": "claim"}
    return [names.get(str(q.statement).split()[1], "leave") for q in batch.queries]


def _take(core: WorkerCore, taken: bool = True, xip: str = "") -> None:
    """Run the chores with the gate to take: the take, then (taken) the snapshot."""
    chores = core.chores()
    take = next(chores)
    assert "pg_try_advisory_lock_shared" in str(take.statement)
    try:
        snapshot = chores.send([(taken, 4242)])
        assert "pg_current_snapshot" in str(snapshot.statement)
        chores.send([(f"10:20:{xip}",)])
    except StopIteration:
        return
    raise AssertionError("the chores went on after the gate")


def test_a_worker_holds_the_wake_gate_only_while_it_may_wait() -> None:
    """The wake gate (migration 027) is taken as a chore of its own before the claim (not in
    the claim's transaction, whose now() would be older than a publish it must see), with a
    snapshot; while the transactions open in that snapshot run, the worker claims again on
    a short backoff whatever NOTIFYs say, each claim with a snapshot. A full claim leaves
    it (publishers skip the NOTIFY while claims follow each other); a claim that then comes
    back short has it taken again at once, and a claim after, before the worker waits."""
    core = _worker(2, {"a": None})
    core._next_schedule = float("inf")
    assert core._gate is not None and not core._gate.registered
    _take(core, xip="15")  # transaction 15 may not notify
    assert core._gate.registered and core._claim_due
    assert core._recheck_at <= time.monotonic() + 0.002  # the first backoff: 1 ms
    assert list(core.chores()) == []  # held: nothing to take
    batch = core.claims()
    assert _kinds(batch) == ["snapshot", "claim"]
    assert _reply(batch, [], [[]], xip="15") is False  # 15 still runs
    core._recheck_at = 0.0
    assert list(core.chores()) == []
    batch = core.claims()  # claimed again: transaction 15 may have committed unannounced
    assert _kinds(batch) == ["snapshot", "claim"]
    assert _reply(batch, [], [[]], xip="16") is False  # 15 ended: this claim saw its rows
    assert core._recheck_at == float("inf") and core._claims() == []  # the NOTIFY will do
    assert core.on_notify("pgtide_events", "") is True
    batch = core.claims()
    assert _kinds(batch) == ["claim"]
    assert _reply(batch, [], [[_row(i, 0) for i in range(10)]]) is True  # full
    batch = core.claims()
    assert _kinds(batch) == ["leave", "claim"]
    assert not core._gate.registered
    core._ready.clear()
    core._inflight = 0
    assert _reply(batch, [], [[_row(i, 0) for i in range(10, 13)]]) is False  # short
    assert core._claim_due and core.next_wait() == 0.0  # take it, then claim: at once
    _take(core, xip="21")
    assert core._gate.registered and _kinds(core.claims()) == ["snapshot", "claim"]
    idle = _worker(2, {"a": None})
    idle._next_schedule = float("inf")
    _take(idle)  # no transaction was open when it was taken
    assert _kinds(idle.claims()) == ["claim"]  # claimed after that snapshot: no watch


def test_a_worker_that_cannot_take_the_wake_gate_backs_off() -> None:
    """A gate held exclusively (a publisher's instant, or a lock left held: then every
    publisher notifies) is tried again on a doubling backoff, not in a tight loop."""
    core = _worker(2, {"a": None})
    core._next_schedule = float("inf")
    _take(core, taken=False)
    assert core._gate is not None and not core._gate.registered
    assert 0 < core._take_at - time.monotonic() <= 0.001
    assert list(core.chores()) == []  # not again before then
    core._take_at = 0.0
    _take(core, taken=False)
    assert 0.001 < core._take_at - time.monotonic() <= 0.002  # doubled


def test_every_retry_wakes_the_worker_at_its_own_time() -> None:
    """Two failed events retried in 1 ms and in 5 s: once the first is due, the worker
    sleeps until the second, not until the poll (it claims each at its time; a claim that
    found the first early must not make it forget the second)."""
    core = _waiting(_worker(2, {"a": None}))
    core._next_schedule = core._next_poll = core._next_beat = float("inf")
    core._next_catch_up = float("inf")
    for id_, delay in ((1, 0.0), (2, 5.0)):
        _claim(core, id_, "a")
        event = core._ready.popleft()
        core._failed.append((event, "boom", delay, False))
    core._inflight = 0  # both handlers ended
    core._next_flush = 0.0
    core.round(claim=False).done([[]])  # the failures are recorded
    assert core.next_wait() <= 0.001
    first = time.monotonic() + 0.001
    while time.monotonic() < first:  # (the clock, not a sleep: the first retry is due)
        pass
    core._claim_due = False
    assert list(core.chores()) == [] and core._claim_due
    assert 4.9 < core.next_wait() <= 5.0
