"""Ingest: stream the lines appended to files into a table, each complete line exactly once.

See :class:`FileWatcher` (blocking) and :class:`pgtide.aio.FileWatcher` (asyncio); both run
the same engine (:mod:`pgtide.ingest._core`). :func:`overview` is what ``pgtide status``
shows about ingest.
"""

from __future__ import annotations

import warnings
from typing import Any, overload

import psycopg

from ..overview import Section
from ..session import Io, run
from ._core import FileStatus, WatcherStatus
from ._store import overview as _overview
from .watcher import FileWatcher

__all__ = ["FileStatus", "FileWatcher", "WatcherStatus", "overview"]


@overload
def overview() -> Io[list[Section]]: ...
@overload
def overview(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]] | None: ...
def overview(
    conn: psycopg.Connection[Any] | None = None,
) -> Io[list[Section]] | list[tuple[Any, ...]] | None:
    """The "ingested files" section (every watched file of every watcher) as database work:
    ``session.run(conn, overview())``. There is no section when ingest was never used.

    ``overview(conn)``, the former form returning bare rows (or None), is deprecated.
    """
    if conn is None:
        return _overview()
    warnings.warn(
        "pgtide.ingest.overview(conn) is deprecated: use "
        "pgtide.session.run(conn, pgtide.ingest.overview()), which returns Sections",
        DeprecationWarning,
        stacklevel=2,
    )
    sections = run(conn, _overview())
    return [tuple(row) for row in sections[0].rows] if sections else None
