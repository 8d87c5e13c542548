"""The one listener core behind both faces (:class:`pgtide.Listener`, :class:`pgtide.aio.Listener`).

Everything but "how to wait" lives here, written once:

- :class:`ListenerCore` owns the registry, the bounded queue, the counters and the connection
  thread; a registration returns a :class:`Change` (its result and the LISTEN set version it
  made), and ``deliver`` turns a queued batch into calls, yielding the awaitables returned by
  async callbacks for the face to run, in order.
- :class:`Face` is the base of both faces: the constructor, the views and ``repr``.
- :class:`Pull` is the state of one ``iter()``: its subscription and its end.

A face only decides where callbacks run (a dispatcher thread, or a task on the event loop) and
how it waits (blocking or with ``await``): each of its registration methods is one line that
hands the core's :class:`Change` to the face's ``_settle``.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import operator
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from inspect import isawaitable
from typing import Any, ClassVar, Final, Generic, TypeAlias, TypeVar

from .. import codecs
from .._compat import positional_dsn
from ..channel import (
    BatchQueue,
    Callback,
    Item,
    Marker,
    Notification,
    Receiver,
    Registry,
    Settings,
    SocketCopy,
    Stats,
    Subscriber,
    WhenFull,
)
from ..connect import DsnLike, Resolved, needs_session, resolve

logger = logging.getLogger("pgtide.listen")

APPLICATION_NAME = "pgtide-listen"
"""The listener connection's application_name (``pgtide status`` counts these)."""

IN_DISPATCH: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "pgtide_listen_in_dispatch", default=False
)
"""True while callbacks run: registrations made there do not wait for the server."""

END: Final = object()
"""Put in an iterator's inbox to end it (the listener stopped, or it timed out)."""

T = TypeVar("T")
Pending = tuple[Awaitable[Any], Subscriber | None, Notification | None]
_PAYLOAD = operator.itemgetter(2)
"""The raw payload (``extra``) of a libpq notification (relname, be_pid, extra)."""
Names: TypeAlias = tuple[str | Iterable[str] | None, ...]
"""What ``mute``, ``unmute``, ``remove_channel`` and ``add_channel`` take: names, iterables."""
_UPPER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def flatten(channels: Names) -> list[str] | None:
    """The channel names of ``*channels`` (a name, several, or iterables of names); None
    when none is given (meaning every channel)."""
    if not channels or channels == (None,):
        return None
    names: list[str] = []
    for item in channels:
        if item is None and not names:  # mute(None, ...): the first, optional, name
            continue
        if isinstance(item, str):
            names.append(item)
        elif isinstance(item, Iterable) and not isinstance(item, bytes | bytearray):
            names.extend(item)
        else:
            raise TypeError(
                f"channel names must be str or an iterable of str, not {type(item).__name__}"
            )
    return list(dict.fromkeys(names))


@dataclass(frozen=True, slots=True)
class Change(Generic[T]):
    """What a registration did: the value to return, the LISTEN set version it made, and
    whether the caller waits until the server applied it (LISTEN: yes; UNLISTEN: no need)."""

    result: T
    version: int
    confirm: bool


