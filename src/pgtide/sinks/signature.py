"""The ``Pgtide-Signature`` of webhook requests: HMAC-SHA256 with the secret over
``"<t>." + body``, sent as ``t=<unix seconds>,v1=<hex>``. Receivers call :func:`verify`."""

from __future__ import annotations

import hashlib
import hmac
import time


def sign(secret: str | bytes, body: bytes, timestamp: int) -> str:
    """The ``Pgtide-Signature`` header value of ``body`` sent at ``timestamp``."""
    key = secret.encode() if isinstance(secret, str) else secret
    mac = hmac.new(key, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str | bytes, body: bytes, header: str, tolerance: float | None = 300.0) -> bool:
    """Whether ``header`` (``Pgtide-Signature``) signs ``body`` with ``secret`` (and, with a
    ``tolerance``, was made within that many seconds of now)."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if tolerance is not None and abs(time.time() - timestamp) > tolerance:
        return False
    return hmac.compare_digest(
        sign(secret, body, timestamp), f"t={timestamp},v1={fields.get('v1', '')}"
    )
