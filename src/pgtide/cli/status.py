"""``pgtide status``: one screen with the state of every feature.

Each feature contributes a section: a function that takes an open connection and returns a
title and rows (or None when it has nothing to show). Register it in ``SECTIONS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from rich.table import Table

from .. import schema
from ..connect import connect, resolve
from ._common import DsnOption, JsonOption, console, emit_json
from .feed import status_section as _feed_section


@dataclass
class Section:
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)


SectionFn = Callable[[psycopg.Connection[Any]], Section | None]


def _database(conn: psycopg.Connection[Any]) -> Section:
    version = schema.installed_version(conn)
    server = conn.execute("SHOW server_version").fetchone()
    return Section(
        "database",
        ["server", "schema pgtide", "listener connections"],
        [[server[0] if server else "?", version or "not installed", _listeners(conn)]],
    )


def _listeners(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgtide%listen%'"
    ).fetchone()
    return int(row[0]) if row else 0


def _listen(conn: psycopg.Connection[Any]) -> Section | None:
    from .listen import status_section

    return status_section(conn)


SECTIONS: list[SectionFn] = [_database, _listen]
SECTIONS.append(_feed_section)  # follow: consumers, their lag, pgtide.changes


def status(dsn: DsnOption = None, as_json: JsonOption = False) -> None:
    """Consumers and their lag, events by state, ingested files, listener connections."""
    chosen = resolve(dsn)
    with connect(chosen) as conn:
        sections = [s for s in (fn(conn) for fn in SECTIONS) if s is not None]
    if as_json:
        emit_json(
            {s.title: [dict(zip(s.columns, row, strict=True)) for row in s.rows] for s in sections}
        )
        return
    console.print(f"[bold]pgtide status[/] on {chosen.target}", highlight=False)
    for section in sections:
        table = Table(title=section.title, title_justify="left")
        for column in section.columns:
            table.add_column(column)
        for row in section.rows:
            table.add_row(*(str(v) for v in row))
        console.print(table)
