"""Follow: the change feed (capture with triggers, read by snapshot visibility)."""

from ._core import Change
from ._sync import Batch, Feed
from .position import Position
from .retention import consumers, latest, prune
from .track import track, tracked, untrack

__all__ = [
    "Batch",
    "Change",
    "Feed",
    "Position",
    "consumers",
    "latest",
    "prune",
    "track",
    "tracked",
    "untrack",
]
