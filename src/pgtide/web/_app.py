"""The ASGI app: console pages, live fragments, actions, metrics, health and browser streams."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlencode

import jinja2
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from .. import aio, events
from ..connect import DsnLike
from ..errors import InvalidChannel, InvalidName, InvalidPosition, PgtideError, UnknownTable
from ..feed.track import qualified, require_tracked
from ..names import TableName
from ..notify import check_channel
from . import _filters as filters
from . import _plots
from ._hub import Hub, scrub, scrubbed_traceback
from ._security import COOKIE, Guard
from ._streams import CONSUMER, ResumeToken, SharedReads, channel_stream, feed_stream, sse
from .metrics import ConsoleCollector

log = logging.getLogger("pgtide.web")

PAGES = ("overview", "listeners", "feed", "events", "event", "schedules", "ingest")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class Console:
    """Everything one app holds: the hub, the guard, the templates, the live streams."""

    def __init__(
        self,
        dsn: DsnLike,
        guard: Guard,
        expose: Iterable[str],
        interval: float,
    ) -> None:
        self.hub = Hub(dsn, interval=interval)
        self.guard = guard
        self.expose = [TableName.parse(t, what="exposed table") for t in expose]
        self.exposed: set[str] = set()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ConsoleCollector(self.hub))
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("pgtide.web", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.templates.filters["ago"] = _ago
        self.templates.filters["num"] = _num
        self.templates.filters["seconds"] = _seconds
        self._events: aio.Events | None = None
        self._started = False
        self._starting = asyncio.Lock()
        self.stopping = asyncio.Event()
        self._reads: SharedReads | None = None

    async def ready(self) -> None:
        """Start the hub on first use (a mounted app gets no lifespan of its own)."""
        if self._started:
            return
        async with self._starting:
            if self._started:
                return
            await self.hub.start()
            for name in self.expose:
                self.exposed.add(str(await self.hub.run(functools.partial(require_tracked, name))))
            self._events = aio.Events(dsn=self.hub.resolved)
            assert self.hub.resolved is not None
            self._reads = SharedReads(self.hub.resolved)
            self._started = True

    @property
    def reads(self) -> SharedReads:
        assert self._reads is not None
        return self._reads

    async def close(self) -> None:
        self.stopping.set()
        if self._reads is not None:
            await self._reads.close()
        if self._events is not None:
            await self._events.close()
        await self.hub.close()

    @property
    def events(self) -> aio.Events:
        assert self._events is not None
        return self._events

    def render(self, name: str, **context: Any) -> str:
        return self.templates.get_template(name).render(**context)


def _ago(value: Any) -> str:
    if not isinstance(value, datetime):
        return "" if value is None else str(value)
    seconds = (datetime.now(UTC) - value).total_seconds()
    return _seconds(seconds) + " ago"


def _seconds(value: Any) -> str:
    s = float(value or 0)
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _num(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


# -- pages --------------------------------------------------------------------------------------


def _page_params(request: Request) -> dict[str, str]:
    keep = ("state", "name", "id")
    return {k: v for k, v in request.query_params.items() if k in keep and v}


async def _context(console: Console, request: Request, page: str) -> dict[str, Any]:
    hub = console.hub
    s = hub.sample
    params = _page_params(request) if page != "event" else {}
    if page == "event":
        params = {"id": str(request.path_params.get("id", request.query_params.get("id", "")))}
    ctx: dict[str, Any] = {
        "page": page,
        "base": request.scope.get("root_path", ""),
        "s": s,
        "target": hub.resolved.target if hub.resolved else "",
        "csrf": console.guard.csrf,
        "read_only": console.guard.read_only,
        "has_token": console.guard.token is not None,
        "states": events.STATES,
        "stream": f"/sse/console?{urlencode({'page': page, **params})}",
        "history": list(hub.history),
        "plot": _plots.plot,
        "now": datetime.now(UTC),
    }
    points = ctx["history"]
    if page in ("overview", "feed"):
        ctx["throughput"] = [
            ("published/s", [(p.t, p.published) for p in points]),
            ("captured/s", [(p.t, p.captured) for p in points]),
            ("done/s", [(p.t, p.done) for p in points]),
        ]
        top = sorted(s.consumers, key=lambda c: -c["pending"])[:5]
        ctx["lag_changes"] = [
            (c["name"], [(p.t, p.lag_changes.get(c["name"], 0)) for p in points]) for c in top
        ]
        ctx["lag_seconds"] = [
            (c["name"], [(p.t, p.lag_seconds.get(c["name"], 0.0)) for p in points]) for c in top
        ]
    if page == "listeners" and hub.listener is not None:
        ctx["web_listener"] = hub.listener.status()
        ctx["notifications"] = hub.notifications
    if page == "events" and s.ok:
        state = params.get("state")
        if state not in events.STATES:
            state = None
        ctx["filter_state"], ctx["filter_name"] = state, params.get("name")
        ctx["recent"] = await console.events.recent(state=state, name=params.get("name"), limit=50)
    if page in ("events", "event") and s.ok:
        ctx["paused"] = set(await console.events.paused())
    if page == "schedules" and s.ok:
        ctx["schedules"] = await console.events.schedules()
    if page == "event":
        try:
            ctx["event"] = await console.events.get(int(params["id"]))
        except ValueError:
            ctx["event"] = None
        if ctx["event"] is None:
            raise HTTPException(404, f"no event with id {params['id']!r}")
    return ctx


def _fragment(console: Console, ctx: dict[str, Any]) -> str:
    return console.render(f"_{ctx['page']}.html", **ctx)


def page_route(page: str) -> Any:
    async def endpoint(request: Request) -> Response:
        console: Console = request.app.state.console
        await console.ready()
        ctx = await _context(console, request, page)
        ctx["fragment"] = _fragment(console, ctx)
        return HTMLResponse(console.render("page.html", **ctx))

    return endpoint


async def console_stream(request: Request) -> Response:
    """Live fragments for one page: ``update`` events with the page's new HTML."""
    console: Console = request.app.state.console
    await console.ready()
    page = request.query_params.get("page", "overview")
    if page not in PAGES:
        raise HTTPException(400, f"unknown page {page!r}")
    if page == "event":
        request.scope["path_params"] = {"id": request.query_params.get("id", "")}

    async def body() -> AsyncIterator[bytes]:
        yield b"retry: 1000\n\n"
        seen, sent = -1, ""
        while not console.stopping.is_set():
            seen = await console.hub.wait(seen, 15.0)
            if console.stopping.is_set():
                return
            try:
                html = _fragment(console, await _context(console, request, page))
            except HTTPException:
                return
            except (PgtideError, OSError) as exc:
                html = f'<p class="error">{scrub(str(exc), console.hub.resolved)}</p>'
            if html != sent:
                sent = html
                yield sse(html, event="update").encode()
            else:
                yield b": ping\n\n"

    return StreamingResponse(body(), media_type="text/event-stream", headers=SSE_HEADERS)


