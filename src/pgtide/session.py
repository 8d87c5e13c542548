"""Sessions: the one place a feature's database work connects, prepares and reconnects.

Database work is written once, free of I/O, as an :data:`Io` generator: it yields a
:class:`Query`, receives its rows, and returns a result (as psycopg's own ``generators``).
:func:`run` carries one out on a blocking connection and :func:`arun` on an asyncio one, so
the blocking and asyncio faces of a feature share every statement and every decision.

A :class:`Session` (blocking) or :class:`AsyncSession` (asyncio) resolves the database once,
opens its connection lazily (never in a constructor), runs the feature's ``prepare`` work on
each new connection (installing the schema, checking tables), and retries work when the
server goes away, with the one backoff rule of :mod:`pgtide.connect`. A :class:`Reconnector`
keeps a long-lived connection open from a thread (the channel's LISTEN connection) with the
same :class:`Policy`. No other module of pgtide has a reconnect loop. :func:`using` is "the
caller's connection, or one of ours".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeAlias, TypeVar

import psycopg
from psycopg import sql

from .connect import Backoff, DsnLike, Resolved, aconnect, connect, resolve
from .errors import ConnectionFailed, PgtideError

log = logging.getLogger("pgtide.session")

T = TypeVar("T")
Rows: TypeAlias = list[tuple[Any, ...]]
Params: TypeAlias = Sequence[Any] | Mapping[str, Any] | None
Statement: TypeAlias = str | bytes | sql.SQL | sql.Composed


@dataclass(frozen=True, slots=True)
class Query:
    """One statement for a driver to execute; without params it may hold several statements."""

    statement: Statement
    params: Params = None
    binary: bool = False
    """Rows in binary format: cheaper to decode (timestamps, integers) where many come back."""


Io: TypeAlias = Generator[Query, Rows, T]
"""Database work free of I/O: yields queries, receives their rows, returns a ``T``."""

BEGIN = Query("BEGIN")
COMMIT = Query("COMMIT")
ROLLBACK = Query("ROLLBACK")


def query(statement: Statement, params: Params = None) -> Io[Rows]:
    """One statement as an :data:`Io`: ``rows = yield from query(...)``."""
    rows = yield Query(statement, params)
    return rows


def one(statement: Statement, params: Params = None) -> Io[tuple[Any, ...] | None]:
    """The first row of one statement, or None."""
    rows = yield Query(statement, params)
    return rows[0] if rows else None


def atomic(io: Io[T]) -> Io[T]:
    """Run ``io`` in one transaction on an autocommit connection: all of it or nothing."""
    yield BEGIN
    try:
        result = yield from io
    except BaseException:
        yield ROLLBACK  # if the connection is gone, that failure carries this one as context
        raise
    yield COMMIT
    return result


class Steps(Generic[T]):
    """Carries an :data:`Io` forward for a driver: the one loop :func:`run` and :func:`arun`
    share (each only says how to execute a query).

    Iterating gives the queries to execute, one at a time; the driver executes each inside
    ``with steps.outcome():`` and sets ``rows``. An error raised there is thrown into the
    generator (which may handle it and go on); an error it does not handle ends the
    iteration by propagating. After the loop, ``result`` holds what the generator returned.
    """

    def __init__(self, io: Io[T]) -> None:
        self._io = io
        self._error: Exception | None = None
        self.rows: Rows = []
        self.result: T

    def __iter__(self) -> Iterator[Query]:
        io = self._io
        try:
            step = next(io)
            while True:
                yield step
                error, self._error = self._error, None
                step = io.send(self.rows) if error is None else io.throw(error)
        except StopIteration as done:
            self.result = done.value

    @contextmanager
    def outcome(self) -> Iterator[None]:
        """Where the driver executes the current query: its error goes to the generator."""
        self.rows = []
        try:
            yield
        except Exception as exc:
            self._error = exc


def run(conn: psycopg.Connection[Any], io: Io[T]) -> T:
    """Carry out ``io`` on a blocking connection; errors are thrown into the generator."""
    steps = Steps(io)
    for step in steps:
        with steps.outcome():
            steps.rows = fetched(conn.execute(step.statement, step.params, binary=step.binary))
    return steps.result


def run_after(conn: psycopg.Connection[Any], first: Io[None], io: Io[T]) -> T:
    """Carry out ``first`` (statements whose rows are not wanted, such as an
    acknowledgement), then ``io``, on a blocking connection: ``first``'s statements go to
    the server with ``io``'s first one, in one round trip (psycopg's pipeline mode). An
    error of ``first`` is raised there, and ``io`` goes no further."""
    with conn.pipeline() as pipe:
        steps: Steps[None] = Steps(first)
        for step in steps:
            with steps.outcome():
                # sent with the next one
                conn.execute(step.statement, step.params, binary=step.binary)
        then = Steps(io)
        for step in then:
            with then.outcome():
                cur = conn.execute(step.statement, step.params, binary=step.binary)
                pipe.sync()
                then.rows = fetched(cur)
        return then.result


async def arun(conn: psycopg.AsyncConnection[Any], io: Io[T]) -> T:
    """Carry out ``io`` on an asyncio connection (the twin of :func:`run`)."""
    steps = Steps(io)
    for step in steps:
        with steps.outcome():
            steps.rows = await afetched(
                await conn.execute(step.statement, step.params, binary=step.binary)
            )
    return steps.result


async def arun_after(conn: psycopg.AsyncConnection[Any], first: Io[None], io: Io[T]) -> T:
    """:func:`run_after` on an asyncio connection."""
    async with conn.pipeline() as pipe:
        steps: Steps[None] = Steps(first)
        for step in steps:
            with steps.outcome():
                # sent with the next one
                await conn.execute(step.statement, step.params, binary=step.binary)
        then = Steps(io)
        for step in then:
            with then.outcome():
                cur = await conn.execute(step.statement, step.params, binary=step.binary)
                await pipe.sync()
                then.rows = await afetched(cur)
        return then.result


def fetched(cur: psycopg.Cursor[Any]) -> Rows:
    """The rows of a statement's result ([] when it returns none). Asked of the result's
    column count: ``cur.description`` builds a Column object per column on every call."""
    return cur.fetchall() if (res := cur.pgresult) is not None and res.nfields else []


async def afetched(cur: psycopg.AsyncCursor[Any]) -> Rows:
    """The asyncio twin of :func:`fetched`."""
    return await cur.fetchall() if (res := cur.pgresult) is not None and res.nfields else []


def translate(exc: Exception, conn: psycopg.BaseConnection[Any] | None) -> Exception:
    """The pgtide error for a driver error that has one (a missing privilege), else ``exc``."""
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        from .grants import denied

        return denied(exc, conn.info.user if conn is not None and not conn.closed else "?")
    return exc


@contextmanager
def using(
    dsn: DsnLike = None, conn: psycopg.Connection[Any] | None = None
) -> Iterator[psycopg.Connection[Any]]:
    """The caller's connection as it is, or a new autocommit one closed afterwards."""
    own = connect(resolve(dsn)) if conn is None else nullcontext(conn)
    with own as used, _translated(used):
        yield used


