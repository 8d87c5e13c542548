"""What the tour shows people: the introduction, the live rates, the summary (80 columns)."""

from __future__ import annotations

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from ._part import Line
from ._tour import Result

INTRO = {
    "listen": "a Listener hears the NOTIFY each order sends, over one connection",
    "follow": "the orders table is tracked; a Feed consumer reads its changes",
    "events": "each order publishes events; a handler fails once, is retried",
    "ingest": "an instrument appends readings to a file; a FileWatcher lands them",
}
KEPT = "`pgtide web` shows them (http://127.0.0.1:8484/)"

NEXT = (
    "Next: `pgtide status` shows consumers, events, files and listeners; "
    "docs/coming-from.md maps older libraries to pgtide; README.md has the tour in Python."
)


def intro(
    target: str, source: str, seconds: float, per_second: int, features: list[str]
) -> RenderableType:
    """What is about to happen, one line a feature."""
    lines = [
        Text.assemble(("pgtide demo", "bold"), f" on {target} ", (f"(from {source})", "dim")),
        Text(f"A small shop writes {per_second} orders a second for {seconds:g} s. Meanwhile:"),
    ]
    lines += [Text.assemble(f"  {f:<7} ", (INTRO[f], "")) for f in features if f in INTRO]
    return Group(*lines)


def live(phase: str, elapsed: float, lines: list[Line]) -> RenderableType:
    """The live table: one row a feature with its count and rate."""
    table = Table(
        title=f"{phase} {elapsed:4.1f} s",
        title_justify="left",
        box=box.SIMPLE,
        pad_edge=False,
    )
    table.add_column("feature", no_wrap=True)
    table.add_column("doing", no_wrap=True)
    table.add_column("count", justify="right", no_wrap=True)
    table.add_column("per s", justify="right", no_wrap=True)
    table.add_column("detail", overflow="fold", max_width=32)
    for line in lines:
        table.add_row(line.feature, line.doing, f"{line.count:,}", f"{line.rate:,.0f}", line.detail)
    return table


def summary(result: Result) -> RenderableType:
    """The closing table: what each feature did, and whether it all checked out."""
    table = Table(title="pgtide demo: summary", title_justify="left", box=box.SIMPLE)
    table.add_column("feature", no_wrap=True)
    table.add_column("what happened", overflow="fold", max_width=56)
    table.add_column("ok", no_wrap=True)
    for feature, figures in result.features.items():
        mark = "[green]yes[/]" if figures.get("ok") else "[red]no[/]"
        table.add_row(feature, str(figures.get("text", "")), mark)
    if result.kept:
        table.add_row(
            "kept",
            f"tables, consumer, events, offsets and folder left in place: {KEPT}",
            "[green]yes[/]",
        )
    else:
        cleaned = "[green]yes[/]" if result.cleaned_up else "[red]no[/]"
        table.add_row("cleanup", "tables, consumer, events, offsets and folder removed", cleaned)
    verdict = (
        Text(f"done: {result.orders} orders in {result.seconds:.1f} s, every feature checked out.")
        if result.ok
        else Text("something did not check out: see the rows marked no above.", style="red")
    )
    return Group(table, verdict, Text(NEXT, style="dim"))
