"""The feed's core and its faces' shared part, without a database: the plan, settings, waits."""

from __future__ import annotations

import functools
import operator
from collections.abc import Generator, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

import pgtide
import pgtide.aio
from pgtide.feed import retention
from pgtide.feed._core import Change, Core, Emit, Run, Wait, plan
from pgtide.feed._face import BatchInterrupted, FeedBase
from pgtide.feed.backfill import BACKFILL_CHECK
from pgtide.feed.position import Position, Snapshot
from pgtide.session import Io


def _done(value: Any) -> Io[Any]:
    """An Io that runs no query."""
    return value
    yield  # pragma: no cover


def _change(i: int) -> Change:
    return Change(i, "public.items", "insert", {"id": i}, None, 100 + i, datetime.now(UTC))


class FakeCore(Core):
    """A core whose reads come from a list: each read returns the next (changes, position)."""

    def __init__(self, reads: list[tuple[list[Change], Position]]) -> None:
        super().__init__("fake", ["public.items"])
        self.reads: Iterator[tuple[list[Change], Position]] = iter(reads)
        self.registered: list[Position] = []

    def resolve(self, where: Any, *, saved_default: str = "beginning") -> Io[Position]:
        return (yield from _done(Position.beginning()))

    def register(self, pos: Position) -> Io[None]:
        self.registered.append(pos)
        return (yield from _done(None))

    def read(
        self, pos: Position, stop: Position | None, max_changes: int
    ) -> Io[tuple[list[Change], Position]]:
        return (yield from _done(next(self.reads)))

    def check_backfills(self) -> Io[bool]:
        self.backfill_checks = getattr(self, "backfill_checks", 0) + 1
        return (yield from _done(False))


def _drive(steps: Generator[Any, Any, None], now: list[float], wakes: int = 10) -> list[Any]:
    """Carry out a plan: Run steps synchronously, Wait as 'not woken' (time passes)."""
    seen: list[Any] = []
    reply: Any = None
    while True:
        try:
            step = steps.send(reply)
        except StopIteration:
            return seen
        seen.append(step)
        if isinstance(step, Run):
            io = step.make()
            try:
                next(io)
            except StopIteration as done:
                reply = done.value
            else:  # pragma: no cover
                raise AssertionError("the fake core runs no query")
        else:
            reply = False
            now[0] += step.seconds if isinstance(step, Wait) and step.seconds else 0.0
            wakes -= 1
            assert wakes > 0, "the plan never ended"


def _pos(xmax: int) -> Position:
    return Position(Snapshot(xmax, xmax))


def test_plan_registers_emits_waits_and_ends_on_timeout() -> None:
    core = FakeCore([([_change(1), _change(2)], _pos(5)), ([], _pos(6)), ([], _pos(7))])
    now = [0.0]
    steps = _drive(plan(core, "saved", None, 10, timeout=1.0, clock=lambda: now[0]), now)
    emits = [s for s in steps if isinstance(s, Emit)]
    assert [len(e.changes) for e in emits] == [2]
    assert emits[0].start == Position.beginning() and emits[0].end == _pos(5)
    assert core.registered == [Position.beginning()]
    waits = [s.seconds for s in steps if isinstance(s, Wait)]
    assert waits == [1.0]  # one idle second, then the timeout ends it
    assert core.cursor.position == _pos(7)


def test_a_running_plan_looks_for_new_backfills_every_few_seconds_not_at_every_read() -> None:
    """Once BACKFILL_CHECK seconds passed since the last look (here: a wait that long),
    the next loop looks again, before its read; reads closer together do not."""
    for timeout, looks in ((BACKFILL_CHECK / 2, 0), (3 * BACKFILL_CHECK, 1)):
        core = FakeCore([([_change(1)], _pos(6)), ([], _pos(7)), ([], _pos(8))])
        now = [0.0]
        clock = functools.partial(operator.getitem, now, 0)
        steps = _drive(plan(core, "saved", None, 10, timeout, clock=clock), now)
        assert getattr(core, "backfill_checks", 0) == looks
        if looks:
            wait = next(i for i, s in enumerate(steps) if isinstance(s, Wait))
            look = steps[wait + 1].make
            assert look.__func__ is FakeCore.check_backfills  # type: ignore[attr-defined]


def test_a_stopped_plan_ends_before_its_next_read() -> None:
    core = FakeCore([([_change(1)], _pos(5))])
    stopped = False

    def stop_now() -> bool:
        return stopped

    steps = plan(core, "saved", None, 10, None, stop_now)
    seen = []
    reply: Any = None
    for _ in range(10):
        try:
            step = steps.send(reply)
        except StopIteration:
            break
        seen.append(step)
        if isinstance(step, Emit):
            stopped = True  # Feed.stop() while the batch is in hand
        reply = _run_fake(step)
    assert [type(s) for s in seen] == [Run, Run, Run, Emit]


