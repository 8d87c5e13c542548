"""What the blocking and asyncio faces of the feed share, free of I/O: the settings, checked
once; the wake-up; the batch as a sequence; stopping; what an interrupted batch says."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeAlias, TypeVar, overload

from ..channel import Waker
from ..connect import POOLER_KEY, DsnLike, Resolved, pooled
from ..errors import FeedError
from ..names import TableName
from ..session import OUTAGES, AsyncSession, Session
from ._core import Change, Changes, Core, Emit, Start, Step, plan
from .backfill import BackfillThread
from .position import Position
from .wal import RelayThread

log = logging.getLogger("pgtide.feed")

CHANNEL = "pgtide_changes"
"""The channel the capture triggers NOTIFY on, with the table name as payload."""

DEFAULT_POLL = {"notify": 1.0, "poll": 0.1}
"""Seconds between reads when no wake-up comes: a fallback with NOTIFY, the pace without."""

MAX_CHANGES = 1000
"""Changes per batch when neither the caller nor the callable of ``run()`` says otherwise."""


def batch_size(fn: object, max_changes: int | None) -> int:
    """The ``max_changes`` of ``run(fn)``: as given, else the one ``fn`` (or the sink whose
    bound method ``fn`` is) asks for in its ``max_changes`` attribute, else
    :data:`MAX_CHANGES`. A sink whose broker takes large batches cheaply asks for more: fewer
    reads, acknowledgements and broker round trips per change."""
    if max_changes is not None:
        return max_changes
    for owner in (fn, getattr(fn, "__self__", None)):
        wanted = getattr(owner, "max_changes", None)
        if isinstance(wanted, int) and not isinstance(wanted, bool):
            return wanted
    return MAX_CHANGES


class BatchInterrupted(FeedError):
    """The connection was lost inside ``batch.transaction()``: nothing of it was committed."""

    def __init__(self, consumer: str, start: Position) -> None:
        super().__init__(
            f"consumer {consumer!r}: the database connection was lost inside "
            "batch.transaction(), so neither the writes nor the acknowledgement were committed; "
            "the batch comes again from the saved position (feed.batches(start='saved')), and "
            "feed.run() does that by itself"
        )
        self.start = start


F = TypeVar("F")


class BatchBase(Sequence[Change], Generic[F]):
    """The changes of whole transactions between two positions (shared by both faces)."""

    def __init__(self, feed: F, emit: Emit) -> None:
        self._feed = feed
        self._changes = emit.changes
        self.start = emit.start
        self.position = emit.end

    @property
    def changes(self) -> list[Change]:
        """The changes, in delivery order (made at the first use of the batch's changes)."""
        return self._changes.make()

    def _captured(self) -> Changes | None:
        """The changes as read, for a sink that sends their captured JSON as it is (see
        :meth:`Changes.captured`); None when they were made already (a sink then uses
        them)."""
        return self._changes if self._changes.made is None else None

    @overload
    def __getitem__(self, index: int) -> Change: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Change]: ...
    def __getitem__(self, index: int | slice) -> Change | Sequence[Change]:
        return self.changes[index]

    def __len__(self) -> int:
        return len(self._changes)

    def __iter__(self) -> Iterator[Change]:
        return iter(self.changes)

    @property
    def xids(self) -> list[int]:
        """The transactions in this batch, in delivery order."""
        return list(dict.fromkeys(c.xid for c in self.changes))

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {len(self.changes)} changes, "
            f"{len(self.xids)} transactions, to {self.position}>"
        )


B = TypeVar("B")
D = TypeVar("D")


@dataclass(frozen=True)
class Confirm(Generic[D]):
    """Wait for ``delivery`` to be confirmed (it raises if it failed)."""

    delivery: D


@dataclass(frozen=True)
class Submit(Generic[B]):
    """Start delivering ``batch`` (then tell :meth:`ReadAhead.sent` what came back)."""

    batch: B


@dataclass(frozen=True)
class Acknowledge(Generic[B]):
    """Acknowledge ``batch`` (its delivery was confirmed)."""

    batch: B


Handover: TypeAlias = "Submit[B] | Acknowledge[B] | Confirm[D]"


