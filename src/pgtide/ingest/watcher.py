"""The faces' shared part (arguments, checks, the engine) and the blocking :class:`FileWatcher`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import cast

from .._compat import now_keyword_only
from .._lifecycle import Runnable
from .._signals import stop_on_signals
from ..connect import DsnLike
from ..errors import ConfigError
from ..names import TableName
from ._core import Engine, Settings, Start, WatcherStatus
from ._formats import FORMATS, CsvOptions, Format
from ._writer import Target, Transform

log = logging.getLogger("pgtide.ingest")

_ONCE_POSITIONAL = ("table", "columns", "pattern", "format", "sql", "start", "recursive", "dsn")
"""The parameters after ``path`` that could be given by position before they became keyword-only."""


def _columns(
    columns: Sequence[str] | str | None, fmt: Format, transform: bool
) -> tuple[str, ...] | None:
    if isinstance(columns, str):
        columns = [c.strip() for c in columns.split(",") if c.strip()]
    cols = tuple(columns) if columns is not None else None
    if cols is not None and (not cols or not all(cols)):
        raise ConfigError("columns= names no column; give names such as ['id', 'value']")
    if fmt == "lines" and cols is not None and len(cols) != 1 and not transform:
        raise ConfigError(
            f"format 'lines' carries one value per line, but {len(cols)} columns were given; "
            "use format='csv' for several values per line"
        )
    return cols


def _target(
    table: str | None,
    columns: Sequence[str] | str | None,
    sql: str | None,
    fmt: Format,
    transform: bool,
) -> Target:
    if (table is None) == (sql is None):
        raise ConfigError(
            "give either table= (rows are copied into it) or sql= (a statement run for each "
            "row, e.g. 'INSERT INTO t (v) VALUES (%s)'), not both and not neither"
        )
    if sql is not None and not sql.strip():
        raise ConfigError("sql= is empty; give a statement such as 'INSERT INTO t (v) VALUES (%s)'")
    name = TableName.parse(table) if table is not None else None
    return Target(name, _columns(columns, fmt, transform), sql)


class Watcher:
    """What both faces share: the arguments and their checks (see :class:`FileWatcher`), the
    engine, and :meth:`status`."""

    _face = "FileWatcher"

    @now_keyword_only(2, *_ONCE_POSITIONAL)  # self, path
    def __init__(
        self,
        path: str | Path,
        *,
        table: str | None = None,
        columns: Sequence[str] | str | None = None,
        pattern: str = "*.txt",
        format: str = "lines",
        sql: str | None = None,
        start: str = "beginning",
        recursive: bool = False,
        dsn: DsnLike = None,
        header: bool = False,
        delimiter: str = ",",
        quote: str = '"',
        name: str = "default",
        poll: bool = False,
        rescan_every: float = 1.0,
        flush_after: float | None = None,
        batch_bytes: int = 64 << 20,
        rotated_grace: float = 5.0,
        transform: Transform | None = None,
    ) -> None:
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
        if len(delimiter) != 1 or len(quote) != 1:
            raise ConfigError("delimiter and quote must be single characters")
        if batch_bytes < 1024:
            raise ConfigError("batch_bytes must be at least 1024")
        if rescan_every <= 0 or (flush_after is not None and flush_after <= 0):
            raise ConfigError("rescan_every and flush_after must be positive numbers of seconds")
        if rotated_grace < 0:
            raise ConfigError("rotated_grace must be a number of seconds, 0 or more")
        if transform is not None:
            if not callable(transform):
                raise ConfigError("transform= must be a function fn(line, path)")
            if fmt != "lines":
                raise ConfigError(
                    "transform= receives each line as text: use format='lines' and parse the "
                    "line in the function (json.loads, csv.reader, ...)"
                )
        self.settings = Settings(
            root=root,
            pattern=pattern,
            fmt=fmt,
            csv=CsvOptions(header=header, delimiter=delimiter, quote=quote),
            target=_target(table, columns, sql, fmt, transform is not None),
            start=cast(Start, start),
            recursive=recursive,
            name=name,
            poll=poll,
            rescan_every=rescan_every,
            flush_after=flush_after,
            batch_bytes=batch_bytes,
            rotated_grace=rotated_grace,
            transform=transform,
        )
        self._engine = Engine(self.settings, dsn)

    def __repr__(self) -> str:
        s = self.settings
        return f"{self._face}({str(s.root)!r}, target={s.target.label!r}, format={s.fmt!r})"

    def status(self) -> WatcherStatus:
        """Files, offsets, rows written and rejects (rows and rejects count every run)."""
        return self._engine.status()


class FileWatcher(Watcher, Runnable):
    """Stream the lines appended to files into a table, each complete line exactly once.

    ``path`` is a directory (files matching ``pattern``, in sub-directories too with
    ``recursive=True``) or one file. Rows go into ``table`` (``columns``) by COPY, or through
    ``sql``, a statement of yours with one placeholder per value (``%s``, or ``%(key)s`` for
    ``jsonl`` without columns) run for every row in pipelined batches. Every argument after
    ``path`` is keyword-only.

    ``format``: ``"lines"`` (one value per line), ``"csv"`` (``header``, ``delimiter``,
    ``quote``; an empty field is NULL) or ``"jsonl"`` (object keys mapped to ``columns``).
    ``start="end"`` skips what files hold when the watcher first sees them (a file seen in
    an earlier run resumes where it was). A last line without its newline waits for it;
    with ``flush_after`` it is taken as it is after that many seconds without change.
    File-system events wake the watcher; it also rescans every ``rescan_every`` seconds, and
    ``poll=True`` relies on rescans alone (for mounts where events do not arrive).
    ``name`` separates the offsets of watchers that read the same files into different
    targets. A file rotated away (renamed to a name ``pattern`` does not match) is read on
    under its new name, as its writer may still hold it open, until it has not changed for
    ``rotated_grace`` seconds (0: land what it holds and let it go at once).

    ``transform=fn`` calls ``fn(line, path)`` for each non-empty line (``format="lines"``):
    it returns a row (a tuple, or a dict keyed by column), a list of rows, or None to skip
    the line; a line whose ``fn`` raises goes to the rejects with the error. Rows still land
    by COPY (into ``columns``, or every column of ``table``), or through ``sql``, in the
    transaction that moves the offset. ``dsn`` is resolved when the watcher first connects,
    never in the constructor; an unreachable database then is an error, a later outage is
    waited out.

    ``run()`` blocks; ``start()`` runs in a background thread until ``stop()``; ``close()``
    (or leaving a ``with`` block) stops it and releases the connection; ``catch_up()`` lands
    what there is now and returns.
    """

    def run(self) -> None:
        """Land lines as they are written; blocks until :meth:`stop`, Ctrl-C or SIGTERM (in the
        main thread both stop it gracefully, after the current batch)."""
        with stop_on_signals(self._engine.request_stop, "file watcher"):
            self._engine.run()

    def catch_up(self) -> int:
        """Land every complete line there is now, then return the number of rows landed."""
        return self._engine.catch_up()

    def start(self) -> None:
        """Run in a background thread. Connection and target errors are raised here."""
        self._engine.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop the background watcher after its current batch; re-raise what stopped it."""
        self._engine.stop(timeout)

    def close(self) -> None:
        """Stop (as :meth:`stop`) and release the connection; ``start()`` may follow."""
        self._engine.close()
