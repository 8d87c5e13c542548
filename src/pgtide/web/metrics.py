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

import os
import statistics
import time
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ._hub import Hub


class _HasStatus(Protocol):
    def status(self) -> Any: ...


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
        pending = GaugeMetricFamily(
            "pgtide_feed_consumer_pending_changes",
            "Changes not yet acknowledged by each consumer",
            labels=["consumer"],
        )
        lag = GaugeMetricFamily(
            "pgtide_feed_consumer_lag_seconds",
            "Age of the oldest change a consumer has not acknowledged (0 when caught up)",
            labels=["consumer"],
        )
        for c in s.consumers:
            pending.add_metric([c["name"]], c["pending"])
            lag.add_metric([c["name"]], c["lag_seconds"])
        yield pending
        yield lag
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
        # events
        by = GaugeMetricFamily(
            "pgtide_events", "Events of pgtide.events by name and state", labels=["name", "state"]
        )
        for name, counts in sorted(s.events_by_name.items()):
            for state, n in counts.items():
                by.add_metric([name, state], n)
        yield by
        yield CounterMetricFamily(
            "pgtide_events_published", "Events ever published (sequence)", s.published
        )
        section = s.section("events")
        if section is not None:
            unhandled = GaugeMetricFamily(
                "pgtide_events_unhandled",
                "Waiting events that no live worker has a handler for",
                labels=["table"],
            )
            workers = GaugeMetricFamily(
                "pgtide_event_workers", "Live event workers", labels=["table"]
            )
            for row in section.as_dicts():
                unhandled.add_metric([row["table"]], row["unhandled"])
                workers.add_metric([row["table"]], row["workers"])
            yield unhandled
            yield workers
        duration = GaugeMetricFamily(
            "pgtide_event_duration_seconds",
            "Handler duration of the newest 2000 finished events, by quantile",
            labels=["name", "quantile"],
        )
        for name, values in sorted(s.durations.items()):
            for q, v in _quantiles(values):
                duration.add_metric([name, q], v)
        yield duration
        # ingest
        files = s.section("ingested files")
        rows = CounterMetricFamily(
            "pgtide_ingest_rows", "Rows written from each file", labels=["watcher", "path"]
        )
        rejected = CounterMetricFamily(
            "pgtide_ingest_rejects", "Lines rejected from each file", labels=["watcher", "path"]
        )
        offset = GaugeMetricFamily(
            "pgtide_ingest_offset_bytes",
            "Committed offset in each file",
            labels=["watcher", "path"],
        )
        behind = GaugeMetricFamily(
            "pgtide_ingest_lag_bytes",
            "Bytes of each file not yet committed (files this host can see)",
            labels=["watcher", "path"],
        )
        for f in files.as_dicts() if files else []:
            key = [str(f["watcher"]), str(f["path"])]
            rows.add_metric(key, f["rows"])
            rejected.add_metric(key, f["rejected"])
            offset.add_metric(key, f["offset"])
            size = _size(str(f["path"]))
            if size is not None:
                behind.add_metric(key, max(size - int(f["offset"]), 0))
        yield rows
        yield rejected
        yield offset
        yield behind


def slot_metrics(slots: list[dict[str, Any]]) -> Iterator[Metric]:
    """The WAL relay's slots (the feed's "capture" section) as metrics labelled ``slot``."""
    lag_bytes = GaugeMetricFamily(
        "pgtide_slot_lag_bytes", "WAL the relay's slot retains (not yet relayed)", labels=["slot"]
    )
    lag_seconds = GaugeMetricFamily(
        "pgtide_slot_lag_seconds",
        "Seconds since the relay last knew it had relayed everything",
        labels=["slot"],
    )
    active = GaugeMetricFamily(
        "pgtide_slot_active", "1 while a relay reads the slot", labels=["slot"]
    )
    relayed = GaugeMetricFamily(
        "pgtide_slot_last_relayed_timestamp_seconds",
        "When the relay last wrote to the change log (Unix time)",
        labels=["slot"],
    )
    for c in slots:
        key = [str(c["slot"])]
        active.add_metric(key, int(bool(c["active"])))
        if c["lag bytes"] is not None:
            lag_bytes.add_metric(key, int(c["lag bytes"]))
        if c["lag seconds"] is not None:
            lag_seconds.add_metric(key, float(c["lag seconds"]))
        if isinstance(c["last relayed at"], datetime):
            relayed.add_metric(key, c["last relayed at"].timestamp())
    yield from (lag_bytes, lag_seconds, active, relayed)


def _quantiles(values: list[float]) -> list[tuple[str, float]]:
    if not values:
        return []
    if len(values) == 1:
        return [("0.5", values[0]), ("0.9", values[0]), ("0.99", values[0])]
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return [("0.5", cuts[49]), ("0.9", cuts[89]), ("0.99", cuts[98])]


def _size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def listener_metrics(status: dict[str, Any], name: str, prefix: str) -> Iterator[Metric]:
    """A listener's ``status()`` counters as metrics labelled ``listener=name``."""
    for key, help_ in (
        ("received", "Notifications received"),
        ("dispatched", "Notifications handed to subscribers"),
        ("callback_errors", "Callbacks that raised"),
        ("reconnects", "Reconnections after a lost connection"),
        ("dropped", "Notifications dropped by a full queue"),
    ):
        counter = CounterMetricFamily(f"{prefix}_{key}", help_, labels=["listener"])
        counter.add_metric([name], int(status.get(key) or 0))
        yield counter
    connected = GaugeMetricFamily(
        f"{prefix}_connected", "1 while the listener is connected", labels=["listener"]
    )
    connected.add_metric([name], int(bool(status.get("connected"))))
    yield connected


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
        labels = ["watcher", "path"]
        rows = CounterMetricFamily("pgtide_watcher_rows", "Rows written", labels=labels)
        rejected = CounterMetricFamily("pgtide_watcher_rejects", "Lines rejected", labels=labels)
        behind = GaugeMetricFamily("pgtide_watcher_lag_bytes", "Bytes not committed", labels=labels)
        for f in st.files:
            rows.add_metric([self._name, f.path], f.rows_written)
            rejected.add_metric([self._name, f.path], f.rejected)
            behind.add_metric([self._name, f.path], f.bytes_behind)
        lines = CounterMetricFamily(
            "pgtide_watcher_lines_read", "Lines read by this run", labels=["watcher"]
        )
        lines.add_metric([self._name], st.lines_read)
        running = GaugeMetricFamily("pgtide_watcher_running", "1 while running", labels=["watcher"])
        running.add_metric([self._name], int(st.running))
        yield from (rows, rejected, behind, lines, running)


class EventsCollector(Collector):
    """A :class:`pgtide.Events`' table by state (``events.status()``, one query a scrape):
    ``pgtide_events_state{events=..., state=...}``, ``unhandled`` included."""

    def __init__(self, events: _HasStatus, name: str = "default") -> None:
        self._events, self._name = events, name

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "pgtide_events_state", "Events by state", labels=["events", "state"]
        )
        for state, n in self._events.status().items():
            gauge.add_metric([self._name, state], n)
        yield gauge
