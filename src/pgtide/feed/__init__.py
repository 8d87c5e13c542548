"""Follow: the change feed (capture with triggers, read by snapshot visibility).

The public API of the feature: :class:`Feed` (blocking; ``pgtide.aio.Feed`` for asyncio),
capture (:func:`track`, :func:`untrack`, :func:`tracked`; :func:`backfills`,
:func:`pause_backfill`, :func:`resume_backfill`), retention and inspection
(:func:`prune`, :func:`consumers`, :func:`drop_consumer`, :func:`latest`), and
:func:`overview`, the feed's sections of ``pgtide status``, and :func:`to_json` (rows as
JSON with exact numbers, as ``pgtide follow`` prints them).
"""

from ._async import Batch as AsyncBatch
from ._async import Feed as AsyncFeed
from ._core import Change
from ._sync import Batch, Feed
from .backfill import backfills, pause_backfill, resume_backfill
from .fetcher import LatestFetcher
from .position import Position
from .retention import consumers, drop_consumer, latest, overview, prune
from .rows import to_json
from .track import OPS, track, tracked, untrack
from .wal import Relay, SlotLost, WalUnavailable, reset_slot

__all__ = [
    "OPS",
    "AsyncBatch",
    "AsyncFeed",
    "Batch",
    "Change",
    "Feed",
    "LatestFetcher",
    "Position",
    "Relay",
    "SlotLost",
    "WalUnavailable",
    "backfills",
    "consumers",
    "drop_consumer",
    "latest",
    "overview",
    "pause_backfill",
    "prune",
    "reset_slot",
    "resume_backfill",
    "to_json",
    "track",
    "tracked",
    "untrack",
]
