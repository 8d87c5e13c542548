"""Who may use the console: localhost only without a token; a bearer token or a login cookie
with one; CSRF tokens on every action; nothing but reads in read-only mode.

The guard is plain ASGI middleware (no buffering, so server-sent events stream through it).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import quote

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

COOKIE = "pgtide_session"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
OPEN_PATHS = ("/login", "/static/", "/healthz")
"""Served without a token: the login form, its assets, and the health check (no data)."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine only."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Guard:
    """The console's security settings and checks (one per app)."""

    def __init__(self, token: str | None, read_only: bool) -> None:
        if token is not None and not token.strip():
            raise ValueError("an empty --token protects nothing; give a long random string")
        self.token = token
        self.read_only = read_only
        key = token.encode() if token else secrets.token_bytes(32)
        self._key = hashlib.sha256(b"pgtide web:" + key).digest()
        self.session = self._sign("session")
        self.csrf = self._sign("csrf")

    def _sign(self, what: str) -> str:
        return hmac.new(self._key, what.encode(), hashlib.sha256).hexdigest()

    def check_token(self, given: str | None) -> bool:
        return bool(self.token and given and hmac.compare_digest(given, self.token))

    def check_csrf(self, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(str(given), self.csrf)

    def allowed(self, scope: Scope) -> tuple[bool, str]:
        """Whether a request may go on; why not."""
        headers = _headers(scope)
        if self.token is None:
            client = scope.get("client") or ("", 0)
            host = _hostname(headers.get("host", ""))
            if not is_loopback(str(client[0])) or (host and host not in LOOPBACK_NAMES):
                return False, (
                    "pgtide web serves this machine only without a token: start it with "
                    "--token (or app(token=...)) to serve other hosts"
                )
            return True, ""
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer ") and self.check_token(auth[7:].strip()):
            return True, ""
        cookie = _cookies(headers.get("cookie", "")).get(COOKIE)
        if cookie and hmac.compare_digest(cookie, self.session):
            return True, ""
        return False, "a token is needed: log in, or send Authorization: Bearer <token>"

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """``app`` behind the guard."""

        async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            path = _local_path(scope)
            ok, why = self.allowed(scope)
            if ok or (self.token is not None and path.startswith(OPEN_PATHS)):
                await app(scope, receive, send)
                return
            headers = _headers(scope)
            wants_page = "text/html" in headers.get("accept", "")
            if self.token is not None and wants_page and scope["method"] == "GET":
                root = scope.get("root_path", "")
                target = f"{root}/login?next={quote(root + path)}"
                await _respond(send, 303, b"", [(b"location", target.encode())])
                return
            status = 401 if self.token is not None else 403
            extra = [(b"www-authenticate", b"Bearer")] if status == 401 else []
            await _respond(send, status, why.encode(), extra)

        return guarded


def _hostname(header: str) -> str:
    """The host of a Host header, without its port (``[::1]:8484`` gives ``[::1]``)."""
    if header.startswith("["):
        return header.split("]")[0] + "]"
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _local_path(scope: Scope) -> str:
    path = str(scope.get("path", "/"))
    root = str(scope.get("root_path", ""))
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _cookies(header: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep:
            found[name] = value
    return found


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain; charset=utf-8"), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})
