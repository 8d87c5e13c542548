"""The blocking face: :class:`FileWatcher`."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from ..connect import Resolved
from ..errors import ConfigError
from ._core import Engine, Settings, Start, WatcherStatus
from ._formats import FORMATS, CsvOptions, Format
from ._writer import Target

log = logging.getLogger("pgtide.ingest")


def settings(
    path: str | Path,
    *,
    table: str | None,
    columns: Sequence[str] | str | None,
    pattern: str,
    format: str,
    sql: str | None,
    start: str,
    recursive: bool,
    header: bool,
    delimiter: str,
    quote: str,
    name: str,
    poll: bool,
    rescan_every: float,
    flush_after: float | None,
    batch_bytes: int,
) -> Settings:
    """Check a watcher's options; every mistake gets an error that says how to fix it."""
    root = Path(path).expanduser().absolute()
    if not root.exists():
        raise ConfigError(
            f"{root} does not exist; create the directory first or give the path to watch"
        )
    if format not in FORMATS:
        raise ConfigError(f"format {format!r} is not one of {', '.join(FORMATS)}")
    fmt: Format = format
    if start not in ("beginning", "end"):
        raise ConfigError(f"start={start!r} must be 'beginning' or 'end'")
    begin: Start = start  # type: ignore[assignment]
    if (table is None) == (sql is None):
        raise ConfigError(
            "give either table= (rows are copied into it) or sql= (a statement run for each "
            "row, e.g. 'INSERT INTO t (v) VALUES (%s)'), not both and not neither"
        )
    if sql is not None and not sql.strip():
        raise ConfigError("sql= is empty; give a statement such as 'INSERT INTO t (v) VALUES (%s)'")
    if isinstance(columns, str):
        columns = [c.strip() for c in columns.split(",") if c.strip()]
    cols = tuple(columns) if columns is not None else None
    if cols is not None and (not cols or not all(cols)):
        raise ConfigError("columns= names no column; give names such as ['id', 'value']")
    if fmt == "lines" and cols is not None and len(cols) != 1:
        raise ConfigError(
            f"format 'lines' carries one value per line, but {len(cols)} columns were given; "
            "use format='csv' for several values per line"
        )
    if len(delimiter) != 1 or len(quote) != 1:
        raise ConfigError("delimiter and quote must be single characters")
    if batch_bytes < 1024:
        raise ConfigError("batch_bytes must be at least 1024")
    if rescan_every <= 0 or (flush_after is not None and flush_after <= 0):
        raise ConfigError("rescan_every and flush_after must be positive numbers of seconds")
    return Settings(
        root=root,
        pattern=pattern,
        fmt=fmt,
        csv=CsvOptions(header=header, delimiter=delimiter, quote=quote),
        target=Target(table, cols, sql),
        start=begin,
        recursive=recursive,
        name=name,
        poll=poll,
        rescan_every=rescan_every,
        flush_after=flush_after,
        batch_bytes=batch_bytes,
    )


class FileWatcher:
    """Stream the lines appended to files into a table, each complete line exactly once.

    ``path`` is a directory (files matching ``pattern``, in sub-directories too with
    ``recursive=True``) or one file. Rows go into ``table`` (``columns``) by COPY, or through
    ``sql``, a statement of yours with one placeholder per value (``%s``, or ``%(key)s`` for
    ``jsonl`` without columns) run for every row in pipelined batches.

    ``format``: ``"lines"`` (one value per line), ``"csv"`` (``header``, ``delimiter``,
    ``quote``; an empty field is NULL) or ``"jsonl"`` (object keys mapped to ``columns``).
    ``start="end"`` skips what files hold when the watcher first sees them (a file seen in
    an earlier run resumes where it was). A last line without its newline waits for it;
    with ``flush_after`` it is taken as it is after that many seconds without change.
    File-system events wake the watcher; it also rescans every ``rescan_every`` seconds, and
    ``poll=True`` relies on rescans alone (for mounts where events do not arrive).
    ``name`` separates the offsets of watchers that read the same files into different
    targets.
    """

    def __init__(
        self,
        path: str | Path,
        table: str | None = None,
        columns: Sequence[str] | str | None = None,
        pattern: str = "*.txt",
        format: str = "lines",
        sql: str | None = None,
        start: str = "beginning",
        recursive: bool = False,
        dsn: str | Resolved | None = None,
        *,
        header: bool = False,
        delimiter: str = ",",
        quote: str = '"',
        name: str = "default",
        poll: bool = False,
        rescan_every: float = 1.0,
        flush_after: float | None = None,
        batch_bytes: int = 4 << 20,
    ) -> None:
        self.settings = settings(
            path,
            table=table,
            columns=columns,
            pattern=pattern,
            format=format,
            sql=sql,
            start=start,
            recursive=recursive,
            header=header,
            delimiter=delimiter,
            quote=quote,
            name=name,
            poll=poll,
            rescan_every=rescan_every,
            flush_after=flush_after,
            batch_bytes=batch_bytes,
        )
        self._engine = Engine(self.settings, dsn)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def __repr__(self) -> str:
        s = self.settings
        return f"FileWatcher({str(s.root)!r}, target={s.target.label!r}, format={s.fmt!r})"

    def run(self) -> None:
        """Land lines as they are written; blocks until :meth:`stop` (or Ctrl-C)."""
        if self._engine.running:
            raise ConfigError("this watcher is already running")
        self._engine.stop_event.clear()
        self._engine.run()

    def catch_up(self) -> int:
        """Land every complete line there is now, then return the number of rows landed."""
        if self._engine.running:
            raise ConfigError("this watcher is running; catch_up() is for a stopped watcher")
        try:
            return self._engine.guarded_pass()
        finally:
            self._engine.close()

    def start(self) -> None:
        """Run in a background thread. Connection and target errors are raised here."""
        if self._thread is not None and self._thread.is_alive():
            raise ConfigError("this watcher is already running")
        self._engine.stop_event.clear()
        self._error = None
        self._engine.open()
        self._engine.running = True
        self._thread = threading.Thread(target=self._background, name="pgtide-ingest", daemon=True)
        self._thread.start()

    def _background(self) -> None:
        try:
            self._engine.run()
        except BaseException as exc:
            log.exception("the file watcher stopped on an error")
            self._error = exc

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop the background watcher after its current batch; re-raise what stopped it."""
        self._engine.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def status(self) -> WatcherStatus:
        """Files, offsets, rows written and rejects (rows and rejects count every run)."""
        return self._engine.status()

    def __enter__(self) -> FileWatcher:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