class ReadAhead(Generic[B, D]):
    """``run()`` with a sink, for both faces, free of I/O: the feed reads the next batch while
    the one before is being delivered. A batch is handed over only once the one before it
    was confirmed, and acknowledged only once it was confirmed itself; before the feed waits
    for new changes or ends, the batch in flight is confirmed and acknowledged
    (:meth:`settle`). Each face carries the steps out with its own I/O."""

    def __init__(self) -> None:
        self._flight: tuple[B, D] | None = None

    def take(self, batch: B) -> Iterator[Handover[B, D]]:
        """The steps for a batch just read."""
        before, self._flight = self._flight, None
        if before is not None:
            yield Confirm(before[1])  # raises: neither batch is acknowledged, both come again
        yield Submit(batch)
        if before is not None:
            yield Acknowledge(before[0])  # the new batch is on its way meanwhile

    def sent(self, batch: B, delivery: D) -> None:
        """``batch`` was submitted: ``delivery`` confirms it."""
        self._flight = (batch, delivery)

    def settle(self) -> Iterator[Handover[B, D]]:
        """The steps before the feed waits or ends: confirm and acknowledge the batch in
        flight."""
        before, self._flight = self._flight, None
        if before is not None:
            yield Confirm(before[1])
            yield Acknowledge(before[0])

    def abandon(self) -> D | None:
        """The feed failed: the delivery in flight (to let it end), acknowledging nothing."""
        before, self._flight = self._flight, None
        return None if before is None else before[1]


def _tables(tables: list[str] | str | None) -> list[str] | None:
    if isinstance(tables, str):
        tables = [tables]
    if tables is None:
        return None
    names = sorted({str(TableName.parse(t)) for t in tables})  # InvalidName when unreadable
    if not names:
        raise FeedError("tables=[] follows nothing; leave it out to follow every table")
    return names


S = TypeVar("S", Session, AsyncSession)


