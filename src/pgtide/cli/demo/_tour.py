"""The tour: a small shop writes orders for a while; every feature's stage reacts to them.

Each tick is one transaction of the shop: an order row goes into a table, and each stage adds
its share (a NOTIFY, an event). After the commit, the "instrument" appends readings to a
file. Then the tour waits until every stage has seen everything, stops them, and removes
every object it created, whatever happened.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psycopg import sql

from ... import schema
from ...connect import Resolved, connect
from ._events import EventsPart
from ._follow import FollowPart
from ._ingest import IngestPart
from ._listen import ListenPart
from ._part import Line, Part, Shop

# The stages, in the order the tour shows them (each feature adds its own).
PARTS: list[Callable[[Shop], Part]] = [ListenPart, FollowPart, EventsPart, IngestPart]
TICKS_PER_SECOND = 20
SETTLE_SECONDS = 20.0
ITEMS = ("tea", "jam", "oil", "salt", "rice", "figs")
CREATE_ORDERS = "CREATE TABLE {} (id int PRIMARY KEY, item text NOT NULL, qty int NOT NULL)"
INSERT_ORDER = "INSERT INTO {} (id, item, qty) VALUES (%s, %s, %s)"

Show = Callable[[str, float, list[Line]], None]


@dataclass
class Result:
    """What the tour did: per feature figures, and whether every stage saw everything."""

    database: str
    source: str
    seconds: float
    orders: int
    settled: bool
    features: dict[str, dict[str, Any]] = field(default_factory=dict)
    cleaned_up: bool = False
    cleanup_errors: list[str] = field(default_factory=list)
    kept: bool = False
    """``--keep``: what the tour created was left in place on purpose (for ``pgtide web``)."""

    @property
    def ok(self) -> bool:
        return (
            self.settled
            and (self.cleaned_up or self.kept)
            and all(bool(f.get("ok")) for f in self.features.values())
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "database": self.database,
            "source": self.source,
            "seconds": round(self.seconds, 3),
            "orders": self.orders,
            "settled": self.settled,
            "cleaned_up": self.cleaned_up,
            "cleanup_errors": self.cleanup_errors,
            "kept": self.kept,
            "features": self.features,
        }


class Tour:
    """One run of the shop on ``db`` for ``seconds``, calling ``show`` as it goes."""

    def __init__(self, db: Resolved, seconds: float, show: Show, keep: bool = False) -> None:
        self.keep = keep
        tag = uuid.uuid4().hex[:8]
        self.shop = Shop(db, tag, Path(tempfile.mkdtemp(prefix=f"pgtide-demo-{tag}-")))
        self.seconds = seconds
        self.show = show
        self.parts: list[Part] = [cls(self.shop) for cls in PARTS]
        self.orders = 0

    @property
    def features(self) -> list[str]:
        return [p.feature for p in self.parts]

    def lines(self) -> list[Line]:
        return [p.line() for p in self.parts]

    def run(self) -> Result:
        """Start the stages, run the shop, wait for them to catch up, stop and clean up
        (also when interrupted; with ``keep``, only when interrupted); the result says
        whether everything checked out."""
        began = time.monotonic()
        schema.install(dsn=self.shop.db)
        settled = False
        started: list[Part] = []
        kept = False
        try:
            self._create_orders()
            for part in self.parts:
                started.append(part)
                part.start()
            self._shop(time.monotonic())
            settled = self._settle()
        finally:
            for part in reversed(started):
                with contextlib.suppress(Exception):  # a stage that fails to stop shows as not ok
                    part.stop()
            features = {p.feature: p.summary() for p in self.parts}
            kept = self.keep and settled  # an interrupted or failed tour still cleans up
            errors = [] if kept else self._cleanup(started)
        return Result(
            database=self.shop.db.target,
            source=self.shop.db.source,
            seconds=time.monotonic() - began,
            orders=self.orders,
            settled=settled,
            features=features,
            cleaned_up=not errors and not self.shop.folder.exists(),
            cleanup_errors=errors,
            kept=kept,
        )

    def _create_orders(self) -> None:
        with connect(self.shop.db) as conn:
            conn.execute(sql.SQL(CREATE_ORDERS).format(sql.Identifier(self.shop.orders)))

    def _shop(self, began: float) -> None:
        """Write one order a tick for ``seconds``, refreshing the view between ticks."""
        insert = sql.SQL(INSERT_ORDER).format(sql.Identifier(self.shop.orders))
        period = 1.0 / TICKS_PER_SECOND
        with connect(self.shop.db, autocommit=False) as conn:
            tick = 0
            while (elapsed := time.monotonic() - began) < self.seconds:
                tick += 1
                with conn.transaction():
                    conn.execute(insert, (tick, ITEMS[tick % len(ITEMS)], 1 + tick % 3))
                    for part in self.parts:
                        part.write(conn, tick)
                self.orders = tick
                for part in self.parts:
                    part.after_commit(tick)
                self.show("running", elapsed, self.lines())
                time.sleep(max(0.0, began + tick * period - time.monotonic()))

    def _settle(self) -> bool:
        """Wait until every stage has caught up with what the shop wrote."""
        began = time.monotonic()
        deadline = began + SETTLE_SECONDS
        while time.monotonic() < deadline:
            waiting = [p for p in self.parts if not p.settled()]
            self.show("catching up", time.monotonic() - began, self.lines())
            if not waiting:
                return True
            time.sleep(0.1)
        return False

    def _cleanup(self, started: list[Part]) -> list[str]:
        """Remove the stages' objects, the orders table and the folder; return what failed."""
        errors = []
        with connect(self.shop.db) as conn:
            for part in reversed(started):
                try:
                    part.cleanup(conn)
                except Exception as exc:  # reported in the summary; the rest still goes
                    errors.append(f"{part.feature}: {type(exc).__name__}: {exc}")
            conn.execute(
                sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(self.shop.orders))
            )
        shutil.rmtree(self.shop.folder, ignore_errors=True)
        return errors
