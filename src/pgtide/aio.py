"""The asyncio faces of pgtide's features (same cores as the blocking API in :mod:`pgtide`)."""

from .events._async import Events

__all__: list[str] = ["Events"]