def _run_fake(step: Any) -> Any:
    if not isinstance(step, Run):
        return None
    try:
        next(step.make())
    except StopIteration as done:
        return done.value
    raise AssertionError("unexpected query")  # pragma: no cover


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"max_changes": 0}, "max_changes"), ({"timeout": -1.0}, "timeout")],
)
def test_plan_refuses_bad_limits(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"max_changes": 10, "timeout": None, **kwargs}
    with pytest.raises(pgtide.FeedError, match=match):
        next(plan(FakeCore([]), "saved", None, args["max_changes"], args["timeout"]))


# -- the faces' settings, checked without a database ------------------------------------------
@pytest.mark.parametrize("face", [pgtide.Feed, pgtide.aio.Feed])
def test_constructors_neither_resolve_nor_connect(
    face: type[FeedBase], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("resolved or connected in a constructor")

    for target in ("pgtide.session.resolve", "pgtide.session.connect", "pgtide.connect.resolve"):
        monkeypatch.setattr(target, refuse)
    feed = face("lazy", ["orders", "sales.Orders"], dsn=None)
    assert feed.consumer == "lazy" and "lazy" in repr(feed)
    assert feed._core.tables == ["orders", "sales.Orders"]  # qualified at the first read


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"consumer": " "}, pgtide.FeedError, "consumer name"),
        ({"tables": []}, pgtide.FeedError, "follows nothing"),
        ({"tables": ["a.b.c"]}, pgtide.InvalidName, r"schema\.table"),
        ({"wakeup": "push"}, pgtide.FeedError, "wakeup"),
        ({"poll_interval": 0}, pgtide.FeedError, "poll_interval"),
        ({"auto_prune": -1}, pgtide.FeedError, "auto_prune"),
    ],
)
def test_settings_are_checked_at_once(kwargs: dict[str, Any], error: type, match: str) -> None:
    consumer = kwargs.pop("consumer", "c")
    for face in (pgtide.Feed, pgtide.aio.Feed):
        with pytest.raises(error, match=match):
            face(consumer, **kwargs)


class _Waker:
    def __init__(self, listening: bool) -> None:
        self.listening = listening


@pytest.mark.parametrize(
    ("wakeup", "interval", "listening", "seconds", "pace"),
    [
        ("notify", 60.0, True, None, 60.0),  # NOTIFY wakes it: poll rarely
        ("notify", 60.0, False, None, 0.1),  # LISTEN failed: poll at the polling pace
        ("poll", 2.0, False, None, 2.0),  # poll mode keeps its own interval
        ("poll", 2.0, False, 0.5, 0.5),  # a timeout closer than the interval
    ],
)
def test_wait_pace(
    wakeup: str, interval: float, listening: bool, seconds: float | None, pace: float
) -> None:
    feed = pgtide.Feed("pace", wakeup=wakeup, poll_interval=interval)
    assert feed._pace(seconds, _Waker(listening)) == pace  # type: ignore[arg-type]


def test_wake_up_filter_follows_the_tables() -> None:
    assert Core("c", ["public.items"]).wants("pgtide_changes", "public.items")
    assert not Core("c", ["public.items"]).wants("pgtide_changes", "public.other")
    assert Core("c", None).wants("pgtide_changes", "anything")


def test_stop_before_a_run_is_kept_and_close_resets_it() -> None:
    feed = pgtide.Feed("stop")
    feed.stop()
    assert feed._stopping.is_set()
    feed.close()  # nothing runs: releases now, and a later run is not stopped
    assert not feed._stopping.is_set()


def test_an_interrupted_batch_is_a_feed_error() -> None:
    lost = BatchInterrupted("indexer", Position.beginning())
    assert isinstance(lost, pgtide.FeedError)
    assert "comes again" in str(lost) and lost.start == Position.beginning()


class WaitingCore(FakeCore):
    """A fake core that records the waiting feed's registrations (as the gate would)."""

    def __init__(self, reads: list[tuple[list[Change], Position]], free: list[bool]) -> None:
        super().__init__(reads)
        self.free = iter(free)  # whether the gate can be taken at each try
        self.calls: list[str] = []

    def start_waiting(self) -> Io[bool]:
        self.calls.append("start")
        held = next(self.free)
        self.sleeper.pid = 1 if held else None
        return (yield from _done(held))

    def stop_waiting(self) -> Io[None]:
        self.calls.append("stop")
        self.sleeper.pid = None
        return (yield from _done(None))


