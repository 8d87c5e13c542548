"""The files on disk: which ones match, who they are (identity), and reading from an offset.

A file is known by its device and inode, plus a fingerprint of its first bytes: a rename
keeps the identity (so a rotated file is found again), while a truncation or a rewrite in
place changes the fingerprint (so the file is read again from its start).
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

FINGERPRINT_BYTES = 1024


@dataclass
class Tracked:
    """A file being read: identity, how far it has been committed, and its open descriptor."""

    path: str
    device: int
    inode: int
    fd: int
    offset: int = 0
    line_count: int = 0
    fingerprint: bytes = b""
    fingerprint_len: int = 0
    rows_written: int = 0
    rejected: int = 0
    version: int = 0
    size: int = 0
    partial: tuple[int, float] | None = None  # (size, since) of an unfinished last line
    columns: tuple[str, ...] | None = None  # from a CSV header, when columns come from it
    rotated_from: str | None = None  # the watched name of a rotated file still being read

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def fingerprint(head: bytes) -> bytes:
    return hashlib.sha256(head).digest()[:16]


def fingerprint_of(fd: int, length: int) -> bytes:
    return fingerprint(os.pread(fd, length, 0))


def same_start(tracked: Tracked) -> bool:
    """Whether the file still starts with the bytes it started with when it was read."""
    if tracked.fingerprint_len == 0:
        return True
    head = os.pread(tracked.fd, tracked.fingerprint_len, 0)
    return len(head) == tracked.fingerprint_len and fingerprint(head) == tracked.fingerprint


def matching(root: Path, pattern: str, recursive: bool) -> dict[str, os.stat_result]:
    """Regular files under ``root`` whose name matches ``pattern`` (or ``root`` itself when it
    is a file), with their stat."""
    if root.is_file():
        try:
            return {str(root): root.stat()}
        except FileNotFoundError:
            return {}
    found: dict[str, os.stat_result] = {}
    dirs = [str(root)]
    while dirs:
        current = dirs.pop()
        try:
            entries = list(os.scandir(current))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    if recursive:
                        dirs.append(entry.path)
                elif entry.is_file() and fnmatch.fnmatchcase(entry.name, pattern):
                    found[entry.path] = entry.stat()
            except FileNotFoundError:
                continue
    return found


def find_inode(directory: str, device: int, inode: int) -> str | None:
    """A file in ``directory`` (any name) with this identity: where a rotated file went."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return None
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (device, inode):
            return entry.path
    return None


def open_file(path: str) -> tuple[int, os.stat_result] | None:
    """Open for reading; None when the file vanished in between."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return None
    return fd, os.fstat(fd)


def count_lines(fd: int, end: int) -> int:
    """Newlines in the first ``end`` bytes (for ``start="end"``)."""
    count, pos, block = 0, 0, 1 << 22
    while pos < end:
        chunk = os.pread(fd, min(block, end - pos), pos)
        if not chunk:
            break
        count += chunk.count(b"\n")
        pos += len(chunk)
    return count


def last_line_end(fd: int, size: int) -> int:
    """The offset just after the last newline of the file (0 when it has none)."""
    pos, block = size, 1 << 16
    while pos > 0:
        start = max(0, pos - block)
        chunk = os.pread(fd, pos - start, start)
        found = chunk.rfind(b"\n")
        if found >= 0:
            return start + found + 1
        pos = start
    return 0
