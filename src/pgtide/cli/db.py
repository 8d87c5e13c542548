"""``pgtide db``: the embedded server, and which database pgtide uses."""

from __future__ import annotations

import os
import shutil
import sys
from typing import Annotated

import typer
from rich.table import Table

from .. import embedded, schema
from ..connect import resolve
from ..errors import ConfigError
from ..session import run, using
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


STOPPED_EXIT = 3
"""``pgtide db status`` exits with this when the embedded server is not running (as
``systemctl status`` does), so scripts can test it."""


@app.command()
def status(as_json: JsonOption = False) -> None:
    """Whether the embedded PostgreSQL runs, where, and how to reach it (exit 3 if stopped)."""
    server = embedded.status()
    _report(server, as_json)
    if not server.running:
        raise typer.Exit(STOPPED_EXIT)


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


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def psql(ctx: typer.Context, dsn: DsnOption = None) -> None:
    """Open psql on the database pgtide uses (extra arguments go to psql).

    The machine's psql when there is one, else the one shipped with the embedded server.
    """
    chosen = resolve(dsn)
    found = shutil.which("psql")
    env = dict(os.environ)
    if found is None:
        found = str(embedded.bin_dir() / "psql")
        lib = str(embedded.bin_dir().parent / "lib")
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (lib, env.get("LD_LIBRARY_PATH")) if p)
    # without a DSN, the PG* variables already say where
    args = [found, chosen.dsn, *ctx.args] if chosen.dsn else [found, *ctx.args]
    os.execve(found, args, env)


@app.command()
def reset(
    dsn: DsnOption = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Drop schema pgtide (changes, consumers, events, offsets, rejects, capture triggers)
    and the tables a killed pgtide demo left behind. Your own tables stay."""
    chosen = resolve(dsn)
    if not yes:
        if not sys.stdin.isatty():
            raise ConfigError("pgtide db reset drops schema pgtide; pass --yes to confirm")
        typer.confirm(
            f"Drop schema pgtide and every pgtide demo table in {chosen.target}?", abort=True
        )
    with using(chosen) as conn:
        dropped = run(conn, schema.uninstall_io())
    if as_json:
        emit_json({"dropped": dropped, "target": chosen.target})
        return
    for name in dropped:
        console.print(f"dropped {name}", highlight=False)
    if not dropped:
        console.print("nothing to drop: pgtide was not installed there", highlight=False)
