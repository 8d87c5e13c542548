"""OpenTelemetry: a publish span whose context travels with the event, and the handler run
in a process span that continues the trace (its child), across worker threads and tasks."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import pgtide
import pgtide.aio
from pgtide.events import _tracing


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Tracing on, into memory (a provider of the test's own: the global one can be set only
    once a process)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(_tracing, "on", lambda: True)
    monkeypatch.setattr(_tracing, "_tracer", lambda: provider.get_tracer("pgtide.events"))
    yield exporter
    provider.shutdown()


def _by_name(exporter: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    found: dict[str, list[ReadableSpan]] = {}
    for span in exporter.get_finished_spans():
        found.setdefault(span.name, []).append(span)
    return found


def _trace_column(dsn: str, id_: int) -> Any:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT trace FROM pgtide.events WHERE id = %s", (id_,)).fetchone()
    assert row is not None
    return row[0]


def test_a_handler_runs_in_a_span_that_continues_the_publishers_trace(
    spans: InMemorySpanExporter, dsn: str
) -> None:
    tracer = _tracing._tracer()
    seen: dict[str, Any] = {}
    events = pgtide.Events(dsn=dsn, poll_interval=0.05)

    @events.handler("job")
    def job(event: pgtide.Event) -> None:
        seen["span"] = trace.get_current_span().get_span_context()
        seen["thread"] = threading.current_thread().name

    with tracer.start_as_current_span("request") as request:
        id_ = events.publish("job", {"n": 1})
    assert _trace_column(dsn, id_)["traceparent"].startswith("00-")
    events.start(concurrency=2)
    events.wait(id_, timeout=10)
    events.close()
    found = _by_name(spans)
    (publish,) = found["publish job"]
    (process,) = found["process job"]
    trace_id = request.get_span_context().trace_id
    assert publish.kind is SpanKind.PRODUCER and publish.parent is not None
    assert publish.parent.span_id == request.get_span_context().span_id
    assert publish.attributes is not None and publish.attributes["messaging.message.id"] == str(id_)
    assert process.kind is SpanKind.CONSUMER
    assert process.context is not None and process.context.trace_id == trace_id
    assert process.parent is not None and publish.context is not None
    assert process.parent.span_id == publish.context.span_id
    assert process.attributes is not None
    assert process.attributes["messaging.message.id"] == str(id_)
    assert process.attributes["pgtide.event.attempt"] == 1
    # the handler's own work (its queries, its calls) nests under the process span
    assert seen["span"].span_id == process.context.span_id
    assert seen["thread"] != threading.current_thread().name


def test_a_failing_handler_marks_its_span_and_each_retry_has_its_own(
    spans: InMemorySpanExporter, dsn: str
) -> None:
    events = pgtide.Events(dsn=dsn, poll_interval=0.05, retry_delay=0.01, max_retry_delay=0.02)

    @events.handler("flaky", retries=1)
    def flaky(event: pgtide.Event) -> str:
        if event.attempt == 1:
            raise ValueError("first time")
        return "ok"

    with _tracing._tracer().start_as_current_span("request"):
        id_ = events.publish("flaky")
    events.start(concurrency=1)
    assert events.wait(id_, timeout=10).state == "done"
    events.close()
    first, second = sorted(
        _by_name(spans)["process flaky"],
        key=lambda s: (s.attributes or {})["pgtide.event.attempt"],  # type: ignore[index]
    )
    assert first.status.status_code is StatusCode.ERROR
    assert [e.name for e in first.events] == ["exception"]
    assert second.status.status_code is not StatusCode.ERROR
    (publish,) = _by_name(spans)["publish flaky"]
    assert publish.context is not None
    for attempt in (first, second):  # both continue the publisher's trace
        assert attempt.parent is not None and attempt.parent.span_id == publish.context.span_id


def test_publish_many_is_one_span_and_async_handlers_run_in_theirs(
    spans: InMemorySpanExporter, dsn: str
) -> None:
    async def main() -> dict[int, int]:
        async with pgtide.aio.Events(dsn=dsn, poll_interval=0.05) as events:
            inside: dict[int, int] = {}

            async def job(event: pgtide.Event) -> None:
                await asyncio.sleep(0)
                inside[event.id] = trace.get_current_span().get_span_context().span_id

            events.register("job", job)
            ids = await events.publish_many("job", [1, 2, 3])
            worker = asyncio.ensure_future(events.run(concurrency=3))
            try:
                for id_ in ids:
                    await events.wait(id_, timeout=10)
            finally:
                worker.cancel()
                await asyncio.gather(worker, return_exceptions=True)
            return inside

    inside = asyncio.run(main())
    found = _by_name(spans)
    (publish,) = found["publish job"]
    assert publish.parent is None  # no span was current: the publish starts the trace
    assert publish.attributes is not None
    assert publish.attributes["messaging.batch.message_count"] == 3
    processes = found["process job"]
    assert len(processes) == 3 and publish.context is not None
    for process in processes:
        assert process.parent is not None and process.parent.span_id == publish.context.span_id
        assert process.context is not None and process.attributes is not None
        assert inside[int(str(process.attributes["messaging.message.id"]))] == (
            process.context.span_id
        )


def test_an_event_published_untraced_starts_its_own_trace(
    spans: InMemorySpanExporter, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = pgtide.Events(dsn=dsn, poll_interval=0.05)
    events.register("job", lambda event: None)
    with monkeypatch.context() as off:
        off.setattr(_tracing, "on", lambda: False)
        id_ = events.publish("job")
    assert _trace_column(dsn, id_) is None
    events.start(concurrency=1)
    events.wait(id_, timeout=10)
    events.close()
    (process,) = _by_name(spans)["process job"]
    assert process.parent is None


def test_tracing_is_off_until_the_program_sets_a_tracer_provider(dsn: str) -> None:
    assert _tracing.on() is False  # opentelemetry-api installed, no provider set
    with pgtide.Events(dsn=dsn) as events:
        assert _trace_column(dsn, events.publish("job")) is None
    script = textwrap.dedent(
        """
        import json, sys
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        import pgtide
        from pgtide.events import _tracing
        before = _tracing.on()
        trace.set_tracer_provider(TracerProvider())
        with pgtide.Events(dsn=sys.argv[1]) as events:
            id_ = events.publish("job")
        print(json.dumps([before, _tracing.on(), id_]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, dsn], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    before, after, id_ = json.loads(done.stdout)
    assert (before, after) == (False, True)
    assert _trace_column(dsn, id_)["traceparent"].startswith("00-")


def test_the_docs_example_traces_a_publish_and_its_handler(dsn: str, tmp_path: Any) -> None:
    """The example of docs/events.md (*Tracing*), in a process of its own: it sets the global
    tracer provider, which a process can do once."""
    from docs_examples import DOCS, block_under

    code = "import pgtide\n" + block_under(
        DOCS / "events.md", "### Tracing (OpenTelemetry)", "python"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "PGTIDE_DSN": dsn},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
