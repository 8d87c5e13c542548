"""Options that several commands take, declared once as *bundles* (frozen dataclasses whose
fields are typer options) and handed to a command as one argument.

A command names a bundle as a keyword-only parameter and is decorated with :func:`takes`::

    @app.command()
    @takes
    def purge(older_than: ... = None, *, scope: Scope) -> None:
        rejects.purge(watcher=scope.watcher, dsn=scope.dsn)

A bundle may extend another (``Scope(Common)`` adds ``--watcher`` to ``--dsn`` and
``--json``); its own options are shown first. The options stay the same on the command line:
:func:`takes` shows typer the bundles' fields in their place, and builds the bundles from
them when the command runs.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ._common import DsnOption, JsonOption, wants_json

R = TypeVar("R")
C = TypeVar("C", bound=type)

_BUNDLES: set[type] = set()


def bundle(cls: C) -> C:
    """Mark a dataclass whose fields are typer options as a bundle (a field without a
    default is a required option: declare the dataclass ``kw_only`` to put it after others)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} must be a dataclass to bundle options")
    _BUNDLES.add(cls)
    return cls


def _fields(kind: type) -> tuple[dataclasses.Field[Any], ...]:
    return dataclasses.fields(kind) if dataclasses.is_dataclass(kind) else ()


def takes(command: Callable[..., R]) -> Callable[..., R]:
    """Let ``command`` take bundles: typer sees each bundle's fields as options, and the
    command receives the bundle built from them."""
    signature = inspect.signature(command, eval_str=True)
    shown: list[inspect.Parameter] = []
    bundled: dict[str, tuple[type, list[str]]] = {}
    for param in signature.parameters.values():
        kind = param.annotation
        if kind not in _BUNDLES:
            shown.append(param)
            continue
        hints = typing.get_type_hints(kind, include_extras=True)
        inherited = {f.name for base in kind.__bases__ for f in _fields(base)}
        # a bundle's own options first, then those it inherits (the common ones come last)
        fields = sorted(_fields(kind), key=lambda f: f.name in inherited)
        bundled[param.name] = (kind, [f.name for f in fields])
        shown += [
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default,
                annotation=hints[f.name],
            )
            for f in fields
        ]

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> R:
        for name, (kind, names) in bundled.items():
            kwargs[name] = kind(**{n: kwargs.pop(n) for n in names})
        return command(*args, **kwargs)

    run.__signature__ = signature.replace(parameters=shown)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in shown}
    run.__annotations__["return"] = signature.return_annotation
    return run


@bundle
@dataclass(frozen=True)
class Common:
    """``--dsn`` and ``--json``: where to connect, and whether to print JSON for programs."""

    dsn: DsnOption = None
    as_json: JsonOption = False

    @property
    def json(self) -> bool:
        """JSON when asked, or when stdout is not a terminal (see ``wants_json``)."""
        return wants_json(self.as_json)
