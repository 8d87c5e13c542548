"""What an event is, what a handler is, and how payloads become JSON."""

from __future__ import annotations

import contextlib
import inspect
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from ..codecs import decode_json
from ..connect import backoff_delay
from ..errors import ConfigError, EventPayloadError

STATES = ("pending", "running", "done", "failed", "dead", "cancelled", "waiting")
"""Every state an event can be in: failed means "will retry", dead means "gave up",
cancelled means ``cancel()`` stopped it (never retried), waiting means it runs after other
events (``publish(..., after=...)``) not all done yet."""

ENDED = frozenset({"done", "dead", "cancelled"})
"""The states an event ends in (what ``wait()`` waits for)."""

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*(?:\.\d+)?)\s*(s|sec|second|m|min|minute|h|hour)s?\s*$")
_PERIODS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
}

_LONG_DIGITS = re.compile(r"[0-9]{19}")
_NAME = re.compile(r"^\S(?:.{0,198}\S)?$", re.S)


@dataclass(frozen=True)
class Event:
    """One event as a handler receives it.

    ``id`` is pgtide's id; ``source_id`` is the id in your own table when the events come
    from one (bring your own table), else None. ``attempt`` counts from 1.
    """

    id: int
    name: str
    payload: Any
    attempt: int
    created_at: datetime
    key: str | None = None
    source_id: str | None = None
    _cancel: bool = field(default=False, repr=False, compare=False, kw_only=True)
    _trace: str | None = field(default=None, repr=False, compare=False, kw_only=True)

    @property
    def cancelled(self) -> bool:
        """True once ``events.cancel(id)`` asked this running handler to stop: a plain
        function should check it and return; the event then ends ``cancelled``."""
        return self._cancel

    def _ask_cancel(self) -> None:
        """Turn :attr:`cancelled` True (the worker's thread; the handler's reads it: one
        attribute, set once and never cleared, so no lock is needed)."""
        _set(self, "_cancel", True)

    @classmethod
    def _claimed(cls, row: tuple[Any, ...], payload: Any) -> Event:
        """The event of a claimed row (``id, name, _, created_at, key, source_id, _,
        attempts, _, trace``) as its handler will get it, attempt included: the same object the
        constructor makes, built for the worker's hot path with its attributes given at once
        (no per-field ``object.__setattr__`` call of the frozen dataclass, no other object)."""
        event = _new(cls)
        _set(
            event,
            "__dict__",
            {
                "id": row[0],
                "name": row[1],
                "payload": payload,
                "attempt": row[7] + 1,
                "created_at": row[3],
                "key": row[4],
                "source_id": row[5],
                "_cancel": False,
                "_trace": row[9],
            },
        )
        return event


_new = object.__new__
_set = object.__setattr__


Handler = Callable[[Event], Any] | Callable[[Event], Awaitable[Any]]


@dataclass
class HandlerSpec:
    """A registered handler and its policy."""

    name: str
    fn: Handler
    retries: int = 5
    timeout: float | None = 30.0
    concurrency: int | None = None
    rate: str | None = None
    is_async: bool = field(init=False)
    rate_limit: tuple[int, float] | None = field(init=False)

    def __post_init__(self) -> None:
        call = getattr(self.fn, "__call__", None)  # noqa: B004 (an object with async __call__)
        self.is_async = inspect.iscoroutinefunction(self.fn) or inspect.iscoroutinefunction(call)
        if self.retries < 0:
            raise ConfigError(f"retries for {self.name!r} must be 0 or more, not {self.retries}")
        if self.timeout is not None and not self.timeout > 0:
            raise ConfigError(f"timeout for {self.name!r} must be positive seconds or None")
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError(f"concurrency for {self.name!r} must be 1 or more, or None")
        self.rate_limit = None if self.rate is None else parse_rate(self.rate, self.name)

    @property
    def limited(self) -> bool:
        """Whether this handler has a global limit (enforced in the claim, for every worker)."""
        return self.concurrency is not None or self.rate_limit is not None

    @property
    def max_attempts(self) -> int:
        return self.retries + 1


def parse_rate(rate: object, name: str = "") -> tuple[int, float]:
    """``"100/s"``, ``"10/m"``, ``"5/2s"`` or ``"3/h"``: (starts, seconds)."""
    match = _RATE.match(rate) if isinstance(rate, str) else None
    if match is None or int(match[1]) < 1 or (match[2] and not float(match[2]) > 0):
        raise ConfigError(
            f"bad rate {rate!r}{f' for {name!r}' if name else ''}: write starts per period, "
            "such as '100/s', '10/m', '5/2s' or '3/h'"
        )
    return int(match[1]), float(match[2] or 1) * _PERIODS[match[3]]