@contextmanager
def _translated(conn: psycopg.BaseConnection[Any]) -> Iterator[None]:
    try:
        yield
    except psycopg.errors.InsufficientPrivilege as exc:
        raise translate(exc, conn) from None


@asynccontextmanager
async def ausing(
    dsn: DsnLike = None, conn: psycopg.AsyncConnection[Any] | None = None
) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """The asyncio twin of :func:`using`."""
    own = await aconnect(await aresolve(dsn)) if conn is None else nullcontext(conn)
    async with own as used:
        with _translated(used):
            yield used


async def aresolve(dsn: DsnLike) -> Resolved:
    """:func:`~pgtide.connect.resolve` from asyncio (starting the embedded server is blocking)."""
    if isinstance(dsn, Resolved):
        return dsn
    return await asyncio.to_thread(resolve, dsn)


OUTAGES = (psycopg.OperationalError, psycopg.InterfaceError, ConnectionFailed)
RETRY_NOW = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
"""Errors after which the server rolled the transaction back and the work may simply run
again (deadlock detected, serialization failure)."""


def _by_client(exc: Exception) -> bool:
    """Whether libpq or psycopg raised ``exc`` itself (no SQLSTATE from the server): the
    connection is in a state nobody can vouch for, even when psycopg has not marked it broken
    (a server closing it amid a pipeline: "cannot exit pipeline mode while busy")."""
    return isinstance(exc, psycopg.OperationalError) and exc.sqlstate is None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


"""What a lost or unreachable server raises; anything else is the work's own error."""


class Stopped(PgtideError):
    """The session was stopped while waiting to reconnect."""


