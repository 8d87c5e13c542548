"""WAL capture: track(capture="wal"), the relay, its exactly-once promise and its guardrails.

These tests run on an embedded server with wal_level=logical, even when PGTIDE_TEST_DSN
names another server (CI's service runs with wal_level=replica)."""

from __future__ import annotations

import random
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from listen_helpers import wait_until
from pgtide_testing import TEST_SETTINGS, Killable, RestartableServer, _unique
from pgtide_testing import TestServer as _Server
from psycopg import sql
from psycopg.rows import dict_row
from test_feed_types import _check, _same, _write

import pgtide
from pgtide import embedded, schema
from pgtide.feed import Relay, SlotLost, WalUnavailable, reset_slot
from pgtide.feed.pgoutput import UNCHANGED
from pgtide.feed.retention import overview
from pgtide.feed.sleepers import GATE
from pgtide.feed.wal import _SNAPSHOT, HEARTBEAT_BYTES, RESTART_LAG_BYTES, slot_name
from pgtide.session import run

_SLOTS = "SELECT slot_name FROM pg_replication_slots WHERE database = current_database()"


@pytest.fixture(scope="module")
def wal_server(pg_server: _Server) -> Iterator[str]:
    """An admin DSN of a server with wal_level=logical: the session's embedded one, or one of
    this module's own when the session uses an external server."""
    if pg_server.kind == "embedded":
        yield pg_server.admin_dsn
        return
    home = Path(tempfile.mkdtemp(prefix="pgtide-wal-"))
    try:
        yield embedded.ensure_running(home, settings=TEST_SETTINGS).dsn
    finally:
        embedded.stop(home, mode="immediate")
        shutil.rmtree(home, ignore_errors=True)


def _fresh(admin: str) -> Iterator[str]:
    name = _unique("pgtide_w")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = psycopg.conninfo.make_conninfo(admin, dbname=name)
    schema.install(dsn=url)
    try:
        yield url
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            for (slot,) in conn.execute(_SLOTS).fetchall():
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def wal_dsn(wal_server: str) -> Iterator[str]:
    yield from _fresh(wal_server)


def _relay(dsn: str) -> int:
    relay = Relay(dsn)
    relay.run(until_idle=True)
    return relay.relayed


def _changes(dsn: str, consumer: str, tables: list[str] | None = None) -> list[Any]:
    feed = pgtide.Feed(consumer, tables, dsn=dsn, relay=False)
    try:
        return [c for b in feed.batches(start="beginning", stop="end") for c in b]
    finally:
        feed.close()


def test_typed_rows_through_wal_equal_select_star(wal_dsn: str) -> None:
    inserted, updated = _write(wal_dsn, capture="wal", old="full")
    assert not pgtide.track("everything", capture="wal", old="full", dsn=wal_dsn)
    assert _relay(wal_dsn) == 6
    changes = _changes(wal_dsn, "typed", ["everything"])
    _check(changes, inserted, updated)
    assert str(changes[0].row["num"]) == "0.1000000001"
    # nothing twice: a second relay finds nothing
    assert _relay(wal_dsn) == 0


def test_feed_relays_by_itself_and_batches_hold_whole_transactions(wal_dsn: str) -> None:
    with psycopg.connect(wal_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text, big text)")
        conn.execute("ALTER TABLE t ALTER COLUMN big SET STORAGE EXTERNAL")
    pgtide.track("t", capture="wal", dsn=wal_dsn)
    feed = pgtide.Feed("lone", ["t"], dsn=wal_dsn)
    with psycopg.connect(wal_dsn, autocommit=True) as conn:
        for n in range(5):
            with conn.transaction():
                conn.execute(
                    "INSERT INTO t SELECT g, %s, repeat('x', 5000) "
                    "FROM generate_series(%s::int, %s::int) g",
                    (f"tx{n}", n * 10, n * 10 + 9),
                )
        conn.execute("UPDATE t SET v = 'changed' WHERE id = 0")
    got: list[Any] = []
    for batch in feed.batches(max_changes=7, timeout=None):
        txs = {c.row["v"] for c in batch if c.op == "insert"}
        # whole source transactions: each one's 10 rows come in one batch
        assert all(sum(1 for c in batch if c.row["v"] == t) == 10 for t in txs)
        got.extend(batch)
        batch.ack()
        if len(got) >= 51:
            break
    feed.close()
    assert [c.row["v"] for c in got[:50]] == [f"tx{n}" for n in range(5) for _ in range(10)]
    assert got[50].op == "update" and got[50].row["big"] is UNCHANGED
    sections = {s.title: s for s in _overview(wal_dsn)}
    capture = sections["capture"].as_dicts()[0]
    assert capture["wal status"] in ("reserved", "extended") and capture["lag bytes"] >= 0


