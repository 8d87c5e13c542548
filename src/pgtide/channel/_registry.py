"""Who listens to what: channels, subscribers and their mute states.

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
        self._auto = itertools.count(1)
        self.routes: dict[str, tuple[Subscriber, ...]] = {}
        self.version = 0

    # -- changes --------------------------------------------------------------------------

    def _publish(self, *channels: str) -> int:
        """Rebuild the routes of ``channels``; bump the version if the LISTEN set changed."""
        routes = dict(self.routes)
        for channel in channels:
            live: tuple[Subscriber, ...] = ()
            subs = self._subs.get(channel)
            if subs and channel not in self._muted:
                live = tuple(s for s in subs.values() if not s.muted)
            if live:
                routes[channel] = live
            else:
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
                    if not subs:
                        del self._subs[name]
            return bool(touched), self._publish(*touched)

    def remove_channel(self, channel: str) -> tuple[bool, int]:
        with self._lock:
            existed = self._subs.pop(channel, None) is not None
            self._muted.discard(channel)
            return existed, self._publish(channel)

    def set_channel_muted(self, channel: str, muted: bool) -> int:
        check_channel(channel)
        with self._lock:
            if muted:
                self._muted.add(channel)
            else:
                self._muted.discard(channel)
            return self._publish(channel)

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
        """Every channel with at least one subscriber (muted or not)."""
        with self._lock:
            return list(self._subs)

    def active(self) -> tuple[int, frozenset[str]]:
        """The LISTEN set (channels not muted with a subscriber not muted) and its version."""
        with self._lock:
            return self.version, frozenset(self.routes)

    def muted_channels(self) -> list[str]:
        with self._lock:
            return sorted(self._muted)

    def subscribers(self) -> dict[str, dict[Hashable, bool]]:
        """channel -> {subscriber id: muted}."""
        with self._lock:
            return {ch: {i: s.muted for i, s in subs.items()} for ch, subs in self._subs.items()}