# -- actions ------------------------------------------------------------------------------------


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form's fields (the only kind the console's forms send)."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return {}
    body = (await request.body()).decode("utf-8", "replace")
    return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}


async def _checked_form(request: Request) -> dict[str, str]:
    console: Console = request.app.state.console
    values = await _form(request)
    if console.guard.read_only:
        raise HTTPException(403, "pgtide web runs --read-only: actions are refused")
    origin = request.headers.get("origin")
    if origin and origin.split("://", 1)[-1] != request.headers.get("host", ""):
        raise HTTPException(403, "cross-site request refused (Origin does not match Host)")
    if not console.guard.check_csrf(values.get("csrf") or request.headers.get("x-csrf-token")):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")
    return values


def _back(request: Request, values: dict[str, str], fallback: str) -> RedirectResponse:
    base = request.scope.get("root_path", "")
    target = values.get("next", "")
    if not target.startswith("/") or target.startswith("//"):
        target = fallback
    return RedirectResponse(base + target, status_code=303)


EventsAction = Callable[[aio.Events, Request, dict[str, str]], Awaitable[tuple[Any, str]]]


def action_route(act: EventsAction) -> Any:
    """A POST action: the form checked (CSRF, Origin, read-only), ``act`` run on the
    console's events, a new sample pushed to every page, then ``act``'s answer as JSON (with
    ``Accept: application/json``) or a redirect to the form's ``next`` path (or ``act``'s)."""

    async def endpoint(request: Request) -> Response:
        console: Console = request.app.state.console
        await console.ready()
        values = await _checked_form(request)
        answer, back = await act(console.events, request, values)
        await console.hub.refresh()
        if "application/json" in request.headers.get("accept", ""):
            return Response(json.dumps(answer), media_type="application/json")
        return _back(request, values, back)

    return endpoint


