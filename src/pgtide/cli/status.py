"""``pgtide status``: one screen with the state of every feature.

Each feature (and the shared layers) exports ``overview() -> Io[list[Section]]``; this face
runs them on one connection and renders the sections, for people or as JSON.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import psycopg
import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .. import channel, events, feed, ingest, schema
from .._signals import stop_on_signals
from ..connect import connect, resolve
from ..overview import Section
from ..session import Io, run
from ._common import DsnOption, JsonOption, cell, console, duration, emit_json

OVERVIEWS: list[Callable[[], Io[list[Section]]]] = [
    schema.overview,
    channel.overview,
    feed.overview,
    events.overview,
    ingest.overview,
]
"""Sections in the order shown: database, listeners, consumers, changes, events, files."""


def collect(conn: psycopg.Connection[Any]) -> list[Section]:
    """Every section that has something to show."""
    return [section for make in OVERVIEWS for section in run(conn, make())]


def _render(target: str, sections: list[Section]) -> Group:
    parts: list[Any] = [Text(f"pgtide status on {target}", style="bold")]
    now = datetime.now(UTC)
    for section in sections:
        table = Table(title=section.title, title_justify="left")
        for i, column in enumerate(section.columns):
            table.add_column(column, overflow="fold", no_wrap=i == 0)
        for row in section.rows:
            table.add_row(*(cell(v, now) for v in row))
        if not section.rows:
            table.add_row("(none)", *([""] * (len(section.columns) - 1)))
        parts.append(table)
    return Group(*parts)


def _key(label: str) -> str:
    return label.strip().lower().replace(" ", "_").replace("-", "_")


def _as_json(sections: list[Section]) -> dict[str, list[dict[str, Any]]]:
    """Sections for programs: snake_case keys, times in ISO 8601, nothing as null."""
    return {
        _key(s.title): [
            {_key(c): v.isoformat() if isinstance(v, datetime) else v for c, v in row.items()}
            for row in s.as_dicts()
        ]
        for s in sections
    }


def status(
    dsn: DsnOption = None,
    as_json: JsonOption = False,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh live until Ctrl-C.")] = False,
    interval: Annotated[
        float, duration("--interval", help="Time between refreshes with --watch (1s).")
    ] = 1.0,
) -> None:
    """Consumers and their lag, events by state, ingested files, listener connections.

    With ``--watch`` the screen refreshes every ``--interval`` seconds until Ctrl-C (with
    ``--json``, one JSON document a refresh).
    """
    chosen = resolve(dsn)
    interval = max(interval, 0.1)
    stopping = threading.Event()
    with connect(chosen) as conn, stop_on_signals(stopping.set, "pgtide status"):
        if as_json:
            emit_json(_as_json(collect(conn)))
            while watch and not stopping.wait(interval):
                emit_json(_as_json(collect(conn)))
            return
        if not watch:
            console.print(_render(chosen.target, collect(conn)))
            return
        with Live(_render(chosen.target, collect(conn)), console=console) as live:
            while not stopping.wait(interval):
                live.update(_render(chosen.target, collect(conn)))
