"""Sinks: carry the change feed to NATS JetStream, Redis Streams and webhooks.

A sink is a callable that ``pgtide.Feed.run`` takes: it delivers a batch and returns, and
the feed then acknowledges the batch. A crash before the acknowledgement sends the batch
again, and each sink makes that repeat invisible (JetStream's ``Nats-Msg-Id`` duplicate
window; a Redis delivery record written with the entries; an ``Idempotency-Key`` for
webhooks)::

    from pgtide import sinks
    pgtide.Feed("search", ["orders"]).run(sinks.nats("nats://127.0.0.1:4222"))

The broker clients are the ``sinks`` extra: ``pip install 'pgtide[sinks]'``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._base import (
    BatchLike,
    BrokerUnreachable,
    Message,
    Messages,
    Sink,
    SinkError,
    SinkStopped,
    mask_url,
)
from ._encode import change_key, dumps, encode, record

if TYPE_CHECKING:
    from ._nats import NatsSink
    from ._redis import RedisSink
    from ._webhook import WebhookSink

__all__ = [
    "BatchLike",
    "BrokerUnreachable",
    "Message",
    "Messages",
    "Sink",
    "SinkError",
    "SinkStopped",
    "change_key",
    "dumps",
    "encode",
    "mask_url",
    "nats",
    "record",
    "redis",
    "webhook",
]


def _missing(what: str, exc: ImportError) -> SinkError:
    return SinkError(f"the {what} sink needs {exc.name}: pip install 'pgtide[sinks]'")


def nats(
    url: str = "nats://127.0.0.1:4222",
    subject: str = "pg.{table}.{op}",
    stream: str | None = None,
    **options: Any,
) -> NatsSink:
    """Publish each change to NATS JetStream on ``subject`` (a template of ``{table}``,
    ``{schema}``, ``{name}``, ``{op}``, ``{key}``), with ``Nats-Msg-Id`` = its key, and
    return once JetStream acknowledged every message. ``stream``: the stream that must take
    them (checked at connect); ``create_stream=True`` creates it (with ``subjects`` and
    ``duplicate_window`` seconds). Options: ``timeout``, ``tables``, ``ops``, ``where``,
    ``transform``, ``key``, ``backoff_max``."""
    try:
        from ._nats import NatsSink
    except ImportError as exc:
        raise _missing("NATS", exc) from None
    return NatsSink(url, subject, stream, **options)


def redis(
    url: str = "redis://127.0.0.1:6379",
    stream: str = "pg:{table}",
    maxlen: int | None = None,
    **options: Any,
) -> RedisSink:
    """Add each change to a Redis stream (``XADD stream <id> change <json>``) with explicit,
    increasing entry ids, a batch per atomic call that also records what was delivered
    (in the hash ``state_key``), so a batch sent again adds nothing twice. ``maxlen`` trims
    each stream to about that many entries. Options: ``state_key``, ``timeout``,
    ``tables``, ``ops``, ``where``, ``transform``, ``key``, ``backoff_max``."""
    try:
        from ._redis import RedisSink
    except ImportError as exc:
        raise _missing("Redis", exc) from None
    return RedisSink(url, stream, maxlen, **options)


def webhook(url: str, secret: str | bytes | None = None, **options: Any) -> WebhookSink:
    """POST each batch as JSON to ``url`` with an ``Idempotency-Key`` and, with a
    ``secret``, a ``Pgtide-Signature`` (HMAC-SHA256); retry ``retries`` times (5) with
    backoff on network errors, 5xx, 408, 425 and 429, then fail (the batch stays
    unacknowledged). Options: ``timeout``, ``headers``, ``tables``, ``ops``, ``where``,
    ``transform``, ``key``, ``backoff_max``."""
    try:
        from ._webhook import WebhookSink
    except ImportError as exc:
        raise _missing("webhook", exc) from None
    return WebhookSink(url, secret, **options)
