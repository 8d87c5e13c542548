"""Payload codecs: how the text of a NOTIFY becomes a Python value, and how a value is sent.

A codec is named (``"json"``, ``"text"``, ``"literal"``) or is any callable that takes the raw
text and returns a value. :func:`decoder` turns it into the function the receive loop calls.
A decoder may raise: the listener then hands subscribers the raw text with the error noted on
the :class:`~pgtide.Notification`, and goes on (a bad payload never stops a listener).
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable, Iterable
from typing import Any, Literal, TypeAlias

import orjson

from .errors import ConfigError, InvalidPayload

CodecName: TypeAlias = Literal["json", "text", "literal"]
Decoder: TypeAlias = Callable[[str], Any]
Codec: TypeAlias = CodecName | Decoder

_json_decode = json.JSONDecoder().decode
_fast_decode = orjson.loads
_DIGITS = bytes(0x30 if 0x30 <= i <= 0x39 else 0x20 for i in range(256))
"""A ``bytes.translate`` table: each ASCII digit to ``0``, any other byte to a space."""
_LONG_RUN = b"0" * 19
"""19 digits in a row: the shortest integer orjson may read beyond 64 bits (as a float)."""


def decode_json(raw: str) -> Any:
    """JSON when the text parses as JSON, the text itself otherwise (never raises).

    The value is exactly the one the standard ``json`` module gives. orjson does the common
    work several times faster; ``json`` reads what orjson refuses or reads otherwise: ``NaN``,
    ``Infinity``, numbers too large for a float, lone surrogate escapes, and integers beyond
    64 bits (which orjson turns into floats).
    """
    if len(raw) < 19 or not _long_digit_run(raw.encode()):
        return _decode_json_short(raw)
    return _decode_json_exactly(raw)


def _decode_json_short(raw: str) -> Any:
    """:func:`decode_json` for a text known to hold no run of 19 digits."""
    try:
        return _fast_decode(raw)
    except ValueError:
        return _decode_json_exactly(raw)


def _decode_json_exactly(raw: str) -> Any:
    try:
        return _json_decode(raw)
    except (ValueError, RecursionError):
        return raw


def _long_digit_run(data: bytes) -> bool:
    """Whether ``data`` holds 19 ASCII digits in a row (in any ASCII-compatible encoding)."""
    return data.translate(_DIGITS).find(_LONG_RUN) >= 0


def for_batch(
    decode: Decoder | None, payloads: Iterable[bytes]
) -> tuple[Decoder | None, Decoder | None]:
    """The decoder for a batch of payloads, and its rescue (a decoder that never raises).

    When the batch decoder raises, the rescue gives the value; without a rescue, the payload
    reaches subscribers as text with the error noted. ``payloads`` are the raw bytes of the
    batch, in the connection's encoding (read only for the json codec): :func:`decode_json`
    checks each text for an integer that orjson would read as a float, and this checks the
    whole batch at once instead, so that such a batch decodes by orjson alone, with the exact
    path of :func:`decode_json` as the rescue for what orjson refuses.
    """
    if decode is decode_json and not _long_digit_run(b" ".join(payloads)):
        return _fast_decode, _decode_json_exactly
    return decode, None


def decode_literal(raw: str) -> Any:
    """A Python literal (str, number, tuple, list, dict, set, bool, None), safely.

    Raises ``ValueError`` or ``SyntaxError`` for anything else, for example plain text, JSON's
    ``true``/``null`` or an empty payload; the listener then delivers the raw text.
    """
    return ast.literal_eval(raw)


_NAMED: dict[str, Decoder | None] = {
    "json": decode_json,
    "text": None,
    "literal": decode_literal,
}


def decoder(codec: Codec) -> Decoder | None:
    """The decoding function for ``codec``; ``None`` means "the raw text as it is"."""
    if callable(codec):
        return codec
    if isinstance(codec, str) and codec in _NAMED:
        return _NAMED[codec]
    raise ConfigError(
        f"unknown codec {codec!r}; use 'json', 'text', 'literal' or a function of one str"
    )


def encode(payload: Any) -> str:
    """The text to send for ``payload``: a str as it is, anything else as compact JSON."""
    if isinstance(payload, str):
        return payload
    try:
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidPayload(
            f"cannot encode a payload of type {type(payload).__name__} as JSON ({exc}); "
            "pass a str or a JSON-serialisable value"
        ) from None
