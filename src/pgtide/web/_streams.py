"""Browser streams: NOTIFY channels and feed changes as server-sent events.

A feed stream is a :class:`pgtide.aio.Feed`: every change goes out with an SSE ``id`` from
which the stream can resume exactly after it. The last change of each batch carries the
feed position itself (``str(batch.position)``); a change inside a batch carries
``START|END|K``: "the changes from position START to position END, less the first K+1".
That range is fixed once both positions exist (the changes whose transactions are visible at
END and were not at START, in feed order), so a browser reconnecting with that
``Last-Event-ID`` gets the rest of the batch, then the feed from END: nothing lost, nothing
twice. The stream acknowledges each batch once it has been written to the connection, so the
consumer is registered and prune keeps what a disconnected browser has not had yet.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

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


def change_json(change: Change) -> str:
    """A change as JSON (rows with exact numbers, as ``pgtide follow`` prints them)."""
    return (
        f'{{"table":{to_json(change.table)},"op":"{change.op}","row":{to_json(change.row)},'
        f'"old":{to_json(change.old)},"xid":{change.xid},"id":{change.id},'
        f'"at":"{change.at.isoformat()}"}}'
    )


async def feed_stream(
    dsn: Resolved,
    consumer: str,
    tables: list[str],
    resume: ResumeToken | None,
    start: str,
    stopping: asyncio.Event,
    max_changes: int = 1000,
) -> AsyncIterator[bytes]:
    """The SSE body of ``/sse/feed/{consumer}``: ``change`` events, one per change, until
    the browser leaves or the server stops (``stopping``)."""
    feed = Feed(consumer, tables, dsn=dsn)
    watch = asyncio.create_task(_stop_when(stopping, feed))
    try:
        yield b"retry: 1000\n\n"
        live: Position | str = start
        if resume is not None:
            live = resume.start
            if resume.end is not None:  # finish the batch the browser was in
                skip = resume.skip
                async for batch in feed.batches(resume.start, resume.end, max_changes):
                    changes = list(batch)
                    dropped = min(skip, len(changes))
                    skip -= dropped
                    if changes[dropped:]:
                        yield _chunk(changes, dropped, batch.start, batch.position)
                live = resume.end
        while not stopping.is_set():
            async for batch in feed.batches(live, None, max_changes, timeout=PING_EVERY):
                yield _chunk(list(batch), 0, batch.start, batch.position)
                await batch.ack()
            if stopping.is_set():
                return
            yield b": ping\n\n"  # idle for a while: say we are alive, go on from here
            live = await feed.position()
    finally:
        watch.cancel()
        feed.stop()
        await feed.close()


async def _stop_when(stopping: asyncio.Event, feed: Feed) -> None:
    await stopping.wait()
    feed.stop()


def _chunk(changes: list[Change], first: int, start: Position, end: Position) -> bytes:
    """Changes ``first``... of one batch as ``change`` events, written in one piece."""
    last = len(changes) - 1
    head = f"{start}|{end}|"
    return "".join(
        f"event: change\nid: {end if i == last else head + str(i)}\n"
        f"data: {change_json(changes[i])}\n\n"
        for i in range(first, len(changes))
    ).encode()


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
