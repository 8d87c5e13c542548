"""``pgtide sink nats|redis|webhook``: run a feed consumer into a broker until stopped."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from inspect import Parameter, Signature, signature
from typing import Annotated, Any, get_type_hints

import typer
from rich.live import Live

from .._signals import stop_on_signals
from ..connect import resolve
from ..errors import ConfigError
from ..feed import Feed, consumers
from ..sinks import Sink, SinkStopped
from ..sinks import nats as nats_sink
from ..sinks import redis as redis_sink
from ..sinks import webhook as webhook_sink
from ._common import DsnOption, JsonOption, console, emit_json, wants_json

app = typer.Typer(
    help="Carry the change feed to NATS JetStream, Redis Streams or a webhook.",
    no_args_is_help=True,
)

Consumer = Annotated[str, typer.Option("--consumer", "-c", help="Consumer name (its position).")]
Tables = Annotated[
    list[str] | None, typer.Option("--table", "-t", help="Follow only this table (repeatable).")
]
Ops = Annotated[
    list[str] | None, typer.Option("--op", help="Send only this operation (repeatable).")
]
Start = Annotated[
    str, typer.Option("--from", help="Where a new consumer starts: saved, beginning, end.")
]
MaxChanges = Annotated[int, typer.Option(help="Changes per batch (transactions stay whole).")]
Every = Annotated[float, typer.Option(help="Seconds between progress reports.")]


class Progress:
    """Counts delivered changes and reads the consumer's lag, for a line or JSON status."""

    def __init__(self, sink: Sink, consumer: str, dsn: Any) -> None:
        self.sink, self.consumer, self.dsn = sink, consumer, dsn
        self.began = self.last_at = time.monotonic()
        self.last_count = 0
        self.rate = 0.0

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        stats = self.sink.stats()
        count = stats["delivered"] + stats["duplicates"]
        if now > self.last_at:
            self.rate = (count - self.last_count) / (now - self.last_at)
        self.last_at, self.last_count = now, count
        lag: int | None = None
        acked_at = None
        try:
            for row in consumers(dsn=self.dsn):
                if row["name"] == self.consumer:
                    lag, acked_at = row["pending"], row["acked_at"]
        except Exception:  # progress must never stop the sink
            pass
        return {
            "sink": str(self.sink),
            "consumer": self.consumer,
            **stats,
            "changes_per_s": round(self.rate, 1),
            "lag_changes": lag,
            "acked_at": acked_at.isoformat() if acked_at is not None else None,
            "elapsed_s": round(now - self.began, 1),
        }

    @staticmethod
    def line(status: dict[str, Any]) -> str:
        lag = "?" if status["lag_changes"] is None else f"{status['lag_changes']:,}"
        retry = f", {status['retries']} retries" if status["retries"] else ""
        return (
            f"{status['sink']} ← consumer {status['consumer']}: "
            f"{status['delivered']:,} delivered ({status['duplicates']:,} already there), "
            f"{status['changes_per_s']:,.0f} changes/s, lag {lag} changes{retry}"
        )


def _serve(
    sink: Sink,
    consumer: str,
    tables: list[str] | None,
    start: str,
    max_changes: int,
    every: float,
    dsn: str | None,
    as_json: bool,
) -> None:
    if max_changes < 1:
        raise ConfigError(f"--max-changes must be at least 1, not {max_changes}")
    chosen = resolve(dsn)
    feed = Feed(consumer, tables=tables, dsn=chosen)
    if start not in ("saved", "beginning", "end"):
        raise ConfigError(f"--from must be saved, beginning or end, not {start!r}")
    if start != "saved" and feed.saved() is None:
        feed.seek(start)  # a new consumer starts there; a known one goes on where it was
    sink.open()  # an unreachable broker is a clear error now, not a silent wait
    progress = Progress(sink, consumer, chosen)
    done = threading.Event()
    json_out = wants_json(as_json)

    def stop() -> None:
        feed.stop()
        sink.stop()

    def report(live: Live | None) -> None:
        while not done.wait(every):
            status = progress.status()
            if live is not None:
                live.update(Progress.line(status))
            else:
                emit_json(status)

    live = None if json_out else Live(console=console, refresh_per_second=4, transient=False)
    reporter = threading.Thread(target=report, args=(live,), daemon=True)
    try:
        with stop_on_signals(stop, f"pgtide sink ({consumer})"):
            if live is not None:
                live.start()
            reporter.start()
            # stopped while the broker was away: that batch stays unacknowledged
            with contextlib.suppress(SinkStopped):
                feed.run(sink, max_changes=max_changes)
    finally:
        done.set()
        if reporter.is_alive():
            reporter.join(5)
        final = progress.status()
        if live is not None:
            live.update(Progress.line(final))
            live.stop()
        else:
            emit_json({**final, "stopped": True})
        sink.close()
        feed.close()


