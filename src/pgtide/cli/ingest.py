"""``pgtide ingest DIR``: stream the lines appended to files into a table, exactly once;
``pgtide rejects``: list, show, retry and purge the lines that could not land."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from .._signals import stop_on_signals
from ..errors import ConfigError
from ..ingest import FileWatcher, WatcherStatus, rejects
from ._common import cell, console, duration, emit_json
from ._options import Common, bundle, takes

_REFRESH = 0.25


def _summary(status: WatcherStatus) -> dict[str, Any]:
    return {
        "files": [
            {
                "path": f.path,
                "offset": f.offset,
                "size": f.size,
                "lines": f.line_count,
                "rows_written": f.rows_written,
                "rejected": f.rejected,
            }
            for f in status.files
        ],
        "lines_read": status.lines_read,
        "rows_written": status.rows_written,
        "rejected": status.rejected,
        "bytes_behind": status.bytes_behind,
    }


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class _Display:
    """A rich progress line for people: files, lines/s, bytes left, rows and rejects."""

    def __init__(self, out: Console = console) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[files]} files"),
            TextColumn("{task.fields[rate]} lines/s"),
            TextColumn("{task.fields[left]} left"),
            TextColumn("{task.fields[rows]} rows, {task.fields[rejects]} rejected"),
            TimeElapsedColumn(),
            console=out,
            transient=False,
        )
        self.task: TaskID = self.progress.add_task(
            "ingest", total=1, files=0, rate="0", left="0 B", rows=0, rejects=0
        )
        self._last = (time.monotonic(), 0)
        self._rate = 0.0

    @contextmanager
    def shown(self, watcher: FileWatcher) -> Iterator[None]:
        """The watcher's progress while the block runs, refreshed from a thread."""
        done = threading.Event()

        def refresh() -> None:
            while not done.wait(_REFRESH):
                self.update(watcher.status())

        with self.progress:
            self.update(watcher.status())
            thread = threading.Thread(target=refresh, name="pgtide-ingest-progress", daemon=True)
            thread.start()
            try:
                yield
            finally:
                done.set()
                thread.join()
                self.update(watcher.status())

    def update(self, status: WatcherStatus) -> None:
        now = time.monotonic()
        then, lines = self._last
        if now - then >= 1.0:
            self._rate = (status.lines_read - lines) / (now - then)
            self._last = (now, status.lines_read)
        total = sum(f.size for f in status.files) or 1
        done = sum(min(f.offset, f.size) for f in status.files)
        self.progress.update(
            self.task,
            total=total,
            completed=done,
            files=len(status.files),
            rate=f"{self._rate:,.0f}",
            left=_size(status.bytes_behind),
            rows=f"{status.rows_written:,}",
            rejects=f"{status.rejected:,}",
        )


@takes
def ingest(
    directory: Annotated[Path, typer.Argument(help="Directory (or one file) to watch.")],
    table: Annotated[
        str | None, typer.Option("--table", "-t", help="Target table (rows go in by COPY).")
    ] = None,
    columns: Annotated[
        str | None, typer.Option("--columns", "-c", help="Target columns, comma-separated.")
    ] = None,
    pattern: Annotated[str, typer.Option(help="File names to read (glob).")] = "*.txt",
    format: Annotated[str, typer.Option("--format", "-f", help="lines, csv or jsonl.")] = "lines",
    sql: Annotated[
        str | None,
        typer.Option(
            "--sql",
            help="Your statement run per row instead of COPY, e.g. "
            "'INSERT INTO t (v) VALUES (%s)'.",
        ),
    ] = None,
    start: Annotated[
        str, typer.Option("--from", help="Existing content: 'beginning' or 'end' (skip it).")
    ] = "beginning",
    recursive: Annotated[bool, typer.Option(help="Watch sub-directories too.")] = False,
    header: Annotated[bool, typer.Option(help="CSV files start with a header line.")] = False,
    delimiter: Annotated[str, typer.Option(help="CSV delimiter.")] = ",",
    quote: Annotated[str, typer.Option(help="CSV quote character.")] = '"',
    poll: Annotated[
        bool, typer.Option(help="Rescan instead of waiting for file-system events.")
    ] = False,
    flush_after: Annotated[
        float | None,
        typer.Option(help="Take an unterminated last line after so many idle seconds."),
    ] = None,
    name: Annotated[str, typer.Option(help="Watcher name (keeps its own offsets).")] = "default",
    once: Annotated[
        bool, typer.Option("--once", help="Land what is there now, then exit (a backfill).")
    ] = False,
    *,
    common: Common,
) -> None:
    """Stream lines appended to files into a table: exactly once, bad lines kept in rejects."""
    watcher = FileWatcher(
        directory,
        table=table,
        columns=columns,
        pattern=pattern,
        format=format,
        sql=sql,
        start=start,
        recursive=recursive,
        dsn=common.dsn,
        header=header,
        delimiter=delimiter,
        quote=quote,
        name=name,
        poll=poll,
        flush_after=flush_after,
    )
    machine = common.json
    _log_to(machine)
    if once:
        _once(watcher, machine)
    else:
        _forever(watcher, machine)


