"""OpenTelemetry for events: a publish span whose context travels with the event, and a
process span around each handler run, its child.

Tracing is on when ``opentelemetry-api`` is installed (``pgtide[otel]``) and the program has
set a tracer provider (an SDK's); otherwise nothing here runs, and events cost what they
did. The context goes in the event's ``trace`` column as the propagator's carrier (W3C
``traceparent`` by default), so a worker on another machine continues the trace.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson

from ._model import Event, Handler, HandlerSpec

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import ProxyTracerProvider, SpanKind
except ImportError:  # pragma: no cover - pgtide[otel] not installed
    trace = None  # type: ignore[assignment]

SYSTEM = "pgtide"


def on() -> bool:
    """Whether the program traces: OpenTelemetry is installed and a provider is set."""
    if trace is None:
        return False
    provider = trace.get_tracer_provider()
    return not isinstance(provider, ProxyTracerProvider | trace.NoOpTracerProvider)


def _tracer() -> Any:
    from .._version import __version__

    return trace.get_tracer("pgtide.events", __version__)


@contextmanager
def publishing(name: str, count: int = 1) -> Iterator[tuple[str | None, Any]]:
    """A PRODUCER span for publishing ``count`` events called ``name`` (a child of the
    caller's current span); gives the carrier to store with them (JSON) and the span (None
    and None when tracing is off). The span is not made current: the publish may run on
    another thread or task than this one."""
    if not on():
        yield None, None
        return
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "publish",
        "messaging.destination.name": name,
    }
    if count != 1:
        attributes["messaging.batch.message_count"] = count
    span = _tracer().start_span(f"publish {name}", kind=SpanKind.PRODUCER, attributes=attributes)
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    try:
        yield orjson.dumps(carrier).decode(), span
    except BaseException as exc:
        span.record_exception(exc)
        span.set_status(trace.Status(trace.StatusCode.ERROR, str(exc)))
        raise
    finally:
        span.end()


def published(span: Any, ids: list[int]) -> None:
    """Name the published event on its span (one event; a batch keeps its count)."""
    if span is not None and len(ids) == 1:
        span.set_attribute("messaging.message.id", str(ids[0]))


def traced(fn: Handler, name: str) -> Handler:
    """``fn`` run inside a CONSUMER span ``process NAME``, the child of the span the event
    was published in (a root span when it was published untraced); an exception is
    recorded on it and goes on."""
    tracer = _tracer()

    def span(event: Event) -> Any:
        carrier = orjson.loads(event._trace) if event._trace else {}
        return tracer.start_as_current_span(
            f"process {name}",
            context=propagate.extract(carrier),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "process",
                "messaging.destination.name": name,
                "messaging.message.id": str(event.id),
                "pgtide.event.attempt": event.attempt,
            },
        )

    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004
    ):

        async def run_async(event: Event) -> Any:
            with span(event):
                return await fn(event)

        return functools.wraps(fn)(run_async)

    def run(event: Event) -> Any:
        with span(event):
            return fn(event)

    return functools.wraps(fn)(run)


def handlers_traced(specs: dict[str, HandlerSpec]) -> dict[str, HandlerSpec]:
    """The worker's handler specs, each running in its span when tracing is on."""
    if not on():
        return specs
    return {n: dataclasses.replace(s, fn=traced(s.fn, n)) for n, s in specs.items()}
