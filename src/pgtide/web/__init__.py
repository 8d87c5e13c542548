"""``pgtide web``: a live console, Prometheus metrics and browser streams, as one ASGI app.

:func:`app` returns a Starlette application (mount it in FastAPI or Starlette, or run it with
any ASGI server); ``pgtide web`` serves it with uvicorn. Needs the ``web`` extra:
``pip install 'pgtide[web]'``.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.applications import Starlette

from ..connect import DsnLike
from ._app import Console
from ._app import build as _build

__all__ = ["Console", "app"]


def app(
    dsn: DsnLike = None,
    token: str | None = None,
    read_only: bool = False,
    expose: Iterable[str] = (),
    *,
    interval: float = 1.0,
) -> Starlette:
    """The console as an ASGI app.

    ``dsn``: the database (section "Where the database is" of the docs when None).
    ``token``: without one, only this machine is served (client and Host header on
    loopback); with one, every page, stream and ``/metrics`` need ``Authorization: Bearer
    <token>`` or the cookie the login form sets (``/healthz`` stays open).
    ``read_only``: refuse every action (retry...). ``expose``: the tracked tables whose
    changes ``/sse/feed/{consumer}`` may stream (none by default). ``interval``: seconds
    between samples when no NOTIFY arrives (the console and ``/metrics`` read the newest).

    Mounted in another app, the console starts on its first request; its state is
    ``app.state.console`` (``await app.state.console.close()`` stops it).
    """
    return _build(dsn, token, read_only, expose, interval=interval)
