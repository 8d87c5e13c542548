"""``pgtide ingest DIR``: stream the lines appended to files into a table, exactly once."""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from .._signals import stop_on_signals
from ..ingest import FileWatcher, WatcherStatus
from ._common import DsnOption, JsonOption, console, emit_json, wants_json

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
    dsn: DsnOption = None,
    as_json: JsonOption = False,
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
        dsn=dsn,
        header=header,
        delimiter=delimiter,
        quote=quote,
        name=name,
        poll=poll,
        flush_after=flush_after,
    )
    machine = wants_json(as_json)
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
    failure: list[BaseException] = []

    def work() -> None:
        try:
            watcher.catch_up()
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=work, name="pgtide-ingest-once", daemon=True)
    worker.start()
    # SIGTERM or Ctrl-C: stop after the current batch (committed with its offset), report
    with stop_on_signals(watcher.stop, "pgtide ingest --once"):
        if machine:
            while worker.is_alive():
                worker.join(_REFRESH)
        else:
            display = _Display()
            with display.progress:
                while worker.is_alive():
                    display.update(watcher.status())
                    worker.join(_REFRESH)
                display.update(watcher.status())
    if failure:
        raise failure[0]
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
