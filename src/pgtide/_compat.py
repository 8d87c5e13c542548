"""Old spellings that keep working for one release, with a DeprecationWarning."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def now_keyword_only(positional: int, *names: str) -> Callable[[F], F]:
    """Accept ``names`` (now keyword-only) positionally after the first ``positional`` arguments,
    warning that this goes away. The wrapped signature stays the real one for ``inspect``."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if len(args) > positional:
                extra = args[positional:]
                if len(extra) > len(names):
                    raise TypeError(f"{fn.__qualname__}() takes {positional} positional arguments")
                warnings.warn(
                    f"passing {', '.join(names[: len(extra)])} to {fn.__qualname__}() by position "
                    f"is deprecated; write {names[0]}=... (keyword-only from the next release)",
                    DeprecationWarning,
                    stacklevel=2,
                )
                kwargs.update(zip(names, extra, strict=False))
                args = args[:positional]
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def renamed(old: str, new: str, method: Callable[..., Any]) -> Callable[..., Any]:
    """A deprecated alias ``old`` of ``method`` (named ``new``)."""

    @functools.wraps(method)
    def alias(*args: Any, **kwargs: Any) -> Any:
        warnings.warn(
            f"{old}() is deprecated; call {new}() instead", DeprecationWarning, stacklevel=2
        )
        return method(*args, **kwargs)

    return alias


def positional_dsn(positional: Any, dsn: Any, owner: str, *, stacklevel: int = 3) -> Any:
    """The ``dsn`` keyword, or (for one release, with a warning) a dsn given by position to
    ``owner`` (for example ``"pgtide.Listener"``), for faces whose first parameter it was."""
    if positional is None:
        return dsn
    if dsn is not None:
        from .errors import ConfigError

        raise ConfigError(f"{owner}() got the dsn both by position and by keyword; keep dsn=")
    warnings.warn(
        f"passing the dsn to {owner}() by position is deprecated; write {owner}(dsn=...) "
        "(keyword-only from the next release)",
        DeprecationWarning,
        stacklevel=stacklevel,
    )
    return positional
