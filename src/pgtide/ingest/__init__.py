"""Ingest: stream the lines appended to files into a table, each complete line exactly once.

See :class:`FileWatcher` (blocking) and :class:`pgtide.aio.FileWatcher` (asyncio); both run
the same engine (:mod:`pgtide.ingest._core`). :func:`overview` is what ``pgtide status``
shows about ingest; :mod:`pgtide.ingest.rejects` lists, shows, retries and purges the
lines that could not land.
"""

from __future__ import annotations

from . import rejects
from ._aio import FileWatcher as AsyncFileWatcher
from ._core import FileStatus, WatcherStatus
from ._store import overview
from .watcher import FileWatcher

__all__ = [
    "AsyncFileWatcher",
    "FileStatus",
    "FileWatcher",
    "WatcherStatus",
    "overview",
    "rejects",
]
