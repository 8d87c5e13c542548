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
    PayloadTooLarge,
    PgtideError,
    SchemaError,
)
from .events import Event, EventRecord, Events
from .schema import install

__all__ = [
    "ConfigError",
    "ConnectionFailed",
    "EmbeddedError",
    "Event",
    "EventPayloadError",
    "EventRecord",
    "Events",
    "PayloadTooLarge",
    "PgtideError",
    "SchemaError",
    "__version__",
    "dsn",
    "install",
]
