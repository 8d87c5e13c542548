"""The ingest engine: find files, read their complete lines, land them, commit the offsets.

One engine serves both faces (:class:`pgtide.FileWatcher` and :class:`pgtide.aio.FileWatcher`).
It keeps one connection and the files it reads open. Each step reads one batch of complete
lines from one file and commits, in one transaction, the rows, the rejects and the file's
new offset in ``pgtide.file_offsets``. All state is reloaded from that table whenever the
engine (re)connects, so a crash, a lost connection or a second engine under the same name
can neither skip nor repeat a line.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psycopg
import watchfiles

from .. import schema
from ..connect import Backoff, Resolved, connect, resolve
from ..errors import ConnectionFailed, IngestError
from . import _files, _store
from ._formats import CsvOptions, Format, complete_end, csv_header
from ._writer import Target, Writer

log = logging.getLogger("pgtide.ingest")

Start = Literal["beginning", "end"]
_DISCONNECTED = (psycopg.OperationalError, psycopg.InterfaceError)
MAX_OPEN_FILES = 200
"""Files kept open at once; the least recently read are closed (and reopened by path)."""


@dataclass(frozen=True)
class Settings:
    """Everything a watcher was configured with (validated by the faces)."""

    root: Path
    pattern: str
    fmt: Format
    csv: CsvOptions
    target: Target
    start: Start
    recursive: bool
    name: str
    poll: bool
    rescan_every: float
    flush_after: float | None
    batch_bytes: int


@dataclass(frozen=True)
class FileStatus:
    """One watched file: how far it has been committed and what came of it."""

    path: str
    offset: int
    size: int
    line_count: int
    rows_written: int
    rejected: int

    @property
    def bytes_behind(self) -> int:
        return max(0, self.size - self.offset)


@dataclass(frozen=True)
class WatcherStatus:
    """What a watcher has done: its files, and totals (``lines_read`` counts this run only)."""

    running: bool
    files: tuple[FileStatus, ...]
    lines_read: int

    @property
    def rows_written(self) -> int:
        return sum(f.rows_written for f in self.files)

    @property
    def rejected(self) -> int:
        return sum(f.rejected for f in self.files)

    @property
    def bytes_behind(self) -> int:
        return sum(f.bytes_behind for f in self.files)


class Engine:
    """The single core behind both faces. Not thread-safe except for :meth:`status`."""

    def __init__(self, settings: Settings, dsn: str | Resolved | None) -> None:
        self.s = settings
        self._dsn = dsn
        self._resolved: Resolved | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self._writer: Writer | None = None
        self._columns: tuple[str, ...] | None = None
        self._files: dict[str, _files.Tracked] = {}
        self._saved: dict[str, _store.Saved] = {}
        self._lru: OrderedDict[int, _files.Tracked] = OrderedDict()  # files with an open fd
        self._reborn: set[str] = set()  # paths whose previous file was rotated away
        self._first_scan = True
        self._ever_connected = False
        self._lines_read = 0
        self._snapshot: tuple[FileStatus, ...] = ()
        self._lock = threading.Lock()
        self.running = False
        self.stop_event = threading.Event()

    # -- connection -------------------------------------------------------------------

    def open(self) -> None:
        """Connect, check the target, and load every offset this watcher has committed."""
        if self._conn is not None:
            return
        if self._resolved is None:
            self._resolved = resolve(self._dsn)
        conn = connect(self._resolved, client_encoding="utf8")
        try:
            schema.ensure(conn)
            self._columns = self._check_target(conn)
            saved = _store.load_all(conn, self.s.name)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._writer = Writer(self.s.target, self.s.fmt, self.s.csv)
        self._saved = {p: v for p, v in saved.items() if self._watches(p)}
        self._ever_connected = True

    def _check_target(self, conn: psycopg.Connection[Any]) -> tuple[str, ...] | None:
        target = self.s.target
        if target.table is None:
            return target.columns
        available = _store.table_columns(conn, target.table)
        if target.columns is not None:
            missing = [c for c in target.columns if c not in available]
            if missing:
                raise IngestError(
                    f"table {target.table!r} has no column {', '.join(map(repr, missing))}; "
                    f"its columns are {', '.join(available)} (names are case-sensitive)"
                )
            return target.columns
        if self.s.fmt == "csv" and self.s.csv.header:
            return None  # each file's header names its columns
        if self.s.fmt == "lines" and len(available) != 1:
            raise IngestError(
                f"table {target.table!r} has {len(available)} columns; say which one receives "
                "the lines, e.g. columns=['value'] (or --columns value)"
            )
        return tuple(available)

    def _watches(self, path: str) -> bool:
        if self.s.root.is_file() or not self.s.root.exists():
            return path == str(self.s.root)
        parent = Path(path).parent
        inside = parent == self.s.root or (self.s.recursive and self.s.root in parent.parents)
        return inside and fnmatch.fnmatchcase(Path(path).name, self.s.pattern)

    def close(self) -> None:
        """Release the connection and the open files (state stays in the database)."""
        self._take_snapshot()
        for tracked in self._files.values():
            tracked.close()
        self._lru.clear()
        with self._lock:
            self._files.clear()
        self._saved.clear()
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    @property
    def conn(self) -> psycopg.Connection[Any]:
        assert self._conn is not None
        return self._conn

    # -- the loop ---------------------------------------------------------------------

    def guarded_pass(self) -> int:
        """One pass (scan, then land everything complete), reconnecting when the server goes
        away; return the number of rows landed."""
        backoff = Backoff(maximum=2.0)
        while True:
            try:
                self.open()
                landed = self._pass()
                backoff.reset()
                return landed
            except _store.Conflict as exc:
                log.warning(
                    "%s was advanced by another watcher named %r; reloading", exc, self.s.name
                )
                self.close()
            except (*_DISCONNECTED, ConnectionFailed) as exc:
                if not self._ever_connected:
                    raise  # a first connection that fails is a configuration problem
                reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc
                log.warning("database unavailable (%s); reconnecting", reason)
                self.close()
                if self.stop_event.wait(backoff.next()):
                    return 0

    def run(self) -> None:
        """Land lines as they are written until :attr:`stop_event` is set."""
        self.running = True
        try:
            self.guarded_pass()
            if self.s.poll:
                self._poll_loop()
            else:
                self._event_loop()
        finally:
            self.running = False
            self.close()

    def _wake_every(self) -> float:
        every = self.s.rescan_every
        if self.s.flush_after is not None:
            every = min(every, max(0.05, self.s.flush_after / 2))
        return every

    def _poll_loop(self) -> None:
        while not self.stop_event.wait(self._wake_every()):
            self.guarded_pass()

    def _event_loop(self) -> None:
        root = self.s.root if self.s.root.is_dir() else self.s.root.parent
        try:
            for _changes in watchfiles.watch(
                root,
                watch_filter=None,
                debounce=50,
                step=20,
                stop_event=self.stop_event,
                rust_timeout=int(self._wake_every() * 1000),
                yield_on_timeout=True,
                recursive=self.s.recursive,
                raise_interrupt=True,
            ):
                if self.stop_event.is_set():
                    return
                self.guarded_pass()  # events only wake the scan; the scan decides
        except (OSError, RuntimeError) as exc:
            log.warning(
                "file-system events are unavailable (%s); polling every %.1f s instead",
                exc,
                self._wake_every(),
            )
            self._poll_loop()

    def _pass(self) -> int:
        self._scan()
        landed = 0
        progress = True
        while progress and not self.stop_event.is_set():
            progress = False
            for tracked in list(self._files.values()):
                if self.stop_event.is_set():
                    break
                rows = self._step(tracked)
                if rows is not None:
                    progress = True
                    landed += rows
        self._first_scan = False
        self._take_snapshot()
        return landed

    # -- which files, and who they are ------------------------------------------------------

    def _scan(self) -> None:
        found = _files.matching(self.s.root, self.s.pattern, self.s.recursive)
        by_identity = {(st.st_dev, st.st_ino): path for path, st in found.items()}
        for path, saved in list(self._saved.items()):
            self._resume(path, saved, found, by_identity)
        for path, tracked in list(self._files.items()):
            st = found.get(path)
            if st is not None and (st.st_dev, st.st_ino) == (tracked.device, tracked.inode):
                if tracked.fd < 0:
                    tracked.size = st.st_size
                continue
            moved_to = by_identity.get((tracked.device, tracked.inode))
            if moved_to is not None and moved_to not in self._files:
                self._move(tracked, moved_to)
            else:
                self._finish(tracked)
        for path, st in found.items():
            if path not in self._files:
                self._track(path, st)

    # -- open files: at most MAX_OPEN_FILES, the least recently used are closed -----------------

    def _opened(self, tracked: _files.Tracked, fd: int) -> None:
        tracked.fd = fd
        self._lru[id(tracked)] = tracked
        while len(self._lru) > MAX_OPEN_FILES:
            _, oldest = self._lru.popitem(last=False)
            oldest.close()

    def _close_file(self, tracked: _files.Tracked) -> None:
        self._lru.pop(id(tracked), None)
        tracked.close()

    def _open_as(self, tracked: _files.Tracked, where: str) -> bool:
        """Open ``where`` for ``tracked`` if it still is the same file (device and inode)."""
        opened = _files.open_file(where)
        if opened is None:
            return False
        fd, st = opened
        if (st.st_dev, st.st_ino) != (tracked.device, tracked.inode):
            os.close(fd)
            return False
        self._opened(tracked, fd)
        return True

    def _reopen_moved(self, tracked: _files.Tracked) -> bool:
        """Find a file that left its path (a rotation) by its identity, in the same directory."""
        if tracked.fd >= 0:
            return True
        where = _files.find_inode(str(Path(tracked.path).parent), tracked.device, tracked.inode)
        return where is not None and self._open_as(tracked, where)

    # -- which file is which ------------------------------------------------------------------

    def _from_saved(self, path: str, saved: _store.Saved) -> _files.Tracked:
        return _files.Tracked(
            path=path,
            device=saved.device,
            inode=saved.inode,
            fd=-1,
            offset=saved.offset,
            line_count=saved.line_count,
            fingerprint=saved.fingerprint,
            fingerprint_len=saved.fingerprint_len,
            rows_written=saved.rows_written,
            rejected=saved.rejected,
            version=saved.version,
        )

    def _resume(
        self,
        path: str,
        saved: _store.Saved,
        found: dict[str, os.stat_result],
        by_identity: dict[tuple[int, int], str],
    ) -> None:
        """Match a committed offset to the file it belongs to, wherever that file is now."""
        del self._saved[path]
        tracked = self._from_saved(path, saved)
        st = found.get(path)
        if st is not None and (st.st_dev, st.st_ino) == (saved.device, saved.inode):
            tracked.size = st.st_size  # still there: opened when it has something to read
            with self._lock:
                self._files[path] = tracked
            return
        moved_to = by_identity.get((saved.device, saved.inode))
        if moved_to is not None and moved_to not in self._saved and moved_to not in self._files:
            with self._lock:
                self._files[path] = tracked
            self._move(tracked, moved_to)  # renamed to another watched name while we were away
            return
        if not self._reopen_moved(tracked):
            log.warning("%s is gone since the last run; forgetting it", path)
            self._forget(path)
            self._reborn.add(path)
            return
        with self._lock:
            self._files[path] = tracked
        self._finish(tracked)  # rotated away while we were away: land its tail

    def _track(self, path: str, st: os.stat_result) -> None:
        tracked = _files.Tracked(path, st.st_dev, st.st_ino, -1, size=st.st_size)
        skip = self._first_scan and self.s.start == "end" and path not in self._reborn
        self._reborn.discard(path)
        if skip:
            if not self._open_as(tracked, path):
                return
            fd = tracked.fd
            end = _files.last_line_end(fd, st.st_size)
            tracked.offset = end
            tracked.line_count = _files.count_lines(fd, end)
            tracked.fingerprint_len = min(_files.FINGERPRINT_BYTES, end)
            tracked.fingerprint = _files.fingerprint_of(fd, tracked.fingerprint_len)
            with self.conn.transaction():
                tracked.version = _store.save(
                    self.conn, self.s.name, self.s.target.label, self._state(tracked), 0, 0
                )
        with self._lock:
            self._files[path] = tracked
        log.info("watching %s from byte %d", path, tracked.offset)

    def _move(self, tracked: _files.Tracked, new_path: str) -> None:
        """A file renamed to another watched name: same file, same offset, new name."""
        log.info("%s was renamed to %s; following it", tracked.path, new_path)
        old = tracked.path
        if tracked.version:
            with self.conn.transaction():
                tracked.version = _store.move(
                    self.conn, self.s.name, old, new_path, tracked.version
                )
        with self._lock:
            self._files.pop(old, None)
            tracked.path = new_path
            self._files[new_path] = tracked

    def _finish(self, tracked: _files.Tracked) -> None:
        """A file that left the watched set (rotated away or deleted): land its tail (through
        the open descriptor, or found again by its identity), then forget it."""
        if self._reopen_moved(tracked):
            while self._step(tracked, final=True) is not None:
                pass
        self._forget(tracked.path)
        self._close_file(tracked)
        with self._lock:
            self._files.pop(tracked.path, None)
        self._reborn.add(tracked.path)
        log.info("finished %s at line %d", tracked.path, tracked.line_count)

    def _forget(self, path: str) -> None:
        with self.conn.transaction():
            _store.forget(self.conn, self.s.name, path)

    # -- reading and landing --------------------------------------------------------------

    def _state(self, tracked: _files.Tracked) -> _store.Saved:
        return _store.Saved(
            tracked.path,
            tracked.device,
            tracked.inode,
            tracked.fingerprint,
            tracked.fingerprint_len,
            tracked.offset,
            tracked.line_count,
            tracked.rows_written,
            tracked.rejected,
            tracked.version,
        )

    def _restart_file(self, tracked: _files.Tracked) -> None:
        log.info("%s was truncated or rewritten; reading it again from the start", tracked.path)
        tracked.offset = tracked.line_count = 0
        tracked.fingerprint, tracked.fingerprint_len = b"", 0
        tracked.partial = None
        tracked.columns = None

    def _flush_due(self, tracked: _files.Tracked, size: int) -> bool:
        if self.s.flush_after is None:
            return False
        now = time.monotonic()
        if tracked.partial is None or tracked.partial[0] != size:
            tracked.partial = (size, now)
            return False
        return now - tracked.partial[1] >= self.s.flush_after

    def _columns_for(self, tracked: _files.Tracked) -> tuple[str, ...] | Literal[False] | None:
        """The columns of this file's rows; False while its CSV header is still incomplete."""
        if self._columns is not None or self.s.target.table is None:
            return self._columns
        if tracked.columns is None:
            head = os.pread(tracked.fd, 1 << 16, 0)
            end = complete_end(head, "csv", self.s.csv)
            if end == 0:
                return False
            names = csv_header(head[:end].split(b"\n", 1)[0], self.s.csv)
            tracked.columns = tuple(names)
        return tracked.columns

    def _step(self, tracked: _files.Tracked, *, final: bool = False) -> int | None:
        """Land one batch of complete lines of one file; None when there was nothing to land."""
        if tracked.fd < 0:
            if final or tracked.size == tracked.offset:
                return None  # closed and nothing new since the last scan
            if not self._open_as(tracked, tracked.path):
                return None  # replaced in between: the next scan sorts it out
        else:
            self._lru.move_to_end(id(tracked))
        size = os.fstat(tracked.fd).st_size
        tracked.size = size
        if size < tracked.offset or not _files.same_start(tracked):
            self._restart_file(tracked)
        available = size - tracked.offset
        if available <= 0:
            tracked.partial = None
            return None
        data = os.pread(tracked.fd, min(available, self.s.batch_bytes), tracked.offset)
        end = complete_end(data, self.s.fmt, self.s.csv)
        if end == 0 and len(data) < available:  # one line longer than a batch
            data = os.pread(tracked.fd, available, tracked.offset)
            end = complete_end(data, self.s.fmt, self.s.csv)
        payload, advance = data[:end], end
        if end == 0:
            if not (final or self._flush_due(tracked, size)):
                return None
            payload, advance = data + b"\n", len(data)
        columns = self._columns_for(tracked)
        if columns is False:
            return None
        tracked.partial = None
        return self._commit(tracked, payload, advance, columns)

    def _commit(
        self,
        tracked: _files.Tracked,
        payload: bytes,
        advance: int,
        columns: tuple[str, ...] | None,
    ) -> int:
        assert self._writer is not None
        lines = payload.count(b"\n")
        offset = tracked.offset + advance
        fp_len = min(_files.FINGERPRINT_BYTES, offset)
        fp = (
            tracked.fingerprint
            if fp_len == tracked.fingerprint_len
            else _files.fingerprint_of(tracked.fd, fp_len)
        )
        state = _store.Saved(
            tracked.path,
            tracked.device,
            tracked.inode,
            fp,
            fp_len,
            offset,
            tracked.line_count + lines,
            0,
            0,
            tracked.version,
        )
        conn = self.conn
        with conn.transaction():
            landed, rejects = self._writer.write(conn, payload, tracked.line_count + 1, columns)
            _store.add_rejects(conn, self.s.name, tracked.path, rejects)
            version = _store.save(
                conn, self.s.name, self.s.target.label, state, landed, len(rejects)
            )
        with self._lock:
            tracked.offset, tracked.line_count = offset, state.line_count
            tracked.fingerprint, tracked.fingerprint_len = fp, fp_len
            tracked.version = version
            tracked.rows_written += landed
            tracked.rejected += len(rejects)
            self._lines_read += lines
        if rejects:
            first = rejects[0]
            log.warning(
                "%s: %d line(s) rejected, kept in pgtide.rejects (line %d: %s)",
                tracked.path,
                len(rejects),
                first.line_no,
                first.error,
            )
        return landed

    # -- status ---------------------------------------------------------------------------

    def _take_snapshot(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._snapshot = tuple(
                    FileStatus(t.path, t.offset, t.size, t.line_count, t.rows_written, t.rejected)
                    for t in sorted(self._files.values(), key=lambda t: t.path)
                )

    def status(self) -> WatcherStatus:
        with self._lock:
            if self._conn is not None:
                files = tuple(
                    FileStatus(t.path, t.offset, t.size, t.line_count, t.rows_written, t.rejected)
                    for t in sorted(self._files.values(), key=lambda t: t.path)
                )
            else:
                files = self._snapshot
            return WatcherStatus(self.running, files, self._lines_read)
