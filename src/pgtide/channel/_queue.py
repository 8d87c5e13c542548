"""The bounded hand-off between the connection thread and the dispatcher.

Items are whole batches (every notification read from the socket at once), so the cost of
locking is paid per batch, not per message. The bound counts notifications. When it is
reached, ``when_full`` decides:

- ``"block"`` (default): stop reading the socket until there is room. Nothing is lost; the
  messages wait in PostgreSQL's notification queue (which is large, but shared by the server).
  Registrations and stop() still work meanwhile.
- ``"drop_oldest"``: keep reading, discard the oldest queued notifications.
- ``"drop_newest"``: keep reading, discard the notifications that do not fit.

Dropped notifications are counted (``status()["dropped"]``) and logged once per episode.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal, TypeAlias

from ..errors import ConfigError

logger = logging.getLogger("pgtide.listen")

WhenFull: TypeAlias = Literal["block", "drop_oldest", "drop_newest"]
POLICIES = ("block", "drop_oldest", "drop_newest")

Batch: TypeAlias = tuple[datetime, str, list[Any]]
"""(received_at, encoding, raw PGnotify list)."""


class Marker:
    """A control item that travels in order with the batches (e.g. "reconnected")."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


RECONNECTED = Marker("reconnected")
Item: TypeAlias = Batch | Marker


class BatchQueue:
    """A bounded FIFO of batches and markers for one producer and one consumer."""

    def __init__(self, maxsize: int, when_full: WhenFull) -> None:
        if maxsize < 1:
            raise ConfigError(f"queue_size must be at least 1, got {maxsize}")
        if when_full not in POLICIES:
            raise ConfigError(f"when_full must be one of {', '.join(POLICIES)}; got {when_full!r}")
        self.maxsize = maxsize
        self.when_full = when_full
        self._items: deque[Item] = deque()
        self._count = 0
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self._sleeping = False
        self._wakeup: Callable[[], None] | None = None
        self._on_room: Callable[[], None] | None = None
        self._producer_waiting = False
        self._dropping = False
        self.dropped = 0
        self.high_water = 0

    def __len__(self) -> int:
        return self._count

    def empty(self) -> bool:
        """Whether nothing (no batch, no marker) is queued."""
        return not self._items

    def set_wakeup(self, wakeup: Callable[[], None] | None) -> None:
        """Have ``put`` call ``wakeup`` (any thread) instead of notifying a waiting thread.

        It is only ever called under the queue's lock: once this returns, the previous
        wakeup is not running and never runs again (its resources may be released).
        """
        with self._cond:
            self._wakeup = wakeup

    def _signal(self) -> None:
        if self._sleeping:
            self._sleeping = False
            if self._wakeup is not None:
                self._wakeup()
            else:
                self._cond.notify()

    def set_on_room(self, on_room: Callable[[], None] | None) -> None:
        """Call ``on_room`` (any thread) when room appears after ``offer`` returned a rest."""
        self._on_room = on_room

    def offer(self, batch: Batch) -> Batch | None:
        """Queue ``batch`` as ``when_full`` allows; never blocks.

        Under "block" it returns the part that did not fit (the producer stops reading and
        offers it again once ``on_room`` is called); otherwise it drops, counts, returns None.
        """
        received_at, enc, notes = batch
        with self._cond:
            if self._count + len(notes) > self.maxsize:
                if self.when_full != "block":
                    self._overflow(notes)
                else:
                    room = self.maxsize - self._count
                    if room > 0:
                        self._append((received_at, enc, notes[:room]))
                    self._producer_waiting = True
                    return received_at, enc, notes[room:] if room > 0 else notes
            if notes:
                self._append(batch)
            return None

    def _append(self, batch: Batch) -> None:
        self._items.append(batch)
        self._count += len(batch[2])
        self.high_water = max(self.high_water, self._count)
        self._signal()

    def _overflow(self, notes: list[Any]) -> None:
        excess = self._count + len(notes) - self.maxsize
        if self.when_full == "drop_newest":
            del notes[len(notes) - excess :]
        else:
            remaining = excess
            for item in self._items:
                if not remaining:
                    break
                if isinstance(item, Marker):
                    continue
                n = min(remaining, len(item[2]))
                del item[2][:n]
                self._count -= n
                remaining -= n
            self._items = deque(i for i in self._items if isinstance(i, Marker) or i[2])
            del notes[:remaining]
        self.dropped += excess
        if not self._dropping:
            self._dropping = True
            logger.warning(
                "listener queue full (%d notifications): dropping the %s ones as when_full=%r "
                "says; make callbacks faster, raise queue_size, or use when_full='block'",
                self.maxsize,
                "newest" if self.when_full == "drop_newest" else "oldest",
                self.when_full,
            )

    def put_marker(self, marker: Marker) -> None:
        with self._cond:
            self._items.append(marker)
            self._signal()

    def get(self, timeout: float | None = None) -> Item | None:
        """The next item, waiting up to ``timeout``; None when closed or timed out."""
        with self._cond:
            while not self._items:
                if self._closed:
                    return None
                self._sleeping = True
                if not self._cond.wait(timeout):
                    self._sleeping = False
                    return None
            return self._pop()

    def get_nowait(self) -> Item | None:
        """The next item or None; when None, a following ``put`` calls the wakeup."""
        with self._cond:
            if self._items:
                return self._pop()
            self._sleeping = True
            return None

    def _pop(self) -> Item:
        item = self._items.popleft()
        if not isinstance(item, Marker):
            self._count -= len(item[2])
            if not self._count:
                self._dropping = False
            if self._producer_waiting:
                self._producer_waiting = False
                if self._on_room is not None:
                    self._on_room()
        return item

    def reopen(self) -> None:
        with self._cond:
            self._closed = False
            self._sleeping = False

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Wake everyone; queued items are discarded."""
        with self._cond:
            self._closed = True
            self._items.clear()
            self._count = 0
            self._cond.notify_all()
            if self._wakeup is not None:
                self._wakeup()
