"""What every command shares: the --dsn and --json options (and the feed consumers' options),
output to people and programs."""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime, timedelta
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

# The options of every command that reads the change feed as a consumer (follow, sink ...).
ConsumerOption = Annotated[
    str, typer.Option("--consumer", "-c", help="Consumer name (it keeps its position).")
]
TablesOption = Annotated[
    list[str] | None, typer.Option("--table", "-t", help="Follow only this table (repeatable).")
]
MaxChangesOption = Annotated[int, typer.Option(help="Changes per batch (transactions stay whole).")]


def wants_json(flag: bool) -> bool:
    """JSON when asked, or when stdout is not a terminal (piped into a program)."""
    return flag or not sys.stdout.isatty()


def emit_json(data: Any) -> None:
    """One JSON document on one line (JSON lines when called repeatedly)."""
    sys.stdout.write(json.dumps(data, default=str, ensure_ascii=False) + "\n")
    sys.stdout.flush()


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(text: str | float) -> float:
    """Seconds from ``30s``, ``5m``, ``2h``, ``7d``, ``250ms`` or a plain number of seconds:
    the one duration syntax of every pgtide command."""
    if isinstance(text, int | float):
        return float(text)
    match = _DURATION.match(text)
    if match is None:
        raise typer.BadParameter(
            f"{text!r} is not a duration; write a number of seconds or one with a unit: "
            "250ms, 30s, 5m, 2h, 7d"
        )
    return float(match[1]) * _UNITS[match[2] or "s"]


def duration(*names: str, help: str) -> Any:
    """A ``typer.Option`` that reads a duration (see :func:`parse_duration`) as seconds."""
    return typer.Option(*names, help=help, parser=parse_duration, metavar="DURATION")


def cell(value: Any, now: datetime | None = None) -> str:
    """A value for people: times as ages ("3 min ago"), nothing as "-"."""
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return age((now or datetime.now(UTC)) - value)
    return str(value)


def age(elapsed: timedelta) -> str:
    """``elapsed`` in the largest unit that fits: "12 s ago", "3 min ago", "2 h ago", "4 d ago"."""
    seconds = max(0.0, elapsed.total_seconds())
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds)} s ago"
