"""pgtide: PostgreSQL as a live, reliable stream of changes.

The blocking API lives here; the asyncio faces of the same features live in :mod:`pgtide.aio`.
"""

from ._version import __version__
from .connect import dsn
from .errors import (
    ConfigError,
    ConnectionFailed,
    EmbeddedError,
    FeedError,
    InvalidPosition,
    PayloadTooLarge,
    PgtideError,
    SchemaError,
    UnknownTable,
)
from .feed import Batch, Change, Feed, Position, latest, prune, track, untrack
from .schema import install

__all__ = [
    "Batch",
    "Change",
    "ConfigError",
    "ConnectionFailed",
    "EmbeddedError",
    "Feed",
    "FeedError",
    "InvalidPosition",
    "PayloadTooLarge",
    "PgtideError",
    "Position",
    "SchemaError",
    "UnknownTable",
    "__version__",
    "dsn",
    "install",
    "latest",
    "prune",
    "track",
    "untrack",
]