class _FailsSecondPart(Relay):
    """A relay whose step fails while writing its second transaction (a crash there)."""

    parts = 0

    def _write(self, *args: Any) -> Any:
        self.parts += 1
        if self.parts == 2:
            raise RuntimeError("crash between two transactions of one step")
        return super()._write(*args)


def test_a_large_step_commits_in_several_transactions_and_a_crash_between_them_repeats_nothing(
    wal_dsn: str,
) -> None:
    """A step of more than ``commit_changes`` changes writes them in several transactions,
    each ending with a whole source transaction and recording its position, so that feeds
    read the first while the relay writes the rest; a crash after the first resumes after
    it: no change lost or written twice."""
    with psycopg.connect(wal_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    pgtide.track("t", capture="wal", dsn=wal_dsn)
    with psycopg.connect(wal_dsn, autocommit=True) as conn:
        for n in range(6):
            conn.execute(
                "INSERT INTO t SELECT g, %s FROM generate_series(%s::int, %s::int) g",
                (f"tx{n}", n * 3, n * 3 + 2),
            )
    failing = _FailsSecondPart(wal_dsn, commit_changes=5)
    with pytest.raises(RuntimeError, match="crash between"):
        failing.run(until_idle=True)
    assert failing.relayed == 6  # the first transaction (two source ones) was committed
    relay = Relay(wal_dsn, commit_changes=5)
    relay.run(until_idle=True)
    assert relay.relayed == 12
    with psycopg.connect(wal_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT xid::text, row->>'v', (row->>'id')::int FROM pgtide.changes ORDER BY id"
        ).fetchall()
    assert [r[2] for r in rows] == list(range(18))  # each once, in source order
    by_xid: dict[str, list[str]] = {}
    for xid, v, _id in rows:
        by_xid.setdefault(xid, []).append(v)
    # three relay transactions of two whole source transactions each
    assert list(by_xid.values()) == [[f"tx{n}"] * 3 + [f"tx{n + 1}"] * 3 for n in (0, 2, 4)]
    assert [c.row["id"] for c in _changes(wal_dsn, "split")] == list(range(18))


AWKWARD = """
CREATE TABLE plain (
    id int PRIMARY KEY, i2 int2, i8 int8, o oid, f4 float4, f8 float8, num numeric, b bool,
    t text, vc varchar(40), ch char(3), nm name, u uuid, jb jsonb
);
INSERT INTO plain VALUES
    (1, -32768, -9223372036854775808, 4294967295, 'Infinity', '1e+300', 'NaN', true,
     E'quote " backslash \\ tab \t newline \n cr \r bell \x07 é ✓', E'\\\\x', 'a"b', E'n\\m',
     'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"s": "\\u00e9\\n", "n": 1e-7, "a": [true]}'),
    (2, 0, 0, 0, '-Infinity', 'Infinity', '-0.000000000000000001', false, '', '', '', '',
     NULL, 'null'),
    (3, NULL, NULL, NULL, '1.5e-10', '-2.2250738585072014e-308', '123456789012345678901234567890',
     NULL, NULL, NULL, NULL, NULL, NULL, NULL)
"""


def test_the_relay_wakes_feeds_only_while_one_waits(wal_dsn: str) -> None:
    """The relay's wake-up NOTIFY, as the capture triggers': sent only while a feed waits
    (holds the feeds' wake gate), so the relay's commits take NOTIFY's database-wide commit
    lock only when it is of use."""
    with psycopg.connect(wal_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE quiet (id int PRIMARY KEY)")
    pgtide.track("quiet", capture="wal", dsn=wal_dsn)
    with psycopg.connect(wal_dsn, autocommit=True) as listener:
        listener.execute("LISTEN pgtide_changes")
        listener.execute("INSERT INTO quiet VALUES (1)")
        assert _relay(wal_dsn) == 1
        assert list(listener.notifies(timeout=0.3)) == []  # no feed waits
        listener.execute("SELECT pg_advisory_lock_shared(%s, %s)", GATE)  # as a waiting feed
        listener.execute("INSERT INTO quiet VALUES (2)")
        assert _relay(wal_dsn) == 1
        heard = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]
    assert heard == ["public.quiet"]


def test_rows_of_plain_types_are_written_without_the_server_typing_them(wal_dsn: str) -> None:
    """Text, numbers, bool, uuid and jsonb go straight from pgoutput's text to JSON: quotes,
    backslashes and control characters, NaN and the infinities, NULLs end as SELECT * has
    them."""
    with psycopg.connect(wal_dsn, autocommit=True) as conn:
        conn.execute(AWKWARD.split(";")[0])
    pgtide.track("plain", capture="wal", old="full", dsn=wal_dsn)
    with psycopg.connect(wal_dsn, autocommit=True) as conn:
        conn.execute(AWKWARD.split(";", 1)[1])
        inserted = _select_plain(conn)
        conn.execute("UPDATE plain SET t = t || E'\\t\"', f8 = -f8, b = NOT b")
        updated = _select_plain(conn)
        conn.execute("DELETE FROM plain")
    relay = Relay(wal_dsn)
    relay.run(until_idle=True)
    assert relay.relayed == 9
    assert not any(shape.slow for _rel, shape in relay.shapes.values())  # no server typing
    changes = _changes(wal_dsn, "plain", ["plain"])
    rows = {op: [c.row or c.old for c in changes if c.op == op] for op in ("insert", "update")}
    for got, want in zip(rows["insert"], inserted, strict=True):
        _same(got, want)
    for got, want in zip(rows["update"], updated, strict=True):
        _same(got, want)
    for change, want in zip([c for c in changes if c.op == "update"], inserted, strict=True):
        _same(change.old, want)
    for change, want in zip([c for c in changes if c.op == "delete"], updated, strict=True):
        _same(change.old, want)


def _select_plain(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=dict_row)
    return cur.execute("SELECT * FROM plain ORDER BY id").fetchall()


def test_a_step_mixing_server_typed_and_plain_tables_keeps_order_and_unchanged_toast(
    wal_dsn: str,
) -> None:
    with psycopg.connect(wal_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE fast (id int PRIMARY KEY, v text, big text); "
            "CREATE TABLE typed (id int PRIMARY KEY, at timestamptz, big text); "
            "ALTER TABLE fast ALTER COLUMN big SET STORAGE EXTERNAL; "
            "ALTER TABLE typed ALTER COLUMN big SET STORAGE EXTERNAL"
        )
    pgtide.track("fast", capture="wal", dsn=wal_dsn)
    pgtide.track("typed", capture="wal", dsn=wal_dsn)
    at = datetime(2024, 2, 29, 12, 34, 56, 123456, tzinfo=UTC)
    with psycopg.connect(wal_dsn, autocommit=True) as conn, conn.transaction():
        for n in range(3):
            conn.execute("INSERT INTO fast VALUES (%s, 'v', repeat('f', 5000))", (n,))
            conn.execute("INSERT INTO typed VALUES (%s, %s, repeat('t', 5000))", (n, at))
        conn.execute("UPDATE fast SET v = 'w' WHERE id = 1")
        conn.execute("UPDATE typed SET at = at + interval '1 day' WHERE id = 1")
    assert _relay(wal_dsn) == 8
    changes = _changes(wal_dsn, "mixed")
    assert [(c.table, c.op, (c.row or {}).get("id")) for c in changes] == [
        *[(t, "insert", n) for n in range(3) for t in ("public.fast", "public.typed")],
        ("public.fast", "update", 1),
        ("public.typed", "update", 1),
    ]
    assert changes[1].row == {"id": 0, "at": at, "big": "t" * 5000}
    assert changes[6].row == {"id": 1, "v": "w", "big": UNCHANGED}
    assert changes[7].row == {"id": 1, "at": at + timedelta(days=1), "big": UNCHANGED}


def _overview(dsn: str) -> list[Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return run(conn, overview())


def test_untrack_of_the_last_wal_table_drops_the_slot(wal_dsn: str) -> None:
    with psycopg.connect(wal_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)")
    pgtide.track("a", capture="wal", dsn=wal_dsn)
    pgtide.track("b", capture="wal", old="full", dsn=wal_dsn)
    with psycopg.connect(wal_dsn, autocommit=True) as conn:
        assert len(conn.execute(_SLOTS).fetchall()) == 1
        pgtide.untrack("a", dsn=wal_dsn)
        assert len(conn.execute(_SLOTS).fetchall()) == 1
        # switching a table to triggers leaves the publication too
        pgtide.track("b", dsn=wal_dsn)
        assert conn.execute(_SLOTS).fetchall() == []
        assert conn.execute("SELECT count(*) FROM pg_publication").fetchone() == (0,)
        ident = "SELECT relreplident FROM pg_class WHERE relname = 'b'"
        assert conn.execute(ident).fetchone() == ("d",)


def test_the_slot_is_a_failover_slot_where_the_server_has_them(wal_dsn: str) -> None:
    """PostgreSQL 17+ keeps a failover slot on standbys that sync slots, so a promotion
    does not lose it; status says which kind the slot is, also for one made elsewhere."""
    failover = "SELECT (to_jsonb(s) ->> 'failover')::boolean FROM pg_replication_slots s"
    with psycopg.connect(wal_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE a (id int PRIMARY KEY)")
        version = int(conn.execute("SHOW server_version_num").fetchone()[0])  # type: ignore[index]
        slot = slot_name(conn.info.dbname)
        expected = True if version >= 170000 else None
        pgtide.track("a", capture="wal", dsn=wal_dsn)
        assert conn.execute(failover).fetchall() == [(expected,)]
        assert _overview(wal_dsn)[-1].as_dicts()[0]["failover"] is expected
        pgtide.untrack("a", dsn=wal_dsn)
        # a slot made before (by an older pgtide, or by hand) is kept, and shown as it is
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        pgtide.track("a", capture="wal", dsn=wal_dsn)
        (capture,) = _overview(wal_dsn)[-1].as_dicts()
        assert capture["slot"] == slot
        assert capture["failover"] is (False if version >= 170000 else None)
    if version >= 170000:  # the upgrade docs/feed.md gives, over a replication connection
        with psycopg.connect(wal_dsn, replication="database", autocommit=True) as repl:
            command = f"ALTER_REPLICATION_SLOT {slot} (FAILOVER true)".encode()
            result = repl.pgconn.exec_(command)
            assert result.status == psycopg.pq.ExecStatus.COMMAND_OK, result.error_message
        assert _overview(wal_dsn)[-1].as_dicts()[0]["failover"] is True


def test_the_relay_outlives_its_decoding_connection(wal_dsn: str) -> None:
    """The relay reads the slot on a connection of its own: when that one is lost, the
    relay opens another and goes on, and no change is lost or written twice."""
    with psycopg.connect(wal_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE captured (id int PRIMARY KEY)")
    pgtide.track("captured", capture="wal", dsn=wal_dsn)
    stop, failed = threading.Event(), []
    relay = Relay(wal_dsn, poll_interval=0.01)

    def serve() -> None:
        try:
            relay.run(stop)
        except BaseException as exc:
            failed.append(exc)

    decoding = (
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = 'pgtide relay (decoding)'"
    )
    logged = "SELECT count(*), count(DISTINCT row->>'id') FROM pgtide.changes"
    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with psycopg.connect(wal_dsn, autocommit=True) as conn:
            for round_, first in enumerate((1, 101, 201)):
                conn.execute(
                    "INSERT INTO captured SELECT g FROM generate_series(%s::int, %s::int) g",
                    (first, first + 99),
                )
                wait_until(
                    lambda n=first + 99: conn.execute(logged).fetchone() == (n, n),
                    what=f"round {round_}'s changes relayed",
                )
                assert not failed, failed
                pids = [r[0] for r in conn.execute(decoding).fetchall()]
                assert len(pids) == 1
                conn.execute("SELECT pg_terminate_backend(%s)", (pids[0],))
    finally:
        stop.set()
        thread.join()
    assert not failed, failed


def test_idle_database_does_not_grow_retained_wal(wal_dsn: str) -> None:
    with psycopg.connect(wal_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE captured (id int); CREATE TABLE other (id int, pad text)")
    pgtide.track("captured", capture="wal", dsn=wal_dsn)
    stop = threading.Event()
    relay = Relay(wal_dsn, heartbeat=0.5)
    thread = threading.Thread(target=relay.run, args=(stop,))
    thread.start()
    lag = (
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn) "
        "FROM pg_replication_slots WHERE database = current_database()"
    )
    try:
        with psycopg.connect(wal_dsn, autocommit=True) as conn:
            began = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
            for _ in range(5):
                conn.execute(
                    "INSERT INTO other SELECT g, repeat('p', 200) FROM generate_series(1, 20000) g"
                )
            # the WAL written, not the slot's lag now: the relay may have moved on meanwhile
            grown = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", began)
            assert (row := grown.fetchone()) is not None and row[0] > 4 * 2**20
            deadline = time.monotonic() + 20
            while (row := conn.execute(lag).fetchone()) and row[0] > 2**20:
                assert time.monotonic() < deadline, f"slot still {row[0]} bytes behind"
                time.sleep(0.1)
    finally:
        stop.set()
        thread.join()


def test_the_relay_moves_the_slots_restart_point_on(wal_dsn: str) -> None:
    """Each read decodes from the slot's restart point: before it reads a backlog the relay
    has the server log a running-transactions record so that the point moves on, without
    waiting for the server's own (every 15 s). A backlog read in one step moves it in that
    step; one left behind (here by a relay that may not ask), within a second of a relay
    running on."""
    with psycopg.connect(wal_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE captured (id int PRIMARY KEY, pad text)")
    pgtide.track("captured", capture="wal", dsn=wal_dsn)
    restart_lag = (
        "SELECT pg_wal_lsn_diff(confirmed_flush_lsn, restart_lsn) "
        "FROM pg_replication_slots WHERE database = current_database()"
    )
    burst = (
        "INSERT INTO captured SELECT g, repeat('p', 100) FROM generate_series(%s::int, %s::int) g"
    )
    with psycopg.connect(wal_dsn, autocommit=True) as conn:
        conn.execute(burst, (1, 30000))
        assert _relay(wal_dsn) == 30000
        lag = conn.execute(restart_lag).fetchone()
        assert lag is not None and lag[0] <= RESTART_LAG_BYTES, f"{lag[0]} bytes behind"
        for first in range(30001, 60001, 1000):
            conn.execute(burst, (first, first + 999))
        small = Relay(wal_dsn, batch_rows=1000)
        small._snapshots = False  # as on a server that refuses it: the restart point stays
        small.run(until_idle=True)
        assert small.relayed == 30000
        lag = conn.execute(restart_lag).fetchone()
        assert lag is not None and lag[0] > RESTART_LAG_BYTES
        stop = threading.Event()
        relay = Relay(wal_dsn, heartbeat=0.2)
        thread = threading.Thread(target=relay.run, args=(stop,))
        thread.start()
        try:
            deadline = time.monotonic() + 10
            while (row := conn.execute(restart_lag).fetchone()) and row[0] > RESTART_LAG_BYTES:
                assert time.monotonic() < deadline, f"restart point still {row[0]} bytes behind"
                time.sleep(0.05)
        finally:
            stop.set()
            thread.join()


def test_an_idle_relay_moves_the_restart_point_on_after_a_burst(wal_dsn: str) -> None:
    """The running-transactions record the relay asks for counts only once the slot is
    confirmed past it: the relay follows it with a heartbeat transaction, so that the first
    idle step moves the restart point on (not the next write, or a heartbeat due in 5 s),
    and once it is close, idle steps write nothing for the slot."""
    with psycopg.connect(wal_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE captured (id int PRIMARY KEY, pad text)")
    pgtide.track("captured", capture="wal", dsn=wal_dsn)
    slot = (
        "SELECT pg_wal_lsn_diff(confirmed_flush_lsn, restart_lsn), "
        "pg_wal_lsn_diff(pg_current_wal_insert_lsn(), confirmed_flush_lsn), "
        "confirmed_flush_lsn FROM pg_replication_slots WHERE database = current_database()"
    )
    with psycopg.connect(wal_dsn, autocommit=True) as conn:
        # a burst whose relaying leaves less than HEARTBEAT_BYTES behind the slot
        conn.execute(
            "INSERT INTO captured SELECT g, repeat('p', 1500) FROM generate_series(1, 300) g"
        )
        burst = Relay(wal_dsn)
        burst._snapshots = False  # it does not ask for the record: the restart point stays
        burst.run(until_idle=True)
        assert burst.relayed == 300
        row = conn.execute(slot).fetchone()
        assert row is not None and row[0] > RESTART_LAG_BYTES and row[1] < HEARTBEAT_BYTES
        relay = Relay(wal_dsn)
        with psycopg.connect(wal_dsn, autocommit=True) as relay_conn:
            relay_conn.execute("SET synchronous_commit = on")  # as run() does
            relay.step(relay_conn)
            row = conn.execute(slot).fetchone()
            assert row is not None and row[0] <= RESTART_LAG_BYTES, f"{row[0]} bytes behind"
            assert relay.relayed == 0
            # close: idle steps write nothing more for the slot to confirm
            confirmed = row[2]
            for _ in range(3):
                relay.step(relay_conn)
                row = conn.execute(slot).fetchone()
                assert row is not None and row[2] == confirmed


def test_wal_level_replica_is_a_clear_error(embedded_home: Path) -> None:
    server = embedded.ensure_running(
        embedded_home, settings={**TEST_SETTINGS, "wal_level": "replica"}
    )
    pgtide.install(dsn=server.dsn)
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int)")
    with pytest.raises(WalUnavailable, match=r"wal_level = logical.*wal_level = replica"):
        pgtide.track("t", capture="wal", dsn=server.dsn)
    assert pgtide.track("t", dsn=server.dsn)  # triggers still work


@pytest.mark.slow
def test_invalidated_slot_is_the_documented_error(embedded_home: Path) -> None:
    server = embedded.ensure_running(
        embedded_home, settings={**TEST_SETTINGS, "max_slot_wal_keep_size": "1MB"}
    )
    dsn = server.dsn
    pgtide.install(dsn=dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE other (pad text)")
    pgtide.track("t", capture="wal", dsn=dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO t VALUES (1)")
        deadline = time.monotonic() + 30
        status = "SELECT wal_status FROM pg_replication_slots"
        while conn.execute(status).fetchone() != ("lost",):
            assert time.monotonic() < deadline
            conn.execute("INSERT INTO other SELECT repeat('w', 500) FROM generate_series(1, 5000)")
            conn.execute("SELECT pg_switch_wal()")
            conn.execute("CHECKPOINT")
    with pytest.raises(SlotLost, match=r"invalidated.*pgtide capture --reset.*backfill"):
        Relay(dsn).run(until_idle=True)
    reset_slot(dsn=dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO t VALUES (2)")
    assert _relay(dsn) == 1


# -- exactly once across relay kill -9 and a server restart -------------------------------
def relay_forever(dsn: str) -> None:
    """A relay process (killed by the test)."""
    # steps of several transactions each: a kill also lands between two of one step
    Relay(dsn, poll_interval=0.01, batch_rows=500, commit_changes=3).run()


def _writer(dsn: str, n: int, stop: threading.Event, done: list[int]) -> None:
    rng = random.Random(n)
    ops = 0
    while not stop.is_set():
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                while not stop.is_set():
                    with conn.transaction():
                        for _ in range(rng.randint(1, 5)):
                            key = n * 1000 + rng.randint(0, 49)
                            roll = rng.random()
                            if roll < 0.6:
                                conn.execute(
                                    "INSERT INTO acct VALUES (%s, %s) ON CONFLICT (id) "
                                    "DO UPDATE SET v = excluded.v",
                                    (key, f"{n}-{ops}"),
                                )
                            else:
                                conn.execute("DELETE FROM acct WHERE id = %s", (key,))
                            ops += 1
        except psycopg.OperationalError:
            time.sleep(0.05)  # the server restarts: reconnect
    done.append(ops)


@pytest.mark.slow
def test_relay_kill_9_and_server_restart_lose_and_repeat_nothing(
    restartable: RestartableServer, killable: Killable
) -> None:
    dsn = restartable.dsn
    pgtide.install(dsn=dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE acct (id int PRIMARY KEY, v text)")
    pgtide.track("acct", capture="wal", dsn=dsn)
    stop = threading.Event()
    done: list[int] = []
    writers = [threading.Thread(target=_writer, args=(dsn, n, stop, done)) for n in range(4)]
    for w in writers:
        w.start()
    rng = random.Random(13)
    try:
        for round_ in range(8):
            process = killable.start(relay_forever, dsn)
            time.sleep(rng.uniform(0.2, 1.0))  # kill -9 at a random point of its work
            killable.kill(process)
            if round_ == 4:
                restartable.restart(mode="immediate")
    finally:
        stop.set()
        for w in writers:
            w.join()
    assert sum(done) > 0
    _relay(dsn)
    copy: dict[int, str] = {}
    seen: set[tuple[str, Any]] = set()
    for change in _changes(dsn, "copy", ["acct"]):
        row = change.row if change.op != "delete" else change.old
        token = (change.op, row["v"] if row and row.get("v") else (change.id,))
        if change.op == "insert" or change.op == "update":
            assert (change.op, row["v"]) not in seen, f"repeated change {change}"
            seen.add((change.op, row["v"]))
            copy[row["id"]] = row["v"]
        elif change.op == "delete":
            copy.pop(row["id"], None)
        del token
    with psycopg.connect(dsn, autocommit=True) as conn:
        source = dict(conn.execute("SELECT id, v FROM acct").fetchall())
    assert copy == source


class _NoSnapshots:
    """A connection whose server has no pg_log_standby_snapshot() (PostgreSQL 15)."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def execute(self, statement: str, *args: Any) -> None:
        self.statements.append(statement)
        if "pg_log_standby_snapshot" in statement:
            raise psycopg.errors.UndefinedFunction("no pg_log_standby_snapshot()")


def test_without_standby_snapshots_the_relay_writes_nothing_to_move_the_restart_point() -> None:
    relay = Relay("postgresql://unused")
    conn = _NoSnapshots()
    relay._unpin(conn, 10 * RESTART_LAG_BYTES)  # type: ignore[arg-type]
    relay._snapshot_at = 0.0  # not before SNAPSHOT_INTERVAL, were it allowed
    relay._unpin(conn, 10 * RESTART_LAG_BYTES)  # type: ignore[arg-type]
    # one statement: the refused record takes its heartbeat transaction with it
    assert conn.statements == [_SNAPSHOT]


def test_after_a_step_that_relayed_the_relay_waits_in_proportion_to_it() -> None:
    """Small steps cost the server much the same set-up as large ones: after one that
    relayed a backlog the relay waits about twice as long as it took, within its bounds."""
    relay = Relay("postgresql://unused", busy_interval=0.01, busy_ratio=2.0, busy_max=0.025)
    assert relay._busy_wait(0.001, 5000) == 0.01
    assert relay._busy_wait(0.01, 5000) == pytest.approx(0.02)
    assert relay._busy_wait(0.5, 5000) == 0.025


def test_after_a_small_step_the_relay_waits_longest() -> None:
    """A step of a few small transactions is mostly set-up, however quick: the next one
    waits ``busy_max`` so that it carries more (by default under 1,000 changes)."""
    relay = Relay("postgresql://unused")
    assert relay._busy_wait(0.002, 20) == relay.busy_max
    assert relay._busy_wait(0.002, relay.busy_changes - 1) == relay.busy_max
    assert relay._busy_wait(0.002, relay.busy_changes) == relay.busy_interval < relay.busy_max
