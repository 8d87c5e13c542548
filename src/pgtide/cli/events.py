"""``pgtide events``: run workers, publish, list and retry events."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar, overload

import typer
from rich.table import Table

from .. import aio
from .._signals import stop_on_signals
from ..errors import ConfigError
from ..events import STATES, EventRecord, Events, Schedule
from ._common import DsnOption, JsonOption, cell, console, duration, emit_json, wants_json

app = typer.Typer(
    help="Events: handlers by name, with retries and many workers.", no_args_is_help=True
)

StateOption = Annotated[
    str | None, typer.Option("--state", help=f"Only this state ({', '.join(STATES)}).")
]
R = TypeVar("R", EventRecord, Schedule)
T = TypeVar("T")

EventId = Annotated[int, typer.Argument(help="The event id.")]
EventName = Annotated[str, typer.Argument(help="The event name.")]


def load(spec: str) -> Events | aio.Events:
    """The ``Events`` object named by ``module:attribute`` (the working directory is importable)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigError(
            f"cannot load {spec!r}: name the object as module:attribute, e.g. myapp.tasks:events"
        )
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"cannot import module {module_name!r} ({exc}); check the name, and run from the "
            "directory that holds it"
        ) from None
    obj = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(obj, Events | aio.Events):
        raise ConfigError(
            f"{spec} is a {type(obj).__name__}, not a pgtide.Events; point at the object "
            "your handlers are registered on"
        )
    return obj


@app.command()
def work(
    target: Annotated[str, typer.Argument(help="The Events object, as module:attribute.")],
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", help="Handlers at once.")] = 8,
    poll_interval: Annotated[
        float | None, typer.Option("--poll-interval", help="Seconds between polls (fallback).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Log only failures.")] = False,
) -> None:
    """Run a worker for the handlers of TARGET until Ctrl-C or SIGTERM (then stop gracefully:
    running handlers finish, claimed events not started go back at once)."""
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    events = load(target)
    if isinstance(events, aio.Events):
        with contextlib.suppress(KeyboardInterrupt):  # run() stops gracefully first
            asyncio.run(_work_async(events, concurrency, poll_interval))
        return
    events.run(concurrency, poll_interval=poll_interval)  # SIGTERM and Ctrl-C stop it


async def _work_async(events: aio.Events, concurrency: int, poll_interval: float | None) -> None:
    """Run the asyncio worker; SIGTERM and Ctrl-C cancel it (it then stops gracefully)."""
    task = asyncio.ensure_future(events.run(concurrency, poll_interval=poll_interval))
    loop = asyncio.get_running_loop()
    cancel = lambda: loop.call_soon_threadsafe(task.cancel)  # noqa: E731
    with stop_on_signals(cancel, "pgtide events work"), contextlib.suppress(asyncio.CancelledError):
        await task


@app.command()
def publish(
    name: EventName,
    payload: Annotated[
        str, typer.Argument(help="JSON (or plain text, sent as a string).")
    ] = "null",
    key: Annotated[str | None, typer.Option("--key", help="Run in order with its key.")] = None,
    delay: Annotated[
        float | None, duration("--delay", help="Run after this long (30s, 5m, 250ms).")
    ] = None,
    priority: Annotated[int, typer.Option("--priority", help="Smaller runs first.")] = 0,
    dedupe_key: Annotated[
        str | None,
        typer.Option("--dedupe-key", help="Insert nothing while an event with it is unfinished."),
    ] = None,
    after: Annotated[
        list[int] | None,
        typer.Option("--after", help="Run once event ID is done (repeat for several)."),
    ] = None,
    dsn: DsnOption = None,
    as_json: JsonOption = False,
) -> None:
    """Publish one event called NAME with PAYLOAD."""
    value = _json_or_text(payload)
    run_at = timedelta(seconds=delay) if delay is not None else None
    id_ = _ask(
        dsn,
        lambda events: events.publish(
            name,
            value,
            key=key,
            run_at=run_at,
            priority=priority,
            dedupe_key=dedupe_key,
            after=after or None,
        ),
    )
    _report(as_json, {"id": id_, "name": name, "payload": value}, f"published event {id_} ({name})")


