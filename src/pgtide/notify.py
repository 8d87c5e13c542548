"""Publishing NOTIFY messages, with the payload checked before anything is sent.

``notify`` sends one message (inside the caller's transaction when ``conn`` is given);
``notify_many`` sends many in one round trip and one transaction. PostgreSQL delivers a
NOTIFY when its transaction commits, and folds identical (channel, payload) pairs sent in one
transaction into one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg

from ._compat import now_keyword_only
from .codecs import encode
from .connect import DsnLike
from .errors import InvalidChannel, InvalidPayload, PayloadTooLarge
from .session import ausing, using

MAX_PAYLOAD_BYTES = 8000
"""PostgreSQL refuses a payload of this many bytes or more."""

MAX_CHANNEL_BYTES = 63
"""The longest identifier PostgreSQL keeps (NAMEDATALEN - 1); longer names are truncated."""

SQL_NOTIFY = "SELECT pg_notify(%s, %s)"
SQL_NOTIFY_MANY = (
    "SELECT pg_notify(m.channel, m.payload)"
    " FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS m(channel, payload, n)"
    " ORDER BY m.n"
)


def check_channel(channel: str) -> str:
    """Return ``channel`` if PostgreSQL can hold it as is, else raise :class:`InvalidChannel`."""
    if not isinstance(channel, str) or not channel:
        raise InvalidChannel(f"channel name must be a non-empty str, got {channel!r}")
    if "\x00" in channel:
        raise InvalidChannel(f"channel name {channel!r} holds a NUL character; remove it")
    size = len(channel.encode("utf-8"))
    if size > MAX_CHANNEL_BYTES:
        raise InvalidChannel(
            f"channel name {channel[:20]!r}... is {size} bytes; PostgreSQL keeps at most "
            f"{MAX_CHANNEL_BYTES} bytes of a name, so use a shorter one"
        )
    return channel


def prepare(channel: str, payload: Any) -> tuple[str, str]:
    """Check the channel and encode the payload; raise before anything is sent."""
    check_channel(channel)
    text = encode(payload)
    size = len(text.encode("utf-8", "surrogatepass"))
    if size >= MAX_PAYLOAD_BYTES:
        raise PayloadTooLarge(
            f"NOTIFY payload on channel {channel!r} is {size} bytes, over the limit: PostgreSQL "
            f"takes payloads under {MAX_PAYLOAD_BYTES} bytes; send a key and fetch the row instead"
        )
    if "\x00" in text:
        raise InvalidPayload(f"NOTIFY payload on channel {channel!r} holds a NUL character")
    return channel, text


def _prepare_many(messages: Iterable[tuple[str, Any]]) -> tuple[list[str], list[str]]:
    channels: list[str] = []
    texts: list[str] = []
    for channel, payload in messages:
        ch, text = prepare(channel, payload)
        channels.append(ch)
        texts.append(text)
    return channels, texts


@now_keyword_only(2, "dsn", "conn")
def notify(
    channel: str,
    payload: Any = "",
    *,
    dsn: DsnLike = None,
    conn: psycopg.Connection[Any] | None = None,
) -> None:
    """Send one NOTIFY; non-str payloads are sent as JSON.

    With ``conn`` the message joins the caller's transaction (it is delivered when that commits);
    otherwise a connection to ``dsn`` (resolved as everywhere in pgtide when None) is opened
    for it.
    """
    params = prepare(channel, payload)
    with using(dsn, conn) as c:
        c.execute(SQL_NOTIFY, params)


@now_keyword_only(1, "dsn", "conn")
def notify_many(
    messages: Iterable[tuple[str, Any]],
    *,
    dsn: DsnLike = None,
    conn: psycopg.Connection[Any] | None = None,
) -> int:
    """Send many ``(channel, payload)`` messages in one statement; return how many.

    Every message is checked before any is sent. They share one transaction (the caller's with
    ``conn``), so they are delivered together, in order, when it commits.
    """
    channels, texts = _prepare_many(messages)
    if not channels:
        return 0
    with using(dsn, conn) as c:
        c.execute(SQL_NOTIFY_MANY, (channels, texts))
    return len(channels)


async def anotify(
    channel: str,
    payload: Any = "",
    *,
    dsn: DsnLike = None,
    conn: psycopg.AsyncConnection[Any] | None = None,
) -> None:
    """The asyncio face of :func:`notify` (``pgtide.aio.notify``)."""
    params = prepare(channel, payload)
    async with ausing(dsn, conn) as c:
        await c.execute(SQL_NOTIFY, params)


async def anotify_many(
    messages: Iterable[tuple[str, Any]],
    *,
    dsn: DsnLike = None,
    conn: psycopg.AsyncConnection[Any] | None = None,
) -> int:
    """The asyncio face of :func:`notify_many` (``pgtide.aio.notify_many``)."""
    channels, texts = _prepare_many(messages)
    if not channels:
        return 0
    async with ausing(dsn, conn) as c:
        await c.execute(SQL_NOTIFY_MANY, (channels, texts))
    return len(channels)
