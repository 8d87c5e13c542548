"""The typer application behind the ``pgtide`` command, and its error boundary."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from .. import __version__
from ..connect import ENV_FILE_VARIABLE
from ..errors import ConnectionFailed, PgtideError
from . import _help, db, demo, events, feed, grant, ingest, install, listen, status, web

_help.install()

app = typer.Typer(
    name="pgtide",
    help="PostgreSQL as a live, reliable stream of changes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="markdown",
)
app.add_typer(db.app, name="db")
app.add_typer(events.app, name="events")
app.command("install")(install.install)
app.command("grant")(grant.grant)
app.command("demo")(demo.demo)
app.command("status")(status.status)
app.command("listen")(listen.listen)
app.command("notify")(listen.notify)
app.command("ingest")(ingest.ingest)
app.command("track")(feed.track)
app.command("untrack")(feed.untrack)
app.command("follow")(feed.follow)
app.command("prune")(feed.prune)
app.add_typer(feed.consumers_app, name="consumers")
app.command("web")(web.web)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pgtide {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
    env_file: Annotated[
        Path | None,
        typer.Option(
            "--env-file",
            help="Read the database settings from this env file (same as PGTIDE_ENV_FILE).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """PostgreSQL as a live, reliable stream of changes."""
    if env_file is not None:
        os.environ[ENV_FILE_VARIABLE] = str(env_file)


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
