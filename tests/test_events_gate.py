"""The events' wake gate (migration 027, pgtide.channel._gate): a publish sends its NOTIFY only
while a worker waits for it, and no event is left to the poll by the handshake or by a
worker's connection that the server closed while it waited."""

from __future__ import annotations

import asyncio
import threading

import psycopg
import pytest
from events_helpers import wait_for
from pgtide_testing import gate_holders, gate_holders_besides, terminate

import pgtide
import pgtide.aio
from pgtide.channel._gate import EVENTS_GATE

POLL = 60.0
"""Each worker here polls once a minute: whatever it does within seconds, a wake-up did."""

_ASLEEP = "SELECT bool_and(state = 'idle') FROM pg_stat_activity WHERE pid = ANY(%s)"


def _asleep(dsn: str) -> bool:
    """Whether a worker holds the gate and its claim's transaction has ended (it waits)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(_ASLEEP, (list(gate_holders(dsn, EVENTS_GATE)),)).fetchone()
    return bool(row and row[0])


def test_a_publish_that_found_no_worker_waiting_is_claimed_once_it_commits(dsn: str) -> None:
    """A publisher whose insert found no worker waiting sends no NOTIFY. Committed only after
    a worker began to wait, its event is still claimed within moments, not at the poll: the
    worker watches the transactions that were open when it took the gate."""
    events = pgtide.Events(dsn=dsn)
    events.status()  # the schema
    ran = threading.Event()
    worker = pgtide.Events(dsn=dsn, poll_interval=POLL)
    worker.register("late", lambda e: ran.set())
    try:
        with psycopg.connect(dsn) as tx:
            id_ = events.publish("late", None, conn=tx)  # nobody waits: no NOTIFY
            worker.start(2)
            wait_for(lambda: _asleep(dsn), timeout=10, what="the worker waiting")
            assert not ran.is_set()  # not committed yet
        assert ran.wait(10), "the event committed after the worker waited was left to the poll"
        wait_for(lambda: events.get(id_).state == "done", 10, "done")  # type: ignore[union-attr]
    finally:
        worker.close()
        events.close()


def test_a_worker_whose_connection_the_server_closed_while_it_waited_waits_again(
    dsn: str,
) -> None:
    """The gate lives on the worker's claiming connection. Terminated while the worker waits,
    that connection takes the gate with it (publishers stop notifying): the worker notices at
    once (it watches that socket while it waits), reconnects and waits again, and the next
    publish is handled without waiting for the poll."""
    ran = threading.Event()
    worker = pgtide.Events(dsn=dsn, poll_interval=POLL)
    worker.register("after", lambda e: ran.set())
    worker.start(2)
    try:
        before = wait_for(gate_holders_besides(dsn, EVENTS_GATE), 10, "the worker waiting")
        terminate(dsn, next(iter(before)))
        again = wait_for(gate_holders_besides(dsn, EVENTS_GATE, before), 10, "a new registration")
        assert len(again) == 1
        worker.publish("after", None)
        assert ran.wait(10)
    finally:
        worker.close()


def test_an_asyncio_worker_whose_connection_the_server_closed_waits_again(dsn: str) -> None:
    """The same, for a worker of ``pgtide.aio`` (its loop watches the socket)."""

    async def main() -> None:
        ran = asyncio.Event()
        async with pgtide.aio.Events(dsn=dsn, poll_interval=POLL) as events:

            @events.handler("after")
            async def after(event: pgtide.Event) -> None:
                ran.set()

            task = asyncio.create_task(events.run(concurrency=2))
            try:
                before = await _until(gate_holders_besides(dsn, EVENTS_GATE))
                terminate(dsn, next(iter(before)))
                await _until(gate_holders_besides(dsn, EVENTS_GATE, before))
                await events.publish("after", None)
                await asyncio.wait_for(ran.wait(), 10)
            finally:
                await events.stop()
                await task

    asyncio.run(main())


async def _until(condition: object, timeout: float = 10.0) -> set[int]:
    assert callable(condition)
    async with asyncio.timeout(timeout):
        while not (value := await asyncio.to_thread(condition)):
            await asyncio.sleep(0.02)
    return value  # type: ignore[no-any-return]


_SIGNUP_EVENT = """
CREATE FUNCTION signup_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pgtide.publish('welcome', jsonb_build_object('email', NEW.email),
                           dedupe_key => NEW.email);
    RETURN NEW;
END $$;
CREATE TRIGGER signup AFTER INSERT ON signups FOR EACH ROW EXECUTE FUNCTION signup_event()
"""


def test_publish_from_sql_follows_the_transaction_dedupes_and_wakes_a_waiting_worker(
    dsn: str,
) -> None:
    """pgtide.publish() called in SQL (here by a trigger of the user's own): its event
    exists only if the caller's transaction commits, a dedupe_key gives the holder's id,
    and the insert wakes a waiting worker (its poll is a minute away)."""
    events = pgtide.Events(dsn=dsn)
    events.status()  # the schema
    got: list[str] = []
    worker = pgtide.Events(dsn=dsn, poll_interval=POLL)
    worker.register("welcome", lambda e: got.append(e.payload["email"]))
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE signups (email text)")
            conn.execute(_SIGNUP_EVENT)
            worker.start(2)
            wait_for(lambda: _asleep(dsn), timeout=10, what="the worker waiting")
            with conn.transaction(force_rollback=True):
                conn.execute("INSERT INTO signups VALUES ('gone@example.com')")
            with conn.transaction():
                conn.execute("INSERT INTO signups VALUES ('ann@example.com')")
            wait_for(lambda: got, timeout=10, what="the handler, woken by the NOTIFY")
            assert got == ["ann@example.com"]
            one = "SELECT pgtide.publish('hold', dedupe_key => 'k')"
            first, again = (conn.execute(one).fetchone()[0] for _ in range(2))  # type: ignore[index]
            assert first == again and events.get(first).payload is None  # type: ignore[union-attr]
            with pytest.raises(psycopg.errors.InvalidParameterValue, match="bad event name"):
                conn.execute("SELECT pgtide.publish(' welcome')")
    finally:
        worker.close()
        events.close()
