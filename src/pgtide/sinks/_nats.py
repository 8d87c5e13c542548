"""NATS JetStream: one message per change, ``Nats-Msg-Id`` = the change's key, so that
JetStream's duplicate window drops a change sent again after a crash."""

from __future__ import annotations

import asyncio
import re
from typing import ClassVar, Unpack

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


def _clean(part: str) -> str:
    """A template value as subject tokens: spaces and wildcards become ``_``."""
    return _BAD.sub("_", part) or "_"


class NatsSink(Sink):
    """Publishes each change to JetStream and returns once every publish is acknowledged."""

    kind: ClassVar[str] = "NATS"
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
        if create_stream and not stream:
            raise ConfigError("create_stream=True needs a stream name: stream='PG'")
        if stream is not None and (not stream or re.search(r"[\s.*>/\\]", stream)):
            raise ConfigError(f"{stream!r} is not a JetStream stream name (no spaces, . * > /)")
        if timeout <= 0 or duplicate_window <= 0:
            raise ConfigError("timeout and duplicate_window must be > 0 seconds")
        self.stream = stream
        self._create = create_stream
        self._subjects = subjects or [self._filter(subject)]
        self._window = duplicate_window
        self._timeout = timeout
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None

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
        publish = js.publish_async
        futures = [await publish(m.dest, m.body, headers={MSG_ID: m.key}) for m in messages]
        try:
            acks = await asyncio.wait_for(asyncio.gather(*futures), self._timeout)
        except nats.js.errors.NoStreamResponseError:
            raise nats.errors.NoRespondersError(
                f"no JetStream stream takes subject {messages[0].dest!r} (yet?)"
            ) from None
        except nats.js.errors.APIError as exc:
            if exc.code is not None and exc.code >= 500:
                raise
            raise SinkError(f"JetStream refused a message: {exc}") from None
        finally:
            for future in futures:
                future.cancel()
        duplicates = sum(1 for ack in acks if ack.duplicate)
        self.duplicates += duplicates
        self.delivered += len(acks) - duplicates

    def _describe(self) -> str:
        return f"subject={self.subject.text!r} stream={self.stream!r}"
