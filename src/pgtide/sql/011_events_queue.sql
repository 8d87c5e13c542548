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
-- routine: events_claim_limited.sql 46876950a459
