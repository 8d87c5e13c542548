"""Feed positions: where a consumer stands, as PostgreSQL snapshots.

A position says which transactions a consumer has seen: every one visible in a snapshot
(``pg_current_snapshot()``), plus, while a large step between two snapshots is being delivered
in several batches, the transactions of that step whose id is at or below ``after``.
Positions are opaque to users: they print as a short string, parse back, and compare.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering

from ..errors import InvalidPosition

_SNAPSHOT = re.compile(r"^(\d+):(\d+):((?:\d+(?:,\d+)*)?)$")


@dataclass(frozen=True)
class Snapshot:
    """A PostgreSQL ``pg_snapshot``: ids below ``xmin`` are visible, at or above ``xmax``
    not, and in between every id except those in ``xip`` (in progress when it was taken)."""

    xmin: int
    xmax: int
    xip: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Snapshot:
        match = _SNAPSHOT.match(text.strip())
        if not match:
            raise InvalidPosition(
                f"{text!r} is not a snapshot (expected xmin:xmax:xip,...); "
                "use a string that str(position) produced"
            )
        xip = tuple(int(x) for x in match[3].split(",")) if match[3] else ()
        snap = cls(int(match[1]), int(match[2]), xip)
        if snap.xmin > snap.xmax or any(not snap.xmin <= x < snap.xmax for x in xip):
            raise InvalidPosition(f"{text!r} is not a consistent snapshot (xmin <= xip < xmax)")
        return snap

    def visible(self, xid: int) -> bool:
        """Whether transaction ``xid`` had committed (or aborted) when the snapshot was taken."""
        return xid < self.xmin or (xid < self.xmax and xid not in self.xip)

    @property
    def _key(self) -> tuple[int, int]:
        # Snapshots of one history grow: xmax rises, or xip shrinks at equal xmax.
        return (self.xmax, -len(self.xip))

    def __str__(self) -> str:
        return f"{self.xmin}:{self.xmax}:{','.join(map(str, self.xip))}"


BEGINNING_SNAPSHOT = Snapshot(1, 1)
"""A snapshot in which no transaction is visible: a feed from here reads every change."""


@total_ordering
@dataclass(frozen=True)
class Position:
    """Where a consumer stands in the change feed. Opaque, serialisable and comparable.

    ``str(position)`` gives a string that :meth:`Position.parse` reads back. Positions of one
    database compare in feed order: a later position has seen everything an earlier one has.
    """

    snapshot: Snapshot
    target: Snapshot | None = None
    after: int | None = None

    @classmethod
    def parse(cls, text: str) -> Position:
        """Read a position back from ``str(position)``."""
        if not isinstance(text, str):
            raise InvalidPosition(f"a position string is expected, not {type(text).__name__}")
        base, sep, rest = text.strip().partition(">")
        if not sep:
            return cls(Snapshot.parse(base))
        target, at, after = rest.partition("@")
        if not at or not after.isdigit():
            raise InvalidPosition(
                f"{text!r} is not a position; use a string that str(position) produced"
            )
        return cls(Snapshot.parse(base), Snapshot.parse(target), int(after))

    @classmethod
    def beginning(cls) -> Position:
        """The position before every change."""
        return cls(BEGINNING_SNAPSHOT)

    @property
    def partial(self) -> bool:
        """True while a step between two snapshots is only partly delivered."""
        return self.target is not None

    def seen(self, xid: int) -> bool:
        """Whether a consumer at this position has been given transaction ``xid``."""
        if self.snapshot.visible(xid):
            return True
        return (
            self.target is not None
            and self.after is not None
            and self.target.visible(xid)
            and xid <= self.after
        )

    @property
    def _key(self) -> tuple[int, int, int]:
        return (*self.snapshot._key, self.after or 0)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Position):
            return NotImplemented
        return self._key < other._key

    def __str__(self) -> str:
        if self.target is None:
            return str(self.snapshot)
        return f"{self.snapshot}>{self.target}@{self.after}"

    def __repr__(self) -> str:
        return f"Position({str(self)!r})"
