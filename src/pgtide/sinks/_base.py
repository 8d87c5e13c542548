"""What every sink shares: filters, the message of a change, the destination template, the
delivery loop with backoff, the private event loop of the blocking face, and masking."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import string
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import attrgetter, itemgetter
from typing import Any, ClassVar, Generic, Protocol, TypedDict, TypeVar, overload
from urllib.parse import urlsplit, urlunsplit

from orjson import dumps as _fast_dumps

from .. import Change, Position
from ..connect import Backoff
from ..errors import ConfigError, PgtideError
from ..names import TableName
from ._encode import change_key, dumps, encode, record

log = logging.getLogger("pgtide.sinks")

T = TypeVar("T")


class SinkError(PgtideError):
    """A sink could not deliver: the batch stays unacknowledged and comes again."""


class BrokerUnreachable(SinkError):
    """The broker (or endpoint) could not be reached when the sink started."""


class SinkStopped(SinkError):
    """``sink.stop()`` ended a delivery that was waiting for the broker to come back."""


class BatchLike(Protocol):
    """What a sink needs of a batch: its changes in order and its start and end positions
    (:class:`pgtide.Batch` and :class:`pgtide.aio.Batch` are such batches)."""

    @property
    def start(self) -> Position: ...
    @property
    def position(self) -> Position: ...
    def __iter__(self) -> Iterator[Change]: ...
    def __len__(self) -> int: ...


class Changes(Protocol):
    """A batch's changes as the feed read them (``batch._captured()`` of a
    :class:`pgtide.Batch`), made into :class:`Change` objects only if asked: their rows, when
    each row's JSON is what the record of its change holds (``captured``), the ``at`` of a
    row's time (``instant``), and the changes (``make``)."""

    def captured(self) -> list[tuple[Any, ...]] | None: ...
    def instant(self, stamp: bytes) -> datetime: ...
    def make(self) -> list[Change]: ...


@dataclass(slots=True)
class Message:
    """One change ready to send: ``key`` is :func:`change_key`, ``dest`` the subject, stream
    or key it goes to, ``body`` its encoded JSON (or what ``transform`` made of it)."""

    change: Change
    key: str
    body: bytes
    dest: str


_NULL = "null"
_TYPED = (object(), None)
"""In place of a change's rows' JSON text: the change's record is encoded from its typed
rows."""


def _same(value: T) -> T:
    return value


_XID, _STAMP = itemgetter(1), itemgetter(6)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class _Column(Generic[T]):
    """A column of :class:`Messages` made at its first use: of each message's change, or,
    for messages made from a batch's rows as read, of those rows."""

    def __init__(
        self,
        of_change: Callable[[Change], T],
        of_rows: Callable[[Changes, list[tuple[Any, ...]]], list[T]],
    ) -> None:
        self._of_change = of_change
        self._of_rows = of_rows
        self._slot = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self._slot = "_" + name

    def __get__(self, messages: Messages, owner: type | None = None) -> list[T]:
        made: list[T] | None = getattr(messages, self._slot)
        if made is None:
            source = messages._rows
            rows = None if source is None else source.captured()
            if source is None or rows is None:
                made = list(map(self._of_change, messages.changes))
            else:
                made = self._of_rows(source, rows)
            setattr(messages, self._slot, made)
        return made


def _times(source: Changes, rows: list[tuple[Any, ...]]) -> list[datetime]:
    """The ``at`` of the changes of ``rows``: one object per time."""
    stamps = list(map(_STAMP, rows))
    made = {stamp: source.instant(stamp) for stamp in set(stamps)}
    return list(map(made.__getitem__, stamps))


