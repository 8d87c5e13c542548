"""The asyncio faces of pgtide's features (same cores as the blocking API in :mod:`pgtide`)."""

from .ingest._aio import FileWatcher

__all__: list[str] = ["FileWatcher"]