@app.command("ls")
def ls(
    state: StateOption = None,
    name: Annotated[str | None, typer.Option("--name", help="Only this event name.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="How many, newest first.")] = 50,
    dsn: DsnOption = None,
    as_json: JsonOption = False,
) -> None:
    """List the newest events (of one state or name)."""
    records = _ask(dsn, lambda events: events.recent(state=state, name=name, limit=limit))
    _listing(
        as_json,
        records,
        f"events{f' ({state})' if state else ''}",
        ("id", "name", "state", "attempts", "created", "result / error"),
        _event_row,
    )


@app.command()
def retry(
    id: Annotated[int | None, typer.Argument(help="The event id.")] = None,
    dead: Annotated[bool, typer.Option("--dead", help="Every dead event (or of --name).")] = False,
    name: Annotated[str | None, typer.Option("--name", help="With --dead: this name.")] = None,
    dsn: DsnOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run a done, failed, dead or cancelled event again (from attempt 1); --dead: all dead."""
    if (id is None) == (not dead):
        raise ConfigError("give an event id, or --dead (optionally with --name), not both")
    if dead:
        revived = _ask(dsn, lambda events: events.retry_dead(name))
        _report(as_json, {"retried": revived}, f"{revived} dead events will run again")
        return
    assert id is not None
    _ask(
        dsn,
        lambda events: events.retry(id),
        f"no done, failed or dead event with id {id} (nor a cancelled one whose dedupe key is "
        "free); see `pgtide events ls`",
    )
    _report(as_json, {"id": id, "state": "pending"}, f"event {id} will run again")


@app.command()
def show(id: EventId, dsn: DsnOption = None, as_json: JsonOption = False) -> None:
    """One event, all of it: payload, result, and the error with its traceback."""
    rec = _ask(dsn, lambda events: events.get(id), f"no event with id {id}; see `pgtide events ls`")
    if wants_json(as_json):
        emit_json(_as_dict(rec))
        return
    for field, value in vars(rec).items():
        if field in ("error",) or value is None:
            continue
        shown = json.dumps(value) if field in ("payload", "result") else cell(value)
        console.print(f"[bold]{field}[/]: {shown}", highlight=False, markup=True)
    if rec.error:
        console.print("[bold]error[/]:", markup=True)
        console.print(rec.error, highlight=False, markup=False)


@app.command()
def cancel(id: EventId, dsn: DsnOption = None, as_json: JsonOption = False) -> None:
    """Cancel an event: waiting, it ends cancelled; running, its handler is asked to stop."""
    state = _ask(
        dsn, lambda events: events.cancel(id), f"event {id} has already ended, or does not exist"
    )
    asked = state == "running"
    said = f"event {id}: its handler is asked to stop" if asked else f"event {id} cancelled"
    _report(as_json, {"id": id, "state": state}, said)


def _pausing(paused: bool, doc: str) -> Callable[..., None]:
    """The ``pause`` or ``resume`` command: the same call, either way."""

    def command(name: EventName, dsn: DsnOption = None) -> None:
        _ask(dsn, lambda events: (events.pause if paused else events.resume)(name))
        console.print(f"{name} {'paused' if paused else 'resumed'}", highlight=False)

    command.__doc__ = doc
    return command


app.command("pause")(
    _pausing(True, "No worker claims events called NAME until `resume` (running ones finish).")
)
app.command("resume")(_pausing(False, "Workers claim events called NAME again."))


schedule_app = typer.Typer(help="Cron schedules: each tick enqueued once.", no_args_is_help=True)
app.add_typer(schedule_app, name="schedule")


@schedule_app.command("add")
def schedule_add(
    name: EventName,
    cron: Annotated[str, typer.Argument(help="Cron expression, e.g. '0 3 * * *'.")],
    payload: Annotated[str, typer.Option("--payload", help="JSON payload.")] = "null",
    tz: Annotated[str, typer.Option("--tz", help="Time zone (IANA).")] = "UTC",
    id: Annotated[str | None, typer.Option("--id", help="Schedule id (default: NAME).")] = None,
    dsn: DsnOption = None,
    as_json: JsonOption = False,
) -> None:
    """Publish NAME at each tick of CRON (replacing the schedule with the same id)."""
    value = _json_or_text(payload)
    with Events(dsn=dsn) as events:
        ident = events.schedule(name, cron, value, tz=tz, id=id)
        found = next(s for s in events.schedules() if s.id == ident)
    _report(as_json, _as_dict(found), f"schedule {ident}: next at {found.next_at.isoformat()}")


@schedule_app.command("ls")
def schedule_ls(dsn: DsnOption = None, as_json: JsonOption = False) -> None:
    """Every schedule."""
    found = _ask(dsn, lambda events: events.schedules())
    _listing(
        as_json, found, "schedules", ("id", "name", "cron", "tz", "next", "last"), _schedule_row
    )


@schedule_app.command("rm")
def schedule_rm(
    id: Annotated[str, typer.Argument(help="The schedule id.")],
    dsn: DsnOption = None,
) -> None:
    """Remove a schedule."""
    _ask(
        dsn,
        lambda events: events.unschedule(id),
        f"no schedule {id!r}; see `pgtide events schedule ls`",
    )
    console.print(f"schedule {id} removed", highlight=False)


@app.command()
def purge(
    older_than: Annotated[float, duration("--older-than", help="Age: 30s, 5m, 2h, 7d.")],
    dead: Annotated[bool, typer.Option("--dead", help="Dead events too.")] = False,
    dsn: DsnOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete done (and, with --dead, dead) events finished longer ago than --older-than."""
    age = timedelta(seconds=older_than)
    deleted = _ask(dsn, lambda events: events.purge(age, dead=dead))
    _report(as_json, {"deleted": deleted}, f"deleted {deleted} events")


@overload
def _ask(dsn: str | None, call: Callable[[Events], T | None], missing: str) -> T: ...
@overload
def _ask(dsn: str | None, call: Callable[[Events], T]) -> T: ...
def _ask(dsn: str | None, call: Callable[[Events], Any], missing: str = "") -> Any:
    """``call`` on an ``Events`` of the database, closed after it; with ``missing``, an answer
    of None or False (no such event or schedule) is the ``ConfigError`` it says."""
    with Events(dsn=dsn) as events:
        answer = call(events)
    if missing and (answer is None or answer is False):
        raise ConfigError(missing)
    return answer


def _json_or_text(payload: str) -> Any:
    """The payload as JSON, or as the plain string when it is not JSON."""
    try:
        return json.loads(payload)
    except ValueError:
        return payload


def _report(as_json: bool, data: dict[str, Any], message: str) -> None:
    """One result: ``data`` as JSON, or ``message`` for a person."""
    if wants_json(as_json):
        emit_json(data)
    else:
        console.print(message, highlight=False)


def _listing(
    as_json: bool,
    items: Sequence[R],
    title: str,
    columns: Sequence[str],
    row: Callable[[R], Sequence[str]],
) -> None:
    """Records as JSON lines, or as a table with ``row`` giving each one's cells."""
    if wants_json(as_json):
        for item in items:
            emit_json(_as_dict(item))
        return
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for item in items:
        table.add_row(*row(item))
    console.print(table)


def _event_row(rec: EventRecord) -> Sequence[str]:
    outcome = _last_line(rec.error) if rec.state in ("failed", "dead") else rec.result
    return (
        str(rec.id),
        rec.name,
        rec.state,
        str(rec.attempts),
        rec.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        "" if outcome is None else str(outcome),
    )


def _schedule_row(item: Schedule) -> Sequence[str]:
    last = item.last_at.isoformat() if item.last_at else "-"
    return (item.id, item.name, item.cron, item.tz, item.next_at.isoformat(), last)


def _as_dict(rec: EventRecord | Schedule) -> dict[str, Any]:
    return {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in vars(rec).items()}


def _last_line(error: str | None) -> str:
    lines = [line for line in (error or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""
