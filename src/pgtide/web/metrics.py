"""Prometheus metrics: the console's ``/metrics``, and collectors for your own registry.

``/metrics`` is drawn from the hub's newest sample (see :mod:`pgtide.web`), so a scrape never
runs a query: it answers in well under a millisecond per hundred series, whatever the size of
the tables. ``pgtide_web_sample_age_seconds`` says how old the figures are.

Counters that live in one process (a listener's notifications, a watcher's rows) are only
known there: :class:`ListenerCollector`, :class:`FileWatcherCollector` and
:class:`EventsCollector` read a running object's public ``status()`` at scrape time::

    from prometheus_client import REGISTRY
    from pgtide.web.metrics import ListenerCollector
    REGISTRY.register(ListenerCollector(listener, name="orders"))
"""

from __future__ import annotations

import inspect
import operator
import os
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..events import BUCKETS, OUTCOMES, Histogram

if TYPE_CHECKING:
    from ._hub import Hub

__all__ = [
    "BUCKETS",
    "ConsoleCollector",
    "EventsCollector",
    "FileWatcherCollector",
    "Histogram",
    "ListenerCollector",
]


class _HasStatus(Protocol):
    def status(self) -> Any: ...


R = TypeVar("R")
Family = type[GaugeMetricFamily] | type[CounterMetricFamily]
Series = tuple[Family, str, str, Callable[[R], float | None]]
"""One metric drawn from rows: its kind, name, help, and its value for a row (None: none)."""


def gauge(name: str, help_: str, value: Callable[[R], float | None] | str) -> Series[R]:
    """A gauge drawn from rows (see :func:`labelled`); a ``str`` value names a column."""
    return (GaugeMetricFamily, name, help_, _value(value))


def counter(name: str, help_: str, value: Callable[[R], float | None] | str) -> Series[R]:
    """A counter drawn from rows (see :func:`labelled`); a ``str`` value names a column."""
    return (CounterMetricFamily, name, help_, _value(value))


def _value(value: Callable[[R], float | None] | str) -> Callable[[R], float | None]:
    if isinstance(value, str):  # rows are mappings then
        return cast("Callable[[R], float | None]", operator.itemgetter(value))
    return value


def labelled(
    rows: Iterable[R], labels: list[str], key: Callable[[R], list[str]], series: list[Series[R]]
) -> Iterator[Metric]:
    """The ``series`` of ``rows``, each row's value labelled ``key(row)``: how every
    per-consumer, per-slot, per-table and per-file metric here is made."""
    families = [(kind(name, help_, labels=labels), value) for kind, name, help_, value in series]
    for row in rows:
        labels_of_row = key(row)
        for family, value in families:
            v = value(row)
            if v is not None:
                family.add_metric(labels_of_row, v)
    yield from (family for family, _ in families)


def histograms(
    name: str, help_: str, by_name: dict[str, Histogram], events: str | None = None
) -> HistogramMetricFamily:
    """One histogram per event name (labelled ``name``, after ``events`` when given): the
    console's handler durations and the workers'."""
    first = [] if events is None else [events]
    labels = ["name"] if events is None else ["events", "name"]
    family = HistogramMetricFamily(name, help_, labels=labels)
    for event_name, histogram in sorted(by_name.items()):
        family.add_metric([*first, event_name], histogram.cumulative(), histogram.total)
    return family


