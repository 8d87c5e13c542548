"""``pgtide track|untrack|follow|prune|consumers|backfill``: the change feed on the command line."""

from __future__ import annotations

import functools
import sys
import threading
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.table import Table

from .. import _signals
from ..connect import resolve
from ..errors import FeedError
from ..feed import OPS, Change, Feed, drop_consumer, to_json
from ..feed import consumers as _consumers
from ..feed import prune as _prune
from ..feed import track as _track
from ..feed import untrack as _untrack
from ..feed.backfill import Backfiller, backfills, pause_backfill, resume_backfill
from ..feed.wal import Relay, SlotLost, reset_slot
from ._common import (
    ConsumerOption,
    DsnOption,
    JsonOption,
    MaxChangesOption,
    TablesOption,
    cell,
    console,
    duration,
    emit_json,
    wants_json,
)

consumers_app = typer.Typer(help="List or drop the change feed's consumers.", no_args_is_help=True)
backfill_app = typer.Typer(
    help="List, pause or resume backfills (pgtide track TABLE --backfill starts one).",
    no_args_is_help=True,
)

TableArg = Annotated[str, typer.Argument(help="Table to capture: 'table' or 'schema.table'.")]


def track(
    table: TableArg,
    op: Annotated[
        list[str] | None,
        typer.Option("--op", help=f"Operation to capture (repeatable): {', '.join(OPS)}."),
    ] = None,
    no_notify: Annotated[
        bool, typer.Option("--no-notify", help="No wake-up NOTIFY: followers poll.")
    ] = False,
    wal: Annotated[
        bool,
        typer.Option(
            "--wal", help="Capture from the write-ahead log (logical decoding), not triggers."
        ),
    ] = False,
    old_full: Annotated[
        bool,
        typer.Option("--old-full", help="With --wal: REPLICA IDENTITY FULL (whole old rows)."),
    ] = False,
    backfill: Annotated[
        bool,
        typer.Option(
            "--backfill",
            help="Also emit the existing rows as 'read' changes (run by the feeds, "
            "pgtide capture, or here with --wait).",
        ),
    ] = False,
    wait: Annotated[
        bool, typer.Option("--wait", help="With --backfill: run it here, to its end.")
    ] = False,
    dsn: DsnOption = None,
    as_json: JsonOption = False,
) -> None:
    """Capture a table's changes into pgtide.changes (triggers; --wal: the write-ahead log)."""
    changed = _track(
        table,
        ops=op or OPS,
        notify=not no_notify,
        capture="wal" if wal else "trigger",
        old="full" if old_full else None,
        backfill=backfill,
        wait=wait,
        dsn=dsn,
    )
    if as_json:
        emit_json({"table": table, "tracked": True, "changed": changed})
    else:
        console.print(
            f"tracking {table}"
            if changed
            else f"{table} is already tracked that way; nothing changed"
        )


def capture(
    reset: Annotated[
        bool,
        typer.Option(
            "--reset",
            help="Drop and re-create the replication slot (the recovery from a lost slot), "
            "then exit.",
        ),
    ] = False,
    once: Annotated[bool, typer.Option("--once", help="Relay what is pending, then exit.")] = False,
    dsn: DsnOption = None,
) -> None:
    """Run the relay: drain the database's replication slot into pgtide.changes (WAL
    capture), and run pending backfills, until SIGTERM or Ctrl-C. One relay (and one
    backfill) runs per database; another one waits."""
    if reset:
        slot = reset_slot(dsn=dsn)
        console.print(f"re-created replication slot {slot}; backfill the WAL-captured tables")
        return
    resolved = resolve(dsn)
    relay = Relay(resolved, name="pgtide capture")
    backfiller = Backfiller(resolved, name="pgtide capture")
    filler = threading.Thread(
        target=functools.partial(backfiller.run, until_idle=once),
        name="pgtide-backfill",
        daemon=True,
    )

    def stop() -> None:
        relay.stop()
        backfiller.stop()

    try:
        with _signals.stop_on_signals(stop, "pgtide capture"):
            filler.start()  # pending backfills run beside the relay
            relay.run(until_idle=once)
            if once:
                _signals.join(filler)
    except SlotLost as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    finally:
        backfiller.stop()
        filler.join(10)
    console.print(f"relayed {relay.relayed} changes; backfilled {backfiller.emitted} rows")


def untrack(table: TableArg, dsn: DsnOption = None, as_json: JsonOption = False) -> None:
    """Stop capturing a table's changes (its past changes stay until pruned)."""
    changed = _untrack(table, dsn=dsn)
    if as_json:
        emit_json({"table": table, "tracked": False, "changed": changed})
    else:
        console.print(f"no longer tracking {table}" if changed else f"{table} was not tracked")


def _record(change: Change) -> str:
    """A change as one line of JSON: numbers exact, bytes in base64, times in ISO 8601."""
    fields = ("id", "table", "op", "row", "old", "xid", "at")
    return to_json({f: getattr(change, f) for f in fields})