async def retry_event(
    events: aio.Events, request: Request, values: dict[str, str]
) -> tuple[Any, str]:
    """Run one finished, dead or cancelled event again (see :meth:`pgtide.Events.retry`)."""
    id_ = int(request.path_params["id"])
    ok = await events.retry(id_)
    if not ok:
        await _existing(events, id_)
    return {"ok": ok}, f"/events/{id_}"


async def cancel_event(
    events: aio.Events, request: Request, values: dict[str, str]
) -> tuple[Any, str]:
    """Cancel one event: pending, failed or waiting, it ends ``cancelled``; running, its handler is
    asked to stop (see :meth:`pgtide.Events.cancel`)."""
    id_ = int(request.path_params["id"])
    state = await events.cancel(id_)
    if state is None:
        await _existing(events, id_)
    return {"state": state}, f"/events/{id_}"


async def _existing(events: aio.Events, id_: int) -> None:
    """A 404 when there is no event ``id_`` (an action on it did nothing)."""
    if await events.get(id_) is None:
        raise HTTPException(404, f"no event with id {id_}")


def pausing(paused: bool) -> EventsAction:
    """Pause (or resume) the workers' claims of the events called the form's ``name``."""

    async def act(events: aio.Events, request: Request, values: dict[str, str]) -> tuple[Any, str]:
        name = values.get("name", "")
        if not name:
            raise HTTPException(400, "which event name? (the form's name field is empty)")
        await (events.pause if paused else events.resume)(name)
        return {"paused": paused}, "/events?" + urlencode({"name": name})

    return act


# -- login --------------------------------------------------------------------------------------


async def login(request: Request) -> Response:
    console: Console = request.app.state.console
    base = request.scope.get("root_path", "")
    if console.guard.token is None:
        return RedirectResponse(base + "/", status_code=303)
    error = ""
    target = request.query_params.get("next", base + "/")
    if request.method == "POST":
        form = await _form(request)
        target = str(form.get("next") or target)
        if console.guard.check_token(str(form.get("token", ""))):
            if not target.startswith("/") or target.startswith("//"):
                target = base + "/"
            response = RedirectResponse(target, status_code=303)
            response.set_cookie(
                COOKIE,
                console.guard.session,
                httponly=True,
                samesite="strict",
                path=base + "/" if base else "/",
                secure=request.url.scheme == "https",
            )
            return response
        error = "wrong token"
    html = console.render("login.html", base=base, next=target, error=error)
    return HTMLResponse(html, status_code=401 if error else 200)


async def logout(request: Request) -> Response:
    console: Console = request.app.state.console
    base = request.scope.get("root_path", "")
    form = await _form(request)
    if not console.guard.check_csrf(form.get("csrf", "")):
        raise HTTPException(403, "missing or wrong CSRF token")
    response = RedirectResponse(base + "/login", status_code=303)
    response.delete_cookie(COOKIE, path=base + "/" if base else "/")
    return response


# -- metrics and health -------------------------------------------------------------------------


async def metrics(request: Request) -> Response:
    console: Console = request.app.state.console
    await console.ready()
    return Response(generate_latest(console.registry), media_type=CONTENT_TYPE_LATEST)


async def healthz(request: Request) -> Response:
    console: Console = request.app.state.console
    try:
        await console.ready()
    except (PgtideError, OSError) as exc:
        return PlainTextResponse(scrub(str(exc), console.hub.resolved), status_code=503)
    ok, why = await console.hub.healthy()
    return PlainTextResponse(why, status_code=200 if ok else 503)


# -- browser streams ----------------------------------------------------------------------------


async def channel_sse(request: Request) -> Response:
    console: Console = request.app.state.console
    await console.ready()
    name = request.path_params["channel"]
    try:
        check_channel(name)
    except InvalidChannel as exc:
        raise HTTPException(400, str(exc)) from None
    body = channel_stream(console.hub, name, console.stopping)
    first = await anext(body)  # subscribed before the response starts
    return StreamingResponse(
        _prepend(first, body), media_type="text/event-stream", headers=SSE_HEADERS
    )


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk


