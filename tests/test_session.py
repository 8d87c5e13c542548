"""The foundation's shared mechanisms: sessions (one reconnect policy), Io drivers, dsn kinds."""

from __future__ import annotations

import asyncio
import logging
import threading

import psycopg
import pytest
from listen_helpers import wait_until

import pgtide
from pgtide.connect import Backoff, resolve
from pgtide.session import (
    AsyncSession,
    Io,
    Query,
    Session,
    Stopped,
    arun,
    arun_after,
    atomic,
    query,
    run,
    run_after,
    using,
)


def _count() -> pgtide.session.Io[int]:
    rows = yield from query("SELECT count(*) FROM t")
    return int(rows[0][0])


def _insert_then_fail() -> pgtide.session.Io[None]:
    yield Query("INSERT INTO t VALUES (1)")
    yield Query("SELECT 1/0")


def test_atomic_rolls_back_everything_on_error(dsn: str) -> None:
    with using(dsn) as conn:
        conn.execute("CREATE TABLE t (x int)")
        with pytest.raises(psycopg.errors.DivisionByZero):
            run(conn, atomic(_insert_then_fail()))
        assert run(conn, _count()) == 0
        run(conn, atomic(query("INSERT INTO t VALUES (1)")))
        assert run(conn, _count()) == 1


def test_run_after_sends_the_first_work_with_the_next_and_stops_at_its_error(dsn: str) -> None:
    """``run_after``: the first work (rows unwanted) goes with the next work's first
    statement, which sees its effect; an error of the first work is raised, and the next
    work goes no further."""
    ran: list[str] = []

    def count_then_more() -> Io[int]:
        ran.append("count")
        found = yield from _count()
        ran.append("more")
        rows = yield from query("SELECT 2")
        return found + int(rows[0][0])

    with using(dsn) as conn:
        conn.execute("CREATE TABLE t (x int)")
        assert run_after(conn, query("INSERT INTO t VALUES (1), (2)"), count_then_more()) == 4
        assert ran == ["count", "more"]
        ran.clear()
        with pytest.raises(psycopg.errors.UndefinedTable):
            run_after(conn, query("INSERT INTO missing VALUES (1)"), count_then_more())
        assert ran == ["count"]  # its first statement was refused with the failed one
        assert run(conn, _count()) == 2

    async def twin() -> int:  # the asyncio driver does the same
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            with pytest.raises(psycopg.errors.UndefinedTable):
                await arun_after(conn, query("INSERT INTO missing VALUES (1)"), _count())
            return await arun_after(conn, query("INSERT INTO t VALUES (3)"), _count())

    assert asyncio.run(twin()) == 3


def test_async_driver_runs_the_same_work(dsn: str) -> None:
    async def main() -> int:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute("CREATE TABLE t (x int)")
            await arun(conn, atomic(query("INSERT INTO t VALUES (1), (2)")))
            return await arun(conn, _count())

    assert asyncio.run(main()) == 2


