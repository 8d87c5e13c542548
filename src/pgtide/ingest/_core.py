"""The ingest engine: find files, read their complete lines, land them, commit the offsets.

One engine serves both faces (:class:`pgtide.FileWatcher` and :class:`pgtide.aio.FileWatcher`).
It keeps one connection and the files it reads open (at most MAX_OPEN_FILES). Each round
rescans, then reads one batch of complete lines from every file that has some, and commits,
in one transaction for many files, the rows, the rejects and each file's new offset in
``pgtide.file_offsets``. All state is reloaded from that table whenever the
engine (re)connects (its session's prepare step), so a crash, a lost connection or a second
engine under the same name can neither skip nor repeat a line.
"""

from __future__ import annotations

import fnmatch
import functools
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import psycopg
import watchfiles

from .. import schema
from ..connect import DsnLike
from ..errors import ConfigError, IngestError
from ..session import Io, Query, Session, Stopped, atomic, run
from . import _files, _store
from ._formats import (
    REFUSE_EMPTY,
    CsvOptions,
    Format,
    Reject,
    complete_end,
    copyable,
    csv_header,
)
from ._writer import (
    FIRST_PIECE,
    STREAM_REFUSALS,
    Part,
    Stream,
    Target,
    Transform,
    Writer,
    describe,
)

log = logging.getLogger("pgtide.ingest")

T = TypeVar("T")
Start = Literal["beginning", "end"]
SET_UTF8 = "SET client_encoding TO 'UTF8'"
MAX_OPEN_FILES = 200
"""Files kept open at once; the least recently read are closed (and reopened by path)."""
ROUND_RESCAN = 0.05
"""Within a pass, rounds rescan (refreshing the size of closed files) at most this often in
seconds; a pass always starts with a scan."""
READ_BYTES = 16 << 20
"""The most lines held in memory at once (a batch read whole: to be parsed, or several files'
batches sharing a transaction). A file's batch streamed into COPY is not held: it goes up to
``batch_bytes`` in one transaction."""


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
    rotated_grace: float = 5.0
    transform: Transform | None = None


@dataclass(frozen=True)
class Chunk:
    """A batch of complete lines read from one file, not committed yet: where its file's
    offset, line count and fingerprint will be once it is."""

    tracked: _files.Tracked
    payload: bytes
    offset: int
    lines: int
    columns: tuple[str, ...] | None
    fingerprint: bytes
    fingerprint_len: int


@dataclass(frozen=True)
class Pending:
    """A batch of one file not read yet: its lines are read while COPY sends them."""

    tracked: _files.Tracked
    stream: Stream
    columns: tuple[str, ...]


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
    """What a watcher has done: its files, and totals (``lines_read`` counts this run only).

    ``finished_rows`` and ``finished_rejects`` count the files this watcher finished and
    let go (deleted, or rotated away and quiet), so that ``rows_written`` and ``rejected``
    never go backwards while a watcher lives."""

    running: bool
    files: tuple[FileStatus, ...]
    lines_read: int
    finished_rows: int = 0
    finished_rejects: int = 0

    @property
    def rows_written(self) -> int:
        return self.finished_rows + sum(f.rows_written for f in self.files)

    @property
    def rejected(self) -> int:
        return self.finished_rejects + sum(f.rejected for f in self.files)

    @property
    def bytes_behind(self) -> int:
        return sum(f.bytes_behind for f in self.files)


@functools.cache
def _shipped() -> frozenset[int]:
    """The versions of the schema migrations this package ships (read once)."""
    return frozenset(m.version for m in schema.migrations())