async def feed_sse(request: Request) -> Response:
    console: Console = request.app.state.console
    await console.ready()
    consumer = request.path_params["consumer"]
    if not CONSUMER.match(consumer):
        raise HTTPException(
            400,
            "a consumer name is 1 to 100 letters, digits and _.:@- (starting with one of "
            "the first two)",
        )
    if not console.exposed:
        raise HTTPException(403, "no table is exposed: start pgtide web with --expose TABLE")
    asked = [t for v in request.query_params.getlist("tables") for t in v.split(",") if t.strip()]
    tables: list[str] = []
    for text in asked or sorted(console.exposed):
        try:
            name = TableName.parse(text.strip())
            full = str(await console.hub.run(functools.partial(qualified, name)))
        except InvalidName as exc:
            raise HTTPException(400, str(exc)) from None
        except UnknownTable:
            full = ""
        if full not in console.exposed:
            raise HTTPException(403, f"table {text.strip()!r} is not exposed")
        tables.append(full)
    start = request.query_params.get("start", "saved")
    if start not in ("saved", "end", "beginning"):
        raise HTTPException(400, "start is saved, end or beginning")
    last = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    try:
        resume = ResumeToken.parse(last) if last else None
    except InvalidPosition as exc:
        raise HTTPException(400, f"bad Last-Event-ID: {exc}") from None
    try:
        wanted = filters.parse(request.query_params.getlist("where"))
    except filters.FilterError as exc:
        raise HTTPException(400, str(exc)) from None
    assert console.hub.resolved is not None
    body = feed_stream(
        console.hub,
        console.reads,
        consumer,
        tables,
        resume,
        start,
        console.stopping,
        wanted=wanted,
    )
    return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)


# -- errors -------------------------------------------------------------------------------------


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    console: Console = request.app.state.console
    detail = scrub(str(exc.detail), console.hub.resolved)
    if "text/html" in request.headers.get("accept", ""):
        html = console.render(
            "error.html",
            base=request.scope.get("root_path", ""),
            status=exc.status_code,
            detail=detail,
        )
        return HTMLResponse(html, status_code=exc.status_code)
    return PlainTextResponse(detail, status_code=exc.status_code)


async def _pgtide_error(request: Request, exc: Exception) -> Response:
    status = 404 if isinstance(exc, UnknownTable) else 400 if isinstance(exc, ValueError) else 503
    return await _http_error(request, HTTPException(status, str(exc)))


async def _server_error(request: Request, exc: Exception) -> Response:
    console: Console = request.app.state.console
    log.error(
        "pgtide web: %s %s failed\n%s",
        request.method,
        request.url.path,
        scrubbed_traceback(exc, console.hub.resolved),
    )
    return await _http_error(
        request, HTTPException(500, f"internal error ({type(exc).__name__}); see the server log")
    )


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
    guard = Guard(token, read_only)
    console = Console(dsn, guard, expose, interval)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            await console.ready()
        except PgtideError as exc:
            log.error("pgtide web: %s", scrub(str(exc), console.hub.resolved))
        try:
            yield
        finally:
            await console.close()

    routes = [
        Route("/", page_route("overview")),
        Route("/listeners", page_route("listeners")),
        Route("/feed", page_route("feed")),
        Route("/events", page_route("events")),
        Route("/events/{id:int}", page_route("event")),
        Route("/events/{id:int}/retry", action_route(retry_event), methods=["POST"]),
        Route("/events/{id:int}/cancel", action_route(cancel_event), methods=["POST"]),
        Route("/events/pause", action_route(pausing(True)), methods=["POST"]),
        Route("/events/resume", action_route(pausing(False)), methods=["POST"]),
        Route("/schedules", page_route("schedules")),
        Route("/ingest", page_route("ingest")),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/metrics", metrics),
        Route("/healthz", healthz),
        Route("/sse/console", console_stream),
        Route("/sse/channels/{channel:path}", channel_sse),
        Route("/sse/feed/{consumer:path}", feed_sse),
        Mount("/static", StaticFiles(packages=[("pgtide.web", "static")]), name="static"),
    ]

    def guarded(app: ASGIApp) -> ASGIApp:
        return guard.middleware(app)

    application = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(guarded)],
        exception_handlers={
            HTTPException: _http_error,
            PgtideError: _pgtide_error,
            Exception: _server_error,
        },
    )
    application.state.console = console
    return application
