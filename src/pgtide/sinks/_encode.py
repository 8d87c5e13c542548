"""The one JSON encoding of a change that every sink sends: exact numbers, typed values.

``numeric`` values (:class:`~decimal.Decimal`) become JSON numbers written digit for digit
(never rounded through float), datetimes ISO 8601, ``bytea`` base64, UUIDs and addresses
strings, intervals ISO 8601 durations. Values of any other type are sent as ``str(value)``.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import orjson
from orjson import Fragment

from .. import Change


def _duration(value: timedelta) -> str:
    """An interval as an ISO 8601 duration: ``P1DT2H3M4.5S``, ``-PT30S``."""
    sign = "-" if value < timedelta(0) else ""
    value = abs(value)
    seconds = value.seconds + value.microseconds / 1_000_000
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    text = f"{sign}P{value.days}D" if value.days else f"{sign}P"
    clock = ""
    if hours:
        clock += f"{int(hours)}H"
    if minutes:
        clock += f"{int(minutes)}M"
    if seconds or not (value.days or clock):
        clock += f"{seconds:f}".rstrip("0").rstrip(".") + "S"
    return text + ("T" + clock if clock else "")


def _default(value: Any) -> Any:
    if type(value) is Decimal or isinstance(value, Decimal):
        if value.is_finite():
            return Fragment(str(value))  # the exact digits, as a JSON number
        return str(value)  # NaN and Infinity are no JSON numbers
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, timedelta):
        return _duration(value)
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    if isinstance(value, int):  # an int beyond 64 bits (orjson's own range)
        return orjson.Fragment(str(value).encode())
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def _exact_ints(value: Any) -> Any:
    """The slow path: ints beyond 64 bits, which orjson refuses, as exact fragments."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        return orjson.Fragment(str(value).encode())
    if isinstance(value, dict):
        return {k: _exact_ints(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_exact_ints(v) for v in value]
    return value


def dumps(value: Any) -> bytes:
    """``value`` as compact JSON bytes, with pgtide's rules for typed values."""
    try:
        return orjson.dumps(value, default=_default)
    except orjson.JSONEncodeError:
        return orjson.dumps(_exact_ints(value), default=_default)


def change_key(change: Change) -> str:
    """The change's unique, stable place in the feed: ``"<xid>-<id>"`` (its transaction and
    its id in the change log). Sinks use it to recognise a change sent again."""
    return f"{change.xid}-{change.id}"


def record(change: Change, key: str | None = None) -> dict[str, Any]:
    """The change as the dict that sinks send (before encoding): ``key`` (its
    :func:`change_key`, unless given), ``id``, ``xid``, ``table``, ``op``, ``row``, ``old``,
    ``at``."""
    return {
        "key": change_key(change) if key is None else key,
        "id": change.id,
        "xid": change.xid,
        "table": change.table,
        "op": change.op,
        "row": change.row,
        "old": change.old,
        "at": change.at,
    }


def encode(
    change: Change, transform: Callable[[Change], Any] | None = None, *, raw: bool = True
) -> bytes | None:
    """The message body of ``change``: its :func:`record` as JSON, or what ``transform``
    returns (None means: send nothing). With ``raw``, bytes and str that ``transform``
    returns are sent as they are; without, they are JSON values too."""
    value = record(change) if transform is None else transform(change)
    if value is None:
        return None
    if raw and isinstance(value, bytes):
        return value
    if raw and isinstance(value, str):
        return value.encode()
    return dumps(value)
