"""The layers of DESIGN section 2, checked on the source: an upper layer imports only lower
ones, features never import one another, faces never import a private module (``_x``) of
another package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "pgtide"
FACES = {"cli", "web"}
FEATURES = {"listen", "feed", "events", "ingest", "sinks"}
# the shared mechanisms and the foundation, with what each may import beyond them
LOWER = {"channel", "session", "names", "codecs", "schema", "notify", "connect", "embedded"}


def _package(module: str) -> str:
    """The top package of pgtide a dotted module name under pgtide is in ("" for pgtide)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path) -> list[tuple[str, int]]:
    """The pgtide modules ``path`` imports (absolute dotted names), with their lines."""
    relative = path.relative_to(SRC.parent).with_suffix("")
    here = list(relative.parts)[:-1]  # the package a relative import starts from
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "pgtide":
                continue
            found.append((target, node.lineno))
            for alias in node.names:  # `from ..web import _security` names a module too
                found.append((f"{target}.{alias.name}", node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("pgtide.")]
    return found


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _owner(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return parts[0] if len(parts) > 1 else parts[0].removeprefix("_")


def _private_of_other(target: str, owner: str) -> bool:
    parts = target.split(".")
    return _package(target) != owner and any(p.startswith("_") for p in parts[2:])


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_layers(path: Path) -> None:
    owner = _owner(path)
    wrong = []
    for target, line in _imports(path):
        package = _package(target)
        if owner in FACES and _private_of_other(target, owner):
            wrong.append(f"line {line}: a face imports a private module, {target}")
        # sinks use the public feed API; no other feature imports another
        public_feed = (
            owner == "sinks" and package == "feed" and not _private_of_other(target, owner)
        )
        if owner in FEATURES and package in FEATURES - {owner} and not public_feed:
            wrong.append(f"line {line}: feature {owner} imports feature {target}")
        if owner in LOWER and package in FEATURES | FACES:
            wrong.append(f"line {line}: {owner} (a lower layer) imports {target}")
    assert not wrong, "\n".join(wrong)
