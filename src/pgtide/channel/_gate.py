"""The wake gate: writers send their wake-up NOTIFY only while somebody waits for it.

A NOTIFY takes a database-wide lock at commit and holds it through the commit's WAL flush,
so concurrent transactions that notify commit one after the other. A reader that keeps up
(a feed reading again, a worker whose claims come back full) reads anyway; it needs a
wake-up only once it waits. So a waiting reader *registers*: its connection holds a gate,
an advisory lock (two int4 keys) taken shared, while it waits; the writer's trigger notifies
only when it cannot take that lock exclusively for an instant (migrations 021 for the
feed's capture, 027 for pgtide.events). A writer pays for the NOTIFY only while somebody
waits for it.

The handshake that loses no wake-up. A writer decides after its row is written, so it has
its transaction id by then. A reader registers, then reads with a new snapshot. A writer
that decided afterwards saw the lock and notifies. One that decided before either committed
before that snapshot (the read sees its rows) or was still running then: its id is in the
snapshot's in-progress list. Until every such transaction has ended, the reader reads again
on a short backoff (:class:`Watch`) instead of trusting the NOTIFY alone. A registration
lost with its connection only costs writers the NOTIFY they would have sent anyway; a lock
left held elsewhere makes every writer notify (as without a gate), never the reverse.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..session import Io, Query, Rows, one

Gate = tuple[int, int]

FEED_GATE: Gate = (0x70677469, 0x574B45)
"""Held by waiting feeds; written as literals in migration 021's capture function."""

EVENTS_GATE: Gate = (0x70677469, 0x45564E)
"""Held by waiting event workers; written as literals in migration 027's wake function."""

# Registers unless this connection already did (`pid`: the backend that registered). A try,
# never a wait: a writer holds the lock exclusively only for an instant, and a lock left
# held by some session must not block a reader (its writers all notify then).
_REGISTER = (
    "SELECT CASE WHEN pg_backend_pid() = %s THEN true "
    "ELSE pg_try_advisory_lock_shared(%s, %s) END, pg_backend_pid()"
)
_UNREGISTER = "SELECT pg_advisory_unlock_shared(%s, %s) WHERE pg_backend_pid() = %s"

SNAPSHOT = "SELECT pg_current_snapshot()::text"
"""The snapshot whose in-progress transactions a new registration watches (see :class:`Watch`)."""

_WAITING = (
    "SELECT count(*)::int FROM pg_locks WHERE locktype = 'advisory' AND database = "
    "(SELECT oid FROM pg_database WHERE datname = current_database()) AND classid = %s "
    "AND objid = %s AND objsubid = 2 AND mode = 'ShareLock' AND granted"
)

FIRST_RECHECK = 0.001
"""Seconds before the first read again while transactions that may not notify are open."""


@dataclass
class Registration:
    """A connection's registration as a waiting reader at ``gate``: the backend holding it."""

    gate: Gate
    pid: int | None = None

    def register_query(self) -> Query:
        """The statement that registers (its row goes to :meth:`registered_by`)."""
        return Query(_REGISTER, (self.pid, *self.gate))

    def registered_by(self, rows: Rows) -> bool:
        """Take the reply of :meth:`register_query`: True when registered just now, which
        calls for a read with a new snapshot before trusting the NOTIFY (see :class:`Watch`).
        False when already registered, or when the lock could not be taken this instant
        (:attr:`pid` stays None: the caller reads again soon and retries)."""
        held, pid = bool(rows[0][0]), int(rows[0][1])
        if not held:
            self.pid = None
            return False
        newly = pid != self.pid
        self.pid = pid
        return newly

    def unregister_query(self) -> Query | None:
        """The statement that stops waiting (None when not registered); forgets it now."""
        pid, self.pid = self.pid, None
        return None if pid is None else Query(_UNREGISTER, (*self.gate, pid))

    def register(self) -> Io[bool]:
        """Register (if this connection has not); see :meth:`registered_by`."""
        rows = yield self.register_query()
        return self.registered_by(rows)

    def unregister(self) -> Io[None]:
        """Stop waiting: writers stop notifying for this connection."""
        if (q := self.unregister_query()) is not None:
            yield q

    @property
    def registered(self) -> bool:
        return self.pid is not None


class Watch:
    """The transactions that may have decided not to notify before a registration: those
    in progress in the first snapshot read after it, until each has ended. Reads again on
    a doubling backoff, from :data:`FIRST_RECHECK` up to ``cap`` seconds, meanwhile."""

    def __init__(self, cap: float = 1.0) -> None:
        self.open: frozenset[int] | None = None
        self._cap = cap
        self._next = FIRST_RECHECK

    def start(self) -> None:
        """A new registration: the next snapshot read says which transactions to watch."""
        self.open, self._next = None, FIRST_RECHECK

    def retry(self) -> float:
        """The seconds before the next read while no registration holds (or while a watched
        transaction is open)."""
        wait, self._next = self._next, min(self._next * 2, self._cap)
        return wait

    def seen(self, in_progress: Iterable[int]) -> float | None:
        """After a read whose snapshot had ``in_progress`` transactions, and no rows: None
        when the NOTIFY alone may be trusted to wake the reader, else the seconds before
        reading again."""
        running = frozenset(in_progress)
        self.open = running if self.open is None else self.open & running
        return self.retry() if self.open else None

    @property
    def watching(self) -> bool:
        """Whether transactions are still watched (or the first snapshot is still to come)."""
        return self.open is None or bool(self.open)


def in_progress(snapshot: str) -> tuple[int, ...]:
    """The in-progress transaction ids of a ``pg_snapshot`` text (``xmin:xmax:xip,...``)."""
    xip = snapshot.strip().split(":")[2]
    return tuple(int(x) for x in xip.split(",")) if xip else ()


def check_io(registration: Registration, watch: Watch) -> Io[tuple[bool, float | None]]:
    """For a waiter that reads without a snapshot of its own: register if not yet, and say
    (fresh, recheck): ``fresh`` when registered just now (read again before waiting: a writer
    may have skipped the NOTIFY just before), ``recheck`` the seconds before reading again
    regardless of NOTIFY (None: the NOTIFY alone will do)."""
    fresh = False
    if not registration.registered:
        if not (yield from registration.register()):
            return False, watch.retry()  # the gate was busy this instant
        watch.start()
        fresh = True
    row = yield from one(SNAPSHOT)
    assert row is not None
    return fresh, watch.seen(in_progress(row[0]))


def waiting_io(gate: Gate) -> Io[int]:
    """How many connections of this database wait at ``gate``: while there are none, the
    writers send no NOTIFY."""
    row = yield from one(_WAITING, gate)
    assert row is not None
    return int(row[0])
