"""Who waits for changes: the capture triggers wake feeds only while one is waiting.

The feed's use of the wake gate (:mod:`pgtide.channel._gate`, which describes the handshake
that loses no wake-up): a waiting feed holds :data:`GATE` shared on its connection, and the
capture trigger (migration 021) notifies only when it cannot take that lock exclusively for
an instant.
"""

from __future__ import annotations

from ..channel import _gate
from ..channel._gate import FEED_GATE, Registration, Watch, check_io
from ..session import Io

GATE = FEED_GATE
"""The advisory lock (two int4 keys) that waiting feeds hold shared."""


def registration() -> Registration:
    """A new connection's registration as a waiting feed (it holds none yet)."""
    return Registration(GATE)


def waiting_io() -> Io[int]:
    """How many connections of this database wait for changes (hold the gate): while there
    are none, the capture triggers send no NOTIFY."""
    return _gate.waiting_io(GATE)


__all__ = ["GATE", "Registration", "Watch", "check_io", "registration", "waiting_io"]