class Messages(Sequence[Message]):
    """The messages of a batch, kept as columns: ``changes``, ``keys``, ``bodies`` and
    ``dests`` (one entry per message, in order), and each one's change's ``xids`` and
    ``times`` (its ``at``). Built-in sinks read the columns; indexing or iterating makes
    each :class:`Message` on the way, for code that wants them. Columns not given are made
    at their first use (a sink that never reads them does not pay for them): ``keys`` each
    the :func:`change_key` of its change, and, for messages made from a batch's rows as
    read (``rows``, one message per row), ``changes`` too."""

    __slots__ = ("_changes", "_keys", "_rows", "_times", "_xids", "bodies", "dests")

    def __init__(
        self,
        changes: list[Change] | None = None,
        keys: list[str] | None = None,
        bodies: list[bytes] | None = None,
        dests: list[str] | None = None,
        *,
        rows: Changes | None = None,
    ) -> None:
        made = changes is not None or rows is not None  # else: no message yet
        self._rows = rows
        self._changes = changes if made else []
        self._keys = keys if keys is not None or made else []
        self.bodies = [] if bodies is None else bodies
        self.dests = [] if dests is None else dests
        self._xids: list[int] | None = None
        self._times: list[datetime] | None = None

    @property
    def changes(self) -> list[Change]:
        """Each message's change."""
        changes = self._changes
        if changes is None:
            assert self._rows is not None
            changes = self._changes = self._rows.make()
        return changes

    keys: _Column[str] = _Column(
        change_key, lambda _, rows: [f"{xid}-{id_}" for id_, xid, *_ in rows]
    )
    """Each message's key (its change's :func:`change_key` unless given)."""
    xids: _Column[int] = _Column(attrgetter("xid"), lambda _, rows: list(map(_XID, rows)))
    """Each message's change's ``xid``."""
    times: _Column[datetime] = _Column(attrgetter("at"), lambda source, rows: _times(source, rows))
    """Each message's change's ``at`` (the changes of a transaction share one)."""

    def append(self, change: Change, key: str, body: bytes, dest: str) -> None:
        """Add one message."""
        self._own()
        self.keys.append(key)
        self.changes.append(change)
        self.bodies.append(body)
        self.dests.append(dest)

    def extend(self, other: Messages) -> None:
        """Add the messages of ``other``, in order."""
        self._own()
        self.keys.extend(other.keys)
        self.changes.extend(other.changes)
        self.bodies += other.bodies
        self.dests += other.dests

    def _own(self) -> None:
        """Before adding messages: the columns made on demand are made (and the changes
        are a list of these messages' own, not the batch's)."""
        if self._rows is not None:
            self._changes = list(self.changes)
            self._rows = self._xids = self._times = None

    def __len__(self) -> int:
        return len(self.bodies)

    @overload
    def __getitem__(self, index: int) -> Message: ...
    @overload
    def __getitem__(self, index: slice) -> Messages: ...
    def __getitem__(self, index: int | slice) -> Message | Messages:
        if isinstance(index, slice):
            return Messages(
                self.changes[index], self.keys[index], self.bodies[index], self.dests[index]
            )
        return Message(self.changes[index], self.keys[index], self.bodies[index], self.dests[index])

    def __iter__(self) -> Iterator[Message]:
        return map(Message, self.changes, self.keys, self.bodies, self.dests)

    def __repr__(self) -> str:
        return f"<Messages of {len(self)} changes>"


def _head(table: str, op: str) -> str:
    """The ``"table":...,"op":...`` part of the JSON of a change of ``table`` and ``op``."""
    return _fast_dumps({"table": table, "op": op}).decode()[1:-1]


