"""The few statements the console runs that no feature exposes yet (see docs/web.md).

Everything else comes from the features' public API (``overview()``, ``consumers_io``,
``size_io``, :class:`pgtide.aio.Events`). These read pgtide's own tables only, use indexes
or catalogue estimates, and each is one ``Io`` so that it runs on the sampler's connection.
Each statement is a named constant; table names are composed with ``psycopg.sql``, values are
parameters.

They belong with the features whose tables they read (DESIGN: features export their overview
rows): the events ones with ``pgtide.events``, the counters with each feature's sequence, the
rejects with ``pgtide.ingest``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg import sql

from ..schema import SCHEMA
from ..session import Io, one, query

EVENTS = sql.Identifier(SCHEMA, "events")
EVENTS_ID_SEQUENCE = sql.Identifier(SCHEMA, "events_id_seq")
CHANGES_ID_SEQUENCE = sql.Identifier(SCHEMA, "changes_id_seq")
REJECTS = sql.Identifier(SCHEMA, "rejects")
FILE_OFFSETS = sql.Identifier(SCHEMA, "file_offsets")

FEATURE_TABLES = tuple(f"{SCHEMA}.{t}" for t in ("events", "changes", "rejects"))
"""The tables whose presence says which features are installed (events, feed, ingest)."""

TABLES_PRESENT = (
    "SELECT to_regclass(%s) IS NOT NULL, to_regclass(%s) IS NOT NULL, to_regclass(%s) IS NOT NULL"
)

# Events of pgtide's own table by name and state, and their attempts past the first (one
# sequential scan; the sampler spaces its runs by how long this takes, so a table of millions
# costs a few per cent of a core).
EVENTS_BY_NAME_AND_STATE = sql.SQL(
    "SELECT name, state, count(*), sum(greatest(attempts - 1, 0))::bigint FROM {events} "
    "WHERE source = '' GROUP BY name, state ORDER BY name, state"
).format(events=EVENTS)

# The running events (the partial index events_running): the next sample looks them up by id,
# so that a handler that runs long is timed whatever its id.
RUNNING_EVENT_IDS = sql.SQL(
    "SELECT id FROM {events} WHERE source = '' AND state = 'running'"
).format(events=EVENTS)

# Handler durations of the events that finished at or after %(since)s, among the newest
# %(newest)s events (a backward scan of the primary key) and the events that were running at
# the previous sample (primary key lookups). The clock is the database's.
FINISHED_SINCE = sql.SQL(
    """
SELECT id, name, finished_at, extract(epoch FROM finished_at - started_at)::float8
FROM ((SELECT id, name, started_at, finished_at FROM {events}
       WHERE source = '' ORDER BY id DESC LIMIT %(newest)s)
      UNION
      SELECT id, name, started_at, finished_at FROM {events}
      WHERE source = '' AND id = ANY(%(running)s)) e
WHERE finished_at >= %(since)s AND started_at IS NOT NULL
"""
).format(events=EVENTS)

DATABASE_NOW = "SELECT now()"

# Sequences only ever grow: their last values give publish and capture rates for free.
ID_SEQUENCES_LAST_VALUES = sql.SQL(
    "SELECT (SELECT last_value FROM {events}), (SELECT last_value FROM {changes})"
).format(events=EVENTS_ID_SEQUENCE, changes=CHANGES_ID_SEQUENCE)

NEWEST_REJECTS = sql.SQL(
    "SELECT id, watcher, path, line_no, line, error, at FROM {rejects} ORDER BY id DESC LIMIT %s"
).format(rejects=REJECTS)
REJECT_KEYS = ("id", "watcher", "path", "line_no", "line", "error", "at")

REJECTS_TOTAL = sql.SQL("SELECT coalesce(sum(rejected), 0)::bigint FROM {offsets}").format(
    offsets=FILE_OFFSETS
)


def installed() -> Io[tuple[bool, bool, bool]]:
    """Whether pgtide.events, pgtide.changes and pgtide.rejects exist."""
    row = yield from one(TABLES_PRESENT, FEATURE_TABLES)
    assert row is not None
    return bool(row[0]), bool(row[1]), bool(row[2])


def events_by_name() -> Io[tuple[dict[str, dict[str, int]], dict[str, int]]]:
    """({name: {state: count}}, {name: retries}) for pgtide's own events table: retries are
    the attempts past the first of the events the table holds."""
    found: dict[str, dict[str, int]] = {}
    retries: dict[str, int] = {}
    for name, state, n, again in (yield from query(EVENTS_BY_NAME_AND_STATE)):
        found.setdefault(str(name), {})[str(state)] = int(n)
        retries[str(name)] = retries.get(str(name), 0) + int(again or 0)
    return found, retries


def database_now() -> Io[datetime]:
    """The database's clock."""
    row = yield from one(DATABASE_NOW)
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def running_event_ids() -> Io[list[int]]:
    """The ids of pgtide's own events running now."""
    return [int(r[0]) for r in (yield from query(RUNNING_EVENT_IDS))]


def finished_since(
    since: datetime, running: list[int], newest: int = 2000
) -> Io[list[tuple[int, str, datetime, float]]]:
    """(id, name, finished at, handler seconds) of the events that finished at or after
    ``since``, among the ``newest`` events and those in ``running``."""
    rows = yield from query(FINISHED_SINCE, {"since": since, "running": running, "newest": newest})
    return [(int(r[0]), str(r[1]), r[2], float(r[3])) for r in rows]


def counters() -> Io[tuple[int, int]]:
    """(events ever published, changes ever captured), from the id sequences."""
    row = yield from one(ID_SEQUENCES_LAST_VALUES)
    assert row is not None
    return int(row[0] or 0), int(row[1] or 0)


def rejects(limit: int = 50) -> Io[list[dict[str, Any]]]:
    """The newest rejected lines of ingest."""
    rows = yield from query(NEWEST_REJECTS, (limit,))
    return [dict(zip(REJECT_KEYS, r, strict=True)) for r in rows]


def rejects_total() -> Io[int]:
    """Lines rejected so far, over every watched file."""
    row = yield from one(REJECTS_TOTAL)
    return int(row[0]) if row else 0
