"""Who waits for changes: the capture triggers wake feeds only while one is waiting.

A NOTIFY takes a database-wide lock at commit and holds it through the commit's WAL flush,
so concurrent writers that notify commit one after the other. A feed that keeps up reads
anyway; it needs a wake-up only once it waits. So a waiting feed *registers* (a shared
advisory lock, :data:`GATE`, held by its connection while it waits), and the capture trigger
notifies only when it cannot take that lock exclusively for an instant (migration 021): a
writer pays for the NOTIFY only while somebody listens for it.

The handshake that loses no wake-up. A writer decides after its change is in the log, so it
has its transaction id by then. A feed registers, then reads with a new snapshot. A writer
that decided afterwards saw the lock and notifies. One that decided before either committed
before that snapshot (the read sees its changes) or was still running then: its id is in the
snapshot's in-progress list. Until every such transaction has ended, the feed reads again on
a short backoff (:class:`Watch`) instead of trusting the NOTIFY alone. A registration lost
with its connection only costs writers the NOTIFY they would have sent anyway; a lock left
held elsewhere makes every writer notify (the old behaviour), never the reverse.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..session import Io, one
from .position import Snapshot

GATE = (0x70677469, 0x574B45)
"""The advisory lock (two int4 keys) that waiting feeds hold shared; written as literals in
migration 021's capture function, which tests whether it is held."""

# Registers unless this connection already did (`pid`: the backend that registered). A try,
# never a wait: a writer holds the lock exclusively only for an instant, and a lock left
# held by some session must not block a feed (its writers all notify then).
_REGISTER = (
    "SELECT CASE WHEN pg_backend_pid() = %s THEN true "
    "ELSE pg_try_advisory_lock_shared(%s, %s) END, pg_backend_pid()"
)
_UNREGISTER = "SELECT pg_advisory_unlock_shared(%s, %s) WHERE pg_backend_pid() = %s"

_SNAPSHOT = "SELECT pg_current_snapshot()::text"
_WAITING = (
    "SELECT count(*)::int FROM pg_locks WHERE locktype = 'advisory' AND database = "
    "(SELECT oid FROM pg_database WHERE datname = current_database()) AND classid = %s "
    "AND objid = %s AND objsubid = 2 AND mode = 'ShareLock' AND granted"
)

FIRST_RECHECK = 0.001
"""Seconds before the first read again while transactions that may not notify are open."""


@dataclass
class Registration:
    """A connection's registration as a waiting feed: the backend holding it, if any."""

    pid: int | None = None

    def register(self) -> Io[bool]:
        """Register (if this connection has not): True when registered just now, which
        calls for a read with a new snapshot before trusting the NOTIFY (see :class:`Watch`).
        False when already registered, or when the lock could not be taken this instant
        (:attr:`pid` stays None: the caller reads again soon and retries)."""
        row = yield from one(_REGISTER, (self.pid, *GATE))
        assert row is not None
        held, pid = bool(row[0]), int(row[1])
        if not held:
            self.pid = None
            return False
        newly = pid != self.pid
        self.pid = pid
        return newly

    def unregister(self) -> Io[None]:
        """Stop waiting: writers stop notifying for this connection."""
        pid, self.pid = self.pid, None
        if pid is not None:
            yield from one(_UNREGISTER, (*GATE, pid))

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

    def seen(self, snapshot: Snapshot) -> float | None:
        """After a read with ``snapshot`` and no changes: None when the NOTIFY alone may be
        trusted to wake the reader, else the seconds before reading again."""
        running = frozenset(snapshot.xip)
        self.open = running if self.open is None else self.open & running
        return self.retry() if self.open else None


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
    row = yield from one(_SNAPSHOT)
    assert row is not None
    return fresh, watch.seen(Snapshot.parse(row[0]))


def waiting_io() -> Io[int]:
    """How many connections of this database wait for changes (hold the gate): while there
    are none, the capture triggers send no NOTIFY."""
    row = yield from one(_WAITING, GATE)
    assert row is not None
    return int(row[0])
