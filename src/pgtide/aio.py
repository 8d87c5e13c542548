"""The asyncio faces of pgtide's features (same cores as the blocking API in :mod:`pgtide`)."""

from .feed._async import Batch, Feed

__all__: list[str] = ["Batch", "Feed"]
