"""``pgtide web``: the console, ``/metrics`` and browser streams, served by uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from typing import Annotated, Any

import typer

from ..connect import resolve
from ..errors import ConfigError
from ._common import DsnOption, err_console

TOKEN_VARIABLE = "PGTIDE_WEB_TOKEN"


def web(
    host: Annotated[
        str, typer.Option("--host", help="Address to bind; anything but localhost needs --token.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8484,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            help=f"Require this bearer token (or a login); also read from {TOKEN_VARIABLE}.",
            show_default=False,
        ),
    ] = None,
    read_only: Annotated[
        bool, typer.Option("--read-only", help="Refuse every action (retry, ...).")
    ] = False,
    expose: Annotated[
        list[str] | None,
        typer.Option(
            "--expose",
            help="A tracked table whose changes /sse/feed may stream (repeat for more).",
            metavar="TABLE",
            show_default=False,
        ),
    ] = None,
    dsn: DsnOption = None,
) -> None:
    """Serve the web console, Prometheus `/metrics` and browser streams; SIGTERM stops it.

    Pages: overview, listeners, feed consumers and their lag, events (retry, cancel, pause,
    resume), schedules, ingest. Live over server-sent events fed by pgtide's own LISTEN.
    `GET /sse/channels/CHANNEL` relays NOTIFY; `GET /sse/feed/CONSUMER?tables=...` streams
    the changes of `--expose`d tables and resumes after `Last-Event-ID`.
    """
    try:
        import uvicorn

        from ..web import app as make_app
        from ..web import is_loopback
    except ImportError as exc:  # pragma: no cover - the extra is part of the install
        raise ConfigError(
            f"pgtide web needs the web extra ({exc.name} is missing): pip install 'pgtide[web]'"
        ) from None
    token = token or os.environ.get(TOKEN_VARIABLE) or None
    if not is_loopback(host) and token is None:
        raise ConfigError(
            f"--host {host} serves other machines: give --token (or {TOKEN_VARIABLE}) so that "
            "only people with it see the console"
        )
    chosen = resolve(dsn)
    application = make_app(chosen, token=token, read_only=read_only, expose=expose or ())
    config = uvicorn.Config(
        application,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
        lifespan="on",
    )
    server = _Server(config, application.state.console)
    shown = f"[{host}]" if ":" in host else host
    err_console.print(
        f"pgtide web on http://{shown}:{port}/ for {chosen.target}"
        + (" (read-only)" if read_only else "")
        + "; Ctrl-C or SIGTERM stops",
        highlight=False,
    )
    asyncio.run(server.serve())
    if server.failed:
        sys.exit(1)


class _Server:
    """uvicorn's server, ending the live streams first when told to stop (so that a SIGTERM
    does not wait for browsers to hang up)."""

    def __init__(self, config: Any, console: Any) -> None:
        import uvicorn

        console_ = console

        class Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: Any) -> None:
                with contextlib.suppress(RuntimeError):  # no loop yet: nothing streams
                    asyncio.get_running_loop().call_soon_threadsafe(console_.stopping.set)
                super().handle_exit(sig, frame)
                self._captured_signals.clear()  # stopped gracefully: exit 0, as every command

        self._server = Server(config)
        self.failed = False

    async def serve(self) -> None:
        await self._server.serve()
        self.failed = not self._server.started