UNREACHABLE = (PgtideError, psycopg.Error)
"""What opening a kept connection raises when the server cannot be reached (or refuses)."""


class Lost(Exception):
    """A kept connection is gone or unresponsive (raised by what serves it)."""


LOST = (Lost, psycopg.Error, OSError)
"""What serving a kept connection raises when the connection is gone: an outage."""


def first_line(exc: BaseException) -> str:
    """The first line of an error's text without its final full stop, or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(".") if text else type(exc).__name__


class Policy:
    """The reconnect rule: which failures are outages, how long to wait, and what to log.

    A connection that never succeeded fails at once (a configuration error, not an outage);
    an error on a connection that is still healthy is the work's own error and is raised.
    :class:`Session` asks it about work retried on outage (:meth:`delay`, one log line per
    retry); a :class:`Reconnector` about a connection it keeps open (:meth:`unreachable`,
    :meth:`lost`, :meth:`reopen`, :meth:`back`: one warning per outage or new reason, then
    quieter lines). ``name`` names the user of the connection in those lines, ``target`` the
    database, ``then`` what the user does once connected again.
    """

    def __init__(
        self,
        name: str,
        backoff: Backoff | None = None,
        *,
        logger: logging.Logger | None = None,
        target: str = "the database",
        secrets: Sequence[str] = (),
        then: str = "resumes",
        vouched_by: Policy | None = None,
    ) -> None:
        self.name = name
        self.backoff = backoff or Backoff(initial=0.05, maximum=5.0)
        self._connected = False
        self.vouched_by = vouched_by
        self.log = logger or log
        self.target = target
        self.secrets = tuple(s for s in secrets if s)
        self.then = then
        self.failures = 0  # failed attempts to reconnect in the current outage
        self._said = ""  # the reason last logged as a warning, so that an outage is no flood
        self._lost_at = 0.0

    @property
    def connected_once(self) -> bool:
        """Whether this connection reached the database once, or the one vouching for it
        did (a second connection of the same user: its first connect failing during an
        outage is an outage too, not a configuration error)."""
        return self._connected or (self.vouched_by is not None and self.vouched_by.connected_once)

    def connected(self) -> None:
        self._connected = True

    def succeeded(self) -> None:
        self.backoff.reset()

    # -- work retried on outage (Session) -----------------------------------------------------

    def delay(self, exc: Exception, conn: psycopg.BaseConnection[Any] | None) -> float | None:
        """Seconds to wait before retrying after ``exc``; re-raises what is not an outage.
        ``None``: run the work again at once on the same connection, which is healthy; the
        server rolled the transaction back (a deadlock or a serialization failure: two
        connections of one events worker can deadlock on the rows they both update)."""
        if isinstance(exc, RETRY_NOW) and conn is not None and not conn.closed and not conn.broken:
            self.log.info("%s: %s; running it again", self.name, _first_line(exc))
            return None
        if not isinstance(exc, OUTAGES):
            failure = translate(exc, conn)
            if failure is exc:
                raise exc
            raise failure from None
        if isinstance(exc, ConnectionFailed):
            if not self.connected_once:
                raise exc
        elif conn is not None and not conn.closed and not conn.broken and not _by_client(exc):
            raise exc
        first = self.backoff.attempt == 0
        delay = self.backoff.next()
        reason = _first_line(exc)
        # one line per outage, then quieter lines while it lasts
        self.log.log(
            logging.WARNING if first else logging.INFO,
            "%s: database connection lost (%s); retrying in %.2f s",
            self.name,
            reason,
            delay,
        )
        return delay

    # -- a kept connection (Reconnector) ------------------------------------------------------

    def fatal(self, exc: BaseException, *, connecting: bool, purpose: str) -> BaseException | None:
        """What to raise instead of retrying: any failure before the first success, or None.

        After that, failing to connect (:data:`UNREACHABLE`) or losing the connection
        (:data:`LOST`) is an outage; other errors are not caught at all (they are bugs).
        """
        if self.connected_once:
            return None
        if connecting:
            return exc
        return PgtideError(f"{self.name} could not {purpose}: {first_line(exc)}")

    def unreachable(self, exc: BaseException) -> float:
        """A connection attempt failed during an outage: log it, and return the delay."""
        self.failures += 1
        delay = self.backoff.next()
        reason = self.reason(exc)
        if reason != self._said:  # the first failure, or a new reason: say it whole
            self._said = reason
            self.log.warning(
                "The %s cannot reconnect to %s yet (%s); it tries again in %.1f s, and keeps "
                "trying with a growing delay.",
                self.name,
                self.target,
                reason,
                delay,
            )
        else:
            self.log.info(
                "The %s still cannot reconnect (attempt %d failed the same way); next attempt "
                "in %.1f s.",
                self.name,
                self.failures,
                delay,
            )
        return delay

    def lost(self, exc: BaseException, *, quiet: bool = False) -> float:
        """The kept connection was lost (``quiet``: on purpose); return the delay."""
        if not quiet:
            self.log.warning(
                "The %s lost its connection to %s (%s); it reconnects with backoff and %s.",
                self.name,
                self.target,
                first_line(exc),
                self.then,
            )
        self._down()
        return self.backoff.next()

    def reopen(self) -> None:
        """The kept connection is closed to open a new one at once (no backoff)."""
        self.log.info("The %s reopens its connection, as restart() asked.", self.name)
        self._down()

    def back(self, doing: str) -> None:
        """A kept connection is usable again after an outage or a reopen; ``doing`` says how."""
        self.log.info(
            "The %s reconnected after %.1f s%s and %s.",
            self.name,
            time.monotonic() - self._lost_at,
            f" ({self.failures + 1} attempts)" if self.failures else "",
            doing,
        )

    def reason(self, exc: BaseException) -> str:
        """Why a connection attempt failed, in one line, without the advice or a password."""
        cause = exc.__context__ if isinstance(exc.__context__, psycopg.Error) else exc
        reason = first_line(cause)
        for secret in self.secrets:
            reason = reason.replace(secret, "***")
        return reason

    def _down(self) -> None:
        self.failures, self._said, self._lost_at = 0, "", time.monotonic()


C = TypeVar("C")


class Served(Protocol[C]):
    """What a :class:`Reconnector` keeps a connection open for (the channel's LISTEN)."""

    def open(self) -> C:
        """Open a new connection (raising one of :data:`UNREACHABLE` when it cannot)."""
        ...

    def serve(self, conn: C) -> None:
        """Use ``conn``, calling :meth:`Reconnector.ready` once it is usable; return when
        the reconnector is ``stopping`` or ``due``; raise one of :data:`LOST` if it is gone."""
        ...

    def close(self, conn: C) -> None:
        """Close ``conn`` after :meth:`serve` ended, however it ended."""
        ...

    def failed(self, reason: str) -> None:
        """Record why the last attempt or connection failed (for a status)."""
        ...

    def resumed(self) -> str:
        """A new connection is ready after a loss or a reopen; what it does again (to log)."""
        ...

    def pause(self, seconds: float) -> None:
        """Wait at most ``seconds``; return sooner once :meth:`wake` is called."""
        ...

    def wake(self) -> None:
        """Interrupt :meth:`pause` or :meth:`serve`'s wait, from any thread."""
        ...


class Reconnector(Generic[C]):
    """Keeps one long-lived connection open from a thread of its own (pgtide's one such loop).

    Connect, serve until lost, wait with the policy's backoff, connect again. The first
    connection failing, or failing before it is ready, is raised by :meth:`start`;
    :meth:`reconnect_now` closes the connection and opens a new one without backoff;
    :meth:`stop` ends a wait at once. Each connection attempt is a new ``generation``.
    """

    def __init__(
        self, served: Served[C], policy: Policy, *, thread_name: str, purpose: str
    ) -> None:
        self.policy = policy
        self.stopping = False
        self.due = False  # reconnect now: what serve() and a wait watch, with ``stopping``
        self.generation = 0  # connection attempts so far
        self._served = served
        self._purpose = purpose
        self._lock = threading.Lock()
        self._waiters: list[tuple[int, Callable[[], None]]] = []
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        """Start the thread; return once the first connection is ready, or raise why not."""
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the thread (within ``timeout``); whether it has ended."""
        self.stopping = True
        self._served.wake()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def reconnect_now(self, on_ready: Callable[[], None]) -> bool:
        """Close the connection and open a new one now, with no backoff.

        ``on_ready`` is called once a connection opened after this call is ready (or when
        the thread ends); returns False (and never calls it) when the thread is not running.
        """
        with self._lock:
            if self.stopping or not self._thread.is_alive():
                return False
            self.due = True
            self._waiters.append((self.generation, on_ready))
        self._served.wake()
        return True

    def ready(self) -> None:
        """Called by :meth:`Served.serve` in the thread once its connection is usable."""
        self.policy.succeeded()
        if not self._ready.is_set():
            self.policy.connected()
            self._ready.set()
            return
        self.policy.back(self._served.resumed())
        self._call_waiters(self.generation)

    def _call_waiters(self, generation: int | None) -> None:
        """Call the waiters that a connection of ``generation`` satisfies (all: None)."""
        with self._lock:
            due = [w for w in self._waiters if generation is None or w[0] < generation]
            self._waiters = [w for w in self._waiters if w not in due]
        for _, callback in due:
            callback()

    def _wait(self, seconds: float) -> bool:
        """Wait ``seconds``, or less if stopped or due; True if stopping."""
        deadline = time.monotonic() + seconds
        while not self.stopping and not self.due:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._served.pause(left)
        return self.stopping

    def _run(self) -> None:
        policy, served = self.policy, self._served
        delay = 0.0
        try:
            while not self.stopping:
                if delay and self._wait(delay):
                    break
                with self._lock:
                    self.generation += 1
                    self.due = False
                try:
                    conn = served.open()
                except UNREACHABLE as exc:
                    self._error = policy.fatal(exc, connecting=True, purpose=self._purpose)
                    if self._error is not None:
                        return
                    served.failed(str(exc))
                    delay = policy.unreachable(exc)
                    continue
                try:
                    served.serve(conn)
                except LOST as exc:
                    served.failed(first_line(exc))
                    self._error = policy.fatal(exc, connecting=False, purpose=self._purpose)
                    if self._error is not None:
                        return
                    delay = policy.lost(exc, quiet=self.stopping)
                else:
                    if not self.stopping:
                        policy.reopen()
                    delay = 0.0
                finally:
                    served.close(conn)
        finally:
            self._ready.set()
            self._call_waiters(None)


class _Base:
    def __init__(
        self,
        dsn: DsnLike = None,
        *,
        name: str = "pgtide",
        prepare: Callable[[], Io[Any]] | None = None,
        application_name: str | None = None,
        on_reconnect: Callable[[], Any] | None = None,
        backoff: Backoff | None = None,
        second_to: _Base | None = None,
    ) -> None:
        self._dsn = dsn
        self._resolved: Resolved | None = dsn if isinstance(dsn, Resolved) else None
        self._kwargs: dict[str, Any] = (
            {"application_name": application_name} if application_name else {}
        )
        self._prepare = prepare
        # a second session of one user (``second_to``) fails its first connect as an outage
        # once the first session reached the database
        self._policy: Policy = Policy(
            name, backoff, vouched_by=second_to._policy if second_to is not None else None
        )
        self._on_reconnect = on_reconnect

    @property
    def connected_once(self) -> bool:
        """Whether this session ever reached the database."""
        return self._policy.connected_once

    def _retry_delay(
        self, exc: Exception, before: psycopg.BaseConnection[Any] | None
    ) -> float | None:
        """How long to wait after ``exc`` before reconnecting, None to run the work again at
        once on the same connection (see :meth:`Policy.delay`; re-raised when not an outage)."""
        conn: psycopg.BaseConnection[Any] | None = getattr(self, "_conn", None)
        return self._policy.delay(exc, conn if conn is not None else before)

    def fileno(self) -> int | None:
        """The socket of the open connection, or None: a waiter may watch it while the
        connection is idle, to learn at once that the server closed it."""
        conn: psycopg.BaseConnection[Any] | None = getattr(self, "_conn", None)
        if conn is None or conn.closed:
            return None
        try:
            return conn.pgconn.socket
        except psycopg.OperationalError:
            return None

    def _reconnected(self) -> None:
        if self._on_reconnect is not None:
            self._on_reconnect()

    def __repr__(self) -> str:
        where = self._resolved.masked if self._resolved is not None else "unresolved"
        return f"<pgtide session {self._policy.name!r} {where}>"


class Session(_Base):
    """A feature's blocking database session (see the module docstring).

    ``prepare`` makes the :data:`Io` run on each new connection; ``on_reconnect`` is called
    after the connection was lost and a retry is due (a notification may have been missed).
    """

    def __init__(self, dsn: DsnLike = None, **options: Any) -> None:
        super().__init__(dsn, **options)
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.RLock()
        self._stop = threading.Event()

    @property
    def resolved(self) -> Resolved:
        """The database, resolved on first use (this may start the embedded server)."""
        if self._resolved is None:
            self._resolved = resolve(self._dsn)
        return self._resolved

    def connection(self) -> psycopg.Connection[Any]:
        """The session's open connection, connecting and preparing it if needed."""
        with self._lock:
            conn = self._conn
            if conn is None or conn.closed:
                conn = connect(self.resolved, **self._kwargs)
                try:
                    if self._prepare is not None:
                        with _translated(conn):
                            run(conn, self._prepare())
                except BaseException:
                    conn.close()
                    raise
                self._conn = conn
                self._policy.connected()
            return conn

    def run(self, make: Callable[[], Io[T]]) -> T:
        """Run the work ``make()`` returns, again from the start after an outage."""
        return self.call(lambda conn: run(conn, make()))

    def call(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Call ``work(conn)`` (blocking work that is not an :data:`Io`), retrying on outage."""
        while True:
            before = self._conn
            try:
                result = work(self.connection())
            except Exception as exc:
                delay = self._retry_delay(exc, before)
                if delay is None:
                    continue
                self.reset()
                if self._stop.wait(delay):
                    raise Stopped(f"{self._policy.name} stopped while reconnecting") from exc
                self._reconnected()
                continue
            self._policy.succeeded()
            return result

    def reset(self) -> None:
        """Drop the connection (the next use opens a new one)."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        """Interrupt a wait to reconnect (the work then raises :class:`Stopped`)."""
        self._stop.set()

    def close(self) -> None:
        """Close the connection; the session can be used again (it reconnects)."""
        self.reset()
        self._stop.clear()


class AsyncSession(_Base):
    """The asyncio twin of :class:`Session` (cancel the task to interrupt a reconnect wait)."""

    def __init__(self, dsn: DsnLike = None, **options: Any) -> None:
        super().__init__(dsn, **options)
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock: asyncio.Lock | None = None
        self._stop = threading.Event()
        self._waiting: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None

    async def resolved(self) -> Resolved:
        """The database, resolved on first use (this may start the embedded server)."""
        if self._resolved is None:
            self._resolved = await aresolve(self._dsn)
        return self._resolved

    async def connection(self) -> psycopg.AsyncConnection[Any]:
        """The session's open connection, connecting and preparing it if needed."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            conn = self._conn
            if conn is None or conn.closed:
                conn = await aconnect(await self.resolved(), **self._kwargs)
                try:
                    if self._prepare is not None:
                        with _translated(conn):
                            await arun(conn, self._prepare())
                except BaseException:
                    await conn.close()
                    raise
                self._conn = conn
                self._policy.connected()
            return conn

    async def run(self, make: Callable[[], Io[T]]) -> T:
        """Run the work ``make()`` returns, again from the start after an outage."""

        async def work(conn: psycopg.AsyncConnection[Any]) -> T:
            return await arun(conn, make())

        return await self.call(work)

    async def call(self, work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
        """Await ``work(conn)``, retrying on outage."""
        while True:
            before = self._conn
            try:
                result = await work(await self.connection())
            except Exception as exc:
                delay = self._retry_delay(exc, before)
                if delay is None:
                    continue
                await self.reset()
                if await self._stopped_within(delay):
                    raise Stopped(f"{self._policy.name} stopped while reconnecting") from exc
                self._reconnected()
                continue
            self._policy.succeeded()
            return result

    async def _stopped_within(self, delay: float) -> bool:
        """Wait ``delay`` seconds unless :meth:`stop` comes first; whether it did."""
        woken = asyncio.Event()
        self._waiting = (asyncio.get_running_loop(), woken)
        try:
            if not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), delay)
        finally:
            self._waiting = None
        return self._stop.is_set()

    async def reset(self) -> None:
        """Drop the connection (the next use opens a new one)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    def stop(self) -> None:
        """Interrupt a wait to reconnect (the work then raises :class:`Stopped`); any thread."""
        self._stop.set()
        waiting = self._waiting
        if waiting is not None:
            with contextlib.suppress(RuntimeError):  # its loop is closed: nothing waits
                waiting[0].call_soon_threadsafe(waiting[1].set)

    async def close(self) -> None:
        """Close the connection; the session can be used again (it reconnects)."""
        await self.reset()
        self._stop.clear()
