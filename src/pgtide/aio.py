"""The asyncio faces of pgtide's features (same cores as the blocking API in :mod:`pgtide`)."""

__all__: list[str] = []
