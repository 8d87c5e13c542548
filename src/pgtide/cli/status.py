"""``pgtide status``: one screen with the state of every feature.

Each feature contributes a section: a function that takes an open connection and returns a
title and rows (or None when it has nothing to show). Register it in ``SECTIONS``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any

import psycopg
import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .. import schema
from ..connect import connect, resolve
from ..overview import Section as Section
from ._common import DsnOption, JsonOption, console, emit_json
from .feed import changes_section, consumers_section

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
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE application_name LIKE 'pgtide%listen%' AND datname = current_database()"
    ).fetchone()
    return int(row[0]) if row else 0


def _listen(conn: psycopg.Connection[Any]) -> Section | None:
    from .. import channel
    from ..session import run

    sections = run(conn, channel.overview())
    return sections[0] if sections else None


def _events(conn: psycopg.Connection[Any]) -> Section | None:
    from .events import status_section

    return status_section(conn)


def _ingested_files(conn: psycopg.Connection[Any]) -> Section | None:
    from ..ingest import overview

    rows = overview(conn)
    if not rows:
        return None
    columns = ["watcher", "path", "offset", "lines", "rows", "rejected", "target", "updated"]
    return Section("ingested files", columns, [list(r) for r in rows])


SECTIONS: list[SectionFn] = [
    _database,
    _listen,
    consumers_section,
    changes_section,
    _events,
    _ingested_files,
]


def collect(conn: psycopg.Connection[Any]) -> list[Section]:
    """Every registered section that has something to show."""
    return [s for s in (fn(conn) for fn in SECTIONS) if s is not None]


def _render(target: str, sections: list[Section]) -> Group:
    parts: list[Any] = [Text(f"pgtide status on {target}", style="bold")]
    for section in sections:
        table = Table(title=section.title, title_justify="left")
        for i, column in enumerate(section.columns):
            table.add_column(column, overflow="fold", no_wrap=i == 0)
        for row in section.rows:
            table.add_row(*(str(v) for v in row))
        parts.append(table)
    return Group(*parts)


def _as_json(sections: list[Section]) -> dict[str, list[dict[str, Any]]]:
    return {s.title: [dict(zip(s.columns, row, strict=True)) for row in s.rows] for s in sections}


def status(
    dsn: DsnOption = None,
    as_json: JsonOption = False,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh live until Ctrl-C.")] = False,
    interval: Annotated[
        float, typer.Option(min=0.1, help="Seconds between refreshes with --watch.")
    ] = 1.0,
) -> None:
    """Consumers and their lag, events by state, ingested files, listener connections.

    With ``--watch`` the screen refreshes every ``--interval`` seconds until Ctrl-C (with
    ``--json``, one JSON document a refresh).
    """
    chosen = resolve(dsn)
    try:
        with connect(chosen) as conn:
            if as_json:
                emit_json(_as_json(collect(conn)))
                while watch:
                    time.sleep(interval)
                    emit_json(_as_json(collect(conn)))
                return
            if not watch:
                console.print(_render(chosen.target, collect(conn)))
                return
            with Live(_render(chosen.target, collect(conn)), console=console) as live:
                while True:
                    time.sleep(interval)
                    live.update(_render(chosen.target, collect(conn)))
    except KeyboardInterrupt:
        return
