"""What every command shares: the --dsn and --json options, output to people and programs."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)

DsnOption = Annotated[
    str | None,
    typer.Option(
        "--dsn", help="Connection string; default: see `pgtide db url`.", show_default=False
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for programs.")]


def wants_json(flag: bool) -> bool:
    """JSON when asked, or when stdout is not a terminal (piped into a program)."""
    return flag or not sys.stdout.isatty()


def emit_json(data: Any) -> None:
    """One JSON document on one line (JSON lines when called repeatedly)."""
    sys.stdout.write(json.dumps(data, default=str, ensure_ascii=False) + "\n")
    sys.stdout.flush()
