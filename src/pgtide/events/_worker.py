"""The worker: claims events in batches, runs their handlers, records outcomes.

Written once. :class:`WorkerCore` holds a worker's state and every decision: its statements
are :data:`~pgtide.session.Io` and :class:`Batch` es (claims with ``FOR UPDATE SKIP LOCKED``
in priority and id order; outcomes and starts a batch at a time, in one round trip and one
transaction; heartbeats that extend the leases it holds; the mirror of a user's table), and
its dispatcher is one :data:`Plan`, a generator of :class:`Db`, :class:`Pipe`,
:class:`Record`, :class:`Sleep` and :class:`Unlisten` steps. :class:`Worker` drives the plan
from a thread on a :class:`~pgtide.session.Session`, with a :class:`_Writer` that records
outcomes on a second session meanwhile; :class:`AsyncWorker` from a task on an
:class:`~pgtide.session.AsyncSession` (outcomes in turn). Either session is the one
reconnect policy; a ``channel.Waker`` shortens the waits (direct: the dispatcher reads the
NOTIFYs itself, so a publish wakes the thread or task that claims with no hand-off between
threads; those that came while it worked are read before each claim, but while full
claims follow each other only every :data:`READ_WHILE_FULL`). A round claims only when a
claim may find something new (a NOTIFY, a poll, a full claim before: see
:meth:`WorkerCore._claims`); a round woken to record outcomes does not.

Handlers: at most ``concurrency`` at once in all. Plain functions run on a pool of threads
(started only when a plain handler first runs), each taking the next claimed event itself;
async ones run as tasks on one event loop (the caller's under ``pgtide.aio``, a loop thread
under ``pgtide``), holding no thread. With plain handlers, the blocking worker's plan moves
between the pool's threads (leader and followers, :meth:`WorkerCore.lead`): the thread
that claimed an event runs it, with no hand-off between the claim and the handler, while an
idle pool thread drives the plan (one thread more than ``concurrency``).

A worker that dies stops heartbeating, its leases expire, and other workers claim its events
again. Each claim carries a fencing token: renewals, outcomes and releases are fenced by
owner and token, so a worker that lost a lease cannot overwrite the event's newer state; a
claimed event starts only while its lease is surely valid on the worker's own clock, and
its attempt is counted when it starts (written with its outcome when the handler ended by
the next round, else on its own), not at the claim.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import os
import socket
import threading
import time
import traceback
import uuid
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Generator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, timedelta
from functools import partial
from operator import itemgetter
from typing import Any, Generic, TypeAlias, TypeVar

import psycopg
from psycopg import sql

from .. import _signals, schema
from ..channel import Waker
from ..channel._gate import EVENTS_GATE, SNAPSHOT, Registration, Watch, check_io, in_progress
from ..connect import Resolved, pooled
from ..session import (
    OUTAGES,
    AsyncSession,
    Io,
    Query,
    Rows,
    Session,
    Stopped,
    afetched,
    atomic,
    fetched,
    query,
)
from . import _sql, _tracing
from ._model import Event, HandlerSpec, decode_payloads, result_json, retry_delay, to_json
from ._stats import WorkerStats

log = logging.getLogger("pgtide.events")

APPLICATION_NAME = "pgtide-events-listen"
"""The wake-up connection's application_name (``pgtide status`` counts ``pgtide%listen%``)."""

CATCH_UP = 30.0
"""With NOTIFY, a user's table is scanned whole this often (and at start and after a gap);
in between, each notified id is mirrored alone. Polling only, it is scanned every poll."""

MAX_NOTIFIED = 1000
"""Notified ids kept for one round; past that, one whole scan is cheaper."""


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker runs. Leases last ``lease`` seconds and are renewed every third of it.

    No defaults here: they are those of the public signatures (``Events(...)`` and
    ``run``/``start``), written once there."""

    concurrency: int
    batch_size: int
    poll_interval: float
    lease: float
    stop_timeout: float
    listen: bool
    retry_delay: float
    max_retry_delay: float
    keep_done: float | None


@dataclass(frozen=True)
class Target:
    """What a worker serves: a source key, and for a user's table the SQL that mirrors it."""

    source: str
    mirror: sql.Composed | None
    channels: Sequence[str]
    source_channel: str | None
    mirror_one: sql.Composed | None = None


@dataclass(frozen=True, slots=True)
class Db:
    """Run this database work on the worker's session (again after an outage)."""

    make: Callable[[], Io[Any]]


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait until woken (a NOTIFY, an outcome to record, a stop) or ``seconds`` pass."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Unlisten:
    """Stop listening for wake-ups (the worker is stopping)."""


@dataclass(frozen=True, slots=True)
class Batch:
    """Statements sent together in one round trip (pipeline mode) and run in one transaction.

    ``done`` gets each statement's rows and makes the step's reply; ``undo`` puts back what
    building the batch took from the worker's state, when the batch failed (its transaction
    then changed nothing).
    """

    queries: list[Query]
    done: Callable[[list[Rows]], Any]
    undo: Callable[[], None]


@dataclass(frozen=True, slots=True)
class Pipe:
    """Build a :class:`Batch` and run it (again, rebuilt, after an outage)."""

    make: Callable[[], Batch]


@dataclass(frozen=True, slots=True)
class Record:
    """Have the worker's writer (a second connection) build and run this :class:`Batch`
    soon, without waiting for it: outcomes are written while the next claim runs."""

    make: Callable[[], Batch]


Step: TypeAlias = Db | Pipe | Record | Sleep | Unlisten
Plan: TypeAlias = Generator[Step, Any, None]
LoopProvider: TypeAlias = Callable[[], asyncio.AbstractEventLoop]


@dataclass(slots=True)
class _Hold:
    """A lease this worker holds: the fencing token of its claim, the attempts counted before
    it, until when (this process's monotonic clock) the lease is surely valid, and whether
    its handler started."""

    token: int
    attempts: int
    valid_until: float
    started: bool = False


SURELY_VALID = 0.9
"""A lease counts as valid here for this share of its length, from the moment the statement
that granted or renewed it was sent (the server's clock starts later; the rest is margin)."""


FLUSH_EVERY = 0.01
"""While handlers run, outcomes are recorded at least this often (else in batches)."""

LIMITED_YIELD = 0.002
"""After recording an outcome of a limited name whose last claim came back short (its limit
binds, or nothing waits), a worker leaves its freed slot to the other workers (woken by
NOTIFY) this long before it claims that name again: the work spreads, and a lone worker
loses little. A name whose claims come back full (its limit is not reached) is claimed again
at once: a limit set but not reached costs no pause."""

TAKEN_KEPT = 4096
"""Ids of events the worker's recent claims returned, kept to recognise the NOTIFYs that
announce them (arriving after the claim that took them: no claim is due for those)."""

PURGE_EVERY = 60.0
"""With ``keep_done``, a worker deletes finished events this often (and when it starts)."""

READ_WHILE_FULL = 0.05
"""While full claims follow each other (a backlog), the blocking worker still reads its
wake-ups this often (a cancel's NOTIFY), though not before every claim (see Worker._drive)."""