class ConsoleCollector(Collector):
    """Every feature's metrics from the hub's newest sample (what ``/metrics`` serves)."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    def collect(self) -> Iterator[Metric]:
        hub = self._hub
        s = hub.sample
        yield GaugeMetricFamily("pgtide_up", "1 if the last sample reached the database", int(s.ok))
        yield GaugeMetricFamily(
            "pgtide_web_sample_age_seconds",
            "Seconds since the sample these figures come from",
            max(time.time() - s.at.timestamp(), 0.0),
        )
        yield GaugeMetricFamily(
            "pgtide_web_sample_duration_seconds", "How long the last sample took", s.took
        )
        # listen
        listeners = s.section("listeners")
        yield GaugeMetricFamily(
            "pgtide_listen_connections",
            "LISTEN connections of pgtide in this database (pg_stat_activity)",
            len(listeners.rows) if listeners else 0,
        )
        if hub.listener is not None:
            yield from listener_metrics(hub.listener.status(), "web", "pgtide_web_listener")
        # feed
        yield from labelled(
            s.consumers,
            ["consumer"],
            lambda c: [c["name"]],
            [
                gauge(
                    "pgtide_feed_consumer_pending_changes",
                    "Changes not yet acknowledged by each consumer",
                    "pending",
                ),
                gauge(
                    "pgtide_feed_consumer_lag_seconds",
                    "Age of the oldest change a consumer has not acknowledged (0 when caught up)",
                    "lag_seconds",
                ),
            ],
        )
        if s.changes is not None:
            yield GaugeMetricFamily(
                "pgtide_feed_changes_rows", "Rows in pgtide.changes", s.changes["rows"]
            )
            yield GaugeMetricFamily(
                "pgtide_feed_changes_bytes", "Size of pgtide.changes on disk", s.changes["bytes"]
            )
            yield CounterMetricFamily(
                "pgtide_feed_changes_captured", "Changes ever captured (sequence)", s.captured
            )
        if s.capture:
            yield from slot_metrics(s.capture)
        if s.backfills:
            yield from backfill_metrics(s.backfills)
        # events
        by = GaugeMetricFamily(
            "pgtide_events", "Events of pgtide.events by name and state", labels=["name", "state"]
        )
        for name, counts in sorted(s.events_by_name.items()):
            for state, n in counts.items():
                by.add_metric([name, state], n)
        yield by
        retries = GaugeMetricFamily(
            "pgtide_event_retries",
            "Attempts past the first of the events pgtide.events holds, by name (a retried "
            "event counts each retry; purged events leave the count)",
            labels=["name"],
        )
        for name, n in sorted(s.retries.items()):
            retries.add_metric([name], n)
        yield retries
        yield CounterMetricFamily(
            "pgtide_events_published", "Events ever published (sequence)", s.published
        )
        section = s.section("events")
        yield from labelled(
            section.as_dicts() if section else [],
            ["table"],
            lambda row: [row["table"]],
            [
                gauge(
                    "pgtide_events_unhandled",
                    "Waiting events that no live worker has a handler for",
                    "unhandled",
                ),
                gauge("pgtide_event_workers", "Live event workers", "workers"),
            ],
        )
        yield histograms(
            "pgtide_event_duration_seconds",
            "Handler duration of the events of pgtide.events seen to finish (done, dead or "
            "cancelled while running) since this console started",
            s.durations,
        )
        # ingest
        files = s.section("ingested files")
        yield from labelled(
            files.as_dicts() if files else [],
            ["watcher", "path"],
            lambda f: [str(f["watcher"]), str(f["path"])],
            [
                counter("pgtide_ingest_rows", "Rows written from each file", "rows"),
                counter(
                    "pgtide_ingest_rejects",
                    "Lines rejected from each file",
                    "rejected",
                ),
                gauge(
                    "pgtide_ingest_offset_bytes",
                    "Committed offset in each file",
                    "offset",
                ),
                gauge(
                    "pgtide_ingest_lag_bytes",
                    "Bytes of each file not yet committed (files this host can see)",
                    lambda f: _behind(str(f["path"]), int(f["offset"])),
                ),
            ],
        )


def slot_metrics(slots: list[dict[str, Any]]) -> Iterator[Metric]:
    """The WAL relay's slots (the feed's "capture" section) as metrics labelled ``slot``."""
    yield from labelled(
        slots,
        ["slot"],
        lambda c: [str(c["slot"])],
        [
            gauge(
                "pgtide_slot_lag_bytes",
                "WAL the relay's slot retains (not yet relayed)",
                lambda c: _number(c["lag bytes"]),
            ),
            gauge(
                "pgtide_slot_lag_seconds",
                "Seconds since the relay last knew it had relayed everything",
                lambda c: _number(c["lag seconds"]),
            ),
            gauge(
                "pgtide_slot_active",
                "1 while a relay reads the slot",
                lambda c: int(bool(c["active"])),
            ),
            gauge(
                "pgtide_slot_failover",
                "1 for a failover slot (kept on standbys that sync slots), 0 for one lost "
                "with its primary; absent before PostgreSQL 17",
                lambda c: None if c.get("failover") is None else int(bool(c["failover"])),
            ),
            gauge(
                "pgtide_slot_last_relayed_timestamp_seconds",
                "When the relay last wrote to the change log (Unix time)",
                lambda c: _timestamp(c["last relayed at"]),
            ),
        ],
    )


def backfill_metrics(backfills: list[dict[str, Any]]) -> Iterator[Metric]:
    """Each recorded backfill's progress, labelled ``table``."""
    yield from labelled(
        backfills,
        ["table"],
        lambda b: [str(b["table"])],
        [
            gauge("pgtide_backfill_rows", "Rows a backfill has emitted so far", "rows"),
            gauge(
                "pgtide_backfill_paused",
                "1 while a backfill is paused (pgtide backfill resume TABLE)",
                lambda b: int(b["state"] == "paused"),
            ),
            gauge(
                "pgtide_backfill_done",
                "1 once a backfill has emitted every row",
                lambda b: int(b["state"] == "done"),
            ),
        ],
    )


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _timestamp(value: Any) -> float | None:
    return value.timestamp() if isinstance(value, datetime) else None


def _behind(path: str, offset: int) -> int | None:
    """Bytes of the file at ``path`` past ``offset`` (None when this host cannot see it)."""
    try:
        return max(os.stat(path).st_size - offset, 0)
    except OSError:
        return None


def _count(key: str) -> Callable[[dict[str, Any]], float]:
    return lambda status: int(status.get(key) or 0)


