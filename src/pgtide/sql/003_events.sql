-- Events: rows dispatched to handlers by name, with leases, retries, results and dead letters.
-- Own events have source = ''; events mirrored from a user's table ("bring your own table")
-- have source = that table's qualified name and source_id = its id, so the user's table is
-- never changed and its rows are processed exactly like our own.
CREATE TABLE pgtide.events (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          text NOT NULL,
    payload       jsonb,
    state         text NOT NULL DEFAULT 'pending'
                  CHECK (state IN ('pending', 'running', 'done', 'failed', 'dead')),
    attempts      integer NOT NULL DEFAULT 0,
    run_after     timestamptz NOT NULL DEFAULT now(),
    key           text,
    source        text NOT NULL DEFAULT '',
    source_id     text,
    lease_owner   text,
    lease_expires timestamptz,
    result        jsonb,
    error         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz
);

-- The claim scans unfinished events of one source in id order.
CREATE INDEX events_claim ON pgtide.events (source, id)
    WHERE state IN ('pending', 'failed', 'running');
-- Keyed events: "is an earlier event with this key unfinished?"
CREATE INDEX events_key ON pgtide.events (key, id)
    WHERE key IS NOT NULL AND state IN ('pending', 'failed', 'running');
-- One mirrored row per row of a user's table.
CREATE UNIQUE INDEX events_source_row ON pgtide.events (source, source_id)
    WHERE source_id IS NOT NULL;

-- Live workers and the event names they handle (heartbeat in seen_at).
CREATE TABLE pgtide.event_workers (
    id         text PRIMARY KEY,
    source     text NOT NULL DEFAULT '',
    names      text[] NOT NULL,
    host       text NOT NULL,
    pid        integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    seen_at    timestamptz NOT NULL DEFAULT now()
);

-- Every insert wakes the workers, in the inserting transaction (so a rollback wakes nobody).
CREATE FUNCTION pgtide.events_wake() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pgtide_events', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER events_wake AFTER INSERT ON pgtide.events
    FOR EACH STATEMENT EXECUTE FUNCTION pgtide.events_wake();