class WorkerCore:
    """One worker's state and decisions, shared by both drivers (thread-safe)."""

    def __init__(
        self,
        target: Target,
        handlers: dict[str, HandlerSpec],
        options: WorkerOptions,
        loop: LoopProvider,
        stats: WorkerStats | None = None,
    ) -> None:
        self.target = target
        self.stats = WorkerStats() if stats is None else stats
        self.handlers = _tracing.handlers_traced(dict(handlers))
        self.options = options
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stop_requested = False
        self.wake: Callable[[], None] = _nothing
        self._loop = loop
        self._lock = threading.Lock()
        self._stopping = False
        self._abandoned = False
        self._work = threading.Condition(self._lock)  # pool threads wait here for events
        self._idle = 0  # pool threads waiting for an event
        self._waking = False  # a pool thread was woken and has not looked yet (see _wake_one)
        self._pool_closed = False
        # a blocking worker passes its plan between threads (see lead): the driver's loop,
        # which returns an event to run when it passed the plan on (None: the plan ended)
        self.drive: Callable[[], Event | None] | None = None
        self._passing = False  # the plan waits for an idle pool thread to drive it
        self._plain = any(not s.is_async for s in handlers.values())
        self._ready: deque[Event] = deque()  # claimed, not started (attempt: if it starts)
        self._held: dict[int, _Hold] = {}  # every lease held: claimed until settled
        self._active: set[int] = set()  # handlers running now
        self._running = 0
        self._limits = {n: s.concurrency for n, s in handlers.items() if s.concurrency}
        self._max_attempts = {n: s.max_attempts for n, s in handlers.items()}
        self._limited = sorted(n for n, s in handlers.items() if s.limited)
        self._limited_set = frozenset(self._limited)
        self._unlimited = [n for n in handlers if n not in self._limited_set]
        self._binding: frozenset[str] = frozenset()  # limited names whose last claim was short
        self._yield_until = 0.0  # just freed a limited slot: the others try first till then
        self._events: dict[int, Event] = {}  # running handlers' events (to cancel them)
        self._task_of: dict[int, asyncio.Task[None]] = {}
        self._cancel_asked: set[int] = set()  # claimed, not started, cancel asked
        self._next_schedule = 0.0 if target.source == "" else float("inf")
        self._next_purge = 0.0 if options.keep_done is not None else float("inf")
        self._by_name = dict.fromkeys(self._limits, 0)
        self._inflight = 0
        self._done: list[tuple[Event, str | None]] = []
        self._failed: list[tuple[Event, str, float, bool]] = []
        self._unstarted: list[int] = []
        self._starts: list[tuple[int, int]] = []  # (id, token) started, not counted yet
        self._count_soon = False  # a start to count: the dispatcher is to wake
        self._concurrency = options.concurrency
        # a claim is sent while a whole batch still waits to start: the handlers never
        # wait for the claim's round trip (the queue is deep) nor for its outcomes' write
        self._max_inflight = options.concurrency + 2 * options.batch_size
        self._low_water = options.concurrency + options.batch_size
        self._flush_at = max(1, options.batch_size // 2)
        self._mirror_due = True
        self._notified: list[str] = []
        self._threads: list[threading.Thread] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._recording: set[int] = set()  # outcomes being written by the writer now
        every = options.poll_interval
        self._catch_up_every = max(every, CATCH_UP) if options.listen else every
        now = time.monotonic()
        self._next_beat = now + options.lease / 3
        self._next_poll = now + every
        self._next_catch_up = now + self._catch_up_every
        self._next_flush = now
        self._dues: list[float] = []  # when the retries this worker scheduled are due (a heap)
        self._claim_due = True  # a claim may find something (see _claims)
        self._announced: set[int] = set()  # ids NOTIFY announced that no claim has seen yet
        self._taken: set[int] = set()  # ids our recent claims returned (TAKEN_KEPT at most)
        self._taken_order: deque[list[int]] = deque()  # those ids, a claim's at a time
        # waiting for publishes: the claiming connection holds the events' wake gate (see
        # pgtide.channel._gate) while the worker may sleep; a worker whose claims come back
        # full leaves it (publishers then skip the NOTIFY and its database-wide commit lock)
        gated = target.source == "" and options.listen
        self._gate = Registration(EVENTS_GATE) if gated else None
        self._gate_watch = Watch(cap=every)
        self._full = False  # the last claim came back full
        self._recheck_at = float("inf")  # a publisher may have skipped its NOTIFY: claim then
        self._take_at = 0.0  # the gate may be taken from then on (a backoff after a failed try)

    # -- control and wake-ups --------------------------------------------------------------

    def request_stop(self) -> None:
        """No new claims nor starts; running handlers finish; the rest go back (:meth:`plan`)."""
        self.stop_requested = True
        self.wake()

    def on_notify(self, channel: str, payload: str) -> bool:
        """A NOTIFY: on the user's channel the payload is a new row's id; on pgtide's, an
        insert's newest event id (026_events_wake_id.sql): when a claim of ours returned it,
        that claim saw the whole insert, and no claim is due for it (nor a wake-up)."""
        if channel == _sql.CANCEL_CHANNEL:
            with contextlib.suppress(ValueError):
                self.cancel_asked(int(payload))
            return False
        if channel == _sql.CHANNEL and payload.isdigit() and channel != self.target.source_channel:
            newest = int(payload)
            with self._lock:
                if newest in self._taken:
                    return False
                self._announced.add(newest)
            return True
        if channel == _sql.CHANNEL and payload == "schedule":
            self._next_schedule = min(self._next_schedule, 0.0)
        if channel == self.target.source_channel:
            with self._lock:
                if payload and len(self._notified) < MAX_NOTIFIED:
                    self._notified.append(payload)
                else:
                    self._mirror_due = True
        self._claim_due = True
        return True

    def cancel_asked(self, id_: int) -> None:
        """``cancel(id)`` of an event this worker holds: a running handler is asked to stop
        (``event.cancelled``; an async one's task is cancelled); a claimed one never starts."""
        with self._lock:
            if id_ not in self._held:
                return
            event = self._events.get(id_)
            task = self._task_of.get(id_)
            if event is None:
                self._cancel_asked.add(id_)
        if event is not None:
            event._ask_cancel()
            log.info(
                "events worker %s: event %d is cancelled; its handler is asked to stop",
                self.owner,
                id_,
            )
        if task is not None:
            task.get_loop().call_soon_threadsafe(task.cancel)
        self.wake()

    def on_gap(self) -> None:
        """A NOTIFY may have been missed (a reconnect, or the claiming connection spoke while
        the worker waited: the server is closing it, and its wake gate with it): scan the
        user's table whole, claim, and heartbeat (which finds a lost connection out)."""
        with self._lock:
            self._mirror_due = True
        self._claim_due = True
        self._next_beat = 0.0

    def on_reconnect(self) -> None:
        """The connection was lost: renew (or learn that we lost) our leases first thing."""
        self.on_gap()

    # -- the dispatcher, written once ------------------------------------------------------

    def plan(self) -> Plan:
        """Serve until a stop is requested; then finish running handlers and release."""
        failure: Exception | None = None
        try:
            while not self.stop_requested:
                yield Db(self.chores)
                if self._record_due(time.monotonic()):
                    yield Record(self.records)
                more = yield Pipe(self.claims)
                if not more:
                    yield Sleep(self.next_wait())
        except Stopped:
            pass
        except Exception as exc:  # shut down cleanly, then raise it
            failure = exc
        yield Unlisten()
        yield from self._shutdown()
        if failure is not None:
            raise failure

    def _shutdown(self) -> Plan:
        with self._lock:
            self._stopping = True
            self._unstarted.extend(c.id for c in self._ready)
            self._inflight -= len(self._ready)
            self._ready.clear()
        self._close_pool()
        deadline = time.monotonic() + self.options.stop_timeout
        try:
            while self.busy() and time.monotonic() < deadline:
                yield Db(self.settle)
                yield Pipe(self.round)
                left = deadline - time.monotonic()
                yield Sleep(max(0.0, min(self.options.lease / 3, left)))
            self._abandon()
            yield Db(self.settle)
            yield Pipe(self.round)
            yield Db(self.forget)
        except (Stopped, psycopg.Error, *OUTAGES) as exc:
            log.warning("events worker %s could not record its last outcomes: %s", self.owner, exc)
        log.info("events worker %s stopped", self.owner)

    def next_wait(self) -> float:
        """How long to sleep when idle: briefly while handlers run, else until the next poll
        or the earliest retry this worker scheduled, whichever comes first."""
        now = time.monotonic()
        with self._lock:
            busy = self._inflight > 0
        timeout = 0.01 if busy else max(0.0, self._next_poll - now)
        timeout = min(timeout, max(0.0, self._next_schedule - now))
        with self._lock:
            due = self._dues[0] if self._dues else None
        if due is not None:
            timeout = min(timeout, max(0.0, due - now))
        timeout = min(timeout, max(0.0, self._recheck_at - now))
        if self._gate_wanted() and self._claim_due:  # take the gate, then claim
            timeout = min(timeout, max(0.0, self._take_at - now))
        if self._limited and self._yield_until > now:  # claim the limited names again then
            timeout = min(timeout, self._yield_until - now)
        return min(timeout, self.options.lease / 3)

    @property
    def running(self) -> int:
        """Handlers running now."""
        return len(self._active)

    def busy(self) -> bool:
        with self._lock:
            return self._running > 0

    def _abandon(self) -> None:
        """Past the stop timeout: give the events of handlers still running back at once
        (async ones are cancelled; a plain function cannot be interrupted, and its outcome
        is dropped)."""
        with self._lock:
            still, self._abandoned = self._running, True
            self._unstarted.extend(self._active)
            self._active.clear()
            tasks = list(self._tasks)
        for task in tasks:
            task.get_loop().call_soon_threadsafe(task.cancel)
        if still:
            log.warning(
                "events worker %s stopped with %d handler(s) still running after %.1f s; "
                "their events are given back to run again",
                self.owner,
                still,
                self.options.stop_timeout,
            )

    # -- database work (Io) ----------------------------------------------------------------

    def setup(self) -> Io[None]:
        """A new connection of the worker: schema, session settings, registration."""
        if self._gate is not None:
            self._gate = Registration(EVENTS_GATE)  # a new connection holds no gate
            self._take_at = 0.0
        yield from schema.ensure_io()
        yield from self.writer_setup()
        yield from atomic(self._register())
        if self.target.source == "":
            specs = [self.handlers[n] for n in sorted(self.handlers)]
            yield Query(
                _sql.QUEUES_DECLARE,
                {
                    "source": "",
                    "names": [s.name for s in specs],
                    "concurrency": [s.concurrency for s in specs],
                    "rate_count": [s.rate_limit[0] if s.rate_limit else None for s in specs],
                    "rate_period": [s.rate_limit[1] if s.rate_limit else None for s in specs],
                },
            )

    def writer_setup(self) -> Io[None]:
        """A new connection of the worker's writer: the same session settings (none behind
        a transaction pooler, which would leave them to its other clients)."""
        if not pooled():
            yield Query(_sql.WORKER_SESSION)

    def _register(self) -> Io[None]:
        yield Query(_sql.WORKERS_PRUNE)
        names = sorted(self.handlers)
        host = socket.gethostname()
        yield Query(
            _sql.WORKER_REGISTER, (self.owner, self.target.source, names, host, os.getpid())
        )

    def chores(self) -> Io[None]:
        """What is due besides claims and outcomes: heartbeat, schedules, retention, mirror."""
        now = time.monotonic()
        if now >= self._next_beat:
            yield from self._heartbeat()
            self._next_beat = now + self.options.lease / 3
        if now >= self._next_poll:
            self._next_poll = now + self.options.poll_interval
            self._claim_due = True
        with self._lock:
            while self._dues and now >= self._dues[0]:  # each retry's time, not just the first
                heapq.heappop(self._dues)
                self._claim_due = True
        if now >= self._recheck_at:
            self._recheck_at = float("inf")
            self._claim_due = True
        if self._gate_wanted() and now >= self._take_at:
            yield from self._take_gate()
        if now >= self._next_catch_up:
            self.on_gap()
            self._next_catch_up = now + self._catch_up_every
        if now >= self._next_schedule:
            yield from self._schedules(now)
            self._claim_due = True  # a tick may have been enqueued (polling: no NOTIFY)
        if now >= self._next_purge:
            yield from self._purge(now)
        yield from self._mirror()

    def claims(self) -> Batch:
        """The claims of a round (on the worker's connection)."""
        return self.round(record=False)

    def records(self) -> Batch:
        """The outcomes and starts of a round (on the writer's connection)."""
        return self.round(claim=False)

    def round(self, *, claim: bool = True, record: bool = True) -> Batch:
        """One round trip, one transaction: count the attempts started, record the outcomes
        due, and claim what fits; the reply is True when more may be waiting.

        An attempt whose handler has already ended is counted by the statement that records
        its outcome (one row version, not two); the others by :data:`~._sql.STARTED`.
        """
        now = time.monotonic()
        with self._lock:
            flush = record and self._flush_due(now)
            done, failed = (self._done, self._failed) if flush else ([], [])
            if flush:
                self._done, self._failed = [], []
            starts = self._starts if record else []
            if record:
                self._starts = []
                self._next_flush = now + FLUSH_EVERY
            finished = [e for e, _ in done] + [f[0] for f in failed]
            tokens = {e.id: h.token for e in finished if (h := self._held.get(e.id))}
            self._recording.update(tokens)
        uncounted = Counter(id_ for id_, _ in starts)
        queries: list[Query] = []
        done = [(e, r) for e, r in done if e.id in tokens]  # a lost lease records nothing
        folded = [uncounted.pop(e.id, 0) for e, _ in done]
        if uncounted:  # a failure's start too: FAIL below is fenced, a start is not
            newest = dict(sorted(starts, key=itemgetter(1)))  # each id's newest start's token
            ids = list(uncounted)
            started = {
                "ids": ids,
                "tokens": [newest[i] for i in ids],
                "counts": list(uncounted.values()),
            }
            queries.append(Query(_sql.STARTED, started))
        if done:
            ids = [e.id for e, _ in done]
            results = [r for _, r in done]
            complete = {
                "ids": _sql.csv(ids),
                "tokens": _sql.csv([tokens[i] for i in ids]),
                "results": results if any(r is not None for r in results) else None,
                "starts": _sql.csv(folded),
                "owner": self.owner,
            }
            queries.append(Query(_sql.COMPLETE, complete))
        failures = [f for f in failed if f[0].id in tokens]
        if failures:
            fail = {
                "ids": [e.id for e, _, _, _ in failures],
                "tokens": [tokens[e.id] for e, _, _, _ in failures],
                "states": ["dead" if dead else "failed" for _, _, _, dead in failures],
                "errors": [error for _, error, _, _ in failures],
                "delays": [float(delay) for _, _, delay, _ in failures],
                "owner": self.owner,
            }
            queries.append(Query(_sql.FAIL, fail))
        if any(e.name in self._limited_set for e in finished):
            # a slot of a limited name is free: every worker may claim it, not only us
            queries.append(Query(_sql.WAKE, (_sql.CHANNEL,)))
            if any(e.name in self._binding for e in finished):  # (else no one waits for it)
                self._yield_until = time.monotonic() + LIMITED_YIELD
        outcomes = len(queries)
        keyed = any(e.key is not None for e in finished if e.id in tokens)
        claims = self._claims() if claim else []
        gate = self._gate_queries() if claims else []
        queries.extend(q for _, q in gate)
        queries.extend(q for q, _, _ in claims)
        sent = time.monotonic()

        def recorded(results: list[Rows]) -> bool:
            # due on the server's clock from its transaction's start: surely past it from now
            back = time.monotonic()
            retry_at = [back + delay + 0.001 for _, _, delay, dead in failed if not dead]
            with self._lock:
                for id_, token in tokens.items():  # not a new claim of it (a retry) since
                    if (hold := self._held.get(id_)) is not None and hold.token == token:
                        del self._held[id_]
                self._recording.difference_update(tokens)
                for at in retry_at:
                    heapq.heappush(self._dues, at)
            if retry_at:  # the dispatcher sleeps until the first retry is due (not the poll)
                self.wake()
            if keyed:  # the next event of each key may be claimed now
                self._claim_due = True
                self.wake()
            self._gate_replied([kind for kind, _ in gate], results[outcomes : outcomes + len(gate)])
            claimed = results[outcomes + len(gate) :]
            more = self._claimed(claimed, [want for _, want, _ in claims], sent)
            if claims:
                self._full = more
                if not more and self._gate_wanted():
                    self._claim_due = True  # about to wait: take the gate, then claim again
            if any(name is not None for _, _, name in claims):
                # a limited name's claim that came back short: its limit may bind (or nothing
                # waits); while it does, this worker yields freed slots to the others
                self._binding = frozenset(
                    name
                    for (_, want, name), got in zip(claims, claimed, strict=True)
                    if name is not None and len(got) < want
                )
            if more:
                self._claim_due = True
            self._launch()
            return more

        def undo() -> None:
            if claims:
                self._claim_due = True  # not claimed after all
            if gate and self._gate is not None:
                self._gate = Registration(EVENTS_GATE)  # unknown: registered again if it waits
            with self._lock:  # kept for the next round
                self._recording.difference_update(tokens)
                self._done[:0] = [(e, r) for e, r in done]
                self._failed[:0] = failed
                self._starts[:0] = starts

        return Batch(queries, recorded, undo)

    def _gate_wanted(self) -> bool:
        """Whether the wake gate is to be taken: not held, and the last claim came back
        short (the worker may wait)."""
        return self._gate is not None and not self._gate.registered and not self._full

    def _take_gate(self) -> Io[None]:
        """Take the wake gate, on its own (a chore, before the round's claim): then a snapshot
        says which publishers' transactions to watch, and a claim is due. Not in the claim's
        transaction: that claim's ``now()`` would be its start, earlier than a publish that
        began after it, committed before the claim, and decided before the gate was taken
        (no NOTIFY): its ``run_after`` would seem to be in the future."""
        assert self._gate is not None
        taken, recheck = yield from check_io(self._gate, self._gate_watch)
        now = time.monotonic()
        if not taken:  # busy this instant: try again after the backoff
            self._take_at = now + (recheck or 0.0)
            return
        self._claim_due = True  # read after taking it
        self._recheck_at = float("inf") if recheck is None else now + recheck

    def _gate_seen(self, rows: Rows) -> None:
        """After a snapshot taken while holding the gate: when to claim again whatever
        NOTIFYs say (a publisher that decided before the gate was taken may not notify)."""
        recheck = self._gate_watch.seen(in_progress(rows[0][0]))
        self._recheck_at = float("inf") if recheck is None else time.monotonic() + recheck

    def _gate_queries(self) -> list[tuple[str, Query]]:
        """The wake gate's statements to send before a round's claims: leave it after a full
        claim (busy: claims follow without NOTIFY); while it is held and the transactions
        open when it was taken run, take a snapshot (see :class:`Watch`)."""
        gate = self._gate
        if gate is None:
            return []
        if self._full:
            leave = gate.unregister_query()
            return [] if leave is None else [("leave", leave)]
        if gate.registered and self._gate_watch.watching:
            return [("snapshot", Query(SNAPSHOT))]
        return []

    def _gate_replied(self, kinds: list[str], results: list[Rows]) -> None:
        """Take the replies of :meth:`_gate_queries`."""
        gate = self._gate
        for kind, rows in zip(kinds, results, strict=True):
            if kind == "snapshot" and gate is not None and gate.registered:
                self._gate_seen(rows)

    def _schedules(self, now: float) -> Io[None]:
        """Enqueue the due ticks of every schedule (each once: the schedule row is locked and
        moved on in the same transaction), then sleep until the soonest next one."""
        from ._core import next_tick  # the cron rules live with the public API

        def due() -> Io[float | None]:
            for id_, name, cron, tz, payload, tick, db_now in (
                yield from query(_sql.SCHEDULES_DUE)
            ):
                try:
                    following = next_tick(cron, tz, db_now)
                except Exception as exc:  # a bad row: say so, try again later
                    log.warning("schedule %r cannot be computed (%s); skipped", id_, exc)
                    following = db_now + timedelta(minutes=1)
                key = f"schedule:{id_}:{tick.astimezone(UTC).isoformat()}"
                yield Query(_sql.SCHEDULE_TICK, (name, to_json(payload, "payload"), key))
                yield Query(_sql.SCHEDULE_ADVANCE, (following, tick, id_))
            row = yield from query(_sql.SCHEDULE_SOONEST)
            return None if not row or row[0][0] is None else float(row[0][0])

        soonest = yield from atomic(due())
        wait = self.options.poll_interval * 5 if soonest is None else max(0.0, soonest)
        self._next_schedule = now + min(wait, 60.0) + (0.001 if soonest is not None else 0.0)

    def _purge(self, now: float) -> Io[None]:
        """Retention (``keep_done``): delete done and cancelled events older than that."""
        keep = self.options.keep_done
        assert keep is not None
        rows = yield from query(_sql.PURGE_KEPT, (keep,))
        deleted = int(rows[0][0]) if rows else 0
        self._next_purge = now + (0.1 if deleted >= 5000 else min(PURGE_EVERY, max(keep, 1.0)))
        if deleted:
            log.info("events worker %s purged %d finished event(s)", self.owner, deleted)

    def _record_due(self, now: float) -> bool:
        """Whether the writer has something to record now: outcomes due, or starts not yet
        counted (at once: a start is written with its outcome only when the handler has
        ended by then, so a worker killed meanwhile loses as few counts as it can)."""
        with self._lock:
            return self._flush_due(now) or bool(self._starts)

    def _flush_due(self, now: float) -> bool:
        """Whether outcomes are to be recorded now (the caller holds the lock)."""
        return bool(self._failed) or (
            bool(self._done)
            and (
                len(self._done) >= self._flush_at
                or (self._running == 0 and not self._ready)  # idle: record it now
                or now >= self._next_flush
                or self.stop_requested
            )
        )

    def settle(self) -> Io[None]:
        """While stopping: release unstarted events, heartbeat when due (outcomes follow, in
        a :class:`Pipe` of :meth:`round`)."""
        with self._lock:
            ids, self._unstarted = self._unstarted, []
        if ids:
            try:
                yield from atomic(self._release(ids))
            except BaseException:
                with self._lock:
                    self._unstarted[:0] = ids
                raise
            with self._lock:
                for id_ in ids:
                    self._held.pop(id_, None)
        now = time.monotonic()
        if now >= self._next_beat:
            yield from self._heartbeat()
            self._next_beat = now + self.options.lease / 3

    def forget(self) -> Io[None]:
        yield Query(_sql.WORKER_FORGET, (self.owner,))

    def _release(self, ids: list[int]) -> Io[None]:
        with self._lock:
            held = [(i, self._held[i].token) for i in ids if i in self._held]
        if held:
            params = {"ids": [i for i, _ in held], "tokens": [t for _, t in held]}
            yield Query(_sql.RELEASE, {**params, "owner": self.owner})
            yield Query(_sql.WAKE, (_sql.CHANNEL,))

    def _heartbeat(self) -> Io[None]:
        """Renew the leases held; give up those the server says are no longer ours."""
        with self._lock:
            held = [(i, h.token, h.started) for i, h in self._held.items()]
        sent = time.monotonic()

        def beat() -> Io[set[int]]:
            renewed: set[int] = set()
            if held:
                rows = yield from query(
                    _sql.HEARTBEAT,
                    {
                        "ids": [i for i, _, _ in held],
                        "tokens": [t for _, t, _ in held],
                        "started": [s for _, _, s in held],
                        "owner": self.owner,
                        "lease": self.options.lease,
                    },
                )
                renewed = {int(r[0]) for r in rows}
                cancels.extend(int(r[0]) for r in rows if r[1])
            yield Query(_sql.WORKER_SEEN, (self.owner,))
            yield Query(_sql.SWEEP_CANCELLED, (self.target.source, sorted(self.handlers)))
            return renewed

        cancels: list[int] = []
        renewed = yield from atomic(beat())
        for id_ in cancels:
            self.cancel_asked(id_)
        valid_until = sent + self.options.lease * SURELY_VALID
        with self._lock:
            for id_ in renewed:
                if (hold := self._held.get(id_)) is not None:
                    hold.valid_until = max(hold.valid_until, valid_until)
        with self._lock:  # an event settled meanwhile (by the writer) is not lost
            still = self._held.keys() - self._recording
            lost = [(i, s) for i, _, s in held if i not in renewed and i in still]
        if lost:
            self._lose([i for i, s in lost if not s], [i for i, s in lost if s])

    def _lose(self, unstarted: list[int], started: list[int]) -> None:
        """Leases that are no longer ours: never start those events, never record them."""
        with self._lock:
            gone = set(unstarted)
            for id_ in (*unstarted, *started):
                self._held.pop(id_, None)
            if gone:
                kept = deque(c for c in self._ready if c.id not in gone)
                self._inflight -= len(self._ready) - len(kept)
                self._ready = kept
        if unstarted:
            log.warning(
                "events worker %s: the lease of %d claimed event(s) lapsed or was taken over "
                "before they started; they are left to other workers (ids %s)",
                self.owner,
                len(unstarted),
                _ids(unstarted),
            )
        if started:
            log.warning(
                "events worker %s: lost the lease of %d running event(s) (the database was out "
                "of reach longer than the lease); their outcomes will not be recorded (ids %s)",
                self.owner,
                len(started),
                _ids(started),
            )

    def _mirror(self) -> Io[None]:
        """Copy new rows of the user's table into pgtide.events (bring your own table)."""
        target = self.target
        if target.mirror is None or target.mirror_one is None:
            return
        with self._lock:
            full, self._mirror_due = self._mirror_due, False
            ids, self._notified = self._notified, []
        try:
            if full:
                yield Query(target.mirror, {"source": target.source})
                return
            for id_ in dict.fromkeys(ids):
                try:
                    yield Query(target.mirror_one, {"source": target.source, "id": id_})
                except psycopg.DataError:  # not an id of that table: a wake-up all the same
                    log.debug("notified payload %r is not an id; scanning the table", id_)
                    self.on_gap()
        except BaseException:
            self.on_gap()  # not mirrored yet: scan the whole table next time
            raise

    def _claims(self) -> list[tuple[Query, int, str | None]]:
        """The claims to send now (each with how many it asks for, and its limited name, if
        any): none while stopping (asked to, or shutting down after a failure), while
        enough is claimed already, or when no claim can find anything new: a claim is due
        after a NOTIFY (a publish), a poll, a retry falling due, a schedule's tick, a claim
        that came back full, and the outcome of a keyed event (the next of its key may run),
        not after the wake-ups that only record outcomes (an empty claim there would cost
        the database a statement and delay the claim of the next publish behind it).
        Limited names are claimed every round (a slot freed elsewhere sends no NOTIFY), each
        by its own statement only: the claim of the other names leaves them out (a worker
        whose handlers are all limited sends one statement a round, not two)."""
        if (
            self.stop_requested
            or self._stopping
            or not (self._claim_due or self._announced or self._limited)
        ):
            return []
        with self._lock:
            inflight = self._inflight
            if inflight > self._low_water:
                return []  # still due once enough of them ended
            # the claim's snapshot follows these ids' commits: it sees them (a NOTIFY from now
            # on makes a claim due again, unless this claim returns its id)
            covered, self._announced = self._announced, set()
        due, self._claim_due = self._claim_due or bool(covered), False
        asked = min(self._max_inflight - inflight, self.options.batch_size)
        params = {
            "source": self.target.source,
            "names": self._unlimited,
            "limit": asked,
            "owner": self.owner,
            "lease": self.options.lease,
        }
        claims: list[tuple[Query, int, str | None]] = []
        if due and self._unlimited:
            claims.append((Query(_sql.CLAIM, params, binary=True), asked, None))
        limited = self._limited if time.monotonic() >= self._yield_until else []
        free = max(0, self._concurrency - inflight)
        for name in limited:
            slots = self.handlers[name].concurrency
            want = min(asked, slots or asked)
            if slots is not None and slots <= self._max_inflight:
                # slots this worker's claims could hold all of are every worker's: claim no
                # more than start here now (claimed, an event holds its slot while it waits,
                # and another worker could run it); a limit far above that claims ahead
                want = min(want, free)
                if want == 0:
                    continue
            limited_params = {**params, "name": name, "limit": want}
            claims.append((Query(_sql.CLAIM_LIMITED, limited_params, binary=True), want, name))
        return claims

    def _claimed(self, results: list[Rows], wanted: list[int], sent: float) -> bool:
        """Hold what the claims returned (no attempt counted yet); True when one came back
        full (more may be waiting)."""
        rows = [row for got in results for row in got]
        if not rows:
            return False
        rows.sort(key=itemgetter(8, 0))  # priority, then id
        valid_until = sent + self.options.lease * SURELY_VALID
        payloads = decode_payloads([r[2] for r in rows])
        ids = [r[0] for r in rows]
        event, hold_of = Event._claimed, _Hold
        with self._lock:
            self._took(ids)
            held, ready = self._held, self._ready
            added = len(ready)
            for row, payload in zip(rows, payloads, strict=True):
                hold = held.get(row[0])
                if hold is not None and row[0] not in self._recording:
                    # ours already (its lease had lapsed): one copy, new token
                    hold.token, hold.valid_until = row[6], valid_until
                    continue
                held[row[0]] = hold_of(row[6], row[7], valid_until)
                ready.append(event(row, payload))
            self._inflight += len(ready) - added
        return any(len(got) == want for got, want in zip(results, wanted, strict=True))

    def _took(self, ids: list[int]) -> None:
        """Remember the ids a claim returned, for the NOTIFYs that announce them (the caller
        holds the lock)."""
        self._announced.difference_update(ids)
        self._taken.update(ids)
        self._taken_order.append(ids)
        while len(self._taken) > TAKEN_KEPT and len(self._taken_order) > 1:
            self._taken.difference_update(self._taken_order.popleft())

    # -- running handlers ------------------------------------------------------------------

    def _launch(self) -> None:
        """Start what may start now. With plain handlers, the pool's threads take the events
        themselves (one is woken here); with async handlers only, they become tasks here."""
        if self._plain:
            if self._ready:
                self._start_pool()
                if self.drive is None:  # else the driver hands them out (see lead)
                    with self._lock:
                        self._wake_one()
            return
        with self._lock:
            events, lapsed = self._take(self.options.concurrency)
        self._lapsed(lapsed)
        for event in events:
            self._loop().call_soon_threadsafe(self._spawn, event, self.handlers[event.name])

    def _wake_one(self) -> None:
        """Wake an idle pool thread when an event may start or the plan waits for a driver
        (see :meth:`lead`), unless one is being woken already: it takes an event, else the
        plan, and wakes the next in turn (the caller holds the lock). So only as many
        threads run as there is work for them: a thread that finishes a quick handler takes
        the next event (and the plan) back itself, and with quick handlers a claim wakes one
        thread, not one per event and one more for the plan (at a steady 1,000 events/s,
        2.7 wake-ups a claim that found nothing to do, each a context switch or two beside
        the thread that claims)."""
        if not self._idle or self._waking:
            return
        if self._passing or (self._ready and self._running < self._concurrency):
            self._waking = True
            self._work.notify()

    def _take(self, n: int) -> tuple[list[Event], list[int]]:
        """Up to ``n`` events to start (in claim order), within the worker's and each
        handler's limit, and only while their leases are surely valid; and the ids of those
        whose lease may have lapsed (the database was out of reach, say), dropped, never
        started. The caller holds the lock."""
        free = min(n, self._concurrency - self._running)
        if self._stopping or self.stop_requested or free <= 0 or not self._ready:
            return [], []
        now = time.monotonic()
        ready, held, limits = self._ready, self._held, self._limits
        taken: list[Event] = []
        lapsed: list[int] = []
        skipped: list[Event] = []
        while ready and len(taken) < free:
            event = ready.popleft()
            if held[event.id].valid_until <= now:
                lapsed.append(event.id)
            elif not limits or (limit := limits.get(event.name)) is None:
                taken.append(event)
            elif self._by_name[event.name] < limit:
                self._by_name[event.name] += 1
                taken.append(event)
            else:
                skipped.append(event)
        if skipped:
            ready.extendleft(reversed(skipped))
        if lapsed:
            self._inflight -= len(lapsed)
            for id_ in lapsed:
                del held[id_]
        self._running += len(taken)
        events = []
        most = self._max_attempts
        for event in taken:
            id_ = event.id
            if self._cancel_asked and id_ in self._cancel_asked:  # never started: ends cancelled
                self._cancel_asked.discard(id_)
                self._end_unstarted(event, "cancelled before it started")
                continue
            if event.attempt > most[event.name]:
                self._end_unstarted(event, _lost_every_time(most[event.name]))  # poison
                continue
            held[id_].started = True
            events.append(event)
            self._events[id_] = event
            self._active.add(id_)
            if not self._starts:
                self._count_soon = True  # the dispatcher wakes to count it (see _next)
            self._starts.append((id_, held[id_].token))
        return events, lapsed

    def _end_unstarted(self, event: Event, error: str) -> None:
        """A taken event that will not start: it ends (dead, or cancelled if asked) with
        ``error`` (the caller holds the lock)."""
        self._running -= 1
        if event.name in self._by_name:
            self._by_name[event.name] -= 1
        self._inflight -= 1
        unstarted = replace(event, attempt=event.attempt - 1)
        self._failed.append((unstarted, error, 0.0, True))

    def _lapsed(self, lapsed: list[int]) -> None:
        if lapsed:
            log.warning(
                "events worker %s: the lease of %d claimed event(s) may have lapsed before they "
                "started; they are left to other workers (ids %s)",
                self.owner,
                len(lapsed),
                _ids(lapsed),
            )

    def _start_pool(self) -> None:
        if self._threads:
            return
        with self._lock:
            if self._threads or self._stopping:
                return
            # one more than may run at once when the plan passes between them (see lead):
            # while one drives it, ``concurrency`` others may still run handlers
            size = self.options.concurrency + (self.drive is not None)
            self._threads = [
                threading.Thread(target=self._serve, name=f"pgtide-events-{i}", daemon=True)
                for i in range(size)
            ]
        for thread in self._threads:
            thread.start()

    def _close_pool(self) -> None:
        with self._lock:
            self._pool_closed = True
            self._work.notify_all()

    def hand_out(self) -> None:
        """Wake a pool thread for the events claimed, while the driving thread keeps the plan
        (after a full claim it claims again at once: handing the plan to another thread
        would wait for that thread to get the GIL from the busy pool, with the queue of
        claimed events draining meanwhile)."""
        with self._lock:
            self._wake_one()

    def lead(self, take: bool) -> tuple[bool, Event | None]:
        """Leader and followers (a blocking worker's plan is driven by one of its threads at
        a time, see :class:`Worker`): after a claim, the driving thread runs the first event
        that may start itself (when ``take``), with no hand-off to another thread between
        the claim and the handler, and passes the plan to a pool thread that waits idle (it
        wakes while the handler runs). Returns whether it passed the plan on, and the event
        it took. It passes nothing on when no pool thread is idle (one that runs a handler
        could keep the plan from its heartbeats): then the pool takes the events, as always.
        A passed plan is taken by the first pool thread that finds no event to start (one
        such thread always is awake or woken: the pool has a thread more than may run).
        """
        with self._lock:
            if not self._ready:
                return False, None
            if not self._idle or self._stopping or self.stop_requested or self._passing:
                self._wake_one()
                return False, None
            events, lapsed = self._take(1) if take else ([], [])
            passed = bool(events) or not take  # (none may start now: limits, lapsed leases)
            if passed:
                self._passing = True  # the first idle thread to find no event drives it
            self._wake_one()
            count = self._count_soon and bool(events)
            if count:
                self._count_soon = False
        self._lapsed(lapsed)
        if count:  # the first start since the last round: have it counted now
            self.wake()
        return passed, events[0] if events else None

    def _serve(self) -> None:
        """A pool thread: take the next event that may start, run it, again; or drive the
        worker's plan while it is passed to this thread (see :meth:`lead`)."""
        while (event := self._next()) is not None:
            if event is _DRIVE:
                assert self.drive is not None
                if (event := self.drive()) is None:
                    continue
            spec = self.handlers[event.name]
            if spec.is_async:
                self._loop().call_soon_threadsafe(self._spawn, event, spec)
            else:
                self._run_plain(event, spec)

    def _next(self) -> Event | None:
        """The next event for a pool thread (waiting for one), :data:`_DRIVE` when the plan
        waits for a thread to drive it and no event may start, or None once the pool closes.
        A thread takes the events first: one that ran a quick handler runs the next events
        of the claim too, and takes the plan back if no idle thread has yet."""
        with self._lock:
            while not self._pool_closed:
                events, lapsed = self._take(1)
                if events:
                    self._wake_one()  # more to start, or the plan waits: another thread
                    break
                if lapsed:
                    continue
                if self._passing:  # the plan is passed on: this thread drives it now
                    self._passing = False
                    return _DRIVE
                self._idle += 1
                self._work.wait()
                self._idle -= 1
                self._waking = False
            else:
                return None
            count, self._count_soon = self._count_soon, False
        self._lapsed(lapsed)
        if count:  # the first start since the last round: have it counted now
            self.wake()
        return events[0]

    def _spawn(self, event: Event, spec: HandlerSpec) -> None:
        task = asyncio.get_running_loop().create_task(self._run_async(event, spec))
        with self._lock:
            self._tasks.add(task)
            self._task_of[event.id] = task
        task.add_done_callback(self._tasks.discard)
        if event.cancelled:  # asked before its task existed
            task.cancel()

    def _run_plain(self, event: Event, spec: HandlerSpec) -> None:
        began = time.perf_counter()
        try:
            result = spec.fn(event)
            elapsed = time.perf_counter() - began
            if spec.timeout is not None and elapsed > spec.timeout:
                raise TimeoutError(
                    f"handler {spec.name!r} ran {elapsed:.2f} s, over its {spec.timeout} s "
                    "timeout (a plain function cannot be interrupted; its result was dropped)"
                )
        except BaseException:  # even SystemExit: a failed attempt
            self._failure(event, spec, began)
            return
        encoded = result_json(result, spec.name)
        self._finish(event, began, encoded, None)

    async def _run_async(self, event: Event, spec: HandlerSpec) -> None:
        began = time.perf_counter()
        try:
            coro = spec.fn(event)
            assert asyncio.iscoroutine(coro)
            result = await _bounded(coro, spec.timeout)
        except BaseException:  # a stray cancellation too: a failed attempt (unless abandoned)
            self._failure(event, spec, began)
            return
        self._finish(event, began, result_json(result, spec.name), None)

    def _failure(self, event: Event, spec: HandlerSpec, began: float) -> None:
        error = traceback.format_exc().replace("\x00", "\\x00")  # text cannot hold NUL
        delay = retry_delay(event.attempt, self.options.retry_delay, self.options.max_retry_delay)
        self._finish(event, began, None, (error, delay, event.attempt >= spec.max_attempts))

    def _finish(
        self,
        event: Event,
        began: float,
        result: str | None,
        failure: tuple[str, float, bool] | None,
    ) -> None:
        seconds = time.perf_counter() - began
        self.stats.finished(event.name, _outcome(event, failure), seconds)
        with self._lock:
            self._running -= 1
            self._active.discard(event.id)
            self._events.pop(event.id, None)
            if self._task_of:
                self._task_of.pop(event.id, None)
            limited = bool(self._by_name) and event.name in self._by_name
            if limited:
                self._by_name[event.name] -= 1
            if self._abandoned:
                return
            if failure is None:
                self._done.append((event, result))
            else:
                self._failed.append((event, *failure))
            self._inflight -= 1
            # the dispatcher is woken once as the outcomes due reach a batch (it records them
            # all then), not by every outcome after that (a wake-up costs more than the event)
            wake = (
                failure is not None
                or self._inflight in (0, self._low_water)
                or len(self._done) == self._flush_at
            )
            if self._plain and limited:
                self._wake_one()  # a slot of a limited name is free: an idle thread may take it
        if wake:
            self.wake()
        if not self._plain:
            self._launch()
        if log.isEnabledFor(logging.INFO):
            _log_outcome(event, seconds, failure)


def _last_line(text: str) -> str:
    """The exception line of a traceback (what a log line shows)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else text


def _lost_every_time(attempts: int) -> str:
    """The error of an event claimed again after its last allowed attempt started and never
    ended: its worker died in the handler (killed, out of memory) or lost the lease."""
    return (
        f"not run again: all {attempts} allowed attempt(s) have started, and the last one "
        "never ended with an outcome (its worker was killed, or lost the lease, in the "
        "handler; or retries were lowered since); fix the cause, then retry it"
    )


def _ids(ids: list[int]) -> str:
    shown = ", ".join(map(str, ids[:10]))
    return shown + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")


def _outcome(event: Event, failure: tuple[str, float, bool] | None) -> str:
    """How a handler run ended: done, failed (will retry), dead or cancelled."""
    if event.cancelled:
        return "cancelled"
    return "done" if failure is None else "dead" if failure[2] else "failed"


def _log_outcome(event: Event, seconds: float, failure: tuple[str, float, bool] | None) -> None:
    ms = seconds * 1000
    outcome = _outcome(event, failure)
    error = "" if failure is None else f" error={_last_line(failure[0])!r}"
    log.log(
        logging.INFO if failure is None or event.cancelled else logging.WARNING,
        "event name=%s id=%d attempt=%d outcome=%s duration_ms=%.1f%s",
        event.name,
        event.id,
        event.attempt,
        outcome,
        ms,
        error,
        extra={
            "event_name": event.name,
            "event_id": event.id,
            "attempt": event.attempt,
            "outcome": outcome,
            "duration_ms": ms,
        },
    )


async def _bounded(coro: Coroutine[Any, Any, Any], timeout: float | None) -> Any:
    if timeout is None:
        return await coro
    return await asyncio.wait_for(coro, timeout)


def _nothing() -> None:
    return None


_DRIVE = Event._claimed((0, "", None, None, None, None, 0, 0, 0, None), None)
"""What :meth:`WorkerCore._next` returns to the pool thread that is to drive the plan."""


class _Steps:
    """Walks a :data:`Plan` for a driver: the next step, given the last one's reply or error."""

    def __init__(self, plan: Plan) -> None:
        self._plan = plan
        self._reply: Any = None
        self._failure: Exception | None = None

    def next(self) -> Step | None:
        """The next step, or None when the plan is over (raising what it did not handle)."""
        failure, self._failure = self._failure, None
        reply, self._reply = self._reply, None
        try:
            return self._plan.send(reply) if failure is None else self._plan.throw(failure)
        except StopIteration:
            return None

    def reply(self, value: Any) -> None:
        self._reply = value

    def fail(self, exc: Exception) -> None:
        self._failure = exc


def _run_batch(conn: psycopg.Connection[Any], make: Callable[[], Batch]) -> Any:
    """Send a batch's statements in one round trip, run them in one transaction."""
    batch = make()
    if not batch.queries:
        return batch.done([])
    try:
        with contextlib.ExitStack() as together:
            if len(batch.queries) > 1:  # (one statement is one transaction: no pipeline needed)
                together.enter_context(conn.pipeline())
                together.enter_context(conn.transaction())
            cursors = [conn.execute(q.statement, q.params, binary=q.binary) for q in batch.queries]
        rows = [fetched(c) for c in cursors]
    except BaseException:
        batch.undo()
        raise
    return batch.done(rows)


async def _arun_batch(conn: psycopg.AsyncConnection[Any], make: Callable[[], Batch]) -> Any:
    """The asyncio twin of :func:`_run_batch`."""
    batch = make()
    if not batch.queries:
        return batch.done([])
    try:
        async with contextlib.AsyncExitStack() as together:
            if len(batch.queries) > 1:
                await together.enter_async_context(conn.pipeline())
                await together.enter_async_context(conn.transaction())
            cursors = [
                await conn.execute(q.statement, q.params, binary=q.binary) for q in batch.queries
            ]
        rows = [await afetched(c) for c in cursors]
    except BaseException:
        batch.undo()
        raise
    return batch.done(rows)


_S = TypeVar("_S", Session, AsyncSession)


class _Driver(Generic[_S]):
    """What both drivers share: the core, the waker, the session, and the ``running`` flag.

    A driver class names its session class; only ``run`` (blocking or awaited) differs.
    """

    _session_class: type[_S]

    def __init__(self, resolved: Resolved, core: WorkerCore) -> None:
        self.core = core
        self.owner = core.owner
        target, options = core.target, core.options
        listen = options.listen
        self._waker = Waker(
            resolved if listen else None,
            target.channels if listen else (),
            on_notify=self.core.on_notify,
            on_gap=self.core.on_gap,
            application_name=APPLICATION_NAME,
            direct=True,  # the dispatcher reads its wake-ups itself (no hand-off)
        )
        self.core.wake = self._waker.set
        self.running = threading.Event()
        self.failure: list[BaseException] = []  # what ended run(), if it raised
        self._session: _S = self._session_class(
            resolved,
            name="events worker",
            prepare=self.core.setup,
            on_reconnect=self.core.on_reconnect,
        )

    def stop(self) -> None:
        """Ask the worker to stop: no new claims; running handlers finish; the rest go back."""
        self.core.request_stop()
        self._session.stop()  # a wait to reconnect ends at once

    def _serving(self) -> _Steps:
        """Mark the worker serving, and walk the core's plan."""
        self.running.set()
        log.info(
            "events worker %s serving %s with concurrency %d",
            self.owner,
            ", ".join(sorted(self.core.handlers)),
            self.core.options.concurrency,
        )
        return _Steps(self.core.plan())


class _Writer:
    """A blocking worker's second connection: a thread that writes outcomes and starts
    (:class:`Record` steps) while the worker's own connection claims, so that the database
    works on both at once. A step asked while one is waiting is the same step (it takes all
    that is due when it runs)."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._ready = threading.Condition()
        self._pending: Callable[[], Batch] | None = None
        self._closing = False
        self._thread: threading.Thread | None = None
        self.error: Exception | None = None  # what stopped it (the worker raises it)

    def submit(self, make: Callable[[], Batch]) -> None:
        with self._ready:
            self._pending = make
            self._ready.notify()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="pgtide-events-writer", daemon=True
                )
                self._thread.start()

    def _serve(self) -> None:
        while True:
            with self._ready:
                while self._pending is None and not self._closing:
                    self._ready.wait()
                make, self._pending = self._pending, None
            if make is None:
                return
            try:
                self._session.call(partial(_run_batch, make=make))
            except Stopped:
                return  # stopping while the database is away: the worker records the rest
            except Exception as exc:
                self.error = exc
                return

    def failed(self) -> Exception | None:
        """What stopped the writer, once (the worker raises it, and shuts down)."""
        error, self.error = self.error, None
        return error

    def stop(self) -> None:
        self._session.stop()

    def close(self) -> None:
        """Write what is pending, then close the connection."""
        with self._ready:
            self._closing = True
            self._ready.notify()
            thread = self._thread
        if thread is not None:
            thread.join()
        self._session.close()


class Worker(_Driver[Session]):
    """A worker driven from a thread: ``run()`` blocks until ``stop()``; both thread-safe.

    Outcomes are written by a :class:`_Writer` on a second connection."""

    _session_class = Session

    def __init__(self, resolved: Resolved, core: WorkerCore) -> None:
        super().__init__(resolved, core)
        writer = Session(
            resolved,
            name="events worker (outcomes)",
            prepare=self.core.writer_setup,
            second_to=self._session,
        )
        self._writer = _Writer(writer)
        self._steps: _Steps | None = None
        self._ended = threading.Event()  # the plan ended (in whichever thread drove it)
        self._fault: BaseException | None = None  # what ended it, if it raised
        self._interrupted: KeyboardInterrupt | None = None
        self._read_at = 0.0  # when the plan's driver last read the wake-ups before a claim

    def stop(self) -> None:
        super().stop()
        self._writer.stop()

    def run(self) -> None:
        """Serve until :meth:`stop`; then finish running handlers (bounded) and release."""
        try:
            self._serve()
        except BaseException as exc:
            self.failure.append(exc)
            raise

    def _serve(self) -> None:
        self._session.connection()  # registered before serving: a bad setup raises here
        interrupted: KeyboardInterrupt | None = None
        try:
            self._waker.start()  # LISTENing before the first claim: no wake-up falls between
            self._steps = self._serving()
            if self.core._plain:  # the plan may pass to the pool's threads (WorkerCore.lead)
                self.core.drive = self._drive
            if self._drive(first=True) is not None:  # passed on: wait for the plan to end
                while True:
                    try:
                        _signals.wait(self._ended)  # (not an untimed wait: see there)
                        break
                    except KeyboardInterrupt as exc:  # Ctrl-C: stop gracefully, then raise it
                        self.stop()
                        interrupted = exc
            if self._fault is not None:
                raise self._fault
        finally:
            self._waker.stop()
            self._writer.close()
            self._session.close()
            self.running.clear()
        if interrupted is not None:
            raise interrupted

    def _drive(self, first: bool = False) -> Event | None:
        """Walk the plan in this thread until it ends (None) or, with a pool, until this
        thread passes it to an idle pool thread after a claim: then the event this thread is
        to run (``run()``'s own thread runs none: it passes the plan on, and waits)."""
        steps = self._steps
        assert steps is not None
        more = False  # the last claim came back full
        try:
            while (step := steps.next()) is not None:
                try:
                    if (failed := self._writer.failed()) is not None:
                        raise failed
                    if isinstance(step, Db):
                        steps.reply(self._session.run(step.make))
                    elif isinstance(step, Pipe):
                        now = time.monotonic()
                        if not more or now >= self._read_at + READ_WHILE_FULL:
                            # (after a full claim the next one is due whatever was notified,
                            # so the wake-ups wait, up to READ_WHILE_FULL: reading the socket
                            # lets go of the interpreter's lock, and getting it back from a
                            # busy pool took up to the switch interval, 5 ms, while the
                            # handlers ran out of claimed events)
                            self._read_at = now
                            self._waker.read_now()
                        more = self._session.call(partial(_run_batch, make=step.make))
                        steps.reply(more)
                        if self.core.drive is not None and more:
                            self.core.hand_out()  # a full claim: claim again at once
                        elif self.core.drive is not None:
                            passed, event = self.core.lead(take=not first)
                            if passed:
                                return _DRIVE if event is None else event
                    elif isinstance(step, Record):
                        self._writer.submit(step.make)
                    elif isinstance(step, Sleep):
                        steps.reply(self._waker.wait(step.seconds, self._session.fileno()))
                    else:
                        self._waker.stop()
                except Exception as exc:
                    steps.fail(exc)
                except KeyboardInterrupt as exc:  # Ctrl-C: stop gracefully, then raise it
                    self.stop()
                    self._interrupted = exc
                    steps.fail(Stopped("interrupted"))
        except BaseException as exc:  # the plan failed: run() raises it
            self._fault = exc
        if self._interrupted is not None and self._fault is None:
            self._fault = self._interrupted
        self._ended.set()
        return None


class AsyncWorker(_Driver[AsyncSession]):
    """A worker driven from an asyncio task: ``await run()`` until ``stop()``.

    Its database work runs on an :class:`~pgtide.session.AsyncSession` (no thread), outcomes
    included (a :class:`Record` step is awaited in turn); async handlers run as tasks on the
    same loop.
    """

    _session_class = AsyncSession

    async def run(self) -> None:
        """Serve until :meth:`stop`; then finish running handlers (bounded) and release."""
        await self._session.connection()
        try:
            # the waker's receiver is a thread of the channel layer: start it off the loop
            await asyncio.to_thread(self._waker.start)
            steps = self._serving()
            while (step := steps.next()) is not None:
                try:
                    if isinstance(step, Db):
                        steps.reply(await self._session.run(step.make))
                    elif isinstance(step, Pipe | Record):
                        self._waker.read_now()
                        steps.reply(await self._session.call(partial(_arun_batch, make=step.make)))
                    elif isinstance(step, Sleep):
                        also = self._session.fileno()
                        steps.reply(await self._waker.wait_async(step.seconds, also))
                    else:
                        await asyncio.to_thread(self._waker.stop)
                except Exception as exc:
                    steps.fail(exc)
        finally:
            self._waker.stop()
            await self._session.close()
            self.running.clear()
