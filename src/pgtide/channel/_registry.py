"""Who listens to what: channels, subscribers and their mute states.

A channel is known once it has a subscriber or was added (``add_channels``); an added channel
is LISTENed even without a subscriber (its notifications are counted and reach ``iter()``).

Every change happens under one lock and publishes a new immutable ``routes`` mapping
(channel -> subscribers to call), so the receive path reads it without a lock. ``version``
grows whenever the set of channels that must be LISTENed changes; the connection thread
applies that set and reports the version it applied.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from ..errors import UnknownSubscriber
from ..notify import check_channel
from ._notification import Notification

Callback = Callable[[Notification], Any]


@dataclass(slots=True, eq=False)
class Subscriber:
    id: Hashable
    channel: str
    callback: Callback
    muted: bool = False


class Registry:
    """Channels, subscribers and mutes; thread-safe, readable without a lock via ``routes``."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._subs: dict[str, dict[Hashable, Subscriber]] = {}
        self._muted: set[str] = set()
        self._added: set[str] = set()  # LISTENed even without a subscriber
        self._auto = itertools.count(1)
        self.routes: dict[str, tuple[Subscriber, ...]] = {}
        self.version = 0

    # -- changes --------------------------------------------------------------------------

    def _publish(self, *channels: str) -> int:
        """Rebuild the routes of ``channels``; bump the version if the LISTEN set changed."""
        routes = dict(self.routes)
        for channel in channels:
            subs = self._subs.get(channel)
            if subs is not None and channel not in self._muted:
                live = tuple(s for s in subs.values() if not s.muted)
                if live or channel in self._added:
                    routes[channel] = live  # () for an added channel: counted, nobody called
                    continue
            routes.pop(channel, None)
        if routes.keys() != self.routes.keys():
            self.version += 1
        self.routes = routes
        return self.version

    def _new_id(self) -> int:
        while True:
            candidate = next(self._auto)
            if not any(candidate in subs for subs in self._subs.values()):
                return candidate

    def subscribe(self, channel: str, callback: Callback, id: Hashable | None) -> tuple[Any, int]:
        check_channel(channel)
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        if id is not None:
            hash(id)  # a clear TypeError now rather than a confusing one later
        with self._lock:
            sub_id = self._new_id() if id is None else id
            subs = self._subs.setdefault(channel, {})
            previous = subs.get(sub_id)
            subs[sub_id] = Subscriber(
                sub_id, channel, callback, muted=previous.muted if previous else False
            )
            return sub_id, self._publish(channel)

    def unsubscribe(self, id: Hashable, channel: str | None) -> tuple[bool, int]:
        with self._lock:
            names = [channel] if channel is not None else list(self._subs)
            touched = []
            for name in names:
                subs = self._subs.get(name)
                if subs and subs.pop(id, None) is not None:
                    touched.append(name)
                    if not subs and name not in self._added:
                        del self._subs[name]
            return bool(touched), self._publish(*touched)

    def add_channels(self, channels: list[str]) -> int:
        """Know and LISTEN ``channels``, with or without subscribers."""
        for channel in channels:
            check_channel(channel)
        with self._lock:
            for channel in channels:
                self._subs.setdefault(channel, {})
                self._added.add(channel)
            return self._publish(*channels)

    def remove_channels(self, channels: list[str] | None) -> tuple[bool, int]:
        """Forget ``channels`` (every channel when None): subscribers, mute state, added."""
        with self._lock:
            if channels is None:
                channels = list(self._subs)
            existed = False
            for channel in channels:
                existed = self._subs.pop(channel, None) is not None or existed
                self._muted.discard(channel)
                self._added.discard(channel)
            return existed, self._publish(*channels)

    def set_channels_muted(self, channels: list[str] | None, muted: bool) -> int:
        """Mute or unmute ``channels``; None means every known channel (and, to unmute,
        every muted name, known or not)."""
        for channel in channels or ():
            check_channel(channel)
        with self._lock:
            if channels is None:
                channels = list(self._subs) + (list(self._muted) if not muted else [])
            if muted:
                self._muted.update(channels)
            else:
                self._muted.difference_update(channels)
            return self._publish(*channels)

    def set_subscriber_muted(self, id: Hashable, channel: str | None, muted: bool) -> int:
        with self._lock:
            names = [channel] if channel is not None else list(self._subs)
            found = [n for n in names if id in self._subs.get(n, {})]
            if not found:
                where = f"on channel {channel!r}" if channel is not None else "on any channel"
                raise UnknownSubscriber(
                    f"no subscriber with id {id!r} {where}; subscribed ids: "
                    f"{sorted({repr(i) for s in self._subs.values() for i in s})}"
                )
            for name in found:
                self._subs[name][id].muted = muted
            return self._publish(*found)

    # -- views ----------------------------------------------------------------------------

    def channels(self) -> list[str]:
        """Every known channel: with a subscriber (muted or not), or added."""
        with self._lock:
            return list(self._subs)

    def active(self) -> tuple[int, frozenset[str]]:
        """The LISTEN set (channels not muted with a subscriber not muted) and its version."""
        with self._lock:
            return self.version, frozenset(self.routes)

    def muted_channels(self) -> list[str]:
        with self._lock:
            return sorted(self._muted)

    def added_channels(self) -> list[str]:
        with self._lock:
            return [c for c in self._subs if c in self._added]

    def subscribers(self) -> dict[str, dict[Hashable, bool]]:
        """channel -> {subscriber id: muted}."""
        with self._lock:
            return {ch: {i: s.muted for i, s in subs.items()} for ch, subs in self._subs.items()}
