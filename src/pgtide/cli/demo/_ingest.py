"""Ingest stage: an "instrument" appends readings to a file; a FileWatcher lands them."""

from __future__ import annotations

import random
from typing import Any

import psycopg
from psycopg import sql

from ... import FileWatcher
from ...connect import connect
from ._part import Part

LINES_PER_TICK = 5
BAD_LINE_AT = 3  # the tick whose last line is garbage, to show pgtide.rejects
FORGET_FILES = "DELETE FROM pgtide.file_offsets WHERE watcher = %s"
FORGET_REJECTS = "DELETE FROM pgtide.rejects WHERE watcher = %s"


class IngestPart(Part, feature="ingest", doing="file lines -> table"):
    def setup(self) -> None:
        self._random = random.Random(7)
        self._watcher: FileWatcher | None = None
        self._file = self.shop.folder / "sensor.txt"

    @property
    def watcher_name(self) -> str:
        return f"pgtide-demo-{self.shop.tag}"

    def start(self) -> None:
        with connect(self.shop.db) as conn:
            conn.execute(
                sql.SQL("CREATE TABLE {} (value float8)").format(sql.Identifier(self.shop.readings))
            )
        self._watcher = FileWatcher(
            self.shop.folder,
            table=self.shop.readings,
            columns=["value"],
            name=self.watcher_name,
            dsn=self.shop.db,
            rescan_every=0.2,
        )
        self._watcher.start()

    def after_commit(self, tick: int) -> None:
        values = [f"{20 + self._random.random() * 5:.2f}" for _ in range(LINES_PER_TICK)]
        if tick == BAD_LINE_AT:
            values[-1] = "sensor glitch"
        with self._file.open("a") as f:
            f.write("".join(f"{v}\n" for v in values))
        self.written += len(values)

    def _seen(self) -> tuple[int, int]:
        if self._watcher is None:
            return 0, 0
        status = self._watcher.status()
        rows, rejected = status.rows_written, status.rejected
        if rows > self.seen.count:
            self.seen.add(rows - self.seen.count)
        return rows, rejected

    def settled(self) -> bool:
        rows, rejected = self._seen()
        return rows + rejected >= self.written

    def stop(self) -> None:
        if self._watcher is not None:
            self._seen()
            self._watcher.stop()

    def detail(self) -> str:
        _rows, rejected = self._seen()
        return f"{self.written} written, {rejected} rejected"

    def summary(self) -> dict[str, Any]:
        rows, rejected = self._seen()
        return {
            "lines_written": self.written,
            "rows_landed": rows,
            "rejected": rejected,
            "ok": rows + rejected == self.written and rows > 0,
            "text": f"{rows} of {self.written} lines landed, {rejected} kept in rejects",
        }

    def cleanup(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(self.shop.readings)))
        conn.execute(FORGET_FILES, (self.watcher_name,))
        conn.execute(FORGET_REJECTS, (self.watcher_name,))
