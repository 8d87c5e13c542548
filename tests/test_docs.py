"""The Python examples in README.md and docs/*.md run against a real database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from docs_examples import DOCS, ROOT, console_examples, examples, matches, run_examples

PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_examples_run_twice(
    page: Path, dsn: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Each page runs as a reader would run it, then again on the same database (a reader
    trying it a second time must not meet DuplicateTable)."""
    monkeypatch.setenv("PGTIDE_DSN", dsn)
    if not examples(page):
        return  # a page without Python examples has nothing to run
    for attempt in ("first", "second"):
        workdir = tmp_path / attempt
        workdir.mkdir()
        monkeypatch.chdir(workdir)
        assert run_examples(page) > 0, attempt


CONSOLE = [(page, *example) for page in PAGES for example in console_examples(page)]


@pytest.mark.parametrize(
    ("page", "line", "command", "expected"),
    CONSOLE,
    ids=[f"{page.name}:{line}" for page, line, _, _ in CONSOLE],
)
def test_console_examples_run(
    page: Path, line: int, command: str, expected: list[str], dsn: str, tmp_path: Path
) -> None:
    """Blocks fenced as ```console test: each `$ pgtide ...` runs and prints what is shown;
    one whose output shows `pgtide: error` must fail."""
    bin_dir = str(Path(sys.executable).parent)  # where the `pgtide` command is installed
    env = {**os.environ, "PGTIDE_DSN": dsn, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env["COLUMNS"] = "100"
    done = subprocess.run(
        command, shell=True, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60
    )
    output = done.stdout + done.stderr
    should_fail = any(e.startswith("pgtide: error") for e in expected)
    assert (done.returncode != 0) is should_fail, f"{page.name}:{line}: {command}\n{output}"
    for want in expected:
        assert matches(want, output), f"{page.name}:{line}: {want!r} not in\n{output}"
