"""Run the Python examples of a Markdown page, so that documentation cannot rot.

Every block fenced as ```python runs, in order, in one namespace, with ``PGTIDE_DSN`` naming
the test's fresh database. A block fenced as ```python notest is shown to readers only
(for example one that blocks forever); keep those few.
"""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"
ROOT = DOCS.parent
_BLOCK = re.compile(r"^```python[ \t]*(?P<flags>[^\n]*)\n(?P<code>.*?)^```", re.M | re.S)


def examples(page: Path) -> list[tuple[int, str]]:
    """The runnable blocks of ``page``: (line number, code)."""
    text = page.read_text(encoding="utf-8")
    found = []
    for match in _BLOCK.finditer(text):
        if "notest" in match["flags"].split():
            continue
        found.append((text.count("\n", 0, match.start()) + 2, match["code"]))
    return found


def run_examples(page: Path) -> int:
    """Execute the runnable blocks of ``page`` in one namespace; return how many ran."""
    namespace: dict[str, object] = {"__name__": "__docs__"}
    blocks = examples(page)
    for line, code in blocks:
        compiled = compile(code, f"{page.name}:{line}", "exec")
        exec(compiled, namespace)
    return len(blocks)