def _open(xmax: int, *running: int) -> Position:
    return Position(Snapshot(min(running, default=xmax), xmax, running))


def test_a_waiting_plan_registers_reads_again_and_watches_transactions_open_at_that() -> None:
    """Listening: register, then read with a new snapshot; while a transaction open in that
    snapshot runs (it may have decided not to notify), read again on a doubling backoff up to
    the poll interval; then trust the NOTIFY (a wait bounded by the timeout alone). A batch
    read after a wait keeps the registration; one read right after another batch (busy)
    unregisters before it is emitted; the end unregisters too."""
    core = WaitingCore(
        [
            ([], _open(10)),  # idle: register
            ([], _open(12, 10, 11)),  # first read after registering: 10 and 11 are open
            ([], _open(13, 11, 12)),  # 10 ended (nothing of ours); 12 began after: notifies
            ([], _open(13, 12)),  # 11 ended: the NOTIFY alone now
            ([_change(1)], _open(14)),  # woken: stays registered
            ([_change(2)], _open(15)),  # changes again without a wait: busy, unregister
            ([], _open(16)),  # idle again: register again
            ([], _open(16)),
            ([], _open(16)),  # the timeout ends it
        ],
        free=[True, True],
    )
    now = [0.0]
    steps = _drive(
        plan(
            core, "saved", None, 10, 100.0, clock=lambda: now[0], listening=lambda: True, poll=0.5
        ),
        now,
    )
    waits = [s.seconds for s in steps if isinstance(s, Wait)]
    assert waits[:3] == [0.001, 0.002, 100.0 - 0.003]
    assert core.calls == ["start", "stop", "start", "stop"]
    emits = [i for i, s in enumerate(steps) if isinstance(s, Emit)]
    assert len(emits) == 2
    assert core.calls[:2] == ["start", "stop"]  # the stop came with the second batch only
    between = steps[emits[0] + 1 : emits[1]]
    assert len(between) == 2  # its read, then the unregistering run


def test_a_busy_gate_is_tried_again_after_a_short_wait_and_a_deaf_feed_registers_not() -> None:
    core = WaitingCore([([], _open(10))] * 4, free=[False, True])
    now = [0.0]
    steps = _drive(
        plan(core, "saved", None, 10, 0.5, clock=lambda: now[0], listening=lambda: True), now
    )
    assert next(s.seconds for s in steps if isinstance(s, Wait)) == 0.001
    assert core.calls == ["start", "start", "stop"]
    deaf = WaitingCore([([], _open(10)), ([], _open(10))], free=[])
    _drive(plan(deaf, "saved", None, 10, 0.5, clock=lambda: now[0]), now)
    assert deaf.calls == []


def test_prune_rests_after_each_partition_it_empties_as_long_as_emptying_took(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Emptying a partition frees its pages at once (kernel work that slowed writers by a
    fifth): prune paces itself, resting after each partition it emptied, not after one it
    left, and not after the writers' own, which comes last."""
    clock = iter(float(t) for t in range(100))
    monkeypatch.setattr(retention, "monotonic", lambda: next(clock) * 0.1)
    emptied = {"changes_14": 7, "changes_9": 3}  # the current window is 15
    statements: list[tuple[str, Any]] = []
    io = retention.prune_io()
    step = next(io)
    try:
        while True:
            statements.append((str(step.statement), step.params))
            if step.statement == retention._WINDOW:
                rows: list[tuple[Any, ...]] = [(15,)]
            elif step.statement == retention._TRUNCATE_ONE:
                rows = [(emptied.get(step.params["name"], 0),)]  # type: ignore[index,call-overload]
            else:
                rows = [(2,)] if step.statement == retention._PRUNE else [("",)]
            step = io.send(rows)
    except StopIteration as done:
        assert done.value == 12
    names = [p["name"] if s == retention._TRUNCATE_ONE else s for s, p in statements[1:-1]]
    pauses = [p for s, p in statements if s == retention._PAUSE]
    assert names[:3] == ["changes_14", retention._PAUSE, "changes_13"]
    assert names[names.index("changes_9") + 1] == retention._PAUSE
    assert names[-2:] == ["changes_0", "changes_15"]  # the next window's, then the writers'
    assert len(pauses) == 2
    rest = (1 - retention.PRUNE_DUTY) / retention.PRUNE_DUTY
    assert pauses[0][0] == pytest.approx(0.1 * rest)  # emptying took one tick of the clock
