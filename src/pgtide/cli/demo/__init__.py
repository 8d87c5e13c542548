"""``pgtide demo``: a guided live tour of the four features on the embedded (or any) database.

A small shop writes orders for ``--seconds``; a listener, a change feed, event handlers and a
file watcher react, each through pgtide's public API, while a live table shows their rates.
It ends with a summary (or one JSON document with ``--json``) and removes what it created
(unless ``--keep``: then ``pgtide web`` shows the shop's consumer, events and files).
"""

from __future__ import annotations

import logging
import time
from typing import Annotated

import typer
from rich.live import Live

from ...connect import Resolved, resolve
from .._common import DsnOption, JsonOption, console, emit_json
from . import _view
from ._part import Line
from ._tour import TICKS_PER_SECOND, Result, Tour

REFRESH = 0.25


def demo(
    dsn: DsnOption = None,
    as_json: JsonOption = False,
    seconds: Annotated[
        float, typer.Option("--seconds", min=1.0, help="How long the shop writes orders.")
    ] = 20.0,
    keep: Annotated[
        bool,
        typer.Option(
            "--keep",
            help="Leave the tour's tables, consumer, events and files in place, to look at "
            "them with `pgtide web` or `pgtide status` (an interrupted tour still cleans up).",
        ),
    ] = False,
) -> None:
    """A live tour of listen, follow, events and ingest; exits 0 when every feature checks out."""
    chosen = resolve(dsn)
    # The tour's failures (a garbage line, a declined card) are planned and shown in its
    # table; their log lines would only scribble over the live view.
    logging.getLogger("pgtide").setLevel(logging.CRITICAL)
    try:
        result = _run(chosen, seconds, as_json, keep)
    except KeyboardInterrupt:  # the tour removed what it created on its way out
        console.print("[yellow]interrupted[/]: the demo's tables, events and folder were removed")
        raise typer.Exit(130) from None
    if not result.ok:
        raise typer.Exit(1)


def _run(chosen: Resolved, seconds: float, as_json: bool, keep: bool) -> Result:
    """Run the tour, live on the console or quietly with one JSON document at the end."""
    if as_json:
        result = Tour(chosen, seconds, lambda *_: None, keep).run()
        emit_json(result.as_json())
    else:
        shown = 0.0
        live = Live(console=console, refresh_per_second=4, transient=False)

        def show(phase: str, elapsed: float, lines: list[Line]) -> None:
            nonlocal shown
            if time.monotonic() - shown >= REFRESH:
                shown = time.monotonic()
                live.update(_view.live(phase, elapsed, lines))

        tour = Tour(chosen, seconds, show, keep)
        console.print(
            _view.intro(chosen.target, chosen.source, seconds, TICKS_PER_SECOND, tour.features)
        )
        with live:
            result = tour.run()
            live.update(_view.live("finished", result.seconds, tour.lines()))
        console.print()  # a piped Live ends without a newline
        console.print(_view.summary(result))
    return result
