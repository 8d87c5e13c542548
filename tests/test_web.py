"""``pgtide web``: pages, metrics, health, actions, security, and the browser streams."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from docs_examples import DOCS, block_under
from test_feed_wal import wal_dsn, wal_server  # noqa: F401 (fixtures: wal_level=logical)
from web_helpers import (
    LIVE,
    LOCAL,
    SseParser,
    csrf_of,
    live_client,
    live_console,
    next_update,
    until,
    web_client,
)

import pgtide
import pgtide.web
from pgtide.feed import Relay
from pgtide.feed.sleepers import waiting_io
from pgtide.feed.wal import slot_name
from pgtide.session import run
from pgtide.web.metrics import FileWatcherCollector, ListenerCollector


def _dead_event(dsn: str, name: str = "breaks", retries: int = 0) -> int:
    """Publish an event and let a worker fail it for good (after ``retries``); its id."""
    events = pgtide.Events(dsn=dsn, poll_interval=0.05, retry_delay=0.01)

    @events.handler(name, retries=retries)
    def breaks(event: pgtide.Event) -> None:
        raise RuntimeError("the handler broke on purpose")

    id_ = events.publish(name, {"n": 1})
    events.start()
    try:
        assert events.wait(id_, timeout=10).state == "dead"
    finally:
        events.close()
    return id_


def test_pages_show_every_feature(dsn: str, tmp_path: Path) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
        conn.execute("CREATE TABLE readings (value float8)")
    pgtide.track("orders", dsn=dsn)
    feed = pgtide.Feed("indexer", ["orders"], dsn=dsn)
    for batch in feed.batches(timeout=0.1):
        batch.ack()
    feed.close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO orders VALUES (1), (2)")
    (tmp_path / "a.txt").write_text("1\nnot a number\n")
    pgtide.FileWatcher(tmp_path, table="readings", dsn=dsn, name="w1").catch_up()
    dead = _dead_event(dsn)

    async def main() -> None:
        async with live_client(dsn) as http:
            pages = {p: (await http.get(p)) for p in ("/", "/listeners", "/feed", "/events")}
            pages["/ingest"] = await http.get("/ingest")
            pages["event"] = await http.get(f"/events/{dead}")
            for name, r in pages.items():
                assert r.status_code == 200, (name, r.text)
            assert 'data-testid="events-dead">1<' in pages["/"].text
            assert "<svg" in pages["/"].text
            feed = pages["/feed"].text
            assert 'data-testid="pending-indexer">2<' in feed
            assert re.search(r'data-testid="lag-indexer">[0-9.]+ (ms|s)<', feed)  # seconds
            assert 'data-testid="changes-rows">2<' in feed  # the change log's size
            assert re.search(r'data-testid="changes-size">[1-9][0-9,]* kB<', feed)
            assert "<svg" in feed  # the lag plots
            assert "breaks" in pages["/events"].text
            assert "the handler broke on purpose" in pages["event"].text
            assert "Traceback" in pages["event"].text or "RuntimeError" in pages["event"].text
            ingest = pages["/ingest"].text
            assert "a.txt" in ingest and "not a number" in ingest  # a file, a recent reject
            assert "<th>offset</th>" in ingest and "<td>15</td>" in ingest  # its offset
            assert "pgtide listen (web)" in pages["/listeners"].text
            assert (await http.get("/events/999999")).status_code == 404
            assert (await http.get("/events/abc")).status_code == 404

    asyncio.run(main())


def test_metrics_cover_every_feature(dsn: str, tmp_path: Path) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
        conn.execute("CREATE TABLE readings (value float8)")
    pgtide.track("orders", dsn=dsn)
    pgtide.Feed("slow", ["orders"], dsn=dsn).seek("beginning")
    feed = pgtide.Feed("slow", ["orders"], dsn=dsn)
    for batch in feed.batches(timeout=0.05):
        batch.ack()
    feed.close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO orders VALUES (1), (2), (3)")
    (tmp_path / "a.txt").write_text("1\nx\n")
    pgtide.FileWatcher(tmp_path, table="readings", dsn=dsn, name="w").catch_up()
    _dead_event(dsn, retries=1)  # two attempts: one retry

    async def main() -> None:
        async with live_client(dsn) as http:
            r = await http.get("/metrics")  # served from the sample (bench/web.py times it)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
            text = r.text
            for line in (
                "pgtide_up 1.0",
                'pgtide_feed_consumer_pending_changes{consumer="slow"} 3.0',
                'pgtide_events{name="breaks",state="dead"} 1.0',
                'pgtide_event_retries{name="breaks"} 1.0',
                "pgtide_feed_changes_rows 3.0",
                "pgtide_listen_connections",
                "pgtide_web_listener_received_total",
                "# TYPE pgtide_event_duration_seconds histogram",
            ):
                assert line in text, line
            file = f'{{path="{tmp_path / "a.txt"}",watcher="w"}}'
            for line in (  # ingest rows, rejects and lag (all committed: 0 bytes behind)
                f"pgtide_ingest_rows_total{file} 1.0",
                f"pgtide_ingest_rejects_total{file} 1.0",
                f"pgtide_ingest_offset_bytes{file} 4.0",
                f"pgtide_ingest_lag_bytes{file} 0.0",
            ):
                assert line in text, line
            for counter in ("dispatched", "callback_errors", "reconnects"):  # the console's own
                assert f'pgtide_web_listener_{counter}_total{{listener="web"}}' in text
            lag = [x for x in text.splitlines() if x.startswith("pgtide_feed_consumer_lag_seconds")]
            assert lag and float(lag[0].split()[-1]) >= 0
            assert (await http.get("/healthz")).status_code == 200
            assert "pgtide_slot_lag_bytes{" not in text  # no table is captured from the WAL

    asyncio.run(main())


def test_healthz_is_503_without_database_and_shows_no_password(pg_server: Any) -> None:
    secret = "s3cret-pw-xyz"
    dsn = f"postgresql://nobody:{secret}@127.0.0.1:1/nothing?connect_timeout=1"

    async def main() -> None:
        async with web_client(dsn) as http:
            r = await http.get("/healthz")
            assert r.status_code == 503
            assert secret not in r.text
            page = await http.get("/", headers={"accept": "text/html"})
            assert secret not in page.text
            metrics = await http.get("/metrics")
            assert secret not in metrics.text

    asyncio.run(main())


@pytest.mark.slow
def test_healthz_is_200_only_while_the_database_answers(restartable: Any) -> None:
    pgtide.install(dsn=restartable.dsn)

    async def main() -> None:
        async with web_client(restartable.dsn) as http:
            assert (await http.get("/healthz")).status_code == 200
            await asyncio.to_thread(restartable.stop)
            down = await http.get("/healthz")
            assert down.status_code == 503, down.text
            assert (await http.get("/metrics")).status_code == 200  # metrics still answer
            await asyncio.to_thread(restartable.start)
            await until_ok(http)

    async def until_ok(http: httpx.AsyncClient) -> None:
        deadline = time.monotonic() + 20
        while (r := await http.get("/healthz")).status_code != 200:  # the server starting up
            assert time.monotonic() < deadline, r.text
            await asyncio.sleep(0.1)

    asyncio.run(main())


def test_password_never_in_pages(pg_server: Any, dsn: str) -> None:
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE ROLE webby LOGIN PASSWORD 'Pa55-wOrd-web'")
        conn.execute("GRANT ALL ON SCHEMA pgtide TO webby")
        conn.execute("GRANT ALL ON ALL TABLES IN SCHEMA pgtide TO webby")
        conn.execute("GRANT ALL ON ALL SEQUENCES IN SCHEMA pgtide TO webby")
    info.update(user="webby", password="Pa55-wOrd-web")
    with_password = psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items()})

    async def main() -> None:
        async with web_client(with_password) as http:
            paths = ("/", "/feed", "/events", "/events/1", "/schedules", "/listeners", "/ingest")
            for path in (*paths, "/metrics", "/healthz", "/x"):
                r = await http.get(path, headers={"accept": "text/html"})
                assert "Pa55-wOrd-web" not in r.text, path

    try:
        asyncio.run(main())
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DROP OWNED BY webby")
            conn.execute("DROP ROLE webby")


def test_localhost_only_without_a_token(dsn: str) -> None:
    async def main() -> None:
        async with web_client(dsn, client=("10.1.2.3", 4000)) as remote:
            r = await remote.get("/")
            assert r.status_code == 403 and "--token" in r.text
            assert (await remote.get("/metrics")).status_code == 403
        async with web_client(dsn, host="evil.example:8484") as rebound:
            assert (await rebound.get("/")).status_code == 403  # DNS rebinding
        async with web_client(dsn) as local:
            assert (await local.get("/")).status_code == 200

    asyncio.run(main())


def test_token_by_bearer_or_login_cookie(dsn: str) -> None:
    async def main() -> None:
        async with web_client(dsn, token="t0k-en", client=("10.1.2.3", 4000)) as http:
            r = await http.get("/metrics")
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            r = await http.get("/events", headers={"accept": "text/html"})
            assert r.status_code == 303 and "/login?next=" in r.headers["location"]
            ok = await http.get("/metrics", headers={"authorization": "Bearer t0k-en"})
            assert ok.status_code == 200
            bad = await http.get("/metrics", headers={"authorization": "Bearer nope"})
            assert bad.status_code == 401
            assert (await http.get("/healthz")).status_code == 200  # no data, always open
            assert (await http.get("/login")).status_code == 200
            wrong = await http.post("/login", data={"token": "nope", "next": "/events"})
            assert wrong.status_code == 401 and "wrong token" in wrong.text
            right = await http.post("/login", data={"token": "t0k-en", "next": "/events"})
            assert right.status_code == 303 and right.headers["location"] == "/events"
            cookie = right.headers["set-cookie"]
            assert "HttpOnly" in cookie and "t0k-en" not in cookie
            assert (await http.get("/events")).status_code == 200  # the cookie is kept
            page = await http.get("/")
            out = await http.post("/logout", data={"csrf": csrf_of(page.text)})
            assert out.status_code == 303
            http.cookies.clear()
            assert (await http.get("/metrics")).status_code == 401

    asyncio.run(main())


def test_retry_needs_post_csrf_and_is_refused_read_only(dsn: str) -> None:
    dead = _dead_event(dsn)

    async def main() -> None:
        async with web_client(dsn, read_only=True) as ro:
            page = await ro.get(f"/events/{dead}")
            assert 'data-testid="retry-' not in page.text
            r = await ro.post(f"/events/{dead}/retry", data={"csrf": csrf_of(page.text)})
            assert r.status_code == 403 and "read-only" in r.text
        async with web_client(dsn) as http:
            page = await http.get(f"/events/{dead}")
            assert f'data-testid="retry-{dead}"' in page.text
            assert (await http.get(f"/events/{dead}/retry")).status_code == 405
            r = await http.post(f"/events/{dead}/retry", data={"csrf": "forged"})
            assert r.status_code == 403
            r = await http.post(
                f"/events/{dead}/retry",
                data={"csrf": csrf_of(page.text)},
                headers={"origin": "http://evil.example"},
            )
            assert r.status_code == 403
            r = await http.post(
                f"/events/{dead}/retry", data={"csrf": csrf_of(page.text), "next": "//evil"}
            )
            assert r.status_code == 303 and r.headers["location"] == f"/events/{dead}"
            assert (await http.post("/events/1/explode", data={})).status_code == 404
            for action in ("retry", "cancel"):  # no such event: a 404, not a silent redirect
                r = await http.post(f"/events/987654/{action}", data={"csrf": csrf_of(page.text)})
                assert r.status_code == 404 and "no event with id 987654" in r.text
        rec = pgtide.Events(dsn=dsn).get(dead)
        assert rec is not None and rec.state == "pending"

    asyncio.run(main())


def test_bad_names_are_4xx(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int)")
        conn.execute("CREATE TABLE secrets (id int)")
    pgtide.track("orders", dsn=dsn)
    pgtide.track("secrets", dsn=dsn)

    async def main() -> None:
        async with live_client(dsn, expose=["orders"]) as http:
            cases = {
                "/sse/channels/" + "x" * 80: 400,
                "/sse/feed/bad%20name?tables=orders": 400,
                "/sse/feed/ok?tables=secrets": 403,
                "/sse/feed/ok?tables=a.b.c": 400,
                "/sse/feed/ok?tables=orders&start=yesterday": 400,
                "/sse/console?page=nope": 400,
            }
            for path, status in cases.items():
                r = await http.get(path)
                assert r.status_code == status, (path, r.status_code, r.text)
            r = await http.get("/sse/feed/ok?tables=orders", headers={"last-event-id": "bogus"})
            assert r.status_code == 400
        async with live_client(dsn) as http:
            assert (await http.get("/sse/feed/ok")).status_code == 403  # nothing exposed

    asyncio.run(main())


def test_channel_stream_relays_notify(dsn: str) -> None:
    async def main() -> None:
        async with (
            live_client(dsn) as http,
            http.stream("GET", "/sse/channels/My Channel") as r,
        ):
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            chunks = r.aiter_text()
            parser = SseParser()
            parser.feed(await anext(chunks))  # listening
            await pgtide.aio.notify("My Channel", {"order": 7}, dsn=dsn)
            await pgtide.aio.notify("My Channel", "line one\nline two", dsn=dsn)
            got: list[str] = []
            async with asyncio.timeout(10):
                while len(got) < 2:
                    got += [e.data for e in parser.feed(await anext(chunks))]
            assert json.loads(got[0]) == {"order": 7}
            assert got[1] == "line one\nline two"

    asyncio.run(main())


def _write_orders(dsn: str, transactions: int, per: int, first: int = 0) -> list[int]:
    ids = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for t in range(transactions):
            with conn.transaction():
                batch = [first + t * per + i for i in range(per)]
                conn.execute("INSERT INTO orders SELECT unnest(%s::int[])", (batch,))
                ids += batch
    return ids


def test_feed_stream_resumes_after_a_killed_connection(dsn: str) -> None:
    """Kill the connection mid-stream (inside a batch, and between batches), reconnect with
    Last-Event-ID: the union of the changes received is what was written, none twice."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    pgtide.track("orders", dsn=dsn)
    written = _write_orders(dsn, transactions=20, per=7)

    async def main() -> None:
        received: list[int] = []
        async with live_client(dsn, expose=["public.orders"]) as http:
            last: str | None = None
            cut_after = [5, 23, 49, 50, 91]  # inside batches and at their ends
            more_written = False
            while len(received) < len(written) + 30:
                headers = {"last-event-id": last} if last else {}
                parser = SseParser()
                async with http.stream(
                    "GET", "/sse/feed/browser-1?tables=orders&start=beginning", headers=headers
                ) as r:
                    assert r.status_code == 200, await r.aread()
                    limit = cut_after.pop(0) if cut_after else None
                    async for chunk in r.aiter_text():
                        for event in parser.feed(chunk):
                            assert event.event == "change"
                            change = json.loads(event.data)
                            assert change["table"] == "public.orders" and change["op"] == "insert"
                            received.append(change["row"]["id"])
                            last = event.id
                            if limit is not None and len(received) >= limit:
                                break
                        else:
                            if len(received) >= len(written) and not more_written:
                                more_written = True
                                await asyncio.to_thread(
                                    _write_orders, dsn, 5, 6, 10_000
                                )  # written while streaming
                            if len(received) >= len(written) + 30:
                                break
                            continue
                        break  # the connection is dropped here, mid-stream
        assert len(received) == len(set(received)), "a change came twice"
        assert sorted(received) == sorted(written + list(range(10_000, 10_030)))
        assert received[: len(written)] == written  # feed order

    asyncio.run(main())


