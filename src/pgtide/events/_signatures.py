"""The faces' shared signatures, written once.

A method that both faces have with the same arguments is written in each face as a function
of one arguments object; :func:`takes` gives it the public signature of a *spec* function
defined here, which checks the arguments and makes that object. So ``pgtide.Events.run`` and
``pgtide.aio.Events.run`` (and ``start``, ``publish``, ``publish_many``) share one list of
parameters, one set of defaults and one check, and still show a plain signature to
``inspect``, ``help()`` and type checkers.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Concatenate, NamedTuple, ParamSpec, TypeVar, cast

import psycopg

from ..errors import ConfigError

P = ParamSpec("P")
A = TypeVar("A")
S = TypeVar("S")
T = TypeVar("T")


def takes(
    spec: Callable[P, A], **shown: str
) -> Callable[[Callable[[S, A], T]], Callable[Concatenate[S, P], T]]:
    """Make ``fn(self, args)`` a method called with ``spec``'s parameters: ``args`` is what
    ``spec`` returns for them. The method keeps ``fn``'s name and docstring, is a coroutine
    function when ``fn`` is one, and shows ``spec``'s signature (``self`` first), with the
    annotations in ``shown`` for the face (``conn="psycopg.Connection[Any] | None"``)."""
    parameters = [
        p.replace(annotation=shown[p.name]) if p.name in shown else p
        for p in inspect.signature(spec).parameters.values()
    ]

    def decorate(fn: Callable[[S, A], T]) -> Callable[Concatenate[S, P], T]:
        if inspect.iscoroutinefunction(fn):
            run_async = fn

            async def method_async(self: S, /, *args: P.args, **kwargs: P.kwargs) -> Any:
                return await run_async(self, spec(*args, **kwargs))

            method = cast(Callable[Concatenate[S, P], T], method_async)
        else:

            def method_sync(self: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
                return fn(self, spec(*args, **kwargs))

            method = method_sync
        functools.update_wrapper(method, fn)
        del method.__wrapped__  # type: ignore[attr-defined]  # its signature is spec's
        own = inspect.signature(fn)
        self_ = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
        method.__signature__ = own.replace(parameters=[self_, *parameters])  # type: ignore[attr-defined]
        return method

    return decorate


# -- workers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunArgs:
    concurrency: int | None
    poll_interval: float | None
    stop_timeout: float


def run_args(
    concurrency: int | None = None,
    *,
    poll_interval: float | None = None,
    stop_timeout: float = 30.0,
) -> RunArgs:
    """``run`` and ``start`` of either face: at most ``concurrency`` handlers at once (8 by
    default); ``poll_interval`` overrides the object's; running handlers get ``stop_timeout``
    seconds to finish when it stops."""
    return RunArgs(concurrency, poll_interval, stop_timeout)


# -- schedules -------------------------------------------------------------------------------


class ScheduleArgs(NamedTuple):
    name: str
    cron: str
    payload: Any
    tz: str
    id: str | None


def schedule_args(
    name: str, cron: str, payload: Any = None, *, tz: str = "UTC", id: str | None = None
) -> ScheduleArgs:
    """``schedule`` of either face."""
    return ScheduleArgs(name, cron, payload, tz, id)


# -- publishing ------------------------------------------------------------------------------

AnyConnection = psycopg.Connection[Any] | psycopg.AsyncConnection[Any]


@dataclass(frozen=True)
class PublishArgs:
    name: str
    payload: Any
    conn: AnyConnection | None
    run_at: datetime | timedelta | None
    key: str | None
    priority: int
    dedupe_key: Any
    after: int | Iterable[int] | None = None

    def on(self, kind: type[psycopg.Connection[Any]] | type[psycopg.AsyncConnection[Any]]) -> Any:
        """The caller's connection, checked to be of the face's kind (or None)."""
        if self.conn is not None and not isinstance(self.conn, kind):
            raise ConfigError(
                f"conn must be a {kind.__module__}.{kind.__qualname__} for this face, not "
                f"{type(self.conn).__name__} (pgtide.Events takes a blocking connection, "
                "pgtide.aio.Events an asyncio one)"
            )
        return self.conn


def publish_args(
    name: str,
    payload: Any = None,
    *,
    conn: AnyConnection | None = None,
    run_at: datetime | timedelta | None = None,
    key: str | None = None,
    priority: int = 0,
    dedupe_key: str | None = None,
    after: int | Iterable[int] | None = None,
) -> PublishArgs:
    """``publish`` of either face."""
    return PublishArgs(name, payload, conn, run_at, key, priority, dedupe_key, after)


def publish_many_args(
    name: str,
    payloads: Iterable[Any],
    *,
    conn: AnyConnection | None = None,
    run_at: datetime | timedelta | None = None,
    key: str | None = None,
    priority: int = 0,
    dedupe_key: str | Iterable[str | None] | None = None,
    after: int | Iterable[int] | None = None,
) -> PublishArgs:
    """``publish_many`` of either face (``payload`` holds the payloads)."""
    return PublishArgs(name, payloads, conn, run_at, key, priority, dedupe_key, after)
