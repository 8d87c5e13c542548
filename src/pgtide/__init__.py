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
    IngestError,
    InvalidChannel,
    InvalidPayload,
    PayloadTooLarge,
    PgtideError,
    SchemaError,
    UnknownSubscriber,
)
from .events import Event, EventRecord, Events
from .ingest import FileWatcher
from .listen import Listener, Notification
from .notify import notify, notify_many
from .schema import install

__all__ = [
    "ConfigError",
    "ConnectionFailed",
    "EmbeddedError",
    "Event",
    "EventPayloadError",
    "EventRecord",
    "Events",
    "FileWatcher",
    "IngestError",
    "InvalidChannel",
    "InvalidPayload",
    "Listener",
    "Notification",
    "PayloadTooLarge",
    "PgtideError",
    "SchemaError",
    "UnknownSubscriber",
    "__version__",
    "dsn",
    "install",
    "notify",
    "notify_many",
]
