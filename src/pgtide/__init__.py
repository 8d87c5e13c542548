"""pgtide: PostgreSQL as a live, reliable stream of changes.

The blocking API lives here; the asyncio faces of the same features live in :mod:`pgtide.aio`.
"""

from ._version import __version__
from .connect import dsn
from .errors import (
    ConfigError,
    ConnectionFailed,
    EmbeddedError,
    EventPayloadError,
    FeedError,
    IngestError,
    InvalidChannel,
    InvalidName,
    InvalidPayload,
    InvalidPosition,
    PayloadTooLarge,
    PermissionDenied,
    PgtideError,
    SchemaError,
    UnknownSubscriber,
    UnknownTable,
)
from .events import Event, EventRecord, Events, Schedule
from .feed import Batch, Change, Feed, LatestFetcher, Position, latest, prune, track, untrack
from .ingest import FileWatcher
from .listen import Listener, Notification
from .notify import notify, notify_many
from .schema import install

__all__ = [
    "Batch",
    "Change",
    "ConfigError",
    "ConnectionFailed",
    "EmbeddedError",
    "Event",
    "EventPayloadError",
    "EventRecord",
    "Events",
    "Feed",
    "FeedError",
    "FileWatcher",
    "IngestError",
    "InvalidChannel",
    "InvalidName",
    "InvalidPayload",
    "InvalidPosition",
    "LatestFetcher",
    "Listener",
    "Notification",
    "PayloadTooLarge",
    "PermissionDenied",
    "PgtideError",
    "Position",
    "Schedule",
    "SchemaError",
    "UnknownSubscriber",
    "UnknownTable",
    "__version__",
    "dsn",
    "install",
    "latest",
    "notify",
    "notify_many",
    "prune",
    "track",
    "untrack",
]
