"""The one listener core behind both faces (:class:`pgtide.Listener`, :class:`pgtide.aio.Listener`).

It owns the registry, the bounded queue, the counters and the connection thread, and turns
queued batches into calls (``deliver``). A face only decides where callbacks run (a dispatcher
thread, or a task on the event loop) and how to wait (threads or asyncio): ``deliver`` yields
the awaitables returned by async callbacks for the face to run, in order.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Awaitable, Callable, Hashable, Iterator
from inspect import isawaitable
from typing import Any

from .. import codecs
from ..channel import (
    BatchQueue,
    Item,
    Marker,
    Notification,
    Receiver,
    Registry,
    Stats,
    Subscriber,
    WhenFull,
)
from ..connect import Resolved, resolve
from ..errors import ConfigError

logger = logging.getLogger("pgtide.listen")

APPLICATION_NAME = "pgtide-listen"
"""The listener connection's application_name (``pgtide status`` counts these)."""

IN_DISPATCH: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "pgtide_listen_in_dispatch", default=False
)
"""True while callbacks run: registrations made there do not wait for the server."""

Pending = tuple[Awaitable[Any], Subscriber | None, Notification | None]


class ListenerCore:
    """Registry + queue + connection thread + delivery, shared by both faces."""

    def __init__(
        self,
        dsn: str | Resolved | None,
        *,
        decode: codecs.Codec,
        on_reconnect: Callable[[], Any] | None,
        queue_size: int,
        when_full: WhenFull,
        probe_interval: float,
        probe_timeout: float,
        sync_timeout: float,
        application_name: str,
    ) -> None:
        if probe_interval <= 0 or probe_timeout <= 0:
            raise ConfigError(
                "probe_interval and probe_timeout must be positive numbers of seconds"
            )
        if on_reconnect is not None and not callable(on_reconnect):
            raise TypeError("on_reconnect must be a callable taking no arguments")
        self._dsn = dsn
        self._resolved: Resolved | None = None
        self._decode = codecs.decoder(decode)
        self.on_reconnect = on_reconnect
        self.registry = Registry()
        self.queue = BatchQueue(queue_size, when_full)
        self.stats = Stats()
        self._probe_interval = probe_interval
        self._probe_timeout = probe_timeout
        self.sync_timeout = sync_timeout
        self._application_name = application_name
        self._receiver: Receiver | None = None
        self.closing = False

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._receiver is not None and not self.closing

    def open(self) -> None:
        """Connect and LISTEN on every active channel; raise if the first connection fails."""
        if self._resolved is None:
            self._resolved = resolve(self._dsn)
        self.closing = False
        self.queue.reopen()
        receiver = Receiver(
            self._resolved,
            self.registry,
            self.queue,
            self.stats,
            application_name=self._application_name,
            probe_interval=self._probe_interval,
            probe_timeout=self._probe_timeout,
        )
        receiver.start()
        self._receiver = receiver

    def close(self) -> None:
        """Stop the connection thread and discard what is queued (dispatchers then return)."""
        self.closing = True
        receiver, self._receiver = self._receiver, None
        self.queue.close()
        if receiver is not None:
            receiver.stop()

    # -- registrations --------------------------------------------------------------------

    def changed(self, version: int, on_applied: Callable[[], None]) -> bool:
        """After a registration: True if the caller should wait for ``on_applied``."""
        receiver = self._receiver
        if receiver is None:
            return False
        if IN_DISPATCH.get():
            receiver.wake()
            return False
        return receiver.when_applied(version, on_applied)

    # -- delivery -------------------------------------------------------------------------

    def failed(self, sub: Subscriber | None, note: Notification | None, exc: BaseException) -> None:
        """Log and count a callback that raised; delivery goes on."""
        stats = self.stats
        stats.callback_errors += 1
        if sub is None:
            stats.errors_by_subscriber["on_reconnect"] += 1
            logger.error("on_reconnect callback raised %r", exc, exc_info=exc)
            return
        stats.errors_by_subscriber[sub.id] += 1
        logger.error(
            "callback of subscriber %r on channel %r raised %r",
            sub.id,
            note.channel if note is not None else sub.channel,
            exc,
            exc_info=exc,
        )

    def deliver(self, item: Item) -> Iterator[Pending]:
        """Decode and dispatch one queued item; yield awaitables for the face to run."""
        if isinstance(item, Marker):
            callback = self.on_reconnect
            if callback is not None:
                try:
                    result = callback()
                except Exception as exc:
                    self.failed(None, None, exc)
                else:
                    if result is not None and isawaitable(result):
                        yield result, None, None
            return
        received_at, enc, notes = item
        registry = self.registry
        decode = self._decode
        failed = self.failed
        done = 0
        for relname, pid, extra in notes:
            if self.closing:
                break
            done += 1
            channel = relname.decode(enc)
            subs = registry.routes.get(channel)
            if subs is None:
                self.stats.unrouted += 1
                continue
            raw = extra.decode(enc)
            if decode is None:
                note = Notification(channel, raw, raw, pid, received_at)
            else:
                try:
                    note = Notification(channel, decode(raw), raw, pid, received_at)
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"
                    note = Notification(channel, raw, raw, pid, received_at, error)
            for sub in subs:
                try:
                    result = sub.callback(note)
                except Exception as exc:
                    failed(sub, note, exc)
                    continue
                if result is not None and isawaitable(result):
                    yield result, sub, note
        self.stats.dispatched += done

    # -- views ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        stats = self.stats
        _version, active = self.registry.active()
        subscribers = self.registry.subscribers()
        return {
            "running": self.running,
            "connected": stats.connected,
            "backend_pid": stats.backend_pid,
            "channels": list(subscribers),
            "active_channels": sorted(active),
            "listening": sorted(stats.listening),
            "muted_channels": self.registry.muted_channels(),
            "subscribers": {ch: list(subs) for ch, subs in subscribers.items()},
            "muted_subscribers": {
                ch: [i for i, muted in subs.items() if muted]
                for ch, subs in subscribers.items()
                if any(subs.values())
            },
            "received": stats.received,
            "dispatched": stats.dispatched,
            "unrouted": stats.unrouted,
            "callback_errors": stats.callback_errors,
            "errors_by_subscriber": dict(stats.errors_by_subscriber),
            "queued": len(self.queue),
            "queue_size": self.queue.maxsize,
            "queue_high_water": self.queue.high_water,
            "when_full": self.queue.when_full,
            "dropped": self.queue.dropped,
            "reconnects": stats.reconnects,
            "last_error": stats.last_error,
        }


def iter_id(channel: str, serial: int) -> Hashable:
    """The subscriber id ``iter()`` registers under (visible in ``status()``)."""
    return ("iter", channel, serial)