def _command(name: str) -> Callable[[Callable[..., Sink]], Callable[..., Sink]]:
    """Register ``make`` (the sink's own options, and ``**options`` for the sink's filters,
    -> the sink) as ``pgtide sink NAME``, with
    the options every sink command takes (consumer, tables, ops, start, batch size,
    progress, database, JSON) added to its signature: one declaration for all three."""

    def register(make: Callable[..., Sink]) -> Callable[..., Sink]:
        hints = get_type_hints(make, include_extras=True)
        own = [
            p.replace(annotation=hints[p.name])
            for p in signature(make).parameters.values()
            if p.kind is not Parameter.VAR_KEYWORD  # the filters, from the common options
        ]

        def command(**values: Any) -> None:
            common = {name: values.pop(name) for name in COMMON}
            consumer = common.pop("consumer")
            sink = make(**values, ops=common.pop("op"))
            _serve(sink, consumer, common.pop("table"), **common)

        command.__signature__ = Signature([*own, *COMMON.values()])  # type: ignore[attr-defined]
        command.__doc__ = make.__doc__
        app.command(name)(command)
        return make

    return register


def _option(name: str, annotation: Any, default: Any = Parameter.empty) -> Parameter:
    return Parameter(name, Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


COMMON = {
    p.name: p
    for p in (
        _option("consumer", Consumer),
        _option("table", Tables, None),
        _option("op", Ops, None),
        _option("start", Start, "saved"),
        _option("max_changes", MaxChanges, 1000),
        _option("every", Every, 1.0),
        _option("dsn", DsnOption, None),
        _option("as_json", JsonOption, False),
    )
}


@_command("nats")
def nats(
    url: Annotated[str, typer.Argument(help="NATS server URL.")] = "nats://127.0.0.1:4222",
    subject: Annotated[
        str,
        typer.Option(
            help="Subject template; default: pg.TABLE.OP (placeholders table, schema, name, "
            "op in curly braces, as in docs/sinks.md).",
            show_default=False,
        ),
    ] = "pg.{table}.{op}",
    stream: Annotated[
        str | None, typer.Option(help="JetStream stream that must take the messages.")
    ] = None,
    create_stream: Annotated[bool, typer.Option(help="Create the stream if missing.")] = False,
    **options: Any,
) -> Sink:
    """Publish each change to NATS JetStream (Nats-Msg-Id = its key: no duplicate)."""
    return nats_sink(url, subject, stream, create_stream=create_stream, **options)


@_command("redis")
def redis(
    url: Annotated[str, typer.Argument(help="Redis URL.")] = "redis://127.0.0.1:6379",
    stream: Annotated[
        str,
        typer.Option(
            help="Stream key template; default: pg:TABLE (placeholders as in docs/sinks.md).",
            show_default=False,
        ),
    ] = "pg:{table}",
    maxlen: Annotated[
        int | None, typer.Option(help="Trim each stream to about this many entries.")
    ] = None,
    **options: Any,
) -> Sink:
    """Add each change to a Redis stream (XADD with explicit ids: no duplicate)."""
    return redis_sink(url, stream, maxlen, **options)


@_command("webhook")
def webhook(
    url: Annotated[str, typer.Argument(help="The endpoint to POST batches to.")],
    secret_env: Annotated[
        str,
        typer.Option(help="Environment variable holding the signing secret (never on argv)."),
    ] = "PGTIDE_WEBHOOK_SECRET",
    timeout: Annotated[float, typer.Option(help="Seconds per request.")] = 10.0,
    retries: Annotated[int, typer.Option(help="Retries per batch before giving up.")] = 5,
    **options: Any,
) -> Sink:
    """POST each batch as signed JSON with an Idempotency-Key; retry, then stop unacked."""
    secret = os.environ.get(secret_env) or None
    return webhook_sink(url, secret, timeout=timeout, retries=retries, **options)
