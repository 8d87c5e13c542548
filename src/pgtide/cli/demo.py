"""``pgtide demo``: a short guided tour on the embedded database (or the configured one)."""

from __future__ import annotations

import json
import time
import uuid

from psycopg import sql
from rich.table import Table

from .. import schema
from ..connect import connect, resolve
from ._common import DsnOption, JsonOption, console, emit_json


def demo(dsn: DsnOption = None, as_json: JsonOption = False) -> None:
    """Start (or reuse) the database, install pgtide's schema, and show a NOTIFY round trip."""
    steps: list[tuple[str, str]] = []
    say = (lambda *_, **__: None) if as_json else console.print

    began = time.perf_counter()
    chosen = resolve(dsn)
    steps.append(("database", f"{chosen.target} (from {chosen.source})"))
    say(
        f"[bold]1.[/] database: {chosen.target} [dim](chosen by {chosen.source})[/]",
        highlight=False,
    )

    version = schema.install(chosen)
    steps.append(("schema", f"pgtide version {version}"))
    say(f"[bold]2.[/] schema pgtide installed, version {version}", highlight=False)

    channel = f"pgtide-demo-{uuid.uuid4().hex[:8]}"
    payload = {"hello": "from pgtide", "sent_at": time.time()}
    with connect(chosen) as listener, connect(chosen) as sender:
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        sent = time.perf_counter()
        sender.execute("SELECT pg_notify(%s, %s)", (channel, json.dumps(payload)))
        note = next(listener.notifies(timeout=5.0, stop_after=1), None)
        latency_ms = (time.perf_counter() - sent) * 1000
    if note is None:
        raise SystemExit("pgtide demo: the notification did not arrive within 5 s")
    received = json.loads(note.payload)
    steps.append(("notify", f"{channel}: {received['hello']} in {latency_ms:.2f} ms"))
    say(
        f"[bold]3.[/] NOTIFY on {channel!r} came back in {latency_ms:.2f} ms: {received}",
        highlight=False,
    )

    total = time.perf_counter() - began
    if as_json:
        emit_json({"ok": True, "seconds": round(total, 3), "steps": dict(steps)})
        return
    table = Table(title="pgtide demo", title_justify="left")
    table.add_column("step")
    table.add_column("result")
    for step, result in steps:
        table.add_row(step, result)
    console.print(table)
    console.print(f"[green]done[/] in {total:.2f} s. Next: `pgtide db url`, `pgtide --help`.")