def _log_to(machine: bool) -> None:
    """Warnings (rejects, reconnects) above the progress line, or as plain lines on stderr."""
    handler: logging.Handler
    if machine:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("pgtide: %(levelname)s: %(message)s"))
    else:
        handler = RichHandler(console=console, show_path=False, show_time=False)
    handler.setLevel(logging.WARNING)
    for name in ("pgtide.ingest", "pgtide.session"):  # rejects; outages and reconnects
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
            logger.propagate = False


def _once(watcher: FileWatcher, machine: bool) -> None:
    # SIGTERM or Ctrl-C: stop after the current batch (committed with its offset), report
    with stop_on_signals(watcher.stop, "pgtide ingest --once"):
        if machine:
            watcher.catch_up()
        else:
            with _Display().shown(watcher):
                watcher.catch_up()
    _report(watcher.status(), machine)


def _forever(watcher: FileWatcher, machine: bool) -> None:
    watcher.start()
    stopping = threading.Event()
    try:
        with stop_on_signals(stopping.set, "pgtide ingest"):
            if machine:
                seen: tuple[int, int] | None = None
                while watcher.status().running and not stopping.is_set():
                    status = watcher.status()
                    if (status.rows_written, status.rejected) != seen:
                        seen = (status.rows_written, status.rejected)
                        emit_json(_summary(status))
                    stopping.wait(_REFRESH)
            else:
                display = _Display()
                with display.progress:
                    while watcher.status().running and not stopping.is_set():
                        display.update(watcher.status())
                        stopping.wait(_REFRESH)
    finally:
        watcher.stop()
    _report(watcher.status(), machine)


def _report(status: WatcherStatus, machine: bool) -> None:
    if machine:
        emit_json(_summary(status))
        return
    console.print(
        f"{len(status.files)} files, {status.lines_read:,} lines read, "
        f"{status.rows_written:,} rows written, {status.rejected:,} rejected"
        + (" (see pgtide.rejects)" if status.rejected else ""),
        highlight=False,
    )


# -- pgtide rejects ------------------------------------------------------------------------------

rejects_app = typer.Typer(
    help="Lines ingest could not land: list, show, retry into their table, purge.",
    invoke_without_command=True,
    no_args_is_help=False,
)

WatcherOption = Annotated[
    str | None, typer.Option("--watcher", "-w", help="Only this watcher's rejects.")
]
PathOption = Annotated[
    Path | None, typer.Option("--path", "-p", help="Only the rejects of this file.")
]


@bundle
@dataclass(frozen=True)
class Scope(Common):
    """The options of the rejects commands: ``--watcher`` and ``--path`` (the rejects of one
    watcher, or of one file), then ``--dsn`` and ``--json``."""

    watcher: WatcherOption = None
    path: PathOption = None

    @property
    def file(self) -> str | None:
        """The file as pgtide stores it: its absolute path."""
        return str(self.path.expanduser().absolute()) if self.path is not None else None


