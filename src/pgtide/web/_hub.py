"""The console's one view of the database: samples taken by one task, pushed to every page.

A :class:`Hub` lives as long as the app. It LISTENs (with :class:`pgtide.aio.Listener`) on
the wake-up channels the features already NOTIFY (``pgtide_events`` on a publish and
``pgtide_changes`` on a captured statement, while a worker or a feed waits for them), and
takes a new :class:`Sample` when one arrives, or after ``interval`` seconds without one (a
handler finishing or a consumer acking sends no NOTIFY). Pages and ``/metrics`` read the
newest sample; nothing a browser does makes the database work harder, and the sampler
spaces its runs by their cost (at most ~5% of the time is spent sampling, whatever the size
of the tables).

The hub's listener also relays NOTIFY channels to the browser streams (``/sse/channels``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import traceback
from collections import deque
from collections.abc import AsyncIterator, Callable, Hashable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg

from .. import channel, events, ingest, schema
from ..aio import Listener
from ..connect import DsnLike, Resolved, aconnect, resolve
from ..errors import PgtideError
from ..events import Histogram
from ..feed import backfill, retention, sleepers, wal
from ..listen import Notification
from ..overview import Section
from ..session import Io, arun
from . import _queries

log = logging.getLogger("pgtide.web")
T = TypeVar("T")

WAKE_CHANNELS = ("pgtide_events", "pgtide_changes")
"""The channels pgtide's features NOTIFY on; the hub samples again when one speaks."""


@dataclass
class Sample:
    """What the database said at one moment: every page and ``/metrics`` render from this."""

    at: datetime
    ok: bool = False
    error: str | None = None
    took: float = 0.0
    sections: dict[str, Section] = field(default_factory=dict)
    consumers: list[dict[str, Any]] = field(default_factory=list)
    changes: dict[str, Any] | None = None
    events_by_name: dict[str, dict[str, int]] = field(default_factory=dict)
    retries: dict[str, int] = field(default_factory=dict)
    """Attempts past the first of the events in the table, by name."""
    durations: dict[str, Histogram] = field(default_factory=dict)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    rejects_total: int = 0
    published: int = 0
    captured: int = 0
    backfills: list[dict[str, Any]] = field(default_factory=list)
    """Each recorded backfill (``pgtide.feed.backfills()``: table, rows, chunks, times)."""

    @property
    def capture(self) -> list[dict[str, Any]]:
        """The relay's slots (WAL capture): slot, active, wal status, lag bytes, lag
        seconds, last relayed at; empty when no table is captured from the WAL."""
        section = self.sections.get("capture")
        return section.as_dicts() if section else []

    @property
    def event_states(self) -> dict[str, int]:
        """Events of pgtide's own table by state, every state present (0 when none)."""
        totals = dict.fromkeys(events.STATES, 0)
        for counts in self.events_by_name.values():
            for state, n in counts.items():
                totals[state] = totals.get(state, 0) + n
        return totals

    def section(self, title: str) -> Section | None:
        return self.sections.get(title)


@dataclass(frozen=True)
class Point:
    """One point of the plots: rates since the previous sample, and lags."""

    t: float
    published: float
    captured: float
    done: float
    lag_changes: dict[str, int]
    lag_seconds: dict[str, float]


