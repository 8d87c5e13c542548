"""The typer application behind the ``pgtide`` command, and its error boundary."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from .. import __version__
from ..errors import ConnectionFailed, PgtideError
from . import db, demo, events, ingest, install, listen, status

app = typer.Typer(
    name="pgtide",
    help="PostgreSQL as a live, reliable stream of changes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(db.app, name="db")
app.add_typer(events.app, name="events")
app.command("install")(install.install)
app.command("demo")(demo.demo)
app.command("status")(status.status)
app.command("listen")(listen.listen)
app.command("notify")(listen.notify)
app.command("ingest")(ingest.ingest)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pgtide {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """PostgreSQL as a live, reliable stream of changes."""


def main() -> None:
    """Entry point: run the app; a pgtide error becomes one line on stderr and a non-zero exit."""
    try:
        app()
    except ConnectionFailed as exc:
        print(f"pgtide: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except PgtideError as exc:
        print(f"pgtide: error: {exc}", file=sys.stderr)
        sys.exit(1)