def _reject_json(r: rejects.Rejected) -> dict[str, Any]:
    return {
        "id": r.id,
        "watcher": r.watcher,
        "path": r.path,
        "line_no": r.line_no,
        "line": r.printable,
        "raw_hex": r.data.hex(),
        "error": r.error,
        "at": r.at.isoformat(),
        "target": rejects.describe_target(r),
    }


@rejects_app.callback()
@takes
def list_rejects(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="Show at most this many (oldest first).")] = 1000,
    *,
    scope: Scope,
) -> None:
    """List rejected lines: file, line number, error and the line (escaped where needed).

    `pgtide rejects show ID` prints a line's exact bytes, `retry` lands lines again once
    fixed, `purge` deletes them."""
    if ctx.invoked_subcommand is not None:
        return
    found = rejects.find(watcher=scope.watcher, path=scope.file, limit=limit, dsn=scope.dsn)
    if scope.json:
        emit_json([_reject_json(r) for r in found])
        return
    if not found:
        console.print("no rejects", highlight=False)
        return
    table = Table(title="rejected lines", title_justify="left")
    for column in ("id", "watcher", "file", "line", "error", "text", "when"):
        table.add_column(column, overflow="fold")
    for r in found:
        table.add_row(
            str(r.id),
            r.watcher,
            escape(r.path),
            str(r.line_no),
            escape(r.error),
            escape(r.printable),
            cell(r.at),
        )
    console.print(table)


@rejects_app.command("show")
@takes
def show_reject(
    reject_id: Annotated[int, typer.Argument(metavar="ID", help="The reject's id.")],
    *,
    common: Common,
) -> None:
    """Show one rejected line: where it was, why, and its exact bytes (escaped and in hex)."""
    r = rejects.get(reject_id, dsn=common.dsn)
    if common.json:
        emit_json(_reject_json(r))
        return
    data = r.data
    lines = [
        f"id       {r.id}",
        f"watcher  {r.watcher}",
        f"file     {r.path}, line {r.line_no}",
        f"target   {rejects.describe_target(r)}",
        f"error    {r.error}",
        f"when     {r.at:%Y-%m-%d %H:%M:%S} ({cell(r.at)})",
        f"bytes    {len(data)}: {data!r}",
    ]
    lines += [
        f"  {i:06x}  {data[i : i + 16].hex(' '):<47}  "
        + "".join(chr(b) if 32 <= b < 127 else "." for b in data[i : i + 16])
        for i in range(0, len(data), 16)
    ]
    sys.stdout.write("\n".join(lines) + "\n")


@rejects_app.command("retry")
@takes
def retry_rejects(
    ids: Annotated[
        list[int] | None, typer.Argument(metavar="ID", help="Rejects to retry.", show_default=False)
    ] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="Every reject (of --watcher or --path, if given).")
    ] = False,
    *,
    scope: Scope,
) -> None:
    """Land rejected lines again into their watcher's table (after fixing the table or the
    line); those that land leave the rejects, the others keep their new error."""
    if not ids and not all_:
        raise ConfigError("name the rejects to retry (their ids), or give --all")
    done = rejects.retry(ids or None, watcher=scope.watcher, path=scope.file, dsn=scope.dsn)
    if scope.json:
        emit_json(
            {
                "landed": done.landed,
                "failed": [{"id": r.id, "error": r.error} for r in done.failed],
            }
        )
    else:
        console.print(
            f"{len(done.landed)} landed, {len(done.failed)} still rejected", highlight=False
        )
        for r in done.failed:
            console.print(f"  {r.id}: {escape(r.error)}", highlight=False)
    if done.failed:
        raise typer.Exit(1)


@rejects_app.command("purge")
@takes
def purge_rejects(
    older_than: Annotated[
        float | None, duration("--older-than", help="Only those older than this: 30s, 12h, 7d.")
    ] = None,
    *,
    scope: Scope,
) -> None:
    """Delete rejects: all of them, or those older than --older-than (of one watcher or file)."""
    age = timedelta(seconds=older_than) if older_than is not None else None
    deleted = rejects.purge(older_than=age, watcher=scope.watcher, path=scope.file, dsn=scope.dsn)
    if scope.json:
        emit_json({"deleted": deleted})
    else:
        console.print(f"deleted {deleted} rejects", highlight=False)