class FinishedEvents:
    """Handler durations of the events of ``pgtide.events`` seen to finish since the console
    started, as histograms by event name: each finish counted once, so the counts only grow
    (Prometheus' histogram is a counter).

    Each sample reads the events that finished since the previous one (less :attr:`MARGIN`,
    for a finish committed late), among the newest 2,000 events and those that were running
    at the previous sample. A finish the console cannot see is not counted: one that runs and
    ends between two samples while more than 2,000 newer events exist (a deep backlog), or
    one whose event was purged before the next sample."""

    MARGIN = timedelta(seconds=60)

    def __init__(self) -> None:
        self.by_name: dict[str, Histogram] = {}
        self._started: datetime | None = None
        self._since: datetime | None = None
        self._running: list[int] = []
        self._counted: set[tuple[int, datetime]] = set()

    def sample(self) -> Io[dict[str, Histogram]]:
        """Count the finishes since the previous sample; a copy of the histograms."""
        now = yield from _queries.database_now()
        if self._started is None or self._since is None:
            self._started = now  # the first sample: count what finishes from now on
        else:
            for id_, name, finished_at, seconds in (
                yield from _queries.finished_since(self._since, self._running)
            ):
                if (id_, finished_at) not in self._counted:
                    self._counted.add((id_, finished_at))
                    self.by_name.setdefault(name, Histogram()).observe(seconds)
        self._running = yield from _queries.running_event_ids()
        self._since = max(self._started, now - self.MARGIN)
        since = self._since
        self._counted = {key for key in self._counted if key[1] >= since}
        return {name: h.copy() for name, h in self.by_name.items()}


