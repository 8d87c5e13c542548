"""What each feature shows about itself: titled tables of rows, for ``pgtide status`` and the
web console. Every feature exports ``overview() -> Io[list[Section]]``; faces only render."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Section:
    """One titled table; ``columns`` label the rows' cells (and are the ``--json`` keys)."""

    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)

    def as_dicts(self) -> list[dict[str, Any]]:
        """The rows as dicts keyed by column."""
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]