def test_a_feed_stream_sends_only_the_changes_its_filters_pass(dsn: str) -> None:
    """where=status=eq.open&where=qty=gte.3: inserts that match; an update whose old row
    matched (it leaves the filter); a delete of a row that matched; nothing else. A batch
    whose last change is filtered out still moves the browser's last event id on."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, status text, qty numeric)")
    pgtide.track("orders", dsn=dsn)

    def write(*statements: str) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)

    write(
        "INSERT INTO orders SELECT n, CASE WHEN n % 2 = 1 THEN 'open' ELSE 'closed' END, n "
        "FROM generate_series(1, 10) AS n"
    )
    where = "where=status%3Deq.open&where=qty%3Dgte.3"

    async def main() -> None:
        async with live_client(dsn, expose=["orders"]) as http:
            bad = await http.get("/sse/feed/f?tables=orders&where=status%3Dlike.open")
            assert bad.status_code == 400 and "COLUMN=OP.VALUE" in bad.text
            parser = SseParser()
            got: list[tuple[str, int]] = []
            path = f"/sse/feed/filtered?tables=orders&start=beginning&{where}"
            async with http.stream("GET", path) as r:
                assert r.status_code == 200
                chunks = r.aiter_text()

                async def until_got(n: int) -> None:
                    async with asyncio.timeout(10):
                        while len(got) < n:
                            for e in parser.feed(await anext(chunks)):
                                c = json.loads(e.data)
                                got.append((c["op"], (c["row"] or c["old"])["id"]))

                await until_got(4)
                assert got == [("insert", 3), ("insert", 5), ("insert", 7), ("insert", 9)]
                first_end = parser.last_id
                assert first_end is not None and "|" not in first_end  # the batch's end
                await asyncio.to_thread(
                    write,
                    "UPDATE orders SET status = 'closed' WHERE id = 5",  # leaves the filter
                    "UPDATE orders SET qty = 40 WHERE id = 4",  # never in it
                    "DELETE FROM orders WHERE id = 7",  # was in it
                )
                await until_got(6)
                assert got[4:] == [("update", 5), ("delete", 7)]
                moved = parser.last_id
                await asyncio.to_thread(write, "DELETE FROM orders WHERE id = 8")  # not in it
                async with asyncio.timeout(10):
                    while parser.last_id == moved:
                        assert parser.feed(await anext(chunks)) == []  # nothing dispatched
                assert parser.last_id is not None and "|" not in parser.last_id
            # reconnecting from there sends nothing again
            headers = {"last-event-id": parser.last_id}
            await asyncio.to_thread(write, "INSERT INTO orders VALUES (11, 'open', 11)")
            again = SseParser()
            async with http.stream("GET", path, headers=headers) as r:
                async with asyncio.timeout(10):
                    events: list[Any] = []
                    async for chunk in r.aiter_text():
                        events += again.feed(chunk)
                        if events:
                            break
                assert [json.loads(e.data)["row"]["id"] for e in events] == [11]

    asyncio.run(main())


def test_where_filters_read_values_as_the_row_types_them() -> None:
    from datetime import date
    from decimal import Decimal

    from pgtide.web import _filters

    def passes(texts: list[str], row: dict[str, Any]) -> bool:
        wanted = _filters.parse(texts)
        assert wanted is not None
        change = type("C", (), {"op": "insert", "row": row, "old": None})()
        return wanted(change)  # type: ignore[arg-type]

    row = {"id": 12, "price": Decimal("9.50"), "paid": True, "day": date(2026, 12, 2), "note": None}
    assert passes(["id=gt.9"], row) and not passes(["id=gt.12"], row)  # numbers, not text
    assert passes(["price=eq.9.5"], row) and passes(["price=lt.10"], row)
    assert passes(["paid=is.true"], row) and passes(["paid=eq.true"], row)
    assert passes(["day=gte.2026-12-01"], row) and not passes(["day=lt.2026-12-02"], row)
    assert passes(["note=is.null"], row) and not passes(["note=eq.x"], row)
    assert not passes(["note=neq.x"], row)  # NULL is neither equal nor unequal, as in SQL
    assert passes(["id=in.(1,12)"], row) and not passes(["id=in.(1,2)"], row)
    assert not passes(["id=eq.twelve"], row) and passes(["id=neq.twelve"], row)
    assert not passes(["missing=eq.1"], row)  # a column the row does not have
    assert passes(["id=gt.9", "paid=is.true"], row) and not passes(
        ["id=gt.9", "paid=is.false"], row
    )
    assert _filters.parse([]) is None
    for bad in ("id", "id=like.x", "id=in.1,2", "id=is.maybe"):
        with pytest.raises(_filters.FilterError):
            _filters.parse([bad])


def test_a_feed_stream_makes_the_hub_wait_for_changes_while_it_is_open(dsn: str) -> None:
    """The capture triggers NOTIFY only while a feed waits (migration 021): while a browser
    follows changes the console's hub is registered as waiting (the writer's NOTIFY wakes the
    stream), and once the last stream is gone it no longer is (writers skip the NOTIFY)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    pgtide.track("orders", dsn=dsn)

    def waiting() -> int:
        with psycopg.connect(dsn, autocommit=True) as conn:
            return run(conn, waiting_io())

    async def main() -> None:
        async with live_client(dsn, expose=["public.orders"]) as http:
            assert await asyncio.to_thread(waiting) == 0
            parser = SseParser()
            async with http.stream("GET", "/sse/feed/gate?tables=orders&start=end") as r:
                assert r.status_code == 200
                await until(lambda: asyncio.to_thread(waiting), what="the hub waits")
                await until(  # the stream stands at the end (its start) before the write
                    lambda: asyncio.to_thread(lambda: pgtide.feed.consumers(dsn=dsn)),
                    what="the stream's consumer",
                )
                _write_orders(dsn, 1, 1, 7)
                chunks = r.aiter_text()
                async with asyncio.timeout(LIVE):
                    received: list[int] = []
                    while not received:
                        for event in parser.feed(await anext(chunks)):
                            received.append(json.loads(event.data)["row"]["id"])
                assert received == [7]
            await until(
                lambda: asyncio.to_thread(lambda: waiting() == 0), what="the hub stops waiting"
            )

    asyncio.run(main())


