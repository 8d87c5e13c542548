"""The blocking face of the change feed: :class:`Feed` and :class:`Batch` (the settings and
everything free of I/O are in :mod:`pgtide.feed._face`, the database work in ``_core``)."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import psycopg

from .._lifecycle import Closable
from .._signals import stop_on_signals
from ..session import Session, Stopped, run, run_after
from ._core import Emit, Run, Start, Wait
from ._face import (
    BatchBase,
    BatchInterrupted,
    Confirm,
    FeedBase,
    Handover,
    ReadAhead,
    Submit,
    batch_size,
)
from .position import Position
from .retention import prune_io

log = logging.getLogger("pgtide.feed")


class Delivery(Protocol):
    """What ``submit(batch)`` of a pipelined callable returns (a sink's delivery under way):
    ``result()`` waits for it, and raises if it failed."""

    def result(self) -> Any: ...


class Batch(BatchBase["Feed"]):
    """Whole transactions of changes. Iterate it; then :meth:`ack` or use :meth:`transaction`."""

    def ack(self) -> None:
        """Save the consumer's position after this batch (at-least-once delivery)."""
        self._feed._save(self.position)

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection in a transaction that also saves this batch's position: your writes
        and the acknowledgement commit together, or neither does (exactly-once effects).

        If the connection is lost meanwhile, :class:`~pgtide.FeedError` says so: nothing was
        committed, and the batch comes again (``feed.run()`` carries on by itself)."""
        conn = self._feed._session.connection()
        try:
            with conn.transaction():
                yield conn
                run(conn, self._feed._core.save_once(self.start, self.position))
        except Exception as exc:
            raise self._feed._lost(exc, conn.closed, self)  # noqa: B904 (its cause is set)
        self._feed._after_ack()


class Feed(FeedBase[Session], Closable):
    """A consumer's view of the change feed of some tracked tables (all when ``tables`` is
    None). See :meth:`batches`. ``wakeup="poll"`` reads every ``poll_interval`` seconds
    without LISTEN, for servers behind a transaction-pooling proxy. Nothing connects (or
    starts the embedded server) before the first read."""

    _session_class = Session
    _before_wait: Callable[[], None] | None = None
    """What a pipelined ``run()`` does before the feed waits for changes, and at its end:
    settle the batch in flight."""
    _deferred: Position | None = None
    """A pipelined ``run()``'s acknowledgement (of a confirmed delivery) that goes to the
    server with the next read, in its round trip."""

    def batches(
        self,
        start: Start = "saved",
        stop: Start | None = None,
        max_changes: int = 1000,
        timeout: float | None = None,
    ) -> Generator[Batch, None, None]:
        """Yield batches of whole transactions, in commit-visibility order.

        ``start``: "saved" (the consumer's acknowledged position; the beginning for a new
        consumer), "beginning", "end", or a Position. ``stop``: a Position (or "end": now) at
        which the feed ends; without it the feed waits for new changes forever, or until
        ``timeout`` idle seconds pass, or :meth:`stop`. A transaction larger than
        ``max_changes`` comes whole.
        """
        steps = self._plan(start, stop, max_changes, timeout)
        try:
            reply: Any = None
            while (step := self._advance(steps, reply)) is not None:
                if isinstance(step, Emit):
                    reply = yield Batch(self, step)
                else:
                    reply = self._carry_out(step)
            if self._before_wait is not None:
                self._before_wait()  # the end: settle while the connection is still open
        except Stopped:
            return
        finally:
            self._end()

    def __iter__(self) -> Iterator[Batch]:
        return self.batches()

    def run(
        self,
        fn: Callable[[Batch], Any],
        *,
        start: Start = "saved",
        stop: Start | None = None,
        max_changes: int | None = None,
        timeout: float | None = None,
    ) -> None:
        """Call ``fn(batch)`` for each batch and acknowledge it once ``fn`` returns, until
        the feed ends (``stop``, ``timeout``), :meth:`stop` or :meth:`close` is called from
        another thread, or (in the main thread) SIGTERM or Ctrl-C arrives. A batch whose
        ``transaction()`` lost its connection comes again. Without ``max_changes``, a
        callable's own ``max_changes`` attribute sets the batch size (the Redis sink asks
        for 5000), else 1000."""
        max_changes = batch_size(fn, max_changes)
        submit: Callable[[Batch], Delivery] | None = getattr(fn, "submit", None)
        with stop_on_signals(self.stop, f"feed {self.consumer}"):
            if callable(submit):
                self._pipelined(submit, start, stop, max_changes, timeout)
                return
            while True:
                try:
                    for batch in self.batches(start, stop, max_changes, timeout):
                        fn(batch)
                        batch.ack()
                    return
                except BatchInterrupted as lost:
                    log.warning("%s; retrying the batch", lost)
                    start = self._session.run(functools.partial(self._core.resume, lost.start))

    def _pipelined(
        self,
        submit: Callable[[Batch], Delivery],
        start: Start,
        stop: Start | None,
        max_changes: int,
        timeout: float | None,
    ) -> None:
        """``run()`` for a callable with ``submit(batch)`` (a sink): the next batch is read
        while the one before is being delivered (see :class:`ReadAhead`)."""
        ahead: ReadAhead[Batch, Delivery] = ReadAhead()

        def carry_out(steps: Iterator[Handover[Batch, Delivery]], later: bool = False) -> None:
            for step in steps:
                if isinstance(step, Confirm):
                    step.delivery.result()
                elif isinstance(step, Submit):
                    ahead.sent(step.batch, submit(step.batch))
                elif later:  # the feed reads next: the acknowledgement goes with that read
                    self._deferred = step.batch.position
                else:  # its sink's message ids make a repeat harmless: see Core.save
                    self._deferred = None  # a later position: it covers the one deferred
                    self._save(step.batch.position, durable=False)

        self._before_wait = lambda: carry_out(ahead.settle())
        try:
            for batch in self.batches(start, stop, max_changes, timeout):
                carry_out(ahead.take(batch), later=True)
            carry_out(ahead.settle())
        finally:
            self._before_wait = None
            self._deferred = None  # a failed feed: that delivery comes again, harmlessly
            left = ahead.abandon()
            if left is not None:  # the feed failed: let the delivery end, acknowledge nothing
                with contextlib.suppress(Exception):
                    left.result()

    def stop(self) -> None:
        """End :meth:`run` (or :meth:`batches`) from any thread, after the batch in hand."""
        super().stop()
        self._session.stop()

    def position(self) -> Position:
        """Where the feed stands: after the last batch given, else the saved position (the
        beginning for a new consumer)."""
        return self._cursor.position or self._session.run(self._core.position)

    def seek(self, position: Start) -> Position:
        """Move the consumer: save ``position`` ("beginning", "end", a Position or its
        string) as its acknowledged position. The next ``batches()`` starts there."""
        return self._session.run(lambda: self._core.seek(position))

    def saved(self) -> Position | None:
        """The consumer's acknowledged position, or None for a consumer never saved."""
        return self._session.run(self._core.saved)

    def drop(self) -> bool:
        """Forget this consumer: its position goes, and prune no longer waits for it."""
        return self._session.run(self._core.drop)

    def close(self) -> None:
        """Close the feed's connections (a later call reopens them); a :meth:`run` in
        another thread ends, after the batch in hand, and closes them itself."""
        if self._closing():
            self._stop_waker()
            self._session.close()

    # -- the face's I/O ---------------------------------------------------------------------
    def _carry_out(self, step: Run | Wait) -> Any:
        if isinstance(step, Wait):
            return self._sleep(step.seconds)
        acked, self._deferred = self._deferred, None
        if acked is None:
            done = self._session.run(step.make)
        else:  # one round trip for the acknowledgement and the read
            save = functools.partial(self._core.save, acked, False)
            done = self._session.call(lambda conn: run_after(conn, save(), step.make()))
            self._after_ack()
        self._relay_check(self._session.resolved)
        return done

    def _sleep(self, seconds: float | None) -> bool:
        if self._before_wait is not None:
            self._before_wait()
        if self._waker is None:
            self._waker = self._new_waker(self._session.resolved if self._listens else None)
            self._waker.start()
            self._started()
        return self._waker.wait(self._pace(seconds, self._waker), self._session.fileno())

    def _save(self, position: Position, durable: bool = True) -> None:
        self._session.run(functools.partial(self._core.save, position, durable))
        self._after_ack()

    def _after_ack(self) -> None:
        if self._prune_due():
            self._session.run(prune_io)

    def _stop_waker(self) -> None:
        waker = self._release_waker()
        if waker is not None:
            waker.stop()

    def _end(self) -> None:
        self._relay_stop()
        self._stop_waker()
        if self._ended():
            self._session.close()
