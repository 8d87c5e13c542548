"""``pgtide listen CH...`` and ``pgtide notify CH PAYLOAD``: NOTIFY from the command line."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Annotated, Any, cast

import typer
from rich.highlighter import JSONHighlighter
from rich.markup import escape
from rich.text import Text

from ..codecs import CodecName
from ..connect import resolve
from ..listen import Listener, Notification
from ..notify import notify as send
from ..notify import prepare
from ._common import DsnOption, JsonOption, console, emit_json, err_console, wants_json

DecodeOption = Annotated[
    str,
    typer.Option("--decode", help="How to decode payloads: json, text or literal."),
]


def listen(
    channels: Annotated[
        list[str], typer.Argument(help="Channels to listen on (any name).", metavar="CHANNEL")
    ],
    dsn: DsnOption = None,
    as_json: JsonOption = False,
    decode: DecodeOption = "json",
) -> None:
    """Show notifications on CHANNELS as they arrive; Ctrl-C or SIGTERM stops (exit 0).

    On a terminal, one readable line each; piped or with --json, one JSON object per line
    (the "listening on" line goes to stderr once the channels are LISTENed, and so does one
    line per reconnect attempt when the server goes away).
    """
    if decode not in ("json", "text", "literal"):
        raise typer.BadParameter(f"{decode!r}; use json, text or literal", param_hint="--decode")
    machine = wants_json(as_json)
    _log_to_stderr()
    chosen = resolve(dsn)
    codec = cast(CodecName, decode)
    listener = Listener(dsn=chosen, decode=codec, on_reconnect=_gap_warning)
    show = emit_note if machine else print_note
    try:
        for channel in channels:
            listener.subscribe(channel, show)
        listener.start()
        names = ", ".join(escape(c) for c in channels)
        err_console.print(
            f"listening on {names} at {chosen.target}; Ctrl-C to stop", highlight=False
        )
        listener.run_forever()  # returns on Ctrl-C or SIGTERM, after closing
    except KeyboardInterrupt:  # pressed before run_forever took over the signals
        pass
    finally:
        listener.stop()


def _log_to_stderr() -> None:
    """The listener's own lines (lost connection, reconnect attempts, a channel name with
    capitals) as plain lines on stderr; stdout stays for notifications."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("pgtide listen: %(message)s"))
    handler.setLevel(logging.INFO)
    for name in ("pgtide.channel", "pgtide.listen"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False


def _gap_warning() -> None:
    err_console.print("[yellow]reconnected: notifications may have been missed[/]")


def emit_note(note: Notification) -> None:
    emit_json(note.to_dict())


def print_note(note: Notification) -> None:
    line = Text.assemble(
        (time.strftime("%H:%M:%S", time.localtime(note.received_at.timestamp())), "dim"),
        " ",
        (note.channel, "bold cyan"),
        " ",
    )
    body: Any = note.payload
    if isinstance(body, str):
        console.print(line + Text(body))
    else:  # a decoded value is shown as the JSON it came as, not as a Python repr
        text = json.dumps(body, ensure_ascii=False, default=str)
        console.print(line + JSONHighlighter()(Text(text)), soft_wrap=True)
    if note.error:
        console.print(Text(f"  ({note.error})", style="yellow"))


def notify(
    channel: Annotated[str, typer.Argument(help="Channel to notify (any name).")],
    payload: Annotated[str, typer.Argument(help="Text to send; listeners decode JSON.")] = "",
    dsn: DsnOption = None,
    as_json: JsonOption = False,
) -> None:
    """Send one NOTIFY with PAYLOAD on CHANNEL."""
    _, text = prepare(channel, payload)
    chosen = resolve(dsn)
    send(channel, text, dsn=chosen)
    size = len(text.encode("utf-8"))
    if as_json:
        emit_json({"channel": channel, "bytes": size, "target": chosen.target})
    else:
        console.print(f"notified {json.dumps(channel)} ({size} bytes)", highlight=False)
