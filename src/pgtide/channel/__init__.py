"""The LISTEN channel: one connection that LISTENs live, and the waker features sleep on.

A shared mechanism below the features. :class:`Receiver` serves one connection (live
LISTEN/UNLISTEN, keepalive and probe; the session's one reconnect loop reopens it) and hands
what it reads to a sink: the listener's bounded :class:`BatchQueue`, or a :class:`Waker`,
which the feed, event workers and the latest-row fetcher sleep on until a NOTIFY, a deadline
or a poll interval.
"""

from ._notification import Notification
from ._overview import connections, overview
from ._queue import RECONNECTED, Batch, BatchQueue, Item, Marker, WhenFull
from ._receiver import Lane, Receiver, Settings, Sink, SocketCopy, WakePipe, watch
from ._registry import Callback, Registry, Subscriber
from ._stats import Stats
from ._waker import Signal, Waker

__all__ = [
    "RECONNECTED",
    "Batch",
    "BatchQueue",
    "Callback",
    "Item",
    "Lane",
    "Marker",
    "Notification",
    "Receiver",
    "Registry",
    "Settings",
    "Signal",
    "Sink",
    "SocketCopy",
    "Stats",
    "Subscriber",
    "WakePipe",
    "Waker",
    "WhenFull",
    "connections",
    "overview",
    "watch",
]
