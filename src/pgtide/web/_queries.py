"""The few statements the console runs that no feature exposes yet (see docs/web.md).

Everything else comes from the features' public API (``overview()``, ``consumers_io``,
``size_io``, :class:`pgtide.aio.Events`). These read pgtide's own tables only, use indexes
or catalogue estimates, and each is one ``Io`` so that it runs on the sampler's connection.
"""

from __future__ import annotations

from typing import Any

from ..session import Io, one, query

INSTALLED = """
SELECT to_regclass('pgtide.events') IS NOT NULL, to_regclass('pgtide.changes') IS NOT NULL,
       to_regclass('pgtide.rejects') IS NOT NULL
"""

# Events of pgtide's own table by name and state (one sequential scan; the sampler spaces
# its runs by how long this takes, so a table of millions costs a few per cent of a core).
EVENTS_BY_NAME = """
SELECT name, state, count(*) FROM pgtide.events WHERE source = '' GROUP BY name, state
ORDER BY name, state
"""

# Handler durations of the newest finished events (a backward scan of the primary key).
RECENT_DURATIONS = """
SELECT name, extract(epoch FROM finished_at - started_at)::float8
FROM (SELECT name, started_at, finished_at FROM pgtide.events
      WHERE source = '' ORDER BY id DESC LIMIT 2000) e
WHERE finished_at IS NOT NULL AND started_at IS NOT NULL
"""

# Sequences only ever grow: their last values give publish and capture rates for free.
COUNTERS = """
SELECT (SELECT last_value FROM pgtide.events_id_seq),
       (SELECT last_value FROM pgtide.changes_id_seq)
"""

REJECTS = """
SELECT id, watcher, path, line_no, line, error, at FROM pgtide.rejects
ORDER BY id DESC LIMIT %s
"""
REJECTS_TOTAL = "SELECT coalesce(sum(rejected), 0)::bigint FROM pgtide.file_offsets"


def installed() -> Io[tuple[bool, bool, bool]]:
    """Whether pgtide.events, pgtide.changes and pgtide.rejects exist."""
    row = yield from one(INSTALLED)
    assert row is not None
    return bool(row[0]), bool(row[1]), bool(row[2])


def events_by_name() -> Io[dict[str, dict[str, int]]]:
    """{name: {state: count}} for pgtide's own events table."""
    found: dict[str, dict[str, int]] = {}
    for name, state, n in (yield from query(EVENTS_BY_NAME)):
        found.setdefault(str(name), {})[str(state)] = int(n)
    return found


def recent_durations() -> Io[dict[str, list[float]]]:
    """{name: [seconds]} of the newest finished events."""
    found: dict[str, list[float]] = {}
    for name, seconds in (yield from query(RECENT_DURATIONS)):
        found.setdefault(str(name), []).append(float(seconds))
    return found


def counters() -> Io[tuple[int, int]]:
    """(events ever published, changes ever captured), from the id sequences."""
    row = yield from one(COUNTERS)
    assert row is not None
    return int(row[0] or 0), int(row[1] or 0)


def rejects(limit: int = 50) -> Io[list[dict[str, Any]]]:
    """The newest rejected lines of ingest."""
    rows = yield from query(REJECTS, (limit,))
    keys = ("id", "watcher", "path", "line_no", "line", "error", "at")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def rejects_total() -> Io[int]:
    """Lines rejected so far, over every watched file."""
    row = yield from one(REJECTS_TOTAL)
    return int(row[0]) if row else 0
