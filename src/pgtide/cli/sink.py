"""``pgtide sink nats|redis|webhook``: run a feed consumer into a broker until stopped."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass
from typing import Annotated, Any

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
from ._common import ConsumerOption, TablesOption, console, emit_json
from ._options import Common, bundle, takes

app = typer.Typer(
    help="Carry the change feed to NATS JetStream, Redis Streams or a webhook.",
    no_args_is_help=True,
)

Ops = Annotated[
    list[str] | None, typer.Option("--op", help="Send only this operation (repeatable).")
]
Start = Annotated[
    str, typer.Option("--from", help="Where a new consumer starts: saved, beginning, end.")
]
SinkBatchOption = Annotated[
    int | None,
    typer.Option(
        "--max-changes",
        help="Changes per batch (transactions stay whole); default: the sink's own size.",
    ),
]
Every = Annotated[float, typer.Option(help="Seconds between progress reports.")]


@bundle
@dataclass(frozen=True, kw_only=True)
class Run(Common):
    """What every sink command takes: the consumer and its tables, the operations sent,
    where a new consumer starts, the batch size, progress reports, database and JSON."""

    consumer: ConsumerOption
    table: TablesOption = None
    op: Ops = None
    start: Start = "saved"
    max_changes: SinkBatchOption = None
    every: Every = 1.0


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


def _serve(sink: Sink, run: Run) -> None:
    """Follow ``run.consumer`` into ``sink`` until stopped, reporting progress."""
    consumer, start, max_changes = run.consumer, run.start, run.max_changes
    if max_changes is not None and max_changes < 1:
        raise ConfigError(f"--max-changes must be at least 1, not {max_changes}")
    chosen = resolve(run.dsn)
    feed = Feed(consumer, tables=run.table, dsn=chosen)
    if start not in ("saved", "beginning", "end"):
        raise ConfigError(f"--from must be saved, beginning or end, not {start!r}")
    if start != "saved" and feed.saved() is None:
        feed.seek(start)  # a new consumer starts there; a known one goes on where it was
    sink.open()  # an unreachable broker is a clear error now, not a silent wait
    progress = Progress(sink, consumer, chosen)
    done = threading.Event()
    json_out = run.json

    def stop() -> None:
        feed.stop()
        sink.stop()

    def report(live: Live | None) -> None:
        while not done.wait(run.every):
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


@app.command("nats")
@takes
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
    *,
    run: Run,
) -> None:
    """Publish each change to NATS JetStream (Nats-Msg-Id = its key: no duplicate)."""
    _serve(nats_sink(url, subject, stream, create_stream=create_stream, ops=run.op), run)


@app.command("redis")
@takes
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
    *,
    run: Run,
) -> None:
    """Add each change to a Redis stream (XADD with explicit ids: no duplicate)."""
    _serve(redis_sink(url, stream, maxlen, ops=run.op), run)


@app.command("webhook")
@takes
def webhook(
    url: Annotated[str, typer.Argument(help="The endpoint to POST batches to.")],
    secret_env: Annotated[
        str,
        typer.Option(help="Environment variable holding the signing secret (never on argv)."),
    ] = "PGTIDE_WEBHOOK_SECRET",
    timeout: Annotated[float, typer.Option(help="Seconds per request.")] = 10.0,
    retries: Annotated[int, typer.Option(help="Retries per batch before giving up.")] = 5,
    *,
    run: Run,
) -> None:
    """POST each batch as signed JSON with an Idempotency-Key; retry, then stop unacked."""
    secret = os.environ.get(secret_env) or None
    _serve(webhook_sink(url, secret, timeout=timeout, retries=retries, ops=run.op), run)
