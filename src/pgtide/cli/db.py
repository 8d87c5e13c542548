"""``pgtide db``: the embedded server, and which database pgtide uses."""

from __future__ import annotations

import sys

import typer
from rich.table import Table

from .. import embedded
from ..connect import resolve
from ._common import DsnOption, JsonOption, console, emit_json, err_console

app = typer.Typer(
    help="The embedded PostgreSQL, and which database pgtide uses.", no_args_is_help=True
)


def _report(server: embedded.Server, as_json: bool) -> None:
    data = {
        "running": server.running,
        "pid": server.pid,
        "home": str(server.home),
        "dsn": server.dsn if server.running else None,
    }
    if as_json:
        emit_json(data)
        return
    table = Table(show_header=False, box=None)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in data.items():
        table.add_row(f"[bold]{key}[/]", "-" if value is None else str(value))
    console.print(table)


@app.command()
def start(as_json: JsonOption = False) -> None:
    """Start the embedded PostgreSQL (or report the one already running)."""
    _report(embedded.ensure_running(), as_json)


@app.command()
def stop(as_json: JsonOption = False) -> None:
    """Stop the embedded PostgreSQL."""
    was_running = embedded.stop()
    if as_json:
        emit_json({"stopped": was_running})
    else:
        console.print("stopped" if was_running else "the embedded PostgreSQL was not running")


@app.command()
def status(as_json: JsonOption = False) -> None:
    """Whether the embedded PostgreSQL runs, where, and how to reach it."""
    _report(embedded.status(), as_json)


@app.command()
def url(dsn: DsnOption = None, as_json: JsonOption = False) -> None:
    """Print the database pgtide would use (password masked), alone on stdout.

    Why it was chosen goes to stderr, so that ``psql "$(pgtide db url)"`` works.
    """
    chosen = resolve(dsn)
    if as_json:
        emit_json(
            {
                "dsn": chosen.masked,
                "source": chosen.source,
                "detail": chosen.detail,
                "target": chosen.target,
            }
        )
        return
    sys.stdout.write(chosen.masked + "\n")
    origin = f"{chosen.source} ({chosen.detail})" if chosen.detail else chosen.source
    err_console.print(f"[dim]chosen by {origin}[/]", highlight=False)
