"""NATS JetStream: one message per change, ``Nats-Msg-Id`` = the change's key, so that
JetStream's duplicate window drops a change sent again after a crash."""

from __future__ import annotations

import asyncio
import itertools
import re
from typing import ClassVar, NoReturn, Unpack

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from .. import Change
from ..errors import ConfigError
from ._base import (
    BatchLike,
    Message,
    Sink,
    SinkError,
    SinkOptions,
    Template,
    check_url,
    mask_url,
)

SCHEMES = ("nats", "tls", "ws", "wss")
_BAD = re.compile(r"[\s*>]")
MSG_ID = "Nats-Msg-Id"
LAST_ID = "Nats-Expected-Last-Msg-Id"
WRONG_LAST_ID = 10070
"""JetStream's error code for a message whose ``Nats-Expected-Last-Msg-Id`` is not the
stream's last message id."""
CHAIN_PAUSE = 20
_HEADER = f"NATS/1.0\r\n{MSG_ID}: %s\r\n{LAST_ID}: %s\r\n\r\n".encode()
_HEADER_SIZE = len(_HEADER % (b"", b""))
_FRAME = b"HPUB %s %d %d\r\n" + _HEADER + b"%s\r\n"
"""One message of a chain: subject, header size, total size, its key, the key before it,
its body."""
_CHUNK = 64 * 1024
"""Bytes of frames queued on the client at a time."""
"""Batches acknowledged message by message after a chain broke."""


def _clean(part: str) -> str:
    """A template value as subject tokens: spaces and wildcards become ``_``."""
    return _BAD.sub("_", part) or "_"


def _check_subject(template: str) -> None:
    """Refuse a subject template whose own text makes no valid subject (each value put in
    is cleaned by :func:`_clean`), so that no subject needs checking per message."""
    sample = re.sub(r"\{[^{}]*\}", "x", template)
    if _BAD.search(sample) or any(not token for token in sample.split(".")):
        raise ConfigError(
            f"subject {template!r} is not a NATS subject to publish to: no spaces, no * or > "
            "wildcards, no empty token (e.g. 'pg.{table}.{op}')"
        )


