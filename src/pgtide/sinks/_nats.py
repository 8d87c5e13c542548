"""NATS JetStream: one message per change, ``Nats-Msg-Id`` = the change's key, so that
JetStream's duplicate window drops a change sent again after a crash."""

from __future__ import annotations

import asyncio
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
    Messages,
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

    async def _deliver(self, batch: BatchLike, messages: Messages) -> None:
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

    async def _chained(self, nc: NatsClient, js: JetStreamContext, messages: Messages) -> bool:
        """Publish ``messages`` as a chain: each after the first names the one before it
        (``Nats-Expected-Last-Msg-Id``), so JetStream stores it only right after that one;
        the first and the last ask for an acknowledgement. The first stored now and the
        last stored prove the whole chain was stored, in order; False when the chain broke
        or began with a repeat (nothing is lost: the caller sends the batch again with an
        acknowledgement per message)."""
        keys, bodies, dests = messages.keys, messages.bodies, messages.dests
        # The chain starts with a message acknowledged as stored now. Sent again after a
        # crash, a batch may hold, between messages stored before, a transaction that
        # committed late (the feed read it again up to a newer snapshot): a chain from a
        # repeat would break at the late one but could join up again behind the last message
        # stored before, storing what follows ahead of the late one, and its last
        # acknowledgement would then hide the late one's loss.
        try:
            began = await js.publish(
                dests[0], bodies[0], timeout=self._timeout, headers={MSG_ID: keys[0]}
            )
        except (nats.js.errors.APIError, nats.js.errors.NoStreamResponseError) as exc:
            self._refused(exc, dests[0])
        if began.duplicate:  # sent before: each message's own ack tells what is new
            return False
        await self._publish_chain(nc, messages)
        headers = {MSG_ID: keys[-1], LAST_ID: keys[-2]}
        try:
            ack = await js.publish(dests[-1], bodies[-1], timeout=self._timeout, headers=headers)
        except nats.js.errors.APIError as exc:
            if exc.err_code == WRONG_LAST_ID:
                return False
            self._refused(exc, dests[-1])
        except nats.js.errors.NoStreamResponseError as exc:
            self._refused(exc, dests[-1])
        if ack.duplicate:  # cannot be, after a first message stored now; safe all the same
            return False
        self.counts.delivered += len(messages)
        return True

    async def _publish_chain(self, nc: NatsClient, messages: Messages) -> None:
        """Publish ``messages[1:-1]``, each naming the one before it, without
        acknowledgement.

        The protocol frames (``HPUB``) are written here, many to one buffer, and queued on
        the client's connection in order, behind what it queued before: the client's own
        ``publish()`` spends more on one message's header than on its transfer. The
        subjects were cleaned (:func:`_clean`) and the header values are change keys
        (digits and ``-``), so there is nothing to check per message."""
        keys, bodies, dests = messages.keys[:-1], messages.bodies[:-1], messages.dests[:-1]
        queue = getattr(nc, "_send_command", None) if self._bulk_frames else None
        if queue is None:  # a client without it: one publish() per message
            for i in range(1, len(keys)):
                headers = {MSG_ID: keys[i], LAST_ID: keys[i - 1]}
                await nc.publish(dests[i], bodies[i], headers=headers)
            return
        if nc.is_closed:
            raise nats.errors.ConnectionClosedError
        if nc.is_draining_pubs:
            raise nats.errors.ConnectionDrainingError
        if max(map(len, bodies), default=0) > nc.max_payload:
            raise nats.errors.MaxPayloadError
        subjects = self._subjects_wire
        for dest in set(dests).difference(subjects):
            subjects[dest] = dest.encode()
        wire = [k.encode() for k in keys]
        frames: list[bytes] = []
        add = frames.append
        for dest, body, key, before in zip(dests[1:], bodies[1:], wire[1:], wire[:-1], strict=True):
            head = _HEADER_SIZE + len(key) + len(before)
            add(_FRAME % (subjects[dest], head, head + len(body), key, before, body))
        chunk: list[bytes] = []
        size = 0
        for frame in frames:  # queued _CHUNK bytes at a time
            chunk.append(frame)
            size += len(frame)
            if size >= _CHUNK:
                await queue(b"".join(chunk))
                chunk, size = [], 0
        if chunk:
            await queue(b"".join(chunk))
        nc.stats["out_msgs"] += len(frames)
        nc.stats["out_bytes"] += sum(map(len, bodies)) - len(bodies[0])

    async def _acked(self, js: JetStreamContext, messages: Messages) -> None:
        publish = js.publish_async
        futures = [
            await publish(dest, body, headers={MSG_ID: key})
            for key, body, dest in zip(messages.keys, messages.bodies, messages.dests, strict=True)
        ]
        try:
            acks = await asyncio.wait_for(asyncio.gather(*futures), self._timeout)
        except (nats.js.errors.APIError, nats.js.errors.NoStreamResponseError) as exc:
            self._refused(exc, messages.dests[0])
        finally:
            for future in futures:
                future.cancel()
        duplicates = sum(1 for ack in acks if ack.duplicate)
        self.counts.duplicates += duplicates
        self.counts.delivered += len(acks) - duplicates

    @staticmethod
    def _refused(exc: nats.js.errors.Error, dest: str) -> NoReturn:
        """Raise what a JetStream error means (for a message to ``dest``): an outage to
        retry, or a refusal."""
        if not isinstance(exc, nats.js.errors.APIError):  # no stream answered
            raise nats.errors.NoRespondersError(
                f"no JetStream stream takes subject {dest!r} (yet?)"
            ) from None
        if exc.code is not None and exc.code >= 500:
            raise exc
        raise SinkError(f"JetStream refused a message: {exc}") from None

    def _describe(self) -> str:
        return f"subject={self.subject.text!r} stream={self.stream!r}"
