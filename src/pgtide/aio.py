"""The asyncio faces of pgtide's features (same cores as the blocking API in :mod:`pgtide`)."""

from .events import AsyncEvents as Events
from .feed import AsyncBatch as Batch
from .feed import AsyncFeed as Feed
from .ingest import AsyncFileWatcher as FileWatcher
from .listen import AsyncListener as Listener
from .listen import Notification
from .notify import anotify as notify
from .notify import anotify_many as notify_many

__all__: list[str] = [
    "Batch",
    "Events",
    "Feed",
    "FileWatcher",
    "Listener",
    "Notification",
    "notify",
    "notify_many",
]
