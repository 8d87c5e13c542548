"""The pure cores' tier: these tests need no database (``pytest tests/core`` runs in a second)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated() -> None:
    """Overrides the suite's fixture of the same name: no server is started for these tests."""
