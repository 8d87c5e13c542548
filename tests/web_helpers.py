"""Helpers for the web console's tests: an in-process client, and SSE parsing."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette

import pgtide.web

LOCAL = ("127.0.0.1", 51234)

LIVE = 30.0
"""Seconds a test waits for the console to show a change. Usually well under one: the hub
samples at once when a NOTIFY arrives, but spaces its samples by 20 times their cost, and on a
loaded machine a sample that takes 0.5 s puts the next one 10 s away."""


@contextlib.asynccontextmanager
async def web_client(
    dsn: str, *, client: tuple[str, int] = LOCAL, host: str = "127.0.0.1:8484", **options: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking to ``pgtide.web.app(dsn, **options)`` in this process."""
    application = pgtide.web.app(dsn, **options)
    transport = httpx.ASGITransport(app=application, client=client)
    async with httpx.AsyncClient(
        transport=transport, base_url=f"http://{host}", timeout=10.0
    ) as http:
        try:
            yield http
        finally:
            await application.state.console.close()


@contextlib.asynccontextmanager
async def served(application: Starlette) -> AsyncIterator[str]:
    """``application`` served by uvicorn on a free local port, in this loop; its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        application, log_level="warning", lifespan="on", timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await until(lambda: server.started or task.done(), what="uvicorn started")
        if task.done():
            task.result()
        yield f"http://127.0.0.1:{port}"
    finally:
        application.state.console.stopping.set()
        server.should_exit = True
        await task
        sock.close()


@contextlib.asynccontextmanager
async def live_console(
    dsn: str, **options: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, pgtide.web.Console]]:
    """An httpx client on ``pgtide.web.app(dsn, **options)`` served by uvicorn (streams
    arrive as they are written, as in a browser), and the app's console."""
    application = pgtide.web.app(dsn, **options)
    async with (
        served(application) as base,
        httpx.AsyncClient(base_url=base, timeout=10.0) as http,
    ):
        yield http, application.state.console


@contextlib.asynccontextmanager
async def live_client(dsn: str, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    """As :func:`live_console`, the client alone."""
    async with live_console(dsn, **options) as (http, _console):
        yield http


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf-token" content="([0-9a-f]+)"', html)
    assert found, "no CSRF token in the page"
    return found[1]


class SseEvent:
    def __init__(self, event: str, data: str, id: str | None) -> None:
        self.event, self.data, self.id = event, data, id

    def __repr__(self) -> str:
        return f"SseEvent({self.event!r}, {self.data[:40]!r}, id={self.id!r})"


async def next_update(
    chunks: AsyncIterator[str], parser: SseParser, text: str, timeout: float = LIVE
) -> str:
    """The data of the next ``update`` event that holds ``text`` (earlier events are read
    and passed over; later ones parsed from the same chunk wait for the next call)."""
    async with asyncio.timeout(timeout):
        while True:
            while parser.ready:
                event = parser.ready.pop(0)
                if event.event == "update" and text in event.data:
                    return event.data
            parser.ready.extend(parser.feed(await anext(chunks)))


class SseParser:
    """Server-sent events from chunks of text, as a browser parses them."""

    def __init__(self) -> None:
        self._buffer = ""
        self.last_id: str | None = None
        self.ready: list[SseEvent] = []  # parsed, not yet consumed (see next_update)

    def feed(self, text: str) -> list[SseEvent]:
        self._buffer += text
        out: list[SseEvent] = []
        while "\n\n" in self._buffer:
            block, self._buffer = self._buffer.split("\n\n", 1)
            event, data, id_ = "message", [], None
            for line in block.split("\n"):
                if line.startswith(":") or not line:
                    continue
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "event":
                    event = value
                elif field == "data":
                    data.append(value)
                elif field == "id":
                    id_ = value
            if id_ is not None:
                self.last_id = id_
            if data:
                out.append(SseEvent(event, "\n".join(data), id_))
        return out


async def until(check: Callable[[], Any], timeout: float = LIVE, what: str = "") -> Any:
    """Await ``check()`` (plain or async) until it is truthy; its value."""
    async with asyncio.timeout(timeout):
        while True:
            value = check()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value
            await asyncio.sleep(0.02)