def listener_metrics(status: dict[str, Any], name: str, prefix: str) -> Iterator[Metric]:
    """A listener's ``status()`` counters as metrics labelled ``listener=name``."""
    counters: list[Series[dict[str, Any]]] = [
        counter(f"{prefix}_{key}", help_, _count(key))
        for key, help_ in (
            ("received", "Notifications received"),
            ("dispatched", "Notifications handed to subscribers"),
            ("callback_errors", "Callbacks that raised"),
            ("reconnects", "Reconnections after a lost connection"),
            ("dropped", "Notifications dropped by a full queue"),
        )
    ]
    connected: Series[dict[str, Any]] = gauge(
        f"{prefix}_connected",
        "1 while the listener is connected",
        lambda st: int(bool(st.get("connected"))),
    )
    yield from labelled([status], ["listener"], lambda _: [name], [*counters, connected])


class ListenerCollector(Collector):
    """A :class:`pgtide.Listener`'s (or ``pgtide.aio.Listener``'s) counters, from ``status()``:
    ``pgtide_listener_received_total``, ``..._dispatched_total``, ``..._callback_errors_total``,
    ``..._reconnects_total``, ``..._dropped_total`` and ``pgtide_listener_connected``."""

    def __init__(self, listener: _HasStatus, name: str = "default") -> None:
        self._listener, self._name = listener, name

    def collect(self) -> Iterator[Metric]:
        yield from listener_metrics(self._listener.status(), self._name, "pgtide_listener")


class FileWatcherCollector(Collector):
    """A :class:`pgtide.FileWatcher`'s figures, from ``status()``: rows written, rejects,
    lines read this run, and bytes not yet committed, per file."""

    def __init__(self, watcher: _HasStatus, name: str = "default") -> None:
        self._watcher, self._name = watcher, name

    def collect(self) -> Iterator[Metric]:
        st = self._watcher.status()
        yield from labelled(
            st.files,
            ["watcher", "path"],
            lambda f: [self._name, f.path],
            [
                counter("pgtide_watcher_rows", "Rows written", lambda f: f.rows_written),
                counter("pgtide_watcher_rejects", "Lines rejected", lambda f: f.rejected),
                gauge("pgtide_watcher_lag_bytes", "Bytes not committed", lambda f: f.bytes_behind),
            ],
        )
        yield from labelled(
            [st],
            ["watcher"],
            lambda _: [self._name],
            [
                counter(
                    "pgtide_watcher_lines_read", "Lines read by this run", lambda st: st.lines_read
                ),
                gauge("pgtide_watcher_running", "1 while running", lambda st: int(st.running)),
            ],
        )


class EventsCollector(Collector):
    """A :class:`pgtide.Events`' (or ``pgtide.aio.Events``') figures.

    Its workers' counters in this process, from :meth:`~pgtide.Events.worker_stats` (no
    query): ``pgtide_worker_handler_runs_total{events,name,outcome}`` (outcome: done, failed
    (will retry), dead, cancelled), the histogram ``pgtide_worker_handler_duration_seconds
    {events,name}``, ``pgtide_worker_handlers_running{events}`` and ``pgtide_workers{events}``.
    With ``states`` (the default for the blocking face; the asyncio face's ``status()`` is
    a coroutine, so not there), the table by state from ``status()`` (one query a scrape):
    ``pgtide_events_state{events,state}``, ``unhandled`` included.
    """

    def __init__(self, events: Any, name: str = "default", states: bool | None = None) -> None:
        asynchronous = inspect.iscoroutinefunction(events.status)
        if states and asynchronous:
            raise ValueError("states=True needs the blocking pgtide.Events (a scrape cannot await)")
        self._events, self._name = events, name
        self._states = not asynchronous if states is None else states

    def collect(self) -> Iterator[Metric]:
        stats = self._events.worker_stats()
        name = self._name
        runs = CounterMetricFamily(
            "pgtide_worker_handler_runs",
            "Handler runs that ended, by event name and outcome (failed: will retry)",
            labels=["events", "name", "outcome"],
        )
        for event_name, counts in stats["by_name"].items():
            for outcome in OUTCOMES:
                runs.add_metric([name, event_name, outcome], counts[outcome])
        yield runs
        yield histograms(
            "pgtide_worker_handler_duration_seconds",
            "Seconds each handler run took, by event name",
            stats["durations"],
            events=name,
        )
        now: list[Series[dict[str, Any]]] = [
            gauge(metric, help_, _count(key))
            for metric, help_, key in (
                ("pgtide_worker_handlers_running", "Handlers running now", "running"),
                ("pgtide_workers", "Workers running now", "workers"),
            )
        ]
        yield from labelled([stats], ["events"], lambda _: [name], now)
        if self._states:
            yield from labelled(
                [(state, n) for state, n in self._events.status().items() if isinstance(n, int)],
                ["events", "state"],
                lambda item: [name, item[0]],
                [gauge("pgtide_events_state", "Events by state", lambda item: item[1])],
            )
