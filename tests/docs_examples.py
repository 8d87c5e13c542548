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


def block_under(page: Path, heading: str, lang: str) -> str:
    """The first ```lang block after the line ``heading`` of ``page`` (a test that drives
    an example the page shows, such as a web page or an app to mount)."""
    text = page.read_text(encoding="utf-8")
    section = text[text.index(f"\n{heading}\n") :]
    match = re.search(rf"^```{lang}[^\n]*\n(.*?)^```", section, re.M | re.S)
    assert match, f"no {lang} block under {heading!r} in {page.name}"
    return match.group(1)


def run_examples(page: Path) -> int:
    """Execute the runnable blocks of ``page`` in one namespace; return how many ran."""
    namespace: dict[str, object] = {"__name__": "__docs__"}
    blocks = examples(page)
    for line, code in blocks:
        compiled = compile(code, f"{page.name}:{line}", "exec")
        exec(compiled, namespace)
    return len(blocks)


_CONSOLE = re.compile(r"^```console[ \t]+test[ \t]*\n(?P<body>.*?)^```", re.M | re.S)


def console_examples(page: Path) -> list[tuple[int, str, list[str]]]:
    """The blocks fenced as ```console test: (line number, command, expected output lines).

    A command is a line starting with ``$ ``; the lines up to the next command are its
    expected output, where ``...`` stands for anything (comments after `` # `` are dropped
    from commands).
    """
    text = page.read_text(encoding="utf-8")
    found: list[tuple[int, str, list[str]]] = []
    for match in _CONSOLE.finditer(text):
        first = text.count("\n", 0, match.start()) + 2
        for offset, line in enumerate(match["body"].splitlines()):
            if line.startswith("$ "):
                command = re.sub(r"\s+#\s.*$", "", line[2:]).strip()
                found.append((first + offset, command, []))
            elif found and line.strip():
                found[-1][2].append(line)
    return found


def matches(expected: str, output: str) -> bool:
    """Whether the expected line (``...`` = anything) appears in the output."""
    pattern = ".*?".join(re.escape(part) for part in expected.split("..."))
    return re.search(pattern, output) is not None
