"""Help screens for people: value kinds in words (TEXT, NUMBER, PATH), none for flags.

typer labels each parameter with its Python annotation (``<bool>``, ``<list[str]>``,
``<float range>``); pgtide's help shows what a person types instead. Installed once by
:mod:`pgtide.cli.app` before any help is rendered.
"""

from __future__ import annotations

from typing import Any

from typer import core

_WORDS = {
    "str": "TEXT",
    "int": "INTEGER",
    "float": "NUMBER",
    "int range": "INTEGER",
    "float range": "NUMBER",
    "path": "PATH",
    "file": "FILE",
    "directory": "DIRECTORY",
    "datetime": "TIME",
}


def human_type(label: str) -> str:
    """``<list[str]>`` -> ``TEXT``; ``<float range>`` -> ``NUMBER``; choices stay as they are."""
    bare = label.strip("<>")
    if bare.startswith("list[") and bare.endswith("]"):
        bare = bare[5:-1]
    return _WORDS.get(bare, bare.upper() if bare.isidentifier() else bare)


def install() -> None:
    """Render parameter kinds in words, for every pgtide command."""
    for cls in (core.TyperOption, core.TyperArgument):
        original = cls.display_type_rich
        if getattr(original, "_pgtide", False):
            continue

        def display(self: Any, ctx: Any, _original: Any = original) -> str | None:
            if getattr(self, "is_flag", False) or getattr(self, "count", False):
                return None
            label = _original(self, ctx)
            return None if label is None else human_type(label)

        display._pgtide = True  # type: ignore[attr-defined]
        cls.display_type_rich = display  # type: ignore[method-assign]
    core.TyperArgument._usage_display_name = _usage_name  # type: ignore[method-assign]


def _usage_name(self: Any) -> str:
    """``CHANNEL...`` for a required argument, ``[PAYLOAD]`` for an optional one."""
    name = str(self.display_name_raw).upper()
    name = name if self.required else f"[{name}]"
    return name + "..." if self.nargs != 1 else name
