"""The API reference: every public name has a docstring and a place in docs/api.md."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import pgtide
import pgtide.aio

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "api.md"
NAMES = [("pgtide", n) for n in pgtide.__all__] + [("pgtide.aio", n) for n in pgtide.aio.__all__]


def _apidoc() -> ModuleType:
    spec = importlib.util.spec_from_file_location("apidoc", ROOT / "scripts" / "apidoc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _object(prefix: str, name: str) -> Any:
    return getattr(pgtide if prefix == "pgtide" else pgtide.aio, name)


@pytest.mark.parametrize(("prefix", "name"), NAMES, ids=lambda v: str(v))
def test_every_public_name_is_in_the_reference(prefix: str, name: str) -> None:
    assert f"### `{prefix}.{name}`" in PAGE.read_text(encoding="utf-8"), (
        f"{prefix}.{name} is missing from docs/api.md: run .venv/bin/python scripts/apidoc.py"
    )


@pytest.mark.parametrize(("prefix", "name"), NAMES, ids=lambda v: str(v))
def test_every_public_name_has_a_docstring(prefix: str, name: str) -> None:
    obj = _object(prefix, name)
    if not callable(obj):
        return  # a constant such as __version__ is documented by its value
    assert (obj.__doc__ or "").strip(), f"{prefix}.{name} has no docstring"
    if inspect.isclass(obj) and not issubclass(obj, BaseException):
        apidoc = _apidoc()
        undocumented = [
            m for m, member in apidoc._members(obj) if not apidoc.member_doc(obj, m, member)
        ]
        assert not undocumented, f"{prefix}.{name} methods without a docstring: {undocumented}"


def test_the_reference_is_up_to_date() -> None:
    assert PAGE.read_text(encoding="utf-8") == _apidoc().render(), (
        "docs/api.md is out of date: run .venv/bin/python scripts/apidoc.py"
    )
