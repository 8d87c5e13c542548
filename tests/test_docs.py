"""The Python examples in README.md and docs/*.md run against a real database."""

from __future__ import annotations

from pathlib import Path

import pytest
from docs_examples import DOCS, ROOT, examples, run_examples

PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_examples_run(page: Path, dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGTIDE_DSN", dsn)
    monkeypatch.chdir(page.parent)
    if not examples(page):
        return  # a page without Python examples has nothing to run
    assert run_examples(page) > 0