def mask_url(url: str) -> str:
    """``url`` for logs and errors: the password (or a token) and the query string masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unreadable url>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, sep, _password = userinfo.partition(":")
        netloc = f"{user}:***@{host}" if sep else f"***@{host}"
    query = "***" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def check_url(url: str, schemes: Iterable[str], what: str) -> str:
    """``url`` if it is a URL of one of ``schemes`` with a host; :class:`ConfigError` else."""
    allowed = tuple(schemes)
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"{what} needs a URL such as {allowed[0]}://127.0.0.1; got {url!r}")
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError as exc:
        raise ConfigError(f"{what}: {mask_url(url)!r} is not a valid URL ({exc})") from None
    if parts.scheme not in allowed:
        raise ConfigError(
            f"{what}: {mask_url(url)!r} is not a {'/'.join(allowed)} URL "
            f"(expected e.g. {allowed[0]}://127.0.0.1)"
        )
    if not parts.hostname and parts.scheme != "unix":
        raise ConfigError(f"{what}: {mask_url(url)!r} names no host")
    return url.strip()


class Template:
    """A destination such as ``"pg.{table}.{op}"``: ``{table}`` (``schema.name``),
    ``{schema}``, ``{name}``, ``{op}`` and ``{key}`` (what ``key=`` returns)."""

    FIELDS: ClassVar[frozenset[str]] = frozenset({"table", "schema", "name", "op", "key"})

    def __init__(self, text: str, what: str, clean: Callable[[str], str] = str) -> None:
        if not isinstance(text, str) or not text:
            raise ConfigError(f"{what} must be a non-empty string such as 'pg.{{table}}'")
        try:
            fields = {f for _, f, spec, conv in string.Formatter().parse(text) if f is not None}
        except ValueError as exc:
            raise ConfigError(f"{what} {text!r} is not a template: {exc}") from None
        unknown = fields - self.FIELDS
        if unknown:
            raise ConfigError(
                f"{what} {text!r} uses {', '.join(sorted('{' + u + '}' for u in unknown))}; "
                f"a template may use {{table}}, {{schema}}, {{name}}, {{op}} and {{key}}"
            )
        self.text = text
        self.fields = fields
        self._clean = clean
        self._cache: dict[tuple[str, str, str | None], str] = {}

    def render(self, change: Change, key: str | None) -> str:
        found = self._cache.get((change.table, change.op, key))
        if found is not None:
            return found
        schema, _, name = change.table.rpartition(".")
        values = {"table": change.table, "schema": schema, "name": name, "op": change.op}
        values["key"] = "" if key is None else key
        rendered = self.text.format(**{k: self._clean(v) for k, v in values.items()})
        if len(self._cache) < 100_000:
            self._cache[(change.table, change.op, key)] = rendered
        return rendered

    def __str__(self) -> str:
        return self.text


class _Portal:
    """The private event loop, in a thread, on which a sink runs for the blocking face."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.submit(coro).result()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Pending[T]:
        return Pending(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():
            self.loop.close()


class Pending(Generic[T]):
    """A delivery under way on the sink's thread (what :meth:`Sink.submit` returns)."""

    __slots__ = ("_future",)

    def __init__(self, future: concurrent.futures.Future[T]) -> None:
        self._future = future

    def result(self) -> T:
        """Wait for the delivery: return once the broker confirmed it, or raise why not."""
        try:
            return self._future.result()
        except concurrent.futures.CancelledError:
            raise SinkStopped("the sink was closed during a delivery") from None

    def done(self) -> bool:
        """Whether the delivery ended (confirmed or failed)."""
        return self._future.done()


def _tables(tables: Iterable[str] | str | None) -> tuple[set[str], set[str]] | None:
    """The table filter as (qualified names, bare names that match in any schema)."""
    if tables is None:
        return None
    if isinstance(tables, str):
        tables = [tables]
    qualified: set[str] = set()
    bare: set[str] = set()
    for text in tables:
        name = TableName.parse(text)  # InvalidName for an unreadable name
        if name.schema is None:
            bare.add(name.name)
        else:
            qualified.add(f"{name.schema}.{name.name}")
    if not qualified and not bare:
        raise ConfigError("tables=[] lets nothing through; leave it out to send every table")
    return qualified, bare


def _ops(ops: Iterable[str] | str | None) -> frozenset[str] | None:
    if ops is None:
        return None
    chosen = frozenset([ops] if isinstance(ops, str) else ops)
    unknown = chosen - set(Change.OPS)
    if unknown or not chosen:
        raise ConfigError(
            f"ops={sorted(chosen)!r}: each op must be one of {', '.join(sorted(Change.OPS))}"
        )
    return chosen


@dataclass(slots=True)
class Selection:
    """Which changes a sink sends, and as what: the ``tables``, ``ops`` and ``where``
    filters, the ``transform`` of each change and its ``key`` (for ``{key}`` templates)."""

    tables: tuple[set[str], set[str]] | None = None
    ops: frozenset[str] | None = None
    where: Callable[[Change], bool] | None = None
    transform: Callable[[Change], Any] | None = None
    key: Callable[[Change], Any] | None = None
    _table_ok: dict[str, bool] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        tables: Iterable[str] | str | None = None,
        ops: Iterable[str] | str | None = None,
        where: Callable[[Change], bool] | None = None,
        transform: Callable[[Change], Any] | None = None,
        key: Callable[[Change], Any] | None = None,
    ) -> Selection:
        """The selection of these options, checked (:class:`ConfigError` names a bad one)."""
        for name, fn in (("where", where), ("transform", transform), ("key", key)):
            if fn is not None and not callable(fn):
                raise ConfigError(f"{name}= must be a callable taking a Change, not {fn!r}")
        return cls(_tables(tables), _ops(ops), where, transform, key)

    def chosen(self, changes: Iterable[Change]) -> list[Change]:
        """The changes that pass the filters, in order (each filter a pass over the batch,
        none when not configured)."""
        out = list(changes)
        if self.ops is not None:
            ops = self.ops
            out = [c for c in out if c.op in ops]
        if self.tables is not None:
            table_ok = self._table_ok
            for table in {c.table for c in out}.difference(table_ok):
                table_ok[table] = self._table_wanted(table)
            out = [c for c in out if table_ok[c.table]]
        if self.where is not None:
            where = self.where
            out = [c for c in out if where(c)]
        return out

    def everything(self) -> bool:
        """Whether every change is sent, as its record (no filter, transform nor key)."""
        return (
            self.tables is None
            and self.ops is None
            and self.where is None
            and self.transform is None
            and self.key is None
        )

    def _table_wanted(self, table: str) -> bool:
        assert self.tables is not None
        qualified, bare = self.tables
        return table in qualified or table.rpartition(".")[2] in bare

    def wanted(self, change: Change) -> bool:
        """Whether ``change`` passes the ``tables``, ``ops`` and ``where`` filters."""
        if self.ops is not None and change.op not in self.ops:
            return False
        if self.tables is not None:
            ok = self._table_ok.get(change.table)
            if ok is None:
                ok = self._table_ok[change.table] = self._table_wanted(change.table)
            if not ok:
                return False
        return self.where is None or bool(self.where(change))