def result_json(value: Any, name: str) -> str | None:
    """A handler's return value as JSON; a value JSON cannot hold is kept as its ``repr``
    with a note, never a failure."""
    if value is None:
        return None
    try:
        return to_json(value, f"result of {name!r}")
    except EventPayloadError as exc:
        kept = {"repr": repr(value).replace("\x00", "\\x00"), "note": str(exc)}
        return json.dumps(kept, ensure_ascii=False)


def decode_payloads(texts: list[str]) -> list[Any]:
    """JSON texts (as jsonb prints them) decoded, as :func:`~pgtide.codecs.decode_json` does
    one by one, in a single orjson call for the lot when that gives the same values (no
    integer of 19 digits or more, which orjson would read otherwise)."""
    if texts and not _LONG_DIGITS.search(joined := "[" + ",".join(texts) + "]"):
        with contextlib.suppress(ValueError):
            values = orjson.loads(joined)
            if len(values) == len(texts):
                return list(values)
    return [decode_json(t) for t in texts]


def check_name(name: object) -> str:
    """An event name: a non-empty string of at most 200 characters, no outer whitespace."""
    if not isinstance(name, str) or not _NAME.match(name) or "\x00" in name:
        raise ConfigError(
            f"bad event name {name!r}: use a non-empty string of at most 200 characters "
            "without leading or trailing whitespace or NUL characters"
        )
    return name


_PASS_ON = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
"""orjson leaves dates, times and dataclasses to ``default`` (which refuses them), as json."""


def _refuse(value: Any) -> Any:
    raise TypeError


def _dumps(value: Any) -> str:
    """``value`` as compact JSON text, as ``json.dumps(allow_nan=False, ensure_ascii=False)``
    writes it (numbers may be spelt otherwise: jsonb stores the same values). orjson does
    the common work ten times faster; json writes (or refuses) what orjson refuses and every
    text holding ``null`` (orjson writes NaN and the infinities as null, json refuses them)."""
    try:
        text: str | None = orjson.dumps(value, default=_refuse, option=_PASS_ON).decode()
    except TypeError:  # orjson.JSONEncodeError: a type, a key or an integer json may take
        text = None
    if text is None or "null" in text:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    return text


def to_json(value: Any, what: str) -> str:
    """Encode ``value`` as JSON text, or raise a clear :class:`EventPayloadError`."""
    try:
        text = _dumps(value)
    except (TypeError, ValueError) as exc:
        raise EventPayloadError(
            f"{what} is not JSON-serialisable ({exc}); pass dicts, lists, strings, numbers, "
            "booleans or None (convert dates, decimals and objects to strings or numbers first)"
        ) from None
    if "\\u0000" in text and (where := _nul_at(value, "")) is not None:
        raise EventPayloadError(
            f"{what} holds a NUL character (\\x00) in {where or 'the value'}: PostgreSQL's "
            "jsonb cannot store it; remove it, or encode binary data (e.g. base64) first"
        )
    return text


def encode_array(payloads: list[Any], name: str) -> str:
    """The payloads as one JSON array text, each encoded as :func:`to_json` does, in one
    encoder call for the lot; when that call fails, each one alone names the faulty one."""
    try:
        text: str | None = _dumps(payloads)
    except (TypeError, ValueError, RecursionError):
        text = None
    if text is None or "\\u0000" in text:
        items = [to_json(p, f"payload #{i} of event {name!r}") for i, p in enumerate(payloads)]
        text = "[" + ",".join(items) + "]"
    return text


def _nul_at(value: Any, path: str) -> str | None:
    """Where a NUL character is in ``value`` (a path such as ``['a'][2]``, keys included)."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and "\x00" in key:
                return f"the key {key!r}" + (f" in {path}" if path else "")
            found = _nul_at(item, f"{path}[{key!r}]")
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = _nul_at(item, f"{path}[{i}]")
            if found is not None:
                return found
    return None


def retry_delay(attempt: int, base: float, maximum: float) -> float:
    """Seconds to wait after failed attempt ``attempt``: exponential, with full jitter."""
    return backoff_delay(attempt - 1, base, maximum)
