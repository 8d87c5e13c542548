-- Events as a job queue: priorities, dedupe keys, cancel, waiters, per-name queues (pause,
-- global limits) and schedules.
ALTER TABLE pgtide.events
    ADD COLUMN IF NOT EXISTS priority integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS dedupe_key text,
    ADD COLUMN IF NOT EXISTS cancel_requested boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS watched boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN pgtide.events.priority IS 'pgtide events: smaller runs first (default 0)';
COMMENT ON COLUMN pgtide.events.dedupe_key IS
    'pgtide events: at most one pending, failed or running event per key';
COMMENT ON COLUMN pgtide.events.cancel_requested IS
    'pgtide events: cancel() asked the running handler to stop; it ends cancelled';
COMMENT ON COLUMN pgtide.events.watched IS
    'pgtide events: someone wait()s for it: its end is notified on pgtide_events_done';

ALTER TABLE pgtide.events DROP CONSTRAINT IF EXISTS events_state_check;
ALTER TABLE pgtide.events ADD CONSTRAINT events_state_check
    CHECK (state IN ('pending', 'running', 'done', 'failed', 'dead', 'cancelled'));

-- The claim reads, for each name it serves, the waiting events in (priority, id) order: its
-- cost does not depend on finished events, on names no worker serves, nor on paused names.
DROP INDEX IF EXISTS pgtide.events_claim;
CREATE INDEX IF NOT EXISTS events_ready ON pgtide.events (source, name, priority, id)
    WHERE state IN ('pending', 'failed');
-- Running events by name: global concurrency counts them, lapsed leases are found here.
CREATE INDEX IF NOT EXISTS events_running ON pgtide.events (source, name, lease_expires)
    WHERE state = 'running';
-- Dedupe: one unfinished event per key (race-free: the index decides).
CREATE UNIQUE INDEX IF NOT EXISTS events_dedupe ON pgtide.events (source, dedupe_key)
    WHERE dedupe_key IS NOT NULL AND state IN ('pending', 'failed', 'running');

-- One row per event name that is paused or limited. Limited claims lock the row, so the
-- limits hold across every worker on every machine.
CREATE TABLE IF NOT EXISTS pgtide.event_queues (
    source       text NOT NULL DEFAULT '',
    name         text NOT NULL,
    paused       boolean NOT NULL DEFAULT false,
    concurrency  integer CHECK (concurrency > 0),
    rate_count   integer CHECK (rate_count > 0),
    rate_period  double precision CHECK (rate_period > 0),
    starts_at    timestamptz[] NOT NULL DEFAULT '{}',
    starts_n     integer[] NOT NULL DEFAULT '{}',
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, name)
);

-- Cron schedules: a worker that finds one due locks it, enqueues its tick and moves next_at
-- on in one transaction, so each tick is enqueued once whatever the number of workers.
CREATE TABLE IF NOT EXISTS pgtide.event_schedules (
    id         text PRIMARY KEY,
    name       text NOT NULL,
    cron       text NOT NULL,
    tz         text NOT NULL DEFAULT 'UTC',
    payload    jsonb,
    next_at    timestamptz NOT NULL,
    last_at    timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- A claim of one limited name: at most `concurrency` running (leases alive) and at most
-- `rate_count` claims per `rate_period` seconds (a sliding window), across all workers.
CREATE OR REPLACE FUNCTION pgtide.events_claim_limited(
    p_source text, p_name text, p_want integer, p_owner text, p_lease double precision)
RETURNS TABLE (id bigint, name text, payload jsonb, created_at timestamptz, key text,
               source_id text, lease_token integer, attempts integer, priority integer)
LANGUAGE plpgsql SET jit = off AS $$
#variable_conflict use_column
DECLARE
    q pgtide.event_queues;
    allowed integer := p_want;
    t timestamptz;
    busy integer;
    used integer;
    got integer;
BEGIN
    SELECT * INTO q FROM pgtide.event_queues
    WHERE event_queues.source = p_source AND event_queues.name = p_name FOR UPDATE;
    IF NOT FOUND OR q.paused THEN
        RETURN;
    END IF;
    t := clock_timestamp();  -- after the lock: the window is read and written at one time
    IF q.concurrency IS NOT NULL THEN
        SELECT count(*) INTO busy FROM pgtide.events e
        WHERE e.source = p_source AND e.name = p_name AND e.state = 'running'
          AND e.lease_expires >= now();
        allowed := least(allowed, q.concurrency - busy);
    END IF;
    IF q.rate_count IS NOT NULL THEN
        SELECT coalesce(sum(s.n), 0) INTO used
        FROM unnest(q.starts_at, q.starts_n) AS s(at, n)
        WHERE s.at > t - q.rate_period * interval '1 second';
        allowed := least(allowed, q.rate_count - used);
    END IF;
    IF allowed <= 0 THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH waiting AS (
        SELECT e.id, e.priority FROM pgtide.events e
        WHERE e.source = p_source AND e.name = p_name AND e.state IN ('pending', 'failed')
          AND e.run_after <= now()
          AND (e.key IS NULL OR NOT EXISTS (
                SELECT 1 FROM pgtide.events p
                WHERE p.key = e.key AND p.source = e.source AND p.id < e.id
                  AND p.state IN ('pending', 'failed', 'running')))
        ORDER BY e.priority, e.id
        LIMIT allowed
        FOR UPDATE OF e SKIP LOCKED
    ), lapsed AS (
        SELECT e.id, e.priority FROM pgtide.events e
        WHERE e.source = p_source AND e.name = p_name AND e.state = 'running'
          AND e.lease_expires < now() AND NOT e.cancel_requested
        LIMIT allowed
        FOR UPDATE OF e SKIP LOCKED
    ), candidates AS (
        SELECT * FROM waiting UNION ALL SELECT * FROM lapsed
    )
    UPDATE pgtide.events e
    SET state = 'running', lease_owner = p_owner, lease_token = e.lease_token + 1,
        lease_expires = now() + p_lease * interval '1 second', started_at = NULL
    WHERE e.id = ANY(ARRAY(SELECT c.id FROM candidates c ORDER BY c.priority, c.id LIMIT allowed))
    RETURNING e.id, e.name, e.payload, e.created_at, e.key, e.source_id, e.lease_token,
              e.attempts, e.priority;
    GET DIAGNOSTICS got = ROW_COUNT;
    IF q.rate_count IS NOT NULL AND got > 0 THEN
        UPDATE pgtide.event_queues u
        SET starts_at = ARRAY(SELECT s.at FROM unnest(q.starts_at, q.starts_n) AS s(at, n)
                              WHERE s.at > t - q.rate_period * interval '1 second'
                              ORDER BY s.at) || t,
            starts_n = ARRAY(SELECT s.n FROM unnest(q.starts_at, q.starts_n) AS s(at, n)
                             WHERE s.at > t - q.rate_period * interval '1 second'
                             ORDER BY s.at) || got
        WHERE u.source = p_source AND u.name = p_name;
    END IF;
END
$$;