class Hub:
    """Samples the database for the console, relays NOTIFY channels; one per app."""

    def __init__(self, dsn: DsnLike = None, *, interval: float = 1.0, history: int = 300) -> None:
        self._dsn = dsn
        self.interval = interval
        self.resolved: Resolved | None = None
        self.sample = Sample(datetime.now(UTC), error="not sampled yet")
        self.history: deque[Point] = deque(maxlen=history)
        self.version = 0
        self._changed = asyncio.Condition()
        self._poke = asyncio.Event()
        self._lock = asyncio.Lock()
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._health: psycopg.AsyncConnection[Any] | None = None
        self._health_lock = asyncio.Lock()
        self.listener: Listener | None = None
        self._task: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self.notifications = 0
        self.change_version = 0
        self._change_event = asyncio.Event()
        self._stopping = False
        self.finished = FinishedEvents()
        self._streams = 0  # browser feed streams open: the hub waits for changes for them
        self._waiting: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Resolve the database, LISTEN, take the first sample, then sample in a task."""
        self.resolved = await asyncio.to_thread(resolve, self._dsn)
        self.listener = Listener(dsn=self.resolved, application_name="pgtide listen (web)")
        await self.listener.start()
        for name in WAKE_CHANNELS:
            await self.listener.subscribe(name, self._woken, id=f"web-{name}")
        await self._take()
        self._task = asyncio.create_task(self._loop(), name="pgtide-web-sampler")

    async def close(self) -> None:
        self._stopping = True
        self._poke.set()
        await self._stop_waiting()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.listener is not None:
            await self.listener.close()
        for conn in (self._conn, self._health):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
        async with self._changed:
            self.version += 1
            self._changed.notify_all()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def _woken(self, note: Notification) -> None:
        self.notifications += 1
        self._poke.set()
        if note.channel == "pgtide_changes":
            self._changes_maybe()

    async def changes_after(self, version: int, timeout: float) -> bool:
        """Wait until a change was captured after ``change_version`` was ``version`` (its
        NOTIFY arrived), or ``timeout`` seconds; whether one was."""
        if self.change_version != version:
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._change_event.wait()
        return self.change_version != version

    @contextlib.asynccontextmanager
    async def waiting_for_changes(self) -> AsyncIterator[None]:
        """While a browser follows changes: the hub registers as a waiting feed, so that the
        capture triggers NOTIFY (they do only while some feed waits; see
        :mod:`pgtide.feed.sleepers`)."""
        self._streams += 1
        if self._waiting is None or self._waiting.done():
            self._waiting = asyncio.create_task(self._wait_for_changes(), name="pgtide-web-wait")
        try:
            yield
        finally:
            self._streams -= 1
            if self._streams == 0:
                await self._stop_waiting()

    async def _stop_waiting(self) -> None:
        task, self._waiting = self._waiting, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _wait_for_changes(self) -> None:
        """Hold the registration on a connection of its own, made again after an outage.
        After each registration the streams read again: at once (a writer may have decided
        not to notify just before), then while the transactions open in the snapshot after
        it run (see :class:`~pgtide.feed.sleepers.Watch`)."""
        conn: psycopg.AsyncConnection[Any] | None = None
        registration, watch = sleepers.registration(), sleepers.Watch(cap=self.interval)
        watching = False  # transactions are watched: wake the streams when they end
        try:
            while True:
                try:
                    if conn is None or conn.closed:
                        conn = await aconnect(self.resolved, application_name="pgtide web wait")
                        registration = sleepers.registration()
                    fresh, recheck = await arun(conn, sleepers.check_io(registration, watch))
                    if fresh or watching:
                        self._changes_maybe()
                    watching = recheck is not None
                    await asyncio.sleep(self.interval if recheck is None else recheck)
                except (psycopg.Error, PgtideError, OSError) as exc:
                    log.warning(
                        "pgtide web: waiting for changes: %s", _describe(exc, self.resolved)
                    )
                    if conn is not None:
                        with contextlib.suppress(Exception):
                            await conn.close()
                    conn = None
                    await asyncio.sleep(self.interval)
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()

    def _changes_maybe(self) -> None:
        """Wake the streams: a change may have been captured without a NOTIFY."""
        self.change_version += 1
        self._change_event.set()
        self._change_event = asyncio.Event()

    # -- database work ----------------------------------------------------------------------

    async def run(self, make: Callable[[], Io[T]]) -> T:
        """Run one ``Io`` on the hub's connection (opened again after an outage)."""
        async with self._lock:
            return await self._run_locked(make)

    async def _run_locked(self, make: Callable[[], Io[T]]) -> T:
        if self._conn is None or self._conn.closed:
            self._conn = await aconnect(self.resolved, application_name="pgtide web")
        try:
            return await arun(self._conn, make())
        except psycopg.OperationalError:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None
            raise

    async def healthy(self, timeout: float = 2.0) -> tuple[bool, str]:
        """Whether the database answers ``SELECT 1`` within ``timeout`` seconds, and why not."""
        async with self._health_lock:
            try:
                async with asyncio.timeout(timeout):
                    if self._health is None or self._health.closed:
                        self._health = await aconnect(
                            self.resolved, application_name="pgtide web health"
                        )
                    await self._health.execute("SELECT 1")
                return True, "ok"
            except (TimeoutError, psycopg.Error, PgtideError, OSError) as exc:
                if self._health is not None:
                    with contextlib.suppress(Exception):
                        await self._health.close()
                self._health = None
                return False, _describe(exc, self.resolved)

    # -- sampling ---------------------------------------------------------------------------

    async def _loop(self) -> None:
        while not self._stopping:
            pause = max(self.interval / 10, 20 * self.sample.took)  # <= ~5% of the time
            woken = False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(self.interval, pause)):
                    await self._poke.wait()
                    woken = True
            if self._stopping:
                return
            if woken:  # a burst of NOTIFY: one sample for all of it, after a short pause
                await asyncio.sleep(pause)
            self._poke.clear()
            await self._take()

    async def _take(self) -> None:
        began = time.monotonic()
        sample = Sample(datetime.now(UTC))
        try:
            async with self._lock:
                await self._run_locked(lambda: self._collect(sample))
            sample.ok = True
        except (psycopg.Error, PgtideError, OSError) as exc:
            sample.error = _describe(exc, self.resolved)
            log.warning("pgtide web: sampling failed: %s", sample.error)
        except Exception as exc:  # a bug must not end the sampler: keep the console up
            sample.error = scrub(f"{type(exc).__name__}: {exc}", self.resolved)
            log.error("pgtide web: sampling failed\n%s", scrubbed_traceback(exc, self.resolved))
        sample.took = time.monotonic() - began
        self._record(sample)
        async with self._changed:
            self.sample = sample
            self.version += 1
            self._changed.notify_all()

    def _collect(self, sample: Sample) -> Io[None]:
        for make in (schema.overview, channel.overview, events.overview, ingest.overview):
            for section in (yield from make()):
                sample.sections[section.title] = section
        has_events, has_changes, has_rejects = yield from _queries.installed()
        if has_changes:
            now = sample.at
            for c in (yield from retention.consumers_io()):
                oldest = c.get("oldest_pending")
                lag = (now - oldest).total_seconds() if oldest is not None else 0.0
                sample.consumers.append(
                    {
                        "name": c["name"],
                        "pending": int(c["pending"]),
                        "lag_seconds": max(lag, 0.0),
                        "acked_at": c["acked_at"],
                        "tables": c["tables"],
                        "position": str(c["position"]),
                    }
                )
            rows, size, oldest_change = yield from retention.size_io()
            sample.changes = {"rows": rows, "bytes": size, "oldest": oldest_change}
            # WAL capture's relay: its slot and lag (no section when no table uses the WAL)
            for section in (yield from wal.overview_io()):
                sample.sections[section.title] = section
            sample.backfills = yield from backfill.status_io()
        if has_events:
            sample.events_by_name, sample.retries = yield from _queries.events_by_name()
            sample.durations = yield from self.finished.sample()
        if has_events and has_changes:
            sample.published, sample.captured = yield from _queries.counters()
        if has_rejects:
            sample.rejects = yield from _queries.rejects(50)
            sample.rejects_total = yield from _queries.rejects_total()

    def _record(self, sample: Sample) -> None:
        if not sample.ok:
            return
        last = self.sample
        t = sample.at.timestamp()
        dt = t - last.at.timestamp() if last.ok else 0.0

        def rate(now: int, before: int) -> float:
            return max(now - before, 0) / dt if dt > 0 else 0.0

        self.history.append(
            Point(
                t,
                rate(sample.published, last.published),
                rate(sample.captured, last.captured),
                rate(sample.event_states["done"], last.event_states["done"]),
                {c["name"]: c["pending"] for c in sample.consumers},
                {c["name"]: c["lag_seconds"] for c in sample.consumers},
            )
        )

    async def refresh(self) -> None:
        """Take a sample now (after an action), and push it to every page."""
        await self._take()

    async def wait(self, seen: int, timeout: float) -> int:
        """Wait until a sample newer than version ``seen`` (or ``timeout`` s); the version."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._changed.wait_for(lambda: self.version != seen or self._stopping)
            return self.version

    # -- NOTIFY relay -------------------------------------------------------------------------

    async def follow_channel(self, name: str, deliver: Callable[[Notification], None]) -> Hashable:
        """Subscribe ``deliver`` to channel ``name`` on the hub's listener; its subscriber id."""
        assert self.listener is not None
        sid = f"web-sse-{next(self._ids)}"
        await self.listener.subscribe(name, deliver, id=sid)
        return sid

    async def unfollow(self, sid: Hashable, name: str) -> None:
        if self.listener is not None:
            with contextlib.suppress(PgtideError):
                await self.listener.unsubscribe(sid, name)


def _describe(exc: BaseException, resolved: Resolved | None) -> str:
    """One line about a failure, with no password in it."""
    if isinstance(exc, TimeoutError):
        text = "the database did not answer in time"
    else:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return scrub(text, resolved)


def scrubbed_traceback(exc: BaseException, resolved: Resolved | None) -> str:
    """``exc``'s traceback for the log, with no password in it."""
    return scrub("".join(traceback.format_exception(exc)).rstrip(), resolved)


def scrub(text: str, resolved: Resolved | None) -> str:
    """``text`` with the password of ``resolved`` (and any DSN password) masked."""
    if resolved is not None:
        password = resolved.params.get("password")
        if password:
            text = text.replace(password, "***")
    from ..connect import mask_dsn

    return mask_dsn(text)