class ListenerCore:
    """Registry + queue + connection thread + delivery, shared by both faces."""

    def __init__(
        self,
        dsn: DsnLike,
        *,
        decode: codecs.Codec,
        on_reconnect: Callable[[], Any] | None,
        queue_size: int,
        when_full: WhenFull,
        settings: Settings,
        sync_timeout: float,
    ) -> None:
        if on_reconnect is not None and not callable(on_reconnect):
            raise TypeError("on_reconnect must be a callable taking no arguments")
        self._dsn = dsn
        # an explicit dsn is checked now (a clear ConfigError for a wrong kind or a dict key
        # libpq does not know); None is resolved at start (it may start the embedded server)
        self._resolved: Resolved | None = None if dsn is None else resolve(dsn)
        self._decode = codecs.decoder(decode)
        self.on_reconnect = on_reconnect
        self.registry = Registry()
        self.queue = BatchQueue(queue_size, when_full)
        self.stats = Stats()
        self._settings = settings
        self.sync_timeout = sync_timeout
        self._receiver: Receiver | None = None
        self._serial = itertools.count(1)
        self.pulls: weakref.WeakSet[Pull] = weakref.WeakSet()
        self.closing = False
        self.without_subscriber: Counter[str] = Counter()  # added channel -> notifications
        self._case_warned: set[str] = set()

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._receiver is not None and not self.closing

    def open(self) -> None:
        """Connect and LISTEN on every active channel; raise if the first connection fails."""
        needs_session("a Listener (LISTEN keeps a session)")
        if self._resolved is None:
            self._resolved = resolve(self._dsn)
        self.closing = False
        self.queue.reopen()
        receiver = Receiver(self._resolved, self.registry, self.queue, self.stats, self._settings)
        receiver.start()
        self._receiver = receiver

    def close(self) -> None:
        """Stop the connection thread and discard what is queued (dispatchers then return)."""
        self.closing = True
        receiver, self._receiver = self._receiver, None
        self.queue.close()
        if receiver is not None:
            receiver.stop()

    def next_item(self, copy: SocketCopy) -> Item | bool:
        """The next item to deliver without waiting: the queue's, else what the socket holds
        (read by the dispatcher itself: see :meth:`Receiver.take_now`). When there is
        nothing, whether to wait on ``copy.fd`` (the dispatcher's duplicate of the socket)
        besides the queue's wakeup (True), or on the wakeup alone (False)."""
        item = self.queue.get_nowait()
        if item is not None:
            return item
        receiver = self._receiver
        return False if receiver is None else receiver.take_now(self.queue, copy)

    def leave_socket(self) -> None:
        """The dispatcher cannot wait on the socket: the connection thread reads it."""
        if (receiver := self._receiver) is not None:
            receiver.leave_socket()

    def end_pulls(self) -> None:
        """End every open iterator (called by the face, in the context its inboxes expect)."""
        for pull in list(self.pulls):
            pull.put(END)

    # -- registrations --------------------------------------------------------------------

    def subscribe(self, channel: str, callback: Callback, id: Hashable | None) -> Change[Any]:
        sub_id, version = self.registry.subscribe(channel, callback, id)
        self._check_case(channel)
        return Change(sub_id, version, confirm=True)

    def add_channel(self, channels: Names) -> Change[None]:
        names = flatten(channels) or []
        version = self.registry.add_channels(names)
        for name in names:
            self._check_case(name)
        return Change(None, version, confirm=True)

    def unsubscribe(self, id: Hashable, channel: str | None) -> Change[bool]:
        removed, version = self.registry.unsubscribe(id, channel)
        return Change(removed, version, confirm=False)

    def remove_channel(self, channels: Names) -> Change[bool]:
        removed, version = self.registry.remove_channels(flatten(channels))
        return Change(removed, version, confirm=False)

    def mute(self, channels: Names) -> Change[None]:
        version = self.registry.set_channels_muted(flatten(channels), True)
        return Change(None, version, confirm=False)

    def unmute(self, channels: Names) -> Change[None]:
        version = self.registry.set_channels_muted(flatten(channels), False)
        return Change(None, version, confirm=True)

    def _check_case(self, channel: str) -> None:
        """Warn once per name: an unquoted ``NOTIFY MyChannel`` in SQL is sent on "mychannel"."""
        folded = channel.translate(_UPPER)
        if folded == channel or channel in self._case_warned:
            return
        self._case_warned.add(channel)
        logger.warning(
            "Channel %r has capital letters. pgtide listens to it as written (pgtide.notify "
            "quotes names), but PostgreSQL folds an unquoted name to lower case: NOTIFY %s in "
            'SQL is sent on %r and never arrives here; quote it in SQL (NOTIFY "%s") or '
            "use pg_notify(%s, ...).",
            channel,
            channel,
            folded,
            channel.replace('"', '""'),
            "'" + channel.replace("'", "''") + "'",
        )

    def mute_subscriber(self, id: Hashable, channel: str | None) -> Change[None]:
        version = self.registry.set_subscriber_muted(id, channel, True)
        return Change(None, version, confirm=False)

    def unmute_subscriber(self, id: Hashable, channel: str | None) -> Change[None]:
        version = self.registry.set_subscriber_muted(id, channel, False)
        return Change(None, version, confirm=True)

    def must_wait(self, change: Change[Any], on_applied: Callable[[], None]) -> bool:
        """Have the connection apply ``change``; True if the face should wait for
        ``on_applied`` (called from the connection thread once the server has it)."""
        receiver = self._receiver
        if receiver is None:
            return False  # applied at start
        if not change.confirm or IN_DISPATCH.get():
            receiver.wake()  # a callback never waits for the connection it runs behind
            return False
        return receiver.when_applied(change.version, on_applied)

    def late(self) -> None:
        """Say that a LISTEN was not confirmed within ``sync_timeout``."""
        logger.warning(
            "LISTEN not confirmed within %g s; it is applied as soon as the server answers",
            self.sync_timeout,
        )

    def restart(self, on_ready: Callable[[], None]) -> bool:
        """Have the connection thread reopen its connection; True if the face should wait
        for ``on_ready`` (called once the new connection LISTENs, before on_reconnect)."""
        receiver = self._receiver
        if receiver is None or self.closing:
            return False
        return receiver.restart(on_ready) and not IN_DISPATCH.get()

    def restart_late(self) -> None:
        logger.warning(
            "restart(): no new connection within %g s; the listener keeps trying with backoff",
            self.sync_timeout,
        )

    def pull(self, channel: str, timeout: float | None, put: Callable[[Any], None]) -> Pull:
        """The state of a new ``iter(channel)`` whose inbox takes items through ``put``."""
        return Pull(self, channel, timeout, put, ("iter", channel, next(self._serial)))

    # -- delivery -------------------------------------------------------------------------

    def failed(self, sub: Subscriber | None, note: Notification | None, exc: BaseException) -> None:
        """Log and count a callback that raised; delivery goes on."""
        stats = self.stats
        stats.counts["callback_errors"] += 1
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
        """Decode and dispatch one queued item; yield awaitables for the face to run.

        The hot path. Everything a notification needs is bound to a local name once per
        batch; the channel name, its subscribers and the callback are looked up again only
        when the channel changes or the routes do (a mute or an unsubscribe from a callback
        applies to the very next notification); each :class:`Notification` is filled in
        without a call to its ``__init__`` (``test_listen_core`` checks that every field is
        set); only a second subscriber of a channel costs a copy.
        """
        if isinstance(item, Marker):
            yield from self._reconnected()
            return
        received_at, enc, notes = item
        registry = self.registry
        decode, rescue = codecs.for_batch(self._decode, map(_PAYLOAD, notes))
        new = object.__new__
        routes: dict[str, tuple[Subscriber, ...]] | None = None  # what the lookup below used
        relname_was = b""
        channel = ""
        subs: tuple[Subscriber, ...] | None = None
        done = unrouted = 0
        try:
            for relname, pid, extra in notes:
                if self.closing:
                    break
                if relname != relname_was or registry.routes is not routes:
                    routes = registry.routes
                    relname_was = relname
                    channel = relname.decode(enc)
                    subs = routes.get(channel)
                    if subs:
                        first = subs[0]  # the one the notification itself goes to
                done += 1
                if not subs:
                    if subs is None:
                        unrouted += 1
                    else:  # an added channel that has no subscriber (yet)
                        self.without_subscriber[channel] += 1
                    continue
                note = new(Notification)
                note.channel = channel
                note.raw = raw = extra.decode(enc)
                note.pid = pid
                note.received_at = received_at
                note.error = None
                if decode is None:
                    note.payload = raw
                else:
                    try:
                        note.payload = decode(raw)
                    except Exception as exc:
                        if rescue is not None:
                            note.payload = rescue(raw)
                        else:
                            note.payload = raw
                            note.error = f"{type(exc).__name__}: {exc}"
                note.subscriber = first.id
                for sub in subs:
                    if sub is not first:  # the others get a copy each (an async callback
                        note = note.copy_for(sub.id)  # reads its own later)
                    try:
                        result = sub.callback(note)
                    except Exception as exc:
                        self.failed(sub, note, exc)
                        continue
                    if result is not None and isawaitable(result):
                        yield result, sub, note
        finally:
            counts = self.stats.counts
            counts["dispatched"] += done
            counts["unrouted"] += unrouted

    def _reconnected(self) -> Iterator[Pending]:
        callback = self.on_reconnect
        if callback is None:
            return
        try:
            result = callback()
        except Exception as exc:
            self.failed(None, None, exc)
        else:
            if result is not None and isawaitable(result):
                yield result, None, None

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
            "added_channels": self.registry.added_channels(),
            "active_channels": sorted(active),
            "listening": sorted(stats.listening),
            "muted_channels": self.registry.muted_channels(),
            "subscribers": {ch: list(subs) for ch, subs in subscribers.items()},
            "muted_subscribers": {
                ch: [i for i, muted in subs.items() if muted]
                for ch, subs in subscribers.items()
                if any(subs.values())
            },
            "received": stats.counts["received"],
            "without_subscriber": dict(self.without_subscriber),
            "dispatched": stats.counts["dispatched"],
            "unrouted": stats.counts["unrouted"],
            "callback_errors": stats.counts["callback_errors"],
            "errors_by_subscriber": dict(stats.errors_by_subscriber),
            "queued": len(self.queue),
            "queue_size": self.queue.maxsize,
            "queue_high_water": self.queue.high_water,
            "when_full": self.queue.when_full,
            "dropped": self.queue.dropped,
            "reconnects": stats.counts["reconnects"],
            "last_error": stats.last_error,
        }