def follow(
    consumer: ConsumerOption,
    start: Annotated[
        str,
        typer.Option("--from", help="Where to start: saved, beginning, end or a position."),
    ] = "saved",
    table: TablesOption = None,
    timeout: Annotated[
        float | None, duration("--timeout", help="Stop after so long idle (default: never).")
    ] = None,
    max_changes: MaxChangesOption = 1000,
    wakeup: Annotated[str, typer.Option(help="notify, or poll behind a pooler.")] = "notify",
    dsn: DsnOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print changes as they commit (JSON lines when piped), acknowledging as it goes."""
    feed = Feed(consumer, tables=table, dsn=resolve(dsn), wakeup=wakeup)
    batches = feed.batches(start=start, max_changes=max_changes, timeout=timeout)
    try:
        with _signals.stop_on_signals(feed.stop, "pgtide follow"):
            if wants_json(as_json):
                for batch in batches:
                    sys.stdout.write("".join(_record(c) + "\n" for c in batch))
                    sys.stdout.flush()
                    batch.ack()
            else:
                _live(feed, batches)
    finally:
        batches.close()
        feed.close()


def _json(row: dict[str, Any] | None) -> str:
    """A row as compact JSON, its columns in table order."""
    return "" if row is None else to_json(row)


def _live(feed: Feed, batches: Any) -> None:
    recent: list[Change] = []
    counts: dict[str, int] = {}

    def view() -> Table:
        title = f"consumer {feed.consumer}: " + (
            ", ".join(f"{op} {n}" for op, n in sorted(counts.items())) or "waiting for changes"
        )
        table = Table(title=title, title_justify="left")
        for column in ("op", "table", "id"):  # always whole, at any width
            table.add_column(column, no_wrap=True, min_width=len(column))
        for column in ("row", "old"):  # what does not fit is cut, not the columns above
            table.add_column(column, overflow="ellipsis", no_wrap=True, ratio=1)
        for c in recent[-20:]:
            table.add_row(c.op, c.table, str(c.id), _json(c.row), _json(c.old))
        return table

    with Live(view(), console=console, refresh_per_second=8) as live:
        for batch in batches:
            for change in batch:
                counts[change.op] = counts.get(change.op, 0) + 1
            recent.extend(batch)
            del recent[:-20]
            batch.ack()
            live.update(view())


def prune(
    older_than: Annotated[
        float | None, duration("--older-than", help="Also only changes older than this (7d).")
    ] = None,
    dsn: DsnOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete the changes every registered consumer has acknowledged."""
    deleted = _prune(older_than, dsn=dsn)
    if as_json:
        emit_json({"deleted": deleted})
    else:
        console.print(f"deleted {deleted} acknowledged changes")


@consumers_app.command("ls")
def consumers_ls(dsn: DsnOption = None, as_json: JsonOption = False) -> None:
    """Every consumer, its position and its lag (changes not yet acknowledged)."""
    found = _consumers(dsn=dsn)
    if wants_json(as_json):
        for c in found:
            emit_json({**c, "position": str(c["position"])})
        return
    table = Table("name", "pending", "acked", "tables", "position")
    for c in found:
        tables = ", ".join(c["tables"] or ["all"])
        table.add_row(c["name"], str(c["pending"]), cell(c["acked_at"]), tables, str(c["position"]))
    console.print(table)


@consumers_app.command("drop")
def consumers_drop(
    name: Annotated[str, typer.Argument(help="Consumer to forget.")],
    dsn: DsnOption = None,
    as_json: JsonOption = False,
) -> None:
    """Forget a consumer: its position goes, and prune stops waiting for it."""
    if not drop_consumer(name, dsn=dsn):
        raise FeedError(f"no consumer named {name!r}; `pgtide consumers ls` lists them")
    if as_json:
        emit_json({"consumer": name, "dropped": True})
    else:
        console.print(f"dropped consumer {name}", highlight=False)


BackfillTableArg = Annotated[str, typer.Argument(help="The backfilled table.")]


@backfill_app.command("ls")
def backfill_ls(dsn: DsnOption = None, as_json: JsonOption = False) -> None:
    """Every backfill: its state (running, paused, done), rows and chunks so far."""
    found = backfills(dsn=dsn)
    if wants_json(as_json):
        for b in found:
            emit_json(b)
        return
    table = Table("table", "state", "rows", "chunks", "started", "updated")
    for b in found:
        table.add_row(
            b["table"],
            b["state"],
            str(b["rows"]),
            str(b["chunks"]),
            cell(b["started_at"]),
            cell(b["updated_at"]),
        )
    console.print(table)


@backfill_app.command("pause")
def backfill_pause(
    table: BackfillTableArg, dsn: DsnOption = None, as_json: JsonOption = False
) -> None:
    """Pause a backfill after its current chunk; its progress stays."""
    paused = pause_backfill(table, dsn=dsn)
    if as_json:
        emit_json({"table": table, "paused": paused})
    else:
        console.print(f"paused the backfill of {table}" if paused else f"{table}: backfill done")


@backfill_app.command("resume")
def backfill_resume(
    table: BackfillTableArg,
    wait: Annotated[bool, typer.Option("--wait", help="Run it here, to its end.")] = False,
    dsn: DsnOption = None,
    as_json: JsonOption = False,
) -> None:
    """Resume a paused backfill from its last chunk (run by the feeds, pgtide capture, or
    here with --wait)."""
    resumed = resume_backfill(table, wait=wait, dsn=dsn)
    if as_json:
        emit_json({"table": table, "resumed": resumed})
    else:
        console.print(f"resumed the backfill of {table}" if resumed else f"{table}: backfill done")