def test_collectors_for_your_own_registry(dsn: str, tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE readings (value float8)")
    (tmp_path / "a.txt").write_text("1\n2\nbad\n")
    watcher = pgtide.FileWatcher(tmp_path, table="readings", dsn=dsn, name="w")
    watcher.catch_up()
    registry = CollectorRegistry()
    with pgtide.Listener(dsn=dsn) as listener:
        listener.subscribe("c", lambda note: 1 / 0)
        got = listener.iter("c", timeout=5)
        pgtide.notify("c", "x", dsn=dsn)
        next(iter(got))
        registry.register(ListenerCollector(listener, name="orders"))
        registry.register(FileWatcherCollector(watcher, name="w"))
        deadline = time.monotonic() + 5
        while listener.status()["callback_errors"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        text = generate_latest(registry).decode()
    assert 'pgtide_listener_received_total{listener="orders"} 1.0' in text
    assert 'pgtide_listener_callback_errors_total{listener="orders"} 1.0' in text
    path = tmp_path / "a.txt"
    assert f'pgtide_watcher_rows_total{{path="{path}",watcher="w"}} 2.0' in text
    assert f'pgtide_watcher_rejects_total{{path="{path}",watcher="w"}} 1.0' in text


def test_cli_web_serves_and_stops_on_sigterm(dsn: str, tmp_path: Path) -> None:
    refused = subprocess.run(
        [sys.executable, "-m", "pgtide", "web", "--host", "0.0.0.0", "--dsn", dsn],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PGTIDE_WEB_TOKEN": ""},
    )
    assert refused.returncode != 0 and "--token" in refused.stderr
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgtide", "web", "--port", str(port), "--dsn", dsn],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60  # a loaded machine starts a Python process slowly
        while not _answers(f"http://127.0.0.1:{port}/healthz"):
            assert proc.poll() is None, f"pgtide web exited: {proc.communicate()[1]}"
            assert time.monotonic() < deadline, "pgtide web did not answer /healthz in 60 s"
            time.sleep(0.05)  # polls a server in another process (nothing to await)
        with httpx.stream("GET", f"http://127.0.0.1:{port}/sse/console?page=overview") as live:
            next(live.iter_raw())  # a browser is connected
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert "pgtide web on http://127.0.0.1" in (proc.stderr.read() if proc.stderr else "")


def _answers(url: str) -> bool:
    """Whether ``url`` answers 200 now."""
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize("prefix", ["/console"])
def test_mounts_in_another_app(dsn: str, prefix: str) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    console = pgtide.web.app(dsn)
    outer = Starlette(routes=[Mount(prefix, app=console)])

    async def main() -> None:
        transport = httpx.ASGITransport(app=outer, client=LOCAL)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            r = await http.get(f"{prefix}/events")
            assert r.status_code == 200
            assert f'href="{prefix}/static/console.css"' in r.text
            assert f'data-stream="{prefix}/sse/console?page=events"' in r.text
            assert (await http.get(f"{prefix}/static/console.js")).status_code == 200
            assert (await http.get(f"{prefix}/metrics")).status_code == 200
        await console.state.console.close()

    asyncio.run(main())


def test_the_docs_fastapi_mount(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/web.md's "Mount it in FastAPI" block, run as printed (the dsn from the
    environment), then driven: pages and metrics under /pgtide, with the token, read-only."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    pgtide.track("orders", dsn=dsn)
    monkeypatch.setenv("PGTIDE_DSN", dsn)
    namespace: dict[str, Any] = {}
    exec(block_under(DOCS / "web.md", "## Mount it in FastAPI (or Starlette)", "python"), namespace)
    api = namespace["api"]
    bearer = {"authorization": "Bearer a-long-random-string"}

    async def main() -> None:
        transport = httpx.ASGITransport(app=api, client=LOCAL)
        async with (
            api.router.lifespan_context(api),  # stops the console with the app, as shown
            httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http,
        ):
            assert (await http.get("/pgtide/metrics")).status_code == 401  # the token
            assert (await http.get("/pgtide/metrics", headers=bearer)).status_code == 200
            page = await http.get("/pgtide/events", headers=bearer)
            assert page.status_code == 200 and 'href="/pgtide/static/console.css"' in page.text
            r = await http.post("/pgtide/events/pause", headers=bearer, data={"name": "x"})
            assert r.status_code == 403 and "read-only" in r.text
        assert namespace["console"].state.console.stopping.is_set()

    asyncio.run(main())


def test_cancel_action_cancels_a_pending_event(dsn: str) -> None:
    events = pgtide.Events(dsn=dsn)
    id_ = events.publish("later", {"n": 1})

    async def main() -> None:
        async with web_client(dsn) as http:
            page = await http.get(f"/events/{id_}")
            assert f'data-testid="cancel-{id_}"' in page.text
            assert f'data-testid="retry-{id_}"' not in page.text
            r = await http.post(f"/events/{id_}/cancel", data={"csrf": "forged"})
            assert r.status_code == 403
            r = await http.post(f"/events/{id_}/cancel", data={"csrf": csrf_of(page.text)})
            assert r.status_code == 303 and r.headers["location"] == f"/events/{id_}"
            page = await http.get(f"/events/{id_}")
            assert 'data-testid="event-state">cancelled<' in page.text
            assert f'data-testid="cancel-{id_}"' not in page.text
            assert f'data-testid="retry-{id_}"' not in page.text
            again = await http.post(
                f"/events/{id_}/cancel",
                data={"csrf": csrf_of(page.text)},
                headers={"accept": "application/json"},
            )
            assert again.json() == {"state": None}  # it had already ended
            listed = await http.get("/events?state=cancelled")
            assert f'data-testid="state-{id_}">cancelled<' in listed.text

    asyncio.run(main())
    rec = events.get(id_)
    assert rec is not None and rec.state == "cancelled"


def test_a_waiting_event_page_links_what_it_runs_after_and_cancels_the_chain(dsn: str) -> None:
    events = pgtide.Events(dsn=dsn)
    first = events.publish("fetch")
    merge = events.publish("merge", after=first)
    last = events.publish("report", after=[first, merge])

    async def main() -> None:
        async with web_client(dsn) as http:
            page = await http.get(f"/events/{last}")
            assert 'data-testid="event-state">waiting<' in page.text
            assert re.search(
                rf'data-testid="event-after"><a href="[^"]*/events/{first}">{first}</a>, '
                rf'<a href="[^"]*/events/{merge}">{merge}</a><',
                page.text,
            )
            merge_page = await http.get(f"/events/{merge}")
            assert f'data-testid="cancel-{merge}"' in merge_page.text
            r = await http.post(f"/events/{merge}/cancel", data={"csrf": csrf_of(merge_page.text)})
            assert r.status_code == 303
            page = await http.get(f"/events/{last}")
            assert 'data-testid="event-state">cancelled<' in page.text
            assert f"event {merge}, which it was to run after, ended cancelled" in page.text
            listed = await http.get("/events?state=waiting")
            assert listed.status_code == 200 and f'data-testid="state-{last}"' not in listed.text

    asyncio.run(main())
    events.close()


def test_pause_holds_a_name_back_from_workers_and_resume_releases_it(dsn: str) -> None:
    events = pgtide.Events(dsn=dsn, poll_interval=0.05)
    handled: list[str] = []

    @events.handler("later")
    def later(event: pgtide.Event) -> None:
        handled.append(event.name)

    @events.handler("now")
    def now(event: pgtide.Event) -> None:
        handled.append(event.name)

    async def main() -> None:
        async with (
            live_client(dsn) as http,
            http.stream("GET", "/sse/console?page=events") as live,
        ):
            chunks, parser = live.aiter_text(), SseParser()

            async def update_with(text: str) -> str:
                return await next_update(chunks, parser, text)

            page = await http.get("/events")
            csrf = csrf_of(page.text)
            r = await http.post("/events/pause", data={"csrf": csrf, "name": "later"})
            assert r.status_code == 303 and r.headers["location"] == "/events?name=later"
            # the open page shows it without a reload, with a resume button
            html = await update_with('data-testid="paused-later"')
            assert 'data-testid="resume-later"' in html
            held = await asyncio.to_thread(events.publish, "later", {"n": 1})
            other = await asyncio.to_thread(events.publish, "now", {"n": 2})
            events.start()
            # a worker claimed and ran "now", published after "later": it skipped "later"
            assert (await asyncio.to_thread(events.wait, other, 10)).state == "done"
            rec = await asyncio.to_thread(events.get, held)
            assert rec is not None and rec.state == "pending" and handled == ["now"]
            page = await http.get(f"/events/{held}")
            assert 'data-testid="paused-later"' in page.text
            r = await http.post(
                "/events/resume", data={"csrf": csrf, "name": "later", "next": f"/events/{held}"}
            )
            assert r.status_code == 303 and r.headers["location"] == f"/events/{held}"
            assert (await asyncio.to_thread(events.wait, held, 10)).state == "done"
            html = await update_with('data-testid="pause-later"')
            assert 'data-testid="paused-later"' not in html
            assert (await http.post("/events/pause", data={"csrf": csrf})).status_code == 400

    try:
        asyncio.run(main())
    finally:
        events.close()
    assert sorted(handled) == ["later", "now"]
    assert pgtide.Events(dsn=dsn).status()["paused"] == []


def test_read_only_refuses_cancel_pause_and_resume(dsn: str) -> None:
    events = pgtide.Events(dsn=dsn)
    id_ = events.publish("later", {"n": 1})
    events.pause("held")

    async def main() -> None:
        async with web_client(dsn, read_only=True) as ro:
            page = await ro.get(f"/events/{id_}")
            listing = await ro.get("/events")
            for html in (page.text, listing.text):
                for action in ("cancel-", "pause-", "resume-"):
                    assert f'data-testid="{action}' not in html, action
            assert 'data-testid="paused-held"' in listing.text  # still shown
            csrf = csrf_of(page.text)
            for path, data in (
                (f"/events/{id_}/cancel", {"csrf": csrf}),
                ("/events/pause", {"csrf": csrf, "name": "later"}),
                ("/events/resume", {"csrf": csrf, "name": "held"}),
            ):
                r = await ro.post(path, data=data)
                assert r.status_code == 403 and "read-only" in r.text, path

    asyncio.run(main())
    rec = events.get(id_)
    assert rec is not None and rec.state == "pending"
    assert events.status()["paused"] == ["held"]


def test_schedules_page_lists_a_schedule(dsn: str) -> None:
    async def main() -> None:
        async with web_client(dsn) as http:
            empty = await http.get("/schedules")
            assert empty.status_code == 200 and "no schedule" in empty.text
            events = pgtide.Events(dsn=dsn)
            events.schedule(
                "report", "0 3 * * *", {"kind": "daily"}, tz="Europe/Paris", id="nightly"
            )
            page = await http.get("/schedules")
            assert page.status_code == 200
            assert 'data-testid="schedule-nightly"' in page.text
            for text in ("report", "0 3 * * *", "Europe/Paris", "never", "daily"):
                assert text in page.text, text
            assert 'href="/schedules" class="current"' in page.text

    asyncio.run(main())


def test_slot_lag_on_the_feed_page_and_in_metrics(wal_dsn: str) -> None:  # noqa: F811
    with psycopg.connect(wal_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    pgtide.track("orders", capture="wal", dsn=wal_dsn)
    with psycopg.connect(wal_dsn, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = on")  # the tests' server defers WAL writes
        conn.execute("INSERT INTO orders SELECT generate_series(1, 1000)")  # not relayed yet
        slot = slot_name(conn.info.dbname)
        version = int(conn.execute("SHOW server_version_num").fetchone()[0])  # type: ignore[index]

    async def main() -> None:
        async with web_client(wal_dsn) as http:
            text = (await http.get("/metrics")).text
            assert float(_metric(text, f'pgtide_slot_lag_bytes{{slot="{slot}"}}')) > 0, text
            assert f'pgtide_slot_active{{slot="{slot}"}} 0.0' in text  # no relay runs
            # the relay never ran: how late it is in time is not known yet
            assert f'pgtide_slot_lag_seconds{{slot="{slot}"}}' not in text
            page = await http.get("/feed")
            assert "WAL capture" in page.text and f'data-testid="slot-lag-{slot}"' in page.text
            assert "not running" in page.text
            # a failover slot where the server has them (PostgreSQL 17+), shown as such
            if version >= 170000:
                assert f'pgtide_slot_failover{{slot="{slot}"}} 1.0' in text
                assert f'data-testid="slot-failover-{slot}">yes<' in page.text
            else:
                assert "pgtide_slot_failover{" not in text
                assert f'data-testid="slot-failover-{slot}">n/a<' in page.text
            relay = Relay(wal_dsn)
            await asyncio.to_thread(relay.run, until_idle=True)
            assert relay.relayed == 1000
            # its changes' NOTIFY wakes the console's sampler
            text = await until(
                lambda: _relayed_metrics(http, slot), what="a sample after the relay"
            )
            assert float(_metric(text, f'pgtide_slot_lag_seconds{{slot="{slot}"}}')) >= 0
            assert f'pgtide_slot_last_relayed_timestamp_seconds{{slot="{slot}"}}' in text

    asyncio.run(main())


def _metric(text: str, series: str) -> str:
    """The value of one series in a Prometheus exposition."""
    found = [x.rsplit(" ", 1)[-1] for x in text.splitlines() if x.startswith(series + " ")]
    assert found, f"no {series} in\n{text}"
    return found[0]


async def _relayed_metrics(http: httpx.AsyncClient, slot: str) -> str | None:
    text = (await http.get("/metrics")).text
    return text if f'pgtide_slot_lag_seconds{{slot="{slot}"}}' in text else None


def _series(text: str, prefix: str) -> dict[str, float]:
    """Every series of a Prometheus exposition starting with ``prefix``, by its labels."""
    found = {}
    for line in text.splitlines():
        if line.startswith(prefix) and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            found[series[len(prefix) :]] = float(value)
    return found


def test_event_duration_is_a_histogram_counting_each_finish_once(dsn: str) -> None:
    from pgtide.web.metrics import BUCKETS

    _dead_event(dsn, "before")  # finished before the console started: not counted
    events = pgtide.Events(dsn=dsn, poll_interval=0.05)

    @events.handler("resize")
    def resize(event: pgtide.Event) -> None:
        time.sleep(0.05 * event.payload["n"])  # the handler's work: what the histogram measures

    async def main() -> None:
        async with live_console(dsn, interval=0.2) as (http, console):
            ids = [await asyncio.to_thread(events.publish, "resize", {"n": n}) for n in range(3)]
            events.start()
            for id_ in ids:
                assert (await asyncio.to_thread(events.wait, id_, 10)).state == "done"

            async def counted() -> str | None:
                text = (await http.get("/metrics")).text
                done = 'pgtide_event_duration_seconds_count{name="resize"} 3.0' in text
                return text if done else None

            text = await until(counted, what="the three finishes counted")
            # what the events table records, bucketed by hand
            with psycopg.connect(dsn) as conn:
                recorded = [
                    r[0]
                    for r in conn.execute(
                        "SELECT extract(epoch FROM finished_at - started_at)::float8 "
                        "FROM pgtide.events WHERE name = 'resize'"
                    )
                ]
            expected = {
                f'{{le="{le}",name="resize"}}': float(sum(d <= le for d in recorded))
                for le in BUCKETS
            }
            expected['{le="+Inf",name="resize"}'] = 3.0
            buckets = _series(text, "pgtide_event_duration_seconds_bucket")
            assert {k: v for k, v in buckets.items() if 'name="resize"' in k} == expected
            total = _series(text, "pgtide_event_duration_seconds_sum")['{name="resize"}']
            assert total == pytest.approx(sum(recorded))
            assert not [k for k in buckets if 'name="before"' in k], console.hub.finished.by_name
            for _ in range(3):  # more samples see the same finished events: no count twice
                await console.hub.wait(console.hub.version, 5.0)
                await console.hub.refresh()
            text = (await http.get("/metrics")).text
            assert 'pgtide_event_duration_seconds_count{name="resize"} 3.0' in text

    try:
        asyncio.run(main())
    finally:
        events.close()


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    from pgtide.web.metrics import BUCKETS, Histogram

    h = Histogram()
    for seconds in (0.005, 0.0051, 0.1, 400.0):
        h.observe(seconds)
    got = dict(h.cumulative())
    assert got["0.005"] == 1 and got["0.01"] == 2 and got["0.1"] == 3 and got["300.0"] == 3
    assert got["+Inf"] == 4 and len(got) == len(BUCKETS) + 1
    assert h.total == pytest.approx(400.1101)


def test_events_collector_for_your_own_registry(dsn: str) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from pgtide.web.metrics import EventsCollector

    events = pgtide.Events(dsn=dsn)
    events.publish("later", None)
    events.pause("later")  # status() also lists the paused names: not a number to expose
    registry = CollectorRegistry()
    registry.register(EventsCollector(events, name="shop"))
    text = generate_latest(registry).decode()
    events.close()
    assert 'pgtide_events_state{events="shop",state="pending"} 1.0' in text
    assert "paused" not in text


def _worker_events(events: Any) -> None:
    """Handlers that end done, failed then done, and dead."""
    tries: list[int] = []

    @events.handler("ok")
    def ok(event: pgtide.Event) -> None:
        return None

    @events.handler("flaky", retries=1)
    def flaky(event: pgtide.Event) -> None:
        tries.append(event.attempt)
        if len(tries) == 1:
            raise RuntimeError("first try fails")

    @events.handler("breaks", retries=0)
    def breaks(event: pgtide.Event) -> None:
        raise RuntimeError("always")


def test_events_worker_counters_for_your_own_registry(dsn: str) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from pgtide.web.metrics import EventsCollector

    events = pgtide.Events(dsn=dsn, poll_interval=0.05, retry_delay=0.01, max_retry_delay=0.02)
    _worker_events(events)
    registry = CollectorRegistry()
    registry.register(EventsCollector(events, name="shop"))
    ids = [events.publish(name, None) for name in ("ok", "flaky", "breaks")]
    events.start(concurrency=2)
    try:
        assert [events.wait(i, timeout=10).state for i in ids] == ["done", "done", "dead"]
        stats = events.worker_stats()
        text = generate_latest(registry).decode()
    finally:
        events.close()
    assert stats["workers"] == 1 and stats["running"] == 0
    assert (stats["done"], stats["failed"], stats["dead"], stats["cancelled"]) == (2, 1, 1, 0)
    assert stats["by_name"]["flaky"] == {"done": 1, "failed": 1, "dead": 0, "cancelled": 0}
    assert stats["durations"]["flaky"].count == 2 and stats["durations"]["ok"].count == 1
    runs = "pgtide_worker_handler_runs_total"
    assert f'{runs}{{events="shop",name="flaky",outcome="failed"}} 1.0' in text
    assert f'{runs}{{events="shop",name="flaky",outcome="done"}} 1.0' in text
    assert f'{runs}{{events="shop",name="breaks",outcome="dead"}} 1.0' in text
    duration = "pgtide_worker_handler_duration_seconds"
    assert f'{duration}_bucket{{events="shop",le="+Inf",name="flaky"}} 2.0' in text
    assert f'{duration}_count{{events="shop",name="ok"}} 1.0' in text
    assert 'pgtide_workers{events="shop"} 1.0' in text
    assert 'pgtide_events_state{events="shop",state="dead"}' in text  # the table, too
    after = events.worker_stats()  # stopped: no worker runs, the counts stay
    assert after["workers"] == 0 and after["done"] == 2


def test_async_events_worker_counters_without_a_query(dsn: str) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from pgtide.web.metrics import EventsCollector

    async def main() -> tuple[dict[str, Any], str]:
        events = pgtide.aio.Events(dsn=dsn, poll_interval=0.05, retry_delay=0.01)
        _worker_events(events)
        registry = CollectorRegistry()
        registry.register(EventsCollector(events, name="shop"))  # states: not awaitable here
        with pytest.raises(ValueError, match="blocking"):
            EventsCollector(events, states=True)
        ids = [await events.publish(name, None) for name in ("ok", "flaky", "breaks")]
        await events.start()
        try:
            for i in ids:
                await events.wait(i, timeout=10)
            stats = events.worker_stats()
            text = generate_latest(registry).decode()
        finally:
            await events.close()
        return stats, text

    stats, text = asyncio.run(main())
    assert (stats["done"], stats["failed"], stats["dead"]) == (2, 1, 1)
    assert 'pgtide_worker_handler_runs_total{events="shop",name="ok",outcome="done"} 1.0' in text
    assert "pgtide_events_state" not in text


def test_refused_connection_shows_the_password_in_no_page_or_log(
    pg_server: Any, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The server answers but refuses the connection (no such database), with a password in
    the DSN: every page, stream, action, health and metrics answer says why, without the
    password, and so does the log."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    info.update(dbname="no_such_db_web", password="Wr0ng-Pa55-xyz")
    refused = psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items()})
    paths = ("/", "/feed", "/events", "/events/1", "/schedules", "/listeners", "/ingest")

    async def main() -> None:
        async with web_client(refused) as http:
            for path in (*paths, "/metrics", "/healthz", "/sse/console?page=events"):
                r = await http.get(path, headers={"accept": "text/html"})
                assert r.status_code == 503, (path, r.status_code)
                assert "no_such_db_web" in r.text or path == "/metrics", path
                assert "Wr0ng-Pa55-xyz" not in r.text, path
            r = await http.post("/events/1/retry", data={"csrf": "x"})
            assert r.status_code == 503 and "Wr0ng-Pa55-xyz" not in r.text

    with caplog.at_level("DEBUG"):
        asyncio.run(main())
    assert "Wr0ng-Pa55-xyz" not in caplog.text


def test_backfills_on_the_feed_page_and_in_metrics(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE archive (id int PRIMARY KEY)")
        conn.execute("INSERT INTO archive SELECT generate_series(1, 10)")
    pgtide.track("archive", backfill=True, dsn=dsn)
    pgtide.feed.pause_backfill("archive", dsn=dsn)

    async def main() -> None:
        async with web_client(dsn) as http:
            page = (await http.get("/feed")).text
            assert 'data-testid="backfill-state-public.archive">paused<' in page
            assert 'data-testid="backfill-rows-public.archive">0<' in page
            text = (await http.get("/metrics")).text
            assert 'pgtide_backfill_paused{table="public.archive"} 1.0' in text
            assert 'pgtide_backfill_done{table="public.archive"} 0.0' in text

    asyncio.run(main())
    pgtide.feed.resume_backfill("archive", wait=True, dsn=dsn)

    async def done() -> None:
        async with web_client(dsn) as http:
            text = (await http.get("/metrics")).text
            assert 'pgtide_backfill_rows{table="public.archive"} 10.0' in text
            assert 'pgtide_backfill_done{table="public.archive"} 1.0' in text
            assert 'pgtide_backfill_paused{table="public.archive"} 0.0' in text

    asyncio.run(done())