@dataclass(slots=True)
class Counts:
    """What a sink did: batches delivered, messages the broker accepted (``delivered``) or
    already held (``duplicates``: sent before a crash, not stored twice), retries after an
    outage, and the time of the last delivery."""

    batches: int = 0
    delivered: int = 0
    duplicates: int = 0
    retries: int = 0
    last_delivery: float | None = None


class SinkOptions(TypedDict, total=False):
    """The options every sink takes, checked by :class:`Sink`: which changes it sends
    (``tables``, ``ops``, ``where``), as what (``transform``, ``key``), and the longest
    wait between retries (``backoff_max``, seconds)."""

    tables: Iterable[str] | str | None
    ops: Iterable[str] | str | None
    where: Callable[[Change], bool] | None
    transform: Callable[[Change], Any] | None
    key: Callable[[Change], Any] | None
    backoff_max: float


class Sink(ABC):
    """A callable that delivers each batch of a feed somewhere, then returns, so that
    ``feed.run(sink)`` acknowledges the batch only once it was delivered.

    Subclasses implement :meth:`_connect`, :meth:`_disconnect` and :meth:`_deliver`, and
    list their transient errors in ``_outages``. Call the sink (blocking face) or await
    :meth:`send` (asyncio face, e.g. ``await pgtide.aio.Feed(...).run(sink.send)``).
    """

    kind: ClassVar[str] = "sink"
    _raw_bodies: ClassVar[bool] = True
    """Whether bytes and str from ``transform`` are message bodies as they are."""
    _wants_empty: ClassVar[bool] = False
    """Whether a batch with no message (all filtered out) is delivered anyway."""
    _outages: ClassVar[tuple[type[BaseException], ...]] = (OSError, asyncio.TimeoutError)
    max_changes: int = 1000
    """Changes per batch that ``feed.run(sink)`` reads when not given ``max_changes``."""

    def __init__(
        self,
        url: str,
        *,
        tables: Iterable[str] | str | None = None,
        ops: Iterable[str] | str | None = None,
        where: Callable[[Change], bool] | None = None,
        transform: Callable[[Change], Any] | None = None,
        key: Callable[[Change], Any] | None = None,
        attempts: int | None = None,
        backoff_max: float = 5.0,
    ) -> None:
        if attempts is not None and attempts < 1:
            raise ConfigError(f"retries must be >= 0, not {attempts - 1}")
        if backoff_max <= 0:
            raise ConfigError(f"backoff_max must be > 0 seconds, not {backoff_max}")
        self.url = url
        self.selection = Selection.of(tables, ops, where, transform, key)
        self.counts = Counts()
        """What the sink did, for progress reports (read from any thread)."""
        self._attempts, self._backoff_max = attempts, backoff_max
        self._connected = self._ever_connected = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._stopping = threading.Event()
        self._portal: _Portal | None = None
        self._lock = threading.Lock()
        self._heads: dict[tuple[str, str], tuple[str, str]] = {}

    # -- the message of each change ------------------------------------------------------
    def wanted(self, change: Change) -> bool:
        """Whether ``change`` passes the ``tables``, ``ops`` and ``where`` filters."""
        return self.selection.wanted(change)

    @abstractmethod
    def _destination(self, change: Change, key: str | None) -> str:
        """Where ``change`` goes: a subject, a stream key, or a URL."""

    def messages(self, batch: Iterable[Change]) -> Messages:
        """The messages to send for ``batch``: filtered, transformed, encoded, addressed."""
        select = self.selection
        if select.everything():
            captured = getattr(batch, "_captured", None)
            source: Changes | None = captured() if callable(captured) else None
            rows = None if source is None else source.captured()
            if source is not None and rows is not None:
                return self._captured_records(source, rows)
        changes = select.chosen(batch)
        if select.transform is None and select.key is None:
            return self._records(changes)
        raw, transform, key_of = self._raw_bodies, select.transform, select.key
        out = Messages()
        for change in changes:
            body = encode(change, transform, raw=raw)
            if body is None:
                continue
            key = None if key_of is None else str(key_of(change))
            out.append(change, change_key(change), body, self._destination(change, key))
        return out

    def _records(self, changes: list[Change]) -> Messages:
        """The messages of ``changes``, each its :func:`~pgtide.sinks.record` as JSON, to
        its table's destination (their keys are made only if a sink reads them)."""
        # the rows as captured when that JSON already says what the typed rows' would:
        # sent as they are, never decoded (numbers keep their digits either way)
        rows = [
            (c.id, c.xid, c.table, c.op, *(c.captured_json() or _TYPED), c.at, c) for c in changes
        ]
        bodies, dests = self._bodies(rows, _same)
        return Messages(changes, None, bodies, dests)

    def _captured_records(self, source: Changes, rows: list[tuple[Any, ...]]) -> Messages:
        """:meth:`_records` of a batch's changes from their rows as read (each row's JSON
        sent as it is, as there), without making a :class:`Change` of them."""
        bodies, dests = self._bodies(rows, source.instant)
        return Messages(None, None, bodies, dests, rows=source)

    def _bodies(
        self, rows: Iterable[tuple[Any, ...]], instant: Callable[[Any], datetime]
    ) -> tuple[list[bytes], list[str]]:
        """The bodies and destinations of changes given as rows: ``(id, xid, table, op, row,
        old, time, change)``, with ``row`` and ``old`` their JSON text (or :data:`_TYPED`:
        the body is ``change``'s record, encoded) and ``time`` what ``instant`` makes the
        change's ``at`` of. One loop over the batch, run for every change sent."""
        heads = self._heads
        bodies: list[bytes] = []
        dests: list[str] = []
        add_body, add_dest = bodies.append, dests.append
        moment: object = None
        when = ""
        table = op = ""
        head = ("", "")
        for id_, xid, row_table, row_op, row, old, stamp, change in rows:
            if row_table != table or row_op != op:  # a batch is mostly runs of one
                table, op = row_table, row_op
                head = heads.get((table, op)) or self._head(table, op, change)
            if row is _TYPED[0]:
                add_body(dumps(record(change)))
            else:
                if stamp != moment:  # a transaction's changes share their time
                    moment, when = stamp, _fast_dumps(instant(stamp)).decode()
                # record(change) as JSON, spelt out (the same bytes orjson writes)
                add_body(
                    f'{{"key":"{xid}-{id_}","id":{id_},"xid":{xid},{head[1]},'
                    f'"row":{row or _NULL},"old":{old or _NULL},"at":{when}}}'.encode()
                )
            add_dest(head[0])
        return bodies, dests

    def _head(self, table: str, op: str, change: object = None) -> tuple[str, str]:
        """The destination of changes of ``table`` and ``op`` (without ``key=``: their
        first one's, ``change`` if it is one, else that of a change of theirs with no
        rows), and the JSON of both; made once."""
        if not isinstance(change, Change):
            change = Change(0, table, op, None, None, 0, _EPOCH)
        head = self._heads[(table, op)] = (self._destination(change, None), _head(table, op))
        return head

    # -- delivery ------------------------------------------------------------------------
    async def send(self, batch: BatchLike) -> None:
        """Deliver ``batch``; return once the broker has acknowledged every message.

        While the broker is unreachable, retry with backoff (for ever, or ``retries``
        times); :meth:`stop` ends the wait with :class:`SinkStopped`. Nothing is
        acknowledged meanwhile, so nothing is lost."""
        await self._send(batch, self.messages(batch))

    async def _send(self, batch: BatchLike, messages: Messages) -> None:
        """:meth:`send` of the messages of ``batch``, made already."""
        self._bind()
        counts = self.counts
        if not messages and not self._wants_empty:
            counts.batches += 1
            return
        backoff = Backoff(initial=0.1, maximum=self._backoff_max)
        tries = 0
        while True:
            tries += 1
            try:
                if not self._connected:
                    await self._open()
                await self._deliver(batch, messages)
                break
            except SinkError:
                raise
            except self._outages as exc:
                if self._attempts is not None and tries >= self._attempts:
                    raise SinkError(
                        f"{self}: gave up after {tries} tries ({self._reason(exc)}); "
                        "the batch stays unacknowledged"
                    ) from None
                counts.retries += 1
                delay = backoff.next()
                log.warning(
                    "%s: %s; retrying in %.1f s (try %d); nothing is acknowledged meanwhile",
                    self,
                    self._reason(exc),
                    delay,
                    tries,
                )
                await self._drop()
                await self._pause(delay)
        counts.batches += 1
        counts.last_delivery = time.time()

    async def _open(self) -> None:
        try:
            await self._connect()
        except SinkError:
            raise
        except self._outages as exc:
            if not self._ever_connected:
                await self._drop()
                raise BrokerUnreachable(
                    f"cannot reach {self.kind} at {mask_url(self.url)}: {self._reason(exc)}"
                ) from None
            raise
        self._connected = True
        self._ever_connected = True

    async def _drop(self) -> None:
        self._connected = False
        try:
            await self._disconnect()
        except Exception as exc:  # a broken connection may fail to close: it is gone anyway
            log.debug("%s: closing after a failure: %s", self, self._reason(exc))

    async def _pause(self, seconds: float) -> None:
        wakeup = self._wakeup
        assert wakeup is not None
        if not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), seconds)
        if self._stopping.is_set():
            raise SinkStopped(f"{self}: stopped while waiting to retry; the batch stays unacked")

    def _reason(self, exc: BaseException) -> str:
        text = str(exc) or type(exc).__name__
        for secret in self._secrets():
            if secret:
                text = text.replace(secret, "***")
        return text.replace(self.url, mask_url(self.url))

    def _secrets(self) -> tuple[str, ...]:
        parts = urlsplit(self.url)
        return tuple(s for s in (parts.password, parts.username if not parts.password else "") if s)

    def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._wakeup = asyncio.Event()
            if self._stopping.is_set():
                self._wakeup.set()
        elif self._loop is not loop:
            raise SinkError(
                f"{self}: a sink serves one event loop; make one sink per loop (or per feed)"
            )

    # -- what subclasses do --------------------------------------------------------------
    async def _connect(self) -> None:  # noqa: B027 (a hook; a sink without one needs none)
        """Open the connection to the broker (raise one of ``_outages`` when unreachable)."""

    async def _disconnect(self) -> None:  # noqa: B027 (a hook, as _connect)
        """Close the connection (after a failure, or at close)."""

    @abstractmethod
    async def _deliver(self, batch: BatchLike, messages: Messages) -> None:
        """Send ``messages`` and return once the broker acknowledged every one."""

    # -- the blocking face ---------------------------------------------------------------
    def __call__(self, batch: BatchLike) -> None:
        """Deliver ``batch`` (blocking): the callable that ``pgtide.Feed.run`` takes."""
        self.submit(batch).result()

    def submit(self, batch: BatchLike) -> Pending[None]:
        """Start delivering ``batch`` on the sink's thread and return at once; ``result()``
        of what it returns waits for the broker's confirmation (or raises). One delivery
        at a time: submit the next batch once the one before was confirmed.
        ``pgtide.Feed.run`` uses it to read the next batch during a delivery."""
        # The messages are made here, in the caller's thread: the sink's thread then mostly
        # waits for the broker, and the caller's reads (each wait for the database ends
        # with taking the GIL back) are not held up behind its work.
        messages = self.messages(batch)
        return self._portal_().submit(self._send(batch, messages))

    def asubmit(self, batch: BatchLike) -> asyncio.Task[None]:
        """Start delivering ``batch`` on the running event loop and return at once; await
        what it returns for the broker's confirmation (it raises if the delivery failed).
        One delivery at a time, as :meth:`submit`. ``pgtide.aio.Feed.run`` uses it to read
        the next batch during a delivery."""
        return asyncio.ensure_future(self.send(batch))

    def _portal_(self) -> _Portal:
        with self._lock:
            if self._portal is None:
                self._portal = _Portal(f"pgtide {self.kind} sink")
            return self._portal

    def open(self) -> None:
        """Connect now (blocking face): :class:`BrokerUnreachable` names the broker if it
        cannot be reached. Without it, the first batch connects."""
        self._portal_().call(self.aopen())

    async def aopen(self) -> None:
        """Connect now (asyncio face); see :meth:`open`."""
        self._bind()
        if not self._connected:
            await self._open()

    def stop(self) -> None:
        """End a delivery that waits for the broker to come back (it raises
        :class:`SinkStopped`, and its batch stays unacknowledged). Any thread."""
        self._stopping.set()
        loop, wakeup = self._loop, self._wakeup
        if loop is not None and wakeup is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wakeup.set)

    async def aclose(self) -> None:
        """Close the connection to the broker (asyncio face)."""
        await self._drop()

    def close(self) -> None:
        """Close the connection to the broker and the sink's thread (blocking face)."""
        portal, self._portal = self._portal, None
        if portal is not None:
            try:
                portal.call(self.aclose())
            finally:
                portal.close()
            self._loop = None
            self._wakeup = None

    def __enter__(self: SinkT) -> SinkT:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {mask_url(self.url)} {self._describe()}>"

    def _describe(self) -> str:
        return ""

    def __str__(self) -> str:
        return f"{self.kind} sink {mask_url(self.url)}"

    def stats(self) -> dict[str, Any]:
        """Counters for progress reports: batches, delivered, duplicates, retries."""
        counts = self.counts
        return {
            "batches": counts.batches,
            "delivered": counts.delivered,
            "duplicates": counts.duplicates,
            "retries": counts.retries,
        }


SinkT = TypeVar("SinkT", bound=Sink)
