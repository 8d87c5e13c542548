"""``pgtide status``: one screen with the state of every feature.

Each feature (and the shared layers) exports ``overview() -> Io[list[Section]]``; this face
runs them on one connection and renders the sections, for people or as JSON.
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

from .. import channel, events, feed, ingest, schema
from ..connect import connect, resolve
from ..overview import Section
from ..session import Io, run
from ._common import DsnOption, JsonOption, console, emit_json

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
    for section in sections:
        table = Table(title=section.title, title_justify="left")
        for i, column in enumerate(section.columns):
            table.add_column(column, overflow="fold", no_wrap=i == 0)
        for row in section.rows:
            table.add_row(*(str(v) for v in row))
        parts.append(table)
    return Group(*parts)


def _as_json(sections: list[Section]) -> dict[str, list[dict[str, Any]]]:
    return {s.title: s.as_dicts() for s in sections}


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
