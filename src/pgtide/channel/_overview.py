"""Which LISTEN connections of pgtide this database has (NOTIFY does not cross databases)."""

from __future__ import annotations

from ..overview import Section
from ..session import Io, Rows, query

APPLICATIONS = "pgtide%listen%"
"""The application_name pattern of every pgtide LISTEN connection: listeners and wakers."""

_LISTENERS = (
    "SELECT pid, application_name, coalesce(client_addr::text, 'local'), backend_start, state"
    " FROM pg_stat_activity"
    " WHERE application_name LIKE %s AND datname = current_database()"
    " ORDER BY backend_start"
)


def connections() -> Io[Rows]:
    """(pid, application, client, connected since, state) of each LISTEN connection."""
    return (yield from query(_LISTENERS, (APPLICATIONS,)))


def overview() -> Io[list[Section]]:
    """The "listeners" section of ``pgtide status``: one row per LISTEN connection."""
    rows = yield from connections()
    if not rows:
        return []
    return [
        Section(
            "listeners",
            ["backend pid", "application", "client", "connected since", "state"],
            [
                [pid, app, addr, at.isoformat(timespec="seconds"), st]
                for pid, app, addr, at, st in rows
            ],
        )
    ]
