"""Bring your own table (seed 003's setup): a user's events table and trigger, untouched."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from events_helpers import wait_for

import pgtide

SEED_SETUP = """
CREATE TABLE events (id serial PRIMARY KEY, name text NOT NULL, data jsonb);
CREATE OR REPLACE FUNCTION notify_event() RETURNS TRIGGER LANGUAGE plpgsql AS $BODY$
begin
    if (TG_OP = 'INSERT') then
        PERFORM pg_notify('events', NEW.id::text);
    end if;
    return null;
end
$BODY$;
CREATE OR REPLACE TRIGGER notify_event AFTER INSERT ON events
    FOR EACH ROW EXECUTE PROCEDURE notify_event();
"""

SHAPE = """
SELECT (SELECT array_agg(attname::text ORDER BY attnum) FROM pg_attribute
        WHERE attrelid = 'public.events'::regclass AND attnum > 0 AND NOT attisdropped),
       (SELECT array_agg(tgname::text ORDER BY tgname) FROM pg_trigger
        WHERE tgrelid = 'public.events'::regclass)
"""


def _rows(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT * FROM events ORDER BY id").fetchall()


def test_seed_003_flow_on_your_own_table(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SEED_SETUP)
        # inserted while no server runs: notified would lose these
        conn.execute(
            "INSERT INTO events (name, data) VALUES "
            """('my_event', '{"order": 1}'), ('my_event', NULL), ('nobody', '"x"')"""
        )
        shape = conn.execute(SHAPE).fetchone()
    before = _rows(dsn)

    server = pgtide.Events(dsn=dsn, table="events", poll_interval=0.05)
    seen: list[pgtide.Event] = []

    @server.handler("my_event")
    def my_handler(event: pgtide.Event) -> dict[str, Any]:
        seen.append(event)
        return {"status": "success", "payload": event.payload}

    server.start(concurrency=2)
    wait_for(lambda: server.status()["done"] == 2, what="the two waiting rows")
    assert [e.source_id for e in sorted(seen, key=lambda e: e.id)] == ["1", "2"]
    first = min(seen, key=lambda e: e.id)
    assert first.payload == {"id": 1, "name": "my_event", "data": {"order": 1}}

    # a row inserted by plain SQL while the server runs (the trigger notifies its id)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("""INSERT INTO events (name, data) VALUES ('my_event', '{"order": 3}')""")
    wait_for(lambda: server.status()["done"] == 3, what="the new row")
    # and one published through pgtide: a row in the user's table, like any other
    new_id = server.publish("my_event")
    wait_for(lambda: server.status()["done"] == 4, what="the published row")
    assert any(e.source_id == str(new_id) for e in seen)

    status = server.status()
    assert status["pending"] == 1 and status["unhandled"] == 1  # 'nobody' is kept, visible
    done = server.recent(state="done")
    assert {r.result["status"] for r in done} == {"success"}
    server.close()

    # the user's table is untouched: same columns, same triggers, same rows
    after = _rows(dsn)
    assert after[: len(before)] == before
    assert len(after) == len(before) + 2
    with psycopg.connect(dsn) as conn:
        assert conn.execute(SHAPE).fetchone() == shape
        # pgtide's own events table holds no own events, only the mirrored state
        own = conn.execute("SELECT count(*) FROM pgtide.events WHERE source = ''").fetchone()
        assert own == (0,)


def test_configuration_by_environment(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE SCHEMA app; CREATE TABLE app.my_events (pk bigint PRIMARY KEY, "
            "kind text, body text)"
        )
        conn.execute("INSERT INTO app.my_events VALUES (10, 'ping', 'hello'), (11, 'ping', '')")
    monkeypatch.setenv("PGTIDE_EVENTS_TABLE", "app.my_events")
    monkeypatch.setenv("PGTIDE_EVENTS_ID_COLUMN", "pk")
    monkeypatch.setenv("PGTIDE_EVENTS_NAME_COLUMN", "kind")
    monkeypatch.setenv("PGTIDE_EVENTS_PAYLOAD_COLUMN", "body")
    monkeypatch.setenv("PGTIDE_EVENTS_CHANNEL", "events_channel")
    monkeypatch.setenv("PGTIDE_EVENTS_POLL_INTERVAL", "0.05")
    server = pgtide.Events(dsn=dsn)
    got: dict[str, Any] = {}
    server.register("ping", lambda e: got.setdefault(e.source_id, e.payload))
    server.start(concurrency=1)
    wait_for(lambda: len(got) == 2, what="both rows")
    server.close()
    assert got == {"10": "hello", "11": ""}  # an empty payload is a payload like any other

    # code wins over the environment
    monkeypatch.setenv("PGTIDE_EVENTS_TABLE", "app.missing")
    with pytest.raises(pgtide.ConfigError, match=r"events table app\.missing does not exist"):
        pgtide.Events(dsn=dsn).status()
    explicit = pgtide.Events(dsn=dsn, table="app.my_events")
    assert explicit.status()["done"] == 2
    explicit.close()


def test_bad_own_table_configuration_is_clear(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE no_name (id int, kind text)")
    with pytest.raises(pgtide.ConfigError) as info:
        pgtide.Events(dsn=dsn, table="no_name").status()
    message = str(info.value)
    assert "has no name column 'name'" in message and "columns: id, kind" in message
    assert "name_column=" in message
    with pytest.raises(pgtide.ConfigError, match="bad events table name"):
        pgtide.Events(dsn=dsn, table="a.b.c")
    monkeypatch.setenv("PGTIDE_EVENTS_POLL_INTERVAL", "soon")
    with pytest.raises(pgtide.ConfigError, match="PGTIDE_EVENTS_POLL_INTERVAL='soon'"):
        pgtide.Events(dsn=dsn)
    # quoting is pgtide's job: odd identifiers work
    monkeypatch.delenv("PGTIDE_EVENTS_POLL_INTERVAL")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute('CREATE TABLE "My Events" ("Event Id" int, "the name" text)')
        conn.execute("""INSERT INTO "My Events" VALUES (1, 'odd')""")
    server = pgtide.Events(
        dsn, table="My Events", id_column="Event Id", name_column="the name", poll_interval=0.05
    )
    server.register("odd", lambda e: e.payload)
    server.start(concurrency=1)
    wait_for(lambda: server.status()["done"] == 1, what="the odd row")
    assert server.recent()[0].result == {"Event Id": 1, "the name": "odd"}
    server.close()


def test_poll_only_finds_rows_nobody_notified(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE quiet (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), name text)"
        )
    server = pgtide.Events(dsn=dsn, table="quiet", listen=False, poll_interval=0.05)
    got: list[str | None] = []
    server.register("hush", lambda e: got.append(e.source_id))
    server.start(concurrency=1)
    with psycopg.connect(dsn, autocommit=True) as conn:  # no trigger, no NOTIFY at all
        row = conn.execute("INSERT INTO quiet (name) VALUES ('hush') RETURNING id::text")
        new_id = row.fetchone()[0]  # type: ignore[index]
    wait_for(lambda: got == [new_id], what="the quiet row")
    server.close()
