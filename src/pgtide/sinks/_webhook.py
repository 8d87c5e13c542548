"""Webhooks: one signed POST per batch, with an idempotency key from the batch's positions.

The body is ``{"start": ..., "end": ..., "changes": [...]}``. Headers: ``Idempotency-Key``
(the same on every retry of a batch), and ``Pgtide-Signature: t=<unix seconds>,v1=<hex>``,
where ``v1`` is HMAC-SHA256 with the secret over ``"<t>." + body``.
"""

from __future__ import annotations

import hashlib
import time
from typing import ClassVar, Unpack

import httpx

from .. import Change
from ..errors import ConfigError
from ._base import BatchLike, Messages, Sink, SinkError, SinkOptions, check_url, mask_url
from ._encode import dumps
from .signature import sign

SCHEMES = ("http", "https")
SIGNATURE = "Pgtide-Signature"
IDEMPOTENCY = "Idempotency-Key"
RETRY_STATUS = frozenset({408, 425, 429})


class WebhookRefused(Exception):
    """An answer worth retrying (5xx, 408, 425, 429)."""


def idempotency_key(batch: BatchLike) -> str:
    """The key of a batch: the same for every retry of it, different for another batch."""
    digest = hashlib.sha256(f"{batch.start}|{batch.position}".encode()).hexdigest()
    return f"pgtide-{digest[:40]}"


class WebhookSink(Sink):
    """POSTs each batch as JSON and returns once the endpoint answered 2xx."""

    kind: ClassVar[str] = "webhook"
    _raw_bodies: ClassVar[bool] = False
    _outages: ClassVar[tuple[type[BaseException], ...]] = (
        *Sink._outages,
        httpx.TransportError,
        WebhookRefused,
    )

    def __init__(
        self,
        url: str,
        secret: str | bytes | None = None,
        *,
        timeout: float = 10.0,
        retries: int = 5,
        headers: dict[str, str] | None = None,
        **options: Unpack[SinkOptions],
    ) -> None:
        if not isinstance(retries, int) or retries < 0:
            raise ConfigError(f"retries must be a number >= 0, not {retries!r}")
        options.setdefault("backoff_max", 30.0)  # an endpoint may well be slow to come back
        super().__init__(
            check_url(url, SCHEMES, "the webhook sink"), attempts=retries + 1, **options
        )
        if timeout <= 0:
            raise ConfigError(f"timeout must be > 0 seconds, not {timeout}")
        if secret is not None and not secret:
            raise ConfigError("secret must not be empty (leave it out to send unsigned)")
        self._secret = secret
        self._timeout = timeout
        self._headers = dict(headers or {})
        self._client: httpx.AsyncClient | None = None

    def _destination(self, change: Change, key: str | None) -> str:
        return "" if key is None else key

    def _secrets(self) -> tuple[str, ...]:
        secret = self._secret
        text = secret.decode(errors="replace") if isinstance(secret, bytes) else secret
        return (*super()._secrets(), *((text,) if text else ()))

    async def _connect(self) -> None:
        self._client = httpx.AsyncClient(timeout=self._timeout, follow_redirects=False)

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def body(self, batch: BatchLike, messages: Messages) -> bytes:
        """The POST body of ``batch``: its start and end positions and its changes."""
        head = dumps({"start": str(batch.start), "end": str(batch.position)})[:-1]
        return head + b',"changes":[' + b",".join(messages.bodies) + b"]}"

    async def _deliver(self, batch: BatchLike, messages: Messages) -> None:
        client = self._client
        assert client is not None
        body = self.body(batch, messages)
        headers = {
            **self._headers,
            "Content-Type": "application/json",
            IDEMPOTENCY: idempotency_key(batch),
        }
        if self._secret is not None:
            headers[SIGNATURE] = sign(self._secret, body, int(time.time()))
        answer = await client.post(self.url, content=body, headers=headers)
        status = answer.status_code
        if 200 <= status < 300:
            self.counts.delivered += len(messages)
            return
        if status >= 500 or status in RETRY_STATUS:
            raise WebhookRefused(f"answered HTTP {status}")
        raise SinkError(
            f"webhook {mask_url(self.url)} answered HTTP {status} "
            f"({answer.text[:200].strip()!r}); the batch stays unacknowledged"
        )

    def _describe(self) -> str:
        return f"signed={self._secret is not None}"
