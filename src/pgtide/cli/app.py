"""The typer application behind the ``pgtide`` command, and its error boundary."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from .. import __version__
from ..connect import ENV_FILE_VARIABLE
from ..errors import ConnectionFailed, PgtideError
from . import _help, db, demo, events, feed, grant, ingest, install, listen, sink, status, web

_help.install()

app = typer.Typer(
    name="pgtide",
    help="PostgreSQL as a live, reliable stream of changes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="markdown",
)
# the commands and groups, in the order help lists them
_COMMANDS: tuple[tuple[str, typer.Typer | Callable[..., Any]], ...] = (
    ("db", db.app),
    ("events", events.app),
    ("install", install.install),
    ("grant", grant.grant),
    ("demo", demo.demo),
    ("status", status.status),
    ("listen", listen.listen),
    ("notify", listen.notify),
    ("ingest", ingest.ingest),
    ("rejects", ingest.rejects_app),
    ("track", feed.track),
    ("untrack", feed.untrack),
    ("capture", feed.capture),
    ("follow", feed.follow),
    ("prune", feed.prune),
    ("consumers", feed.consumers_app),
    ("backfill", feed.backfill_app),
    ("sink", sink.app),
    ("web", web.web),
)
for _name, _target in _COMMANDS:
    if isinstance(_target, typer.Typer):
        app.add_typer(_target, name=_name)
    else:
        app.command(_name)(_target)


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
