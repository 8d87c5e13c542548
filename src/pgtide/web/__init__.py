"""``pgtide web``: a live console, Prometheus metrics and browser streams, as one ASGI app.

:func:`app` returns a Starlette application (mount it in FastAPI or Starlette, or run it with
any ASGI server); ``pgtide web`` serves it with uvicorn. Needs the ``web`` extra:
``pip install 'pgtide[web]'``.
"""

from __future__ import annotations

from ._app import Console, app
from ._security import is_loopback

__all__ = ["Console", "app", "is_loopback"]