@dataclass(eq=False)
class Pull:
    """One ``iter()``: its subscriber id, its channel and timeout, whether it is open.

    The face owns the inbox (a thread-safe queue, or an asyncio queue) and waits on it; the
    subscription puts each notification in it through ``put``, and so does :meth:`end`.
    """

    core: ListenerCore
    channel: str
    timeout: float | None
    put: Callable[[Any], None]
    id: Hashable
    state = "new"  # -> "open" -> "closed"

    def subscribe(self) -> Change[Any]:
        """Subscribe the inbox; the face settles the change (call it once, when "new")."""
        change = self.core.subscribe(self.channel, self.put, self.id)
        self.state = "open"
        self.core.pulls.add(self)
        return change

    def take(self, item: object) -> Notification | None:
        """The notification ``item`` holds, or None when the iteration is over (closed then)."""
        if item is END or self.state == "closed":
            self.close()
            return None
        note: Notification = item  # type: ignore[assignment]
        return note

    def close(self) -> None:
        """Unsubscribe (UNLISTEN never needs waiting for); the iteration ends."""
        if self.state == "open":
            self.core.pulls.discard(self)
            self.core.must_wait(self.core.unsubscribe(self.id, self.channel), _nothing)
        self.state = "closed"


class Face:
    """What both faces share: the constructor, the views, ``repr``."""

    _name: ClassVar[str]

    def __init__(
        self,
        deprecated_dsn: DsnLike = None,
        /,
        *,
        dsn: DsnLike = None,
        decode: codecs.Codec = "json",
        on_reconnect: Callable[[], Any] | None = None,
        queue_size: int = 10_000,
        when_full: WhenFull = "block",
        probe_interval: float = 5.0,
        probe_timeout: float = 5.0,
        sync_timeout: float = 10.0,
        stop_timeout: float = 10.0,
        application_name: str = APPLICATION_NAME,
    ) -> None:
        dsn = positional_dsn(deprecated_dsn, dsn, self._name)
        self._core = ListenerCore(
            dsn,
            decode=decode,
            on_reconnect=on_reconnect,
            queue_size=queue_size,
            when_full=when_full,
            settings=Settings(application_name, probe_interval, probe_timeout),
            sync_timeout=sync_timeout,
        )
        self._stop_timeout = stop_timeout
        self._prepare()

    def _prepare(self) -> None:
        """The face's own state (no connection: nothing connects before ``start``)."""

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{self._name} {state} channels={self.channels()!r}>"

    @property
    def running(self) -> bool:
        """True between ``start()`` and ``close()`` (even while reconnecting)."""
        return self._core.running

    def is_running(self) -> bool:
        """True between ``start()`` and ``close()`` (even while reconnecting): ``running``."""
        return self._core.running

    def channels(self) -> list[str]:
        """Every channel with a subscriber (muted or not), and every added channel."""
        return self._core.registry.channels()

    def muted_channels(self) -> list[str]:
        """The muted channel names, sorted (a name may be muted before it is subscribed)."""
        return self._core.registry.muted_channels()

    def active_channels(self) -> list[str]:
        """The channels that must be LISTENed: not muted, with a subscriber that is not muted."""
        return sorted(self._core.registry.active()[1])

    def subscribers(self) -> dict[str, dict[Hashable, bool]]:
        """channel -> {subscriber id: muted}."""
        return self._core.registry.subscribers()

    def status(self) -> dict[str, Any]:
        """Connection, channels, counters (received, dispatched, callback errors, dropped...)."""
        return self._core.status()


def _nothing() -> None:
    return None