class FeedBase(Generic[S]):
    """A consumer's settings and state; the faces add the I/O. Nothing resolves the database
    or connects here: the session does, at the first read."""

    _face = "Feed"
    _session_class: Callable[..., S]

    def __init__(
        self,
        consumer: str,
        tables: list[str] | str | None = None,
        *,
        dsn: DsnLike = None,
        wakeup: str = "notify",
        poll_interval: float | None = None,
        auto_prune: float | None = None,
        relay: bool = True,
    ) -> None:
        if not isinstance(consumer, str) or not consumer.strip():
            raise FeedError("a feed needs a consumer name, e.g. Feed(consumer='indexer')")
        if wakeup not in DEFAULT_POLL:
            raise FeedError(f"wakeup must be 'notify' or 'poll', not {wakeup!r}")
        interval = DEFAULT_POLL[wakeup] if poll_interval is None else poll_interval
        if interval <= 0:
            raise FeedError(f"poll_interval must be > 0 seconds, not {interval}")
        if auto_prune is not None and auto_prune < 0:
            raise FeedError(f"auto_prune must be None or >= 0 seconds, not {auto_prune}")
        self._listens = wakeup == "notify"
        self._poll_interval = interval
        self._auto_prune = auto_prune
        self._core = Core(consumer, _tables(tables), runs_backfills=relay)
        self._cursor = self._core.cursor
        self._waker: Waker | None = None
        self._stopping = threading.Event()
        self._runner: object = None  # the thread or task in batches(), if any
        self._last_prune = time.monotonic()
        self._relays = relay
        self._pooled_warned = False
        self._relay: RelayThread | None = None
        self._backfill: BackfillThread | None = None
        self._session: S = self._session_class(
            dsn, name=f"feed {consumer}", prepare=self._core.prepare, on_reconnect=self._wake
        )

    @property
    def consumer(self) -> str:
        """The consumer's name, under which its position is saved."""
        return self._core.consumer

    @property
    def _wakeup(self) -> Waker | None:
        """The waker while it LISTENs (None: the feed polls, or is not waiting)."""
        waker = self._waker
        return waker if waker is not None and waker.listening else None

    def _plan(
        self, start: Start, stop: Start | None, max_changes: int, timeout: float | None
    ) -> Generator[Step, Any, None]:
        self._runner = self._me()
        return plan(
            self._core,
            start,
            stop,
            max_changes,
            timeout,
            self._stopping.is_set,
            listening=lambda: self._wakeup is not None,
            poll=self._poll_interval,
        )

    @staticmethod
    def _advance(steps: Generator[Step, Any, None], reply: Any) -> Step | None:
        """The next step of a ``batches()`` loop, given the last one's reply (None: the
        loop is over). Each face carries the steps out: :class:`Run` and :class:`Wait` with
        its own I/O, :class:`Emit` by yielding a batch."""
        try:
            return steps.send(reply)
        except StopIteration:
            return None

    def _new_waker(self, resolved: Resolved | None) -> Waker:
        """The waker of one ``batches()`` loop (it LISTENs from the first wait, if notify)."""
        channels = (CHANNEL,) if resolved is not None else ()
        return Waker(resolved, channels, on_notify=self._core.wants)

    def _release_waker(self) -> Waker | None:
        """The waker to stop, now that no ``batches()`` loop will wait on it: at the loop's
        end, or at ``close()`` (an ``async for`` left with ``break`` ends its loop only when
        the generator is collected, and its LISTEN connection would live until then)."""
        waker, self._waker = self._waker, None
        return waker

    def _started(self) -> None:
        if self._stopping.is_set():
            self._wake()  # stop() came before the waker existed

    def _pace(self, seconds: float | None, waker: Waker) -> float:
        """How long to wait before the next read; without a running wake-up, the feed reads
        at the polling pace."""
        pace = self._poll_interval
        if self._listens and not waker.listening:
            pace = min(pace, DEFAULT_POLL["poll"])
        return pace if seconds is None else min(seconds, pace)

    def _relay_check(self, resolved: Resolved) -> None:
        """After a read: start the relay thread when the feed follows a table captured from
        the WAL (it relays only while it holds the database's relay lock); raise what stopped
        it (a lost slot)."""
        if self._relays and (self._core.wal or self._core.backfill) and pooled():
            if not self._pooled_warned:  # the relay and backfills hold session locks
                self._pooled_warned = True
                log.warning(
                    "feed %s: behind a transaction pooler (%s=transaction) it runs no relay "
                    "nor backfill; run `pgtide capture` on a direct connection",
                    self.consumer,
                    POOLER_KEY,
                )
            return
        relay = self._relay
        if relay is not None:
            relay.check()
        elif self._relays and self._core.wal:
            self._relay = RelayThread(resolved, self.consumer)
        backfill = self._backfill
        if backfill is not None:
            backfill.check()
            if not backfill.running:  # it ran what was pending; the feed looks again later
                self._backfill = backfill = None
                self._core.backfill = False
        if backfill is None and self._relays and self._core.backfill:
            # pending backfills of the followed tables run here too (one runner at a time)
            self._backfill = BackfillThread(resolved, self.consumer)

    def _relay_stop(self) -> None:
        relay, self._relay = self._relay, None
        if relay is not None:
            relay.stop()
        backfill, self._backfill = self._backfill, None
        if backfill is not None:
            backfill.stop()

    def _wake(self) -> None:
        waker = self._waker
        if waker is not None:
            waker.set()

    def _prune_due(self) -> bool:
        every = self._auto_prune
        if every is None or time.monotonic() - self._last_prune < every:
            return False
        self._last_prune = time.monotonic()
        return True

    def _lost(self, exc: Exception, closed: bool, batch: BatchBase[Any]) -> Exception:
        """What a failure inside ``batch.transaction()`` becomes: :class:`BatchInterrupted`
        when the connection is gone (nothing was committed), else the failure itself."""
        if isinstance(exc, OUTAGES) and closed:
            lost = BatchInterrupted(self.consumer, batch.start)
            lost.__cause__ = exc
            return lost
        return exc

    def stop(self) -> None:
        """End ``run()`` (or ``batches()``) from any thread, after the batch in hand."""
        self._stopping.set()
        self._wake()

    @staticmethod
    def _me() -> object:
        """Who is calling: the current thread (the asyncio face: the current task)."""
        return threading.current_thread()

    def _ended(self) -> bool:
        """A ``batches()`` loop ends: True when it was stopped (and is then reset)."""
        self._runner = None
        if not self._stopping.is_set():
            return False
        self._stopping.clear()
        return True

    def _closing(self) -> bool:
        """``close()``: True to release the connections now; False when ``batches()`` runs
        in another thread or task, which is then stopped and releases them as it ends."""
        runner = self._runner
        if runner is None or runner == self._me() or _gone(runner):
            self._stopping.clear()
            return True
        self.stop()
        return False

    def __repr__(self) -> str:
        return f"<{self._face} consumer={self.consumer!r} tables={self._core.tables!r}>"


def _gone(runner: object) -> bool:
    """Whether the thread or task that ran ``batches()`` has ended, leaving its generator
    suspended (left with ``break`` or ``return``): nobody will resume it to release."""
    if isinstance(runner, threading.Thread):
        return not runner.is_alive()
    if isinstance(runner, asyncio.Task):
        return runner.done()
    return False