class Engine:
    """The single core behind both faces. Not thread-safe except for :meth:`status` and
    :meth:`stop`.

    Its database work goes through one :class:`~pgtide.session.Session`: each new connection
    is prepared (UTF-8, the schema, the target checked, every committed offset reloaded),
    and a pass that meets an outage is run again, from that reloaded state, on the next one.
    """

    def __init__(self, settings: Settings, dsn: DsnLike) -> None:
        self.s = settings
        self.session = Session(
            dsn,
            name=f"ingest {settings.name!r}",
            prepare=self._prepare,
            application_name="pgtide ingest",
        )
        self._conn: psycopg.Connection[Any] | None = None  # the connection of the pass
        self._writer = Writer(settings.target, settings.fmt, settings.csv, settings.transform)
        self._described: dict[tuple[str, ...] | None, str] = {}
        self._columns: tuple[str, ...] | None = None
        self._empty_refused = False  # lines go to a column whose type refuses ''
        self._files: dict[str, _files.Tracked] = {}
        self._saved: dict[str, _store.Saved] = {}
        self._lru: OrderedDict[int, _files.Tracked] = OrderedDict()  # files with an open fd
        self._reborn: set[str] = set()  # paths whose previous file was rotated away
        self._first_scan = True
        self._loaded = False  # whether _files reflects the database (else: _snapshot)
        self._read_bytes = min(settings.batch_bytes, READ_BYTES)  # a batch read whole
        self._lines_read = 0
        self._finished_rows = 0  # of files finished and forgotten (status never goes back)
        self._finished_rejects = 0
        self._snapshot: tuple[FileStatus, ...] = ()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.running = False
        self.stop_event = threading.Event()

    # -- connection -------------------------------------------------------------------

    def _prepare(self) -> Io[None]:
        """Run on each new connection: everything in memory is reloaded from the database.

        One round trip when all is in place (UTF-8, the schema complete, the target there);
        otherwise the careful path, which installs what is missing or says what is wrong."""
        fast = yield from _store.prepared(self.s.name, self.s.target.table)
        if (
            fast is None
            or fast.encoding.upper() != "UTF8"
            or not _shipped() <= fast.applied
            or (self.s.target.table is not None and fast.columns is None)
        ):
            self._empty_refused = False  # (not known here: pieces are searched)
            yield Query(SET_UTF8)  # lines are read as UTF-8 whatever the server's default
            yield from schema.ensure_io()
            columns = yield from self._check_target()
            yield from self._load(columns)
            return
        columns = self._target_columns(fast.columns or [])
        self._reloaded(columns, fast.saved)
        self._empty_refused = self._refuses_empty(columns, fast.columns or [], fast.types or [])

    def _refuses_empty(
        self, columns: tuple[str, ...] | None, names: list[str], types: list[str]
    ) -> bool:
        """Whether lines go to one column whose type refuses an empty string (COPY then
        refuses an empty line itself: pieces are not searched for one)."""
        if self.s.fmt != "lines" or columns is None or len(columns) != 1:
            return False
        kinds = dict(zip(names, types, strict=False))
        return kinds.get(columns[0]) in REFUSE_EMPTY

    def _load(self, columns: tuple[str, ...] | None) -> Io[None]:
        saved = yield from _store.load_all(self.s.name)
        self._reloaded(columns, saved)

    def _reloaded(self, columns: tuple[str, ...] | None, saved: dict[str, _store.Saved]) -> None:
        self._release_files()
        self._columns = columns
        self._saved = {
            p: v
            for p, v in saved.items()
            if self._watches(v.rotated_from if v.rotated_from is not None else p)
        }

    def _check_target(self) -> Io[tuple[str, ...] | None]:
        if self.s.target.table is None:
            return self.s.target.columns
        available = yield from _store.target_columns(self.s.target.table)
        return self._target_columns(available)

    def _target_columns(self, available: list[str]) -> tuple[str, ...] | None:
        """The columns rows are written to, given the target table's columns."""
        target = self.s.target
        if target.table is None:
            return target.columns
        if target.columns is not None:
            missing = [c for c in target.columns if c not in available]
            if missing:
                raise IngestError(
                    f"table {target.label!r} has no column {', '.join(map(repr, missing))}; "
                    f"its columns are {', '.join(available)} (names are case-sensitive)"
                )
            return target.columns
        if self.s.transform is not None:
            return tuple(available)  # the transform's rows fill the table's columns
        if self.s.fmt == "csv" and self.s.csv.header:
            return None  # each file's header names its columns
        if self.s.fmt == "lines" and len(available) != 1:
            raise IngestError(
                f"table {target.label!r} has {len(available)} columns; say which one receives "
                "the lines, e.g. columns=['value'] (or --columns value)"
            )
        return tuple(available)

    def _watches(self, path: str) -> bool:
        if self.s.root.is_file() or not self.s.root.exists():
            return path == str(self.s.root)
        parent = Path(path).parent
        inside = parent == self.s.root or (self.s.recursive and self.s.root in parent.parents)
        return inside and fnmatch.fnmatchcase(Path(path).name, self.s.pattern)

    def _release_files(self) -> None:
        """Close the files and forget what was read (state stays in the database)."""
        self._take_snapshot()
        for tracked in self._files.values():
            tracked.close()
        self._lru.clear()
        with self._lock:
            self._files.clear()
            self._loaded = False
        self._saved.clear()

    def release(self) -> None:
        """Release the connection and the open files (state stays in the database)."""
        self._release_files()
        self._conn = None
        self.session.close()

    @property
    def conn(self) -> psycopg.Connection[Any]:
        assert self._conn is not None
        return self._conn

    def _do(self, io: Io[T]) -> T:
        """Run ``io`` on the connection of the pass (inside its transaction, if any)."""
        return run(self.conn, io)

    # -- the faces' verbs -------------------------------------------------------------

    def _fresh(self) -> None:
        """Forget a past stop or failure: no connection yet, no stop pending."""
        self.stop_event.clear()
        self.session.close()
        self._error = None

    def _idle(self, refusal: str) -> None:
        if self.running or (self._thread is not None and self._thread.is_alive()):
            raise ConfigError(refusal)
        self._fresh()

    def run(self) -> None:
        """Land lines as they are written until :meth:`stop` (or Ctrl-C)."""
        self._idle("this watcher is already running")
        self._run()

    def catch_up(self) -> int:
        """Land every complete line there is now; return the number of rows landed."""
        self._idle("this watcher is running; catch_up() is for a stopped watcher")
        try:
            return self.guarded_pass()
        finally:
            self.release()

    def start(self) -> None:
        """Run in a background thread; connection and target errors are raised here."""
        self._idle("this watcher is already running")
        self.session.connection()  # connects and prepares in the caller's thread
        self.running = True
        self._thread = threading.Thread(target=self._background, name="pgtide-ingest", daemon=True)
        self._thread.start()

    def _background(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            log.exception("the file watcher stopped on an error")
            self._error = exc

    def request_stop(self) -> None:
        """Ask the loop to stop after its current batch (from any thread); returns at once."""
        self.stop_event.set()
        if self.running:
            self.session.stop()  # interrupts a wait to reconnect

    def stop(self, timeout: float | None = 30.0) -> None:
        """Ask the loop to stop after its current batch; wait for a background run to end
        and re-raise what stopped it, if anything."""
        self.request_stop()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self) -> None:
        """:meth:`stop`, then :meth:`release`."""
        try:
            self.stop()
        finally:
            self.release()

    # -- the loop ---------------------------------------------------------------------

    def guarded_pass(self) -> int:
        """One pass (scan, then land everything complete), run again by the session after an
        outage; return the number of rows landed (0 when stopped while reconnecting)."""
        try:
            while True:
                try:
                    return self.session.call(self._pass)
                except _store.Conflict as exc:
                    log.warning(
                        "%s was advanced by another watcher named %r; reloading",
                        exc,
                        self.s.name,
                    )
                    self.session.run(lambda: self._load(self._columns))
        except Stopped:
            return 0

    def _run(self) -> None:
        self.running = True
        try:
            self.guarded_pass()
            if self.s.poll:
                self._poll_loop()
            else:
                self._event_loop()
        finally:
            self.running = False
            self.release()

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

    def _pass(self, conn: psycopg.Connection[Any]) -> int:
        """Rounds until one finds nothing to land. Each round rescans (the size of every file,
        renames, rotations, new files), then gives every file with new lines one batch, so
        no file waits for others however many there are; the batches of many files share
        one transaction."""
        self._conn = conn
        landed = 0
        scanned = -ROUND_RESCAN
        while not self.stop_event.is_set():
            if time.monotonic() - scanned >= ROUND_RESCAN:
                scanned = time.monotonic()
                self._scan()
                self._first_scan = False
                with self._lock:
                    self._loaded = True
            rows = self._round()
            if rows is None:
                break
            landed += rows
        return landed

    def _round(self) -> int | None:
        """One batch of every file that has complete lines; None when no file had anything.
        A batch streamed into COPY commits alone; batches read whole share transactions of
        about READ_BYTES (many small files: one COPY, one statement for their offsets)."""
        chunks: list[Chunk] = []
        size = 0
        landed = 0
        progress = False
        for tracked in list(self._files.values()):
            if self.stop_event.is_set():
                break
            chunk = self._read(tracked)
            if chunk is None:
                continue
            progress = True
            if isinstance(chunk, Pending):
                landed += self._commit_stream(chunk)
                continue
            chunks.append(chunk)
            size += len(chunk.payload)
            if size >= self._read_bytes:
                landed += self._commit(chunks)
                chunks, size = [], 0
        if chunks:
            landed += self._commit(chunks)
        return landed if progress else None

    # -- which files, and who they are ------------------------------------------------------

    def _scan(self) -> None:
        found = _files.matching(self.s.root, self.s.pattern, self.s.recursive)
        by_identity = {(st.st_dev, st.st_ino): path for path, st in found.items()}
        for path, saved in list(self._saved.items()):
            self._resume(path, saved, found, by_identity)
        for tracked in [t for t in self._files.values() if t.rotated_from is not None]:
            self._check_rotated(tracked)  # first: a new rotation may take one of their names
        for path, tracked in list(self._files.items()):
            if tracked.rotated_from is not None or self._files.get(path) is not tracked:
                continue
            st = found.get(path)
            if st is not None and (st.st_dev, st.st_ino) == (tracked.device, tracked.inode):
                if tracked.fd < 0:
                    tracked.size = st.st_size
                continue
            moved_to = by_identity.get((tracked.device, tracked.inode))
            if moved_to is not None and moved_to not in self._files:
                self._move(tracked, moved_to)
            else:
                self._leave(tracked)
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
            rotated_from=saved.rotated_from,
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
        if saved.rotated_from is not None:  # a rotated file still read when we stopped
            with self._lock:
                self._files[path] = tracked
            self._check_rotated(tracked)
            return
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
        if self._where(tracked) is None:
            log.warning("%s is gone since the last run; forgetting it", path)
            self._forget(path)
            with self._lock:
                self._finished_rows += saved.rows_written
                self._finished_rejects += saved.rejected
            self._reborn.add(path)
            return
        with self._lock:
            self._files[path] = tracked
        self._leave(tracked)  # rotated away while we were away

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
            tracked.version = self._do(
                _store.save(self.s.name, self.s.target.label, self._state(tracked), 0, 0)
            )
        with self._lock:
            self._files[path] = tracked
        log.info("watching %s from byte %d", path, tracked.offset)

    def _move(self, tracked: _files.Tracked, new_path: str) -> None:
        """A file renamed: same file, same offset, new name (its row follows it)."""
        log.info("%s was renamed to %s; following it", tracked.path, new_path)
        old = tracked.path
        if tracked.version:
            tracked.version = self._do(
                atomic(
                    _store.move(self.s.name, old, new_path, tracked.version, tracked.rotated_from)
                )
            )
        with self._lock:
            self._files.pop(old, None)
            tracked.path = new_path
            self._files[new_path] = tracked

    def _where(self, tracked: _files.Tracked) -> str | None:
        """Where a file is now, by its identity, in the directory it was in."""
        return _files.find_inode(str(Path(tracked.path).parent), tracked.device, tracked.inode)

    def _leave(self, tracked: _files.Tracked) -> None:
        """A file whose watched name now holds another file or nothing. Rotated away (found
        under another name): read on under that name until it has been quiet for
        ``rotated_grace`` seconds, as its writer may still hold it open. Deleted: land what
        its open descriptor still holds, then forget it."""
        where = self._where(tracked)
        if where is None or self.s.rotated_grace <= 0:
            self._finish(tracked)
            return
        log.info(
            "%s was rotated to %s; reading it until it is quiet for %.1f s",
            tracked.path,
            where,
            self.s.rotated_grace,
        )
        old = tracked.path
        tracked.rotated_from = old
        self._move(tracked, where)
        self._reborn.add(old)

    def _check_rotated(self, tracked: _files.Tracked) -> None:
        """A rotated file: follow a further rename, finish it once deleted or quiet."""
        try:
            st: os.stat_result | None = os.stat(tracked.path)
        except OSError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != (tracked.device, tracked.inode):
            where = self._where(tracked)
            if where is None:
                self._finish(tracked)  # deleted: what its descriptor still holds
                return
            self._move(tracked, where)  # rotated once more (x.log.1 -> x.log.2)
            try:
                st = os.stat(where)
            except OSError:
                return  # moving under our feet: the next scan sees where it went
        if tracked.fd < 0:
            tracked.size = st.st_size
        if time.time() - st.st_mtime >= self.s.rotated_grace:
            self._finish(tracked)  # quiet: its last lines (even unterminated), then let go

    def _finish(self, tracked: _files.Tracked) -> None:
        """A file that left the watched set for good: land its tail (through the open
        descriptor, or found again by its identity), then forget it."""
        if self._reopen_moved(tracked):
            while (chunk := self._whole(tracked, final=True)) is not None:
                self._commit([chunk])
        self._forget(tracked.path)
        self._close_file(tracked)
        with self._lock:
            self._files.pop(tracked.path, None)
            self._finished_rows += tracked.rows_written
            self._finished_rejects += tracked.rejected
        self._reborn.add(tracked.rotated_from or tracked.path)
        log.info("finished %s at line %d", tracked.path, tracked.line_count)

    def _forget(self, path: str) -> None:
        self._do(_store.forget(self.s.name, path))

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
            tracked.rotated_from,
        )

    def _next_state(self, chunk: Chunk) -> _store.Saved:
        """The file's state once ``chunk`` is committed."""
        t = chunk.tracked
        return _store.Saved(
            t.path,
            t.device,
            t.inode,
            chunk.fingerprint,
            chunk.fingerprint_len,
            chunk.offset,
            t.line_count + chunk.lines,
            t.rows_written,
            t.rejected,
            t.version,
            t.rotated_from,
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

    def _read(self, tracked: _files.Tracked) -> Chunk | Pending | None:
        """The next batch of complete lines of one file; None when there is none yet. A batch
        whose first piece COPY can take as it is stays :class:`Pending` when it is larger than
        that piece: it is read while it is sent (up to ``batch_bytes``). When the first piece
        needs parsing (a stream that met a bad line stopped there), the batch is read whole
        and parsed (at most READ_BYTES; later batches are streamed again)."""
        available = self._available(tracked, final=False)
        if available is None:
            return None
        limit = min(available, self.s.batch_bytes)
        if limit <= FIRST_PIECE or not self._streams():
            return self._chunk(tracked, available, final=False)
        first = os.pread(tracked.fd, FIRST_PIECE, tracked.offset)
        cut = complete_end(first, self.s.fmt, self.s.csv)
        if cut == 0:
            return self._chunk(tracked, available, final=False)  # a line longer than a piece
        columns = self._columns_for(tracked)
        if not columns:
            return None  # False: a CSV header still incomplete
        first_line = tracked.line_count + 1
        empty_refused = self._empty_refused
        span = copyable(
            first,
            cut,
            self.s.fmt,
            first_line,
            self.s.csv,
            columns=len(columns),
            empty_refused=empty_refused,
        )
        if span is None:
            return self._chunk(tracked, available, final=False)  # read whole, to be parsed
        tracked.partial = None
        fmt, csv = self.s.fmt, self.s.csv
        stream = Stream(
            tracked.fd,
            tracked.offset,
            limit,
            first,
            first_line,
            fmt,
            csv,
            len(columns),
            empty_refused,
        )
        stream.first_span = (cut, span)  # checked once, here
        stream.stop = self.stop_event  # a stop asked for lands what was sent so far
        return Pending(tracked, stream, columns)

    def _streams(self) -> bool:
        """Whether batches can be streamed into COPY as they are (a table, no transform)."""
        return (
            self.s.target.table is not None and self.s.transform is None and (self.s.fmt != "jsonl")
        )

    def _available(self, tracked: _files.Tracked, *, final: bool) -> int | None:
        """How many bytes a file holds past its offset (opening it, and starting over when it
        was truncated or rewritten); None when there is nothing to read."""
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
        return available

    def _whole(self, tracked: _files.Tracked, *, final: bool = False) -> Chunk | None:
        """The next batch of one file, read whole (at most READ_BYTES, or one longer line);
        ``final``: its last line too, even without its newline."""
        available = self._available(tracked, final=final)
        return None if available is None else self._chunk(tracked, available, final=final)

    def _chunk(self, tracked: _files.Tracked, available: int, *, final: bool) -> Chunk | None:
        """The batch of complete lines in the ``available`` bytes past a file's offset."""
        data = os.pread(tracked.fd, min(available, self._read_bytes), tracked.offset)
        end = complete_end(data, self.s.fmt, self.s.csv)
        if end == 0 and len(data) < available:  # one line longer than a batch
            data = os.pread(tracked.fd, available, tracked.offset)
            end = complete_end(data, self.s.fmt, self.s.csv)
        payload, advance = data[:end], end
        if end == 0:
            if not (final or self._flush_due(tracked, tracked.size)):
                return None
            payload, advance = data + b"\n", len(data)
        columns = self._columns_for(tracked)
        if columns is False:
            return None
        tracked.partial = None
        offset = tracked.offset + advance
        fp, fp_len = self._fingerprint(tracked, offset, data)
        return Chunk(tracked, payload, offset, payload.count(b"\n"), columns, fp, fp_len)

    def _fingerprint(self, tracked: _files.Tracked, offset: int, head: bytes) -> tuple[bytes, int]:
        """The fingerprint a file will have once committed up to ``offset`` (``head``: bytes
        read from its offset, used when they are the file's first bytes)."""
        fp_len = min(_files.FINGERPRINT_BYTES, offset)
        if fp_len == tracked.fingerprint_len:
            return tracked.fingerprint, fp_len
        if tracked.offset == 0 and len(head) >= fp_len:
            return _files.fingerprint(head[:fp_len]), fp_len  # the first bytes are in hand
        return _files.fingerprint_of(tracked.fd, fp_len), fp_len

    def _describe(self, columns: tuple[str, ...] | None) -> str:
        """How rows of these columns are written (kept with each reject, for a retry)."""
        described = self._described.get(columns)
        if described is None:
            s = self.s
            described = describe(s.target, s.fmt, s.csv, columns, s.transform)
            self._described[columns] = described
        return described

    def _commit(self, chunks: Sequence[Chunk], *, raw: bool = True) -> int:
        """Land the chunks (of different files) and their files' new offsets in one
        transaction; return the rows landed."""
        parts = [
            Part(c.payload, c.tracked.line_count + 1, c.columns, c.tracked.path) for c in chunks
        ]
        conn = self.conn
        with conn.transaction():
            results = self._writer.write_many(conn, parts, raw=raw)
            rejects = [
                (c.tracked.path, r, self._describe(c.columns))
                for c, (_, refused) in zip(chunks, results, strict=True)
                for r in refused
            ]
            self._do(_store.add_rejects(self.s.name, rejects))
            states = [
                (self._next_state(c), landed, len(refused))
                for c, (landed, refused) in zip(chunks, results, strict=True)
            ]
            versions = self._do(_store.save_many(self.s.name, self.s.target.label, states))
        return self._committed(chunks, results, versions)

    def _commit_stream(self, pending: Pending) -> int:
        """Stream one file's batch into COPY, then its new offset, in one transaction. The
        COPY is the transaction's first statement, so it needs no savepoint: when a row is
        refused or a piece needs parsing, the whole transaction is rolled back and the batch
        is read whole and parsed (each bad line becomes a reject, the rest lands)."""
        t, pieces = pending.tracked, pending.stream
        conn = self.conn
        landed: int | None = None
        with conn.transaction():
            try:
                landed = self._writer.stream(conn, pieces, pending.columns)
            except STREAM_REFUSALS as exc:
                log.debug("%s: the batch cannot be streamed as is (%s)", t.path, exc or "parsed")
                raise psycopg.Rollback from None
            offset = t.offset + pieces.sent
            fp, fp_len = self._fingerprint(t, offset, pieces.first)
            lines = pieces.lines_in(landed)
            chunk = Chunk(t, b"", offset, lines, pending.columns, fp, fp_len)
            versions = self._do(
                _store.save_many(
                    self.s.name, self.s.target.label, [(self._next_state(chunk), landed, 0)]
                )
            )
        if landed is None:
            whole = self._whole(t)
            return 0 if whole is None else self._commit([whole], raw=False)
        return self._committed([chunk], [(landed, [])], versions)

    def _committed(
        self,
        chunks: Sequence[Chunk],
        results: Sequence[tuple[int, list[Reject]]],
        versions: dict[str, int],
    ) -> int:
        """Advance the files of committed chunks; return the rows landed."""
        total = 0
        with self._lock:
            for c, (landed, refused) in zip(chunks, results, strict=True):
                t = c.tracked
                t.offset, t.line_count = c.offset, t.line_count + c.lines
                t.fingerprint, t.fingerprint_len = c.fingerprint, c.fingerprint_len
                t.version = versions[t.path]
                t.rows_written += landed
                t.rejected += len(refused)
                self._lines_read += c.lines
                total += landed
        for c, (_, refused) in zip(chunks, results, strict=True):
            if refused:
                first = refused[0]
                log.warning(
                    "%s: %d line(s) rejected, kept in pgtide.rejects (line %d: %s)",
                    c.tracked.path,
                    len(refused),
                    first.line_no,
                    first.error,
                )
        return total

    # -- status ---------------------------------------------------------------------------

    def _files_now(self) -> tuple[FileStatus, ...]:
        """The files as they are now, or as they were when last loaded (call under the lock)."""
        if not self._loaded:
            return self._snapshot
        return tuple(
            FileStatus(t.path, t.offset, t.size, t.line_count, t.rows_written, t.rejected)
            for t in sorted(self._files.values(), key=lambda t: t.path)
        )

    def _take_snapshot(self) -> None:
        with self._lock:
            self._snapshot = self._files_now()

    def status(self) -> WatcherStatus:
        """Files, offsets, rows written and rejects."""
        with self._lock:
            return WatcherStatus(
                self.running,
                self._files_now(),
                self._lines_read,
                self._finished_rows,
                self._finished_rejects,
            )
