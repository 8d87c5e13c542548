"""The asyncio faces of pgtide's features (same cores as the blocking API in :mod:`pgtide`)."""

from .events._async import Events
from .ingest._aio import FileWatcher
from .listen import AsyncListener as Listener
from .listen import Notification
from .notify import anotify as notify
from .notify import anotify_many as notify_many

__all__: list[str] = [
    "Events",
    "FileWatcher",
    "Listener",
    "Notification",
    "notify",
    "notify_many",
]