class NatsSink(Sink):
    """Publishes each change to JetStream and returns once every publish is acknowledged."""

    kind: ClassVar[str] = "NATS"
    _bulk_frames: ClassVar[bool] = True
    """Whether chains are written as protocol frames in bulk (else: the client's publish)."""
    # nats.errors.Error covers JetStream's API errors too; _deliver sorts those out
    _outages: ClassVar[tuple[type[BaseException], ...]] = (*Sink._outages, nats.errors.Error)

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        subject: str = "pg.{table}.{op}",
        stream: str | None = None,
        *,
        create_stream: bool = False,
        subjects: list[str] | None = None,
        duplicate_window: float = 120.0,
        timeout: float = 10.0,
        **options: Unpack[SinkOptions],
    ) -> None:
        super().__init__(check_url(url, SCHEMES, "the NATS sink"), **options)
        self.subject = Template(subject, "subject", _clean)
        _check_subject(subject)
        if create_stream and not stream:
            raise ConfigError("create_stream=True needs a stream name: stream='PG'")
        if stream is not None and (not stream or re.search(r"[\s.*>/\\]", stream)):
            raise ConfigError(f"{stream!r} is not a JetStream stream name (no spaces, . * > /)")
        if timeout <= 0 or duplicate_window <= 0:
            raise ConfigError("timeout and duplicate_window must be > 0 seconds")
        self.stream = stream
        self._create = create_stream
        self._subjects = subjects or ([self._filter(subject)] if create_stream else [])
        self._window = duplicate_window
        self._timeout = timeout
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._chain_after = 0
        self._subjects_wire: dict[str, bytes] = {}

    @staticmethod
    def _filter(subject: str) -> str:
        """The stream subjects a template needs: its literal tokens up to the first
        placeholder, then ``>`` (``pg.{table}.{op}`` -> ``pg.>``)."""
        literal: list[str] = []
        for token in subject.split("."):
            if "{" in token:
                break
            literal.append(token)
        if not literal:
            raise ConfigError(
                f"subject {subject!r} starts with a placeholder; to create the stream, pass "
                "subjects=[...] as well"
            )
        return (
            ".".join(literal)
            if len(literal) == len(subject.split("."))
            else (".".join(literal) + ".>")
        )

    def _destination(self, change: Change, key: str | None) -> str:
        return self.subject.render(change, key)

    async def _connect(self) -> None:
        failures: list[Exception] = []

        async def note(exc: Exception) -> None:  # what failed surfaces in the error raised
            failures.append(exc)

        try:
            self._nc = await nats.connect(
                self.url,
                allow_reconnect=False,
                connect_timeout=self._timeout,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.05,
                error_cb=note,
                name="pgtide sink",
                skip_subject_validation=True,  # checked once: _check_subject
            )
        except nats.errors.NoServersError:
            reason = failures[-1] if failures else "no server answered"
            raise OSError(str(reason)) from None
        self._js = self._nc.jetstream(timeout=self._timeout, publish_async_max_pending=20_000)
        if self.stream is not None:
            await self._ensure_stream()

    async def _ensure_stream(self) -> None:
        assert self._js is not None and self.stream is not None
        try:
            await self._js.stream_info(self.stream)
            return
        except nats.js.errors.NotFoundError:
            if not self._create:
                raise SinkError(
                    f"JetStream has no stream {self.stream!r} at {mask_url(self.url)}; "
                    "create it, or pass create_stream=True (--create-stream)"
                ) from None
        config = StreamConfig(
            name=self.stream, subjects=self._subjects, duplicate_window=self._window
        )
        try:
            await self._js.add_stream(config)
        except nats.js.errors.BadRequestError as exc:
            raise SinkError(f"cannot create JetStream stream {self.stream!r}: {exc}") from None

    async def _disconnect(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            await nc.close()

    async def _deliver(self, batch: BatchLike, messages: list[Message]) -> None:
        js, nc = self._js, self._nc
        assert js is not None and nc is not None
        if nc.is_closed:
            raise nats.errors.ConnectionClosedError
        if len(messages) > 1 and self.counts.batches >= self._chain_after:
            if await self._chained(nc, js, messages):
                return
            # the chain broke: another publisher writes to the stream, or this is a batch
            # sent again; every message is acknowledged on its own for a while
            self._chain_after = self.counts.batches + CHAIN_PAUSE
        await self._acked(js, messages)

    async def _chained(self, nc: NatsClient, js: JetStreamContext, messages: list[Message]) -> bool:
        """Publish ``messages`` as a chain: each after the first names the one before it
        (``Nats-Expected-Last-Msg-Id``), so JetStream stores it only right after that one,
        and only the last asks for an acknowledgement. That one acknowledgement proves the
        whole chain was stored, in order; False when the chain broke (nothing is lost: the
        caller sends the batch again with an acknowledgement per message)."""
        first, last = messages[0], messages[-1]
        await nc.publish(first.dest, first.body, headers={MSG_ID: first.key})
        await self._publish_chain(nc, messages[:-1])
        headers = {MSG_ID: last.key, LAST_ID: messages[-2].key}
        try:
            ack = await js.publish(last.dest, last.body, timeout=self._timeout, headers=headers)
        except nats.js.errors.APIError as exc:
            if exc.err_code == WRONG_LAST_ID:
                return False
            self._refused(exc, last)
        except nats.js.errors.NoStreamResponseError as exc:
            self._refused(exc, last)
        if ack.duplicate:  # a batch sent again: each message's own ack tells what was new
            return False
        self.counts.delivered += len(messages)
        return True

    async def _publish_chain(self, nc: NatsClient, messages: list[Message]) -> None:
        """Publish ``messages[1:]``, each naming the one before it, without acknowledgement.

        The protocol frames (``HPUB``) are written here, many to one buffer, and queued on
        the client's connection in order, behind what it queued before: the client's own
        ``publish()`` spends more on one message's header than on its transfer. The
        subjects were cleaned (:func:`_clean`) and the header values are change keys
        (digits and ``-``), so there is nothing to check per message."""
        queue = getattr(nc, "_send_command", None) if self._bulk_frames else None
        if queue is None:  # a client without it: one publish() per message
            for previous, m in itertools.pairwise(messages):
                await nc.publish(m.dest, m.body, headers={MSG_ID: m.key, LAST_ID: previous.key})
            return
        if nc.is_closed:
            raise nats.errors.ConnectionClosedError
        if nc.is_draining_pubs:
            raise nats.errors.ConnectionDrainingError
        limit = nc.max_payload
        subjects = self._subjects_wire
        parts: list[bytes] = []
        size = sent = 0
        before = messages[0].key.encode()
        for m in itertools.islice(messages, 1, None):
            key, body = m.key.encode(), m.body
            if len(body) > limit:
                raise nats.errors.MaxPayloadError
            subject = subjects.get(m.dest)
            if subject is None:
                subject = subjects[m.dest] = m.dest.encode()
            head = _HEADER_SIZE + len(key) + len(before)
            frame = _FRAME % (subject, head, head + len(body), key, before, body)
            parts.append(frame)
            size += len(frame)
            sent += len(body)
            before = key
            if size >= _CHUNK:
                await queue(b"".join(parts))
                parts, size = [], 0
        if parts:
            await queue(b"".join(parts))
        nc.stats["out_msgs"] += len(messages) - 1
        nc.stats["out_bytes"] += sent

    async def _acked(self, js: JetStreamContext, messages: list[Message]) -> None:
        publish = js.publish_async
        futures = [await publish(m.dest, m.body, headers={MSG_ID: m.key}) for m in messages]
        try:
            acks = await asyncio.wait_for(asyncio.gather(*futures), self._timeout)
        except (nats.js.errors.APIError, nats.js.errors.NoStreamResponseError) as exc:
            self._refused(exc, messages[0])
        finally:
            for future in futures:
                future.cancel()
        duplicates = sum(1 for ack in acks if ack.duplicate)
        self.counts.duplicates += duplicates
        self.counts.delivered += len(acks) - duplicates

    @staticmethod
    def _refused(exc: nats.js.errors.Error, message: Message) -> NoReturn:
        """Raise what a JetStream error means: an outage to retry, or a refusal."""
        if not isinstance(exc, nats.js.errors.APIError):  # no stream answered
            raise nats.errors.NoRespondersError(
                f"no JetStream stream takes subject {message.dest!r} (yet?)"
            ) from None
        if exc.code is not None and exc.code >= 500:
            raise exc
        raise SinkError(f"JetStream refused a message: {exc}") from None

    def _describe(self) -> str:
        return f"subject={self.subject.text!r} stream={self.stream!r}"
