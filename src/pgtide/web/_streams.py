"""Browser streams: NOTIFY channels and feed changes as server-sent events.

A feed stream is a :class:`pgtide.aio.Feed`: every change goes out with an SSE ``id`` from
which the stream can resume exactly after it. The last change of each batch carries the
feed position itself (``str(batch.position)``); a change inside a batch carries
``START|END|K``: "the changes from position START to position END, less the first K+1".
That range is fixed once both positions exist (the changes whose transactions are visible at
END and were not at START, in feed order), so a browser reconnecting with that
``Last-Event-ID`` gets the rest of the batch, then the feed from END: nothing lost, nothing
twice. The stream saves the consumer's position once batches are written to the connection
(at most every ``ACK_EVERY`` seconds, and when caught up or left), so the consumer is
registered and prune keeps what a disconnected browser has not had yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from ..aio import Feed
from ..connect import Resolved
from ..errors import InvalidPosition
from ..feed import Change, Position, to_json
from ..listen import Notification
from ._hub import Hub

CONSUMER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,99}$")
"""Consumer names a browser may use: letters, digits and ``_.:@-``, at most 100."""
PING_EVERY = 15.0
"""Seconds between keep-alive comments on an idle stream (proxies close silent ones)."""
ACK_EVERY = 0.25
"""A stream saves its consumer's position at most this often (and when caught up or left):
saving later only makes retention keep a little more."""
QUEUE = 10_000
"""NOTIFY payloads held for one slow browser; past that the oldest are dropped (counted)."""


class ResumeToken:
    """Where a feed stream resumes: a position, or a range to finish first."""

    def __init__(self, start: Position, end: Position | None = None, skip: int = 0) -> None:
        self.start, self.end, self.skip = start, end, skip

    @classmethod
    def parse(cls, text: str) -> ResumeToken:
        """Read a ``Last-Event-ID``; :class:`pgtide.InvalidPosition` when it is not one."""
        if "|" not in text:
            return cls(Position.parse(text))
        start, end, skip = [*text.split("|"), "", ""][:3]
        if not skip.isdigit():
            raise InvalidPosition(f"{text!r} is not an event id this stream sent")
        return cls(Position.parse(start), Position.parse(end), int(skip) + 1)


def sse(data: str, *, event: str | None = None, id: str | None = None) -> str:
    """One server-sent event (``data`` may hold several lines)."""
    head = (f"event: {event}\n" if event else "") + (f"id: {id}\n" if id else "")
    return head + "".join(f"data: {line}\n" for line in data.split("\n")) + "\n"


_DECIMAL = f"@pgtide-decimal-{secrets.token_hex(8)}@"


def _row_json(row: dict[str, Any] | None) -> str:
    """A row as JSON, as :func:`pgtide.feed.to_json` writes it (numeric digits exact), by
    orjson when it can (several times faster); anything orjson refuses goes the slow way."""
    if row is None:
        return "null"
    decimals = [k for k, v in row.items() if type(v) is Decimal and v.is_finite()]
    try:
        if not decimals:
            return orjson.dumps(row).decode()
        marked = {**row, **{k: f"{_DECIMAL}{i}" for i, k in enumerate(decimals)}}
        text = orjson.dumps(marked).decode()
        for i, k in enumerate(decimals):
            text = text.replace(f'"{_DECIMAL}{i}"', format(row[k], "f"), 1)
        return text
    except TypeError:  # bytes, intervals, addresses...: the feed's own encoder
        return to_json(row)


def change_json(change: Change) -> str:
    """A change as JSON (rows with exact numbers, as ``pgtide follow`` prints them)."""
    return (
        f'{{"table":{orjson.dumps(change.table).decode()},"op":"{change.op}",'
        f'"row":{_row_json(change.row)},"old":{_row_json(change.old)},"xid":{change.xid},'
        f'"id":{change.id},"at":"{change.at.isoformat()}"}}'
    )


@dataclass(frozen=True)
class Read:
    """One batch read for the browser streams: its changes encoded, and its positions."""

    chunk: bytes
    start: Position
    end: Position
    count: int
    changes: list[Change]  # for the streams that filter them


class SharedReads:
    """Batches read once for every stream of the same tables at the same position.

    The changes between two positions are fixed once both exist, so streams at the same
    position can be given the same batch: the first asks the database (a bounded read from
    the position to the current end: nothing registered, nothing waited for), the others
    wait for it or find it in a small cache. Streams that started together stay together,
    and the database work and the encoding are done once for all of them.
    """

    def __init__(self, dsn: Resolved, size: int = 64, max_changes: int = 1000) -> None:
        self._dsn, self._size, self._max = dsn, size, max_changes
        self._done: OrderedDict[tuple[str, str], Read] = OrderedDict()
        self._running: dict[tuple[str, str], asyncio.Future[Read | None]] = {}
        self._idle: dict[str, list[Feed]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def next(self, tables: list[str], start: Position, ahead: bool = True) -> Read | None:
        """The batch after ``start`` (None when there is nothing after it yet); with
        ``ahead``, the batch after that one is read in the background."""
        key = (",".join(tables), str(start))
        found = self._done.get(key)
        if found is not None:
            self._done.move_to_end(key)
            return found
        running = self._running.get(key)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[Read | None] = asyncio.get_running_loop().create_future()
        self._running[key] = future
        try:
            read = await self._read(tables, start)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no warning when nobody else waited
            raise
        finally:
            del self._running[key]
        if read is not None:
            self._done[key] = read
            if len(self._done) > self._size:
                self._done.popitem(last=False)
            if ahead:  # read the next batch while this one is being sent
                task = asyncio.create_task(self._ahead(tables, read.end))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        future.set_result(read)
        return read

    async def _ahead(self, tables: list[str], start: Position) -> None:
        with contextlib.suppress(Exception):  # a stream that asks for it sees the error
            await self.next(tables, start, ahead=False)

    async def _read(self, tables: list[str], start: Position) -> Read | None:
        key = ",".join(tables)
        pool = self._idle.setdefault(key, [])
        feed = pool.pop() if pool else Feed("pgtide-web-reader", tables, dsn=self._dsn)
        try:
            async for batch in feed.batches(start, "end", self._max):
                changes = list(batch)
                chunk = _chunk(changes, 0, batch.start, batch.position)
                return Read(chunk, batch.start, batch.position, len(changes), changes)
            return None
        finally:
            pool.append(feed)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for pool in self._idle.values():
            for feed in pool:
                await feed.close()
        self._idle.clear()


async def feed_stream(
    hub: Hub,
    reads: SharedReads,
    consumer: str,
    tables: list[str],
    resume: ResumeToken | None,
    start: str,
    stopping: asyncio.Event,
    max_changes: int = 1000,
    wanted: Callable[[Change], bool] | None = None,
) -> AsyncIterator[bytes]:
    """The SSE body of ``/sse/feed/{consumer}``: ``change`` events, one per change, until
    the browser leaves or the server stops (``stopping``). Batches come from ``reads``
    (shared with the other streams at the same position); the consumer's position is saved
    once batches are written to the connection. ``wanted``: only the changes it passes are
    sent (``where=`` filters), each with the id it has in the whole batch."""
    assert hub.resolved is not None
    feed = Feed(consumer, tables, dsn=hub.resolved)
    watch = asyncio.create_task(_stop_when(stopping, feed))
    async with hub.waiting_for_changes():  # the capture triggers NOTIFY meanwhile
        pos = saved = Position.beginning()
        try:
            yield b"retry: 1000\n\n"
            if resume is not None:
                pos = resume.start
                if resume.end is not None:  # finish the batch the browser was in
                    skip = resume.skip
                    async for batch in feed.batches(resume.start, resume.end, max_changes):
                        changes = list(batch)
                        dropped = min(skip, len(changes))
                        skip -= dropped
                        if changes[dropped:]:
                            yield _chunk(changes, dropped, batch.start, batch.position, wanted)
                    pos = resume.end
                pos = await feed.seek(pos)
            elif start == "saved":
                pos = await feed.saved() or await feed.seek("beginning")
            else:
                pos = await feed.seek(start)
            idle, saved, acked_at = 0.0, pos, time.monotonic()
            while not stopping.is_set():
                seen = hub.change_version
                read = await reads.next(tables, pos)
                if read is not None:
                    if wanted is None:
                        yield read.chunk
                    else:
                        yield _chunk(read.changes, 0, read.start, read.end, wanted)
                    pos, idle = read.end, 0.0
                    if time.monotonic() - acked_at >= ACK_EVERY:  # written: acknowledge
                        saved, acked_at = await feed.seek(pos), time.monotonic()
                    continue
                if saved != pos:  # caught up: acknowledge what was written
                    saved, acked_at = await feed.seek(pos), time.monotonic()
                # caught up: wait for a captured change's NOTIFY; read again every second anyway
                if not await hub.changes_after(seen, 1.0):
                    idle += 1.0
                    if idle >= PING_EVERY:
                        idle = 0.0
                        yield b": ping\n\n"
        finally:
            watch.cancel()
            if saved != pos:  # what was written before the browser left (best effort)
                with contextlib.suppress(Exception):
                    await asyncio.shield(feed.seek(pos))
            feed.stop()
            await feed.close()


async def _stop_when(stopping: asyncio.Event, feed: Feed) -> None:
    await stopping.wait()
    feed.stop()


def _chunk(
    changes: list[Change],
    first: int,
    start: Position,
    end: Position,
    wanted: Callable[[Change], bool] | None = None,
) -> bytes:
    """Changes ``first``... of one batch as ``change`` events, written in one piece; with
    ``wanted``, only those it passes, and then, when the batch's last change is not among
    them, an event with the batch's end as its id and no data: the browser's last event id
    moves on (nothing is dispatched), so a reconnect does not read the batch again."""
    last = len(changes) - 1
    head = f"{start}|{end}|"
    sent: Sequence[int] = range(first, len(changes))
    if wanted is not None:
        sent = [i for i in sent if wanted(changes[i])]
    text = "".join(
        f"event: change\nid: {end if i == last else head + str(i)}\n"
        f"data: {change_json(changes[i])}\n\n"
        for i in sent
    )
    if wanted is not None and last not in sent:
        text += f"id: {end}\n\n"
    return text.encode()


async def channel_stream(hub: Hub, channel: str, stopping: asyncio.Event) -> AsyncIterator[bytes]:
    """The SSE body of ``/sse/channels/{channel}``: one ``message`` per NOTIFY payload (its
    text as sent). The first chunk comes once the channel is LISTENed to."""
    queue: asyncio.Queue[Notification] = asyncio.Queue(QUEUE)
    dropped = 0

    def deliver(note: Notification) -> None:
        nonlocal dropped
        if queue.full():
            queue.get_nowait()
            dropped += 1
        queue.put_nowait(note)

    sid = await hub.follow_channel(channel, deliver)
    stop = asyncio.ensure_future(stopping.wait())
    try:
        yield b"retry: 1000\n\n: listening\n\n"
        while not stopping.is_set():
            get = asyncio.ensure_future(queue.get())
            await asyncio.wait({get, stop}, timeout=PING_EVERY, return_when="FIRST_COMPLETED")
            if not get.done():
                get.cancel()
                if not stopping.is_set():
                    yield b": ping\n\n"
                continue
            note = get.result()
            parts = [sse(_payload(note), event="message")]
            while not queue.empty() and len(parts) < 1000:
                parts.append(sse(_payload(queue.get_nowait()), event="message"))
            if dropped:
                parts.append(sse(str(dropped), event="dropped"))
                dropped = 0
            yield "".join(parts).encode()
    finally:
        stop.cancel()
        await hub.unfollow(sid, channel)


def _payload(note: Notification) -> str:
    raw = note.raw
    return raw if isinstance(raw, str) else str(raw)