def test_session_reconnects_after_its_backend_is_killed(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    reconnected: list[bool] = []
    session = Session(dsn, name="probe", on_reconnect=lambda: reconnected.append(True))
    pid = session.run(lambda: query("SELECT pg_backend_pid()"))[0][0]
    with using(dsn) as other:
        other.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with caplog.at_level(logging.WARNING, logger="pgtide.session"):
        again = session.run(lambda: query("SELECT pg_backend_pid()"))[0][0]
    assert again != pid and reconnected == [True]
    assert any("probe: database connection lost" in r.getMessage() for r in caplog.records)
    session.close()


def test_async_session_reconnects_after_its_backend_is_killed(dsn: str) -> None:
    async def main() -> tuple[int, int]:
        session = AsyncSession(dsn, name="probe")
        pid = (await session.run(lambda: query("SELECT pg_backend_pid()")))[0][0]
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as other:
            await other.execute("SELECT pg_terminate_backend(%s)", (pid,))
        again = (await session.run(lambda: query("SELECT pg_backend_pid()")))[0][0]
        await session.close()
        return pid, again

    pid, again = asyncio.run(main())
    assert pid != again


def test_a_query_error_on_a_healthy_connection_is_not_retried(dsn: str) -> None:
    session = Session(dsn)
    with pytest.raises(psycopg.errors.UndefinedTable):
        session.run(lambda: query("SELECT * FROM nowhere"))
    session.close()


DEADLOCK = "DO $$ BEGIN RAISE EXCEPTION 'deadlock detected' USING ERRCODE = '40P01'; END $$"


def test_a_deadlock_runs_the_work_again_in_a_new_transaction(dsn: str) -> None:
    """A deadlock (or a serialization failure) rolled the transaction back: the work runs
    again from the start, and what it wrote the first time is not there twice."""
    session = Session(dsn, name="probe")
    session.run(lambda: query("CREATE TEMP TABLE IF NOT EXISTS marks (n int)"))
    tries: list[int] = []

    def work() -> Io[int]:
        tries.append(1)
        yield Query("INSERT INTO marks VALUES (1)")
        if len(tries) == 1:
            yield Query(DEADLOCK)
        rows = yield from query("SELECT count(*) FROM marks")
        return int(rows[0][0])

    assert session.run(lambda: atomic(work())) == 1  # the first try's row was rolled back
    assert len(tries) == 2
    session.close()


def test_an_unreachable_first_connection_fails_at_once() -> None:
    session = Session("postgresql://nobody:secret@127.0.0.1:1/none?connect_timeout=1")
    with pytest.raises(pgtide.ConnectionFailed) as info:
        session.run(lambda: query("SELECT 1"))
    assert "secret" not in str(info.value) and "secret" not in repr(session)


def test_a_second_session_retries_its_first_connect_once_the_first_reached_the_database(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A user's second connection whose first connect falls in an outage (an events worker's
    outcome writer, during a server restart) retries, as the first session would."""
    first = Session(dsn, name="first")
    first.run(lambda: query("SELECT 1"))
    away = "postgresql://nobody@127.0.0.1:1/none?connect_timeout=1"
    second = Session(away, name="second", second_to=first, backoff=Backoff(0.01, 0.01))
    ended: list[BaseException] = []

    def work() -> None:
        try:
            second.run(lambda: query("SELECT 1"))
        except BaseException as exc:
            ended.append(exc)

    caplog.set_level(logging.INFO, logger="pgtide")
    thread = threading.Thread(target=work)
    thread.start()

    def retries() -> int:
        return sum("second: database connection lost" in r.getMessage() for r in caplog.records)

    wait_until(lambda: retries() >= 3, what="three retries of the second session")
    second.stop()
    thread.join(5)
    assert len(ended) == 1 and isinstance(ended[0], Stopped)  # retried until stopped
    with pytest.raises(pgtide.ConnectionFailed):  # alone, the same first connect fails at once
        Session(away, name="alone").run(lambda: query("SELECT 1"))
    first.close()


def test_nothing_connects_before_first_use() -> None:
    session = Session("postgresql://nobody@127.0.0.1:1/none")
    assert not session.connected_once
    assert "unresolved" in repr(session)


def test_dsn_may_be_a_dict_or_a_connection(dsn: str) -> None:
    params = resolve(dsn).params
    from_dict = resolve(dict(params))
    with psycopg.connect(dsn) as conn:
        from_conn = resolve(conn)
    for resolved in (from_dict, from_conn):
        with using(resolved) as c:
            assert c.execute("SELECT current_database()").fetchone() == (params["dbname"],)


def test_dsn_of_another_kind_is_a_clear_error() -> None:
    with pytest.raises(pgtide.ConfigError, match="dsn must be a connection string, a dict"):
        resolve(42)  # type: ignore[arg-type]
    with pytest.raises(pgtide.ConfigError, match="libpq keywords"):
        resolve({"hostess": "x"})


def test_a_client_side_error_on_a_connection_not_marked_broken_is_an_outage(dsn: str) -> None:
    """libpq's own errors (no SQLSTATE) leave a connection nobody can vouch for, though
    psycopg may not mark it broken (a server closing it amid a pipeline: "cannot exit
    pipeline mode while busy"): the session opens a new one and runs the work again."""
    session = Session(dsn, name="probe", backoff=Backoff(initial=0.001, maximum=0.001))
    first = session.run(lambda: query("SELECT pg_backend_pid()"))[0][0]
    tries: list[int] = []

    def work(conn: psycopg.Connection[object]) -> int:
        tries.append(1)
        if len(tries) == 1:
            assert not conn.broken
            raise psycopg.OperationalError("cannot exit pipeline mode while busy")
        return int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])  # type: ignore[index]

    assert session.call(work) != first
    assert len(tries) == 2
    with pytest.raises(psycopg.errors.QueryCanceled):  # the server's own: not an outage
        session.run(lambda: query("SET statement_timeout = 1; SELECT pg_sleep(1)"))
    session.close()
