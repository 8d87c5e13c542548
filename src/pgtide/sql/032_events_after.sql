-- Events: dependencies. An event published with `after` (ids of other events) waits, in
-- state 'waiting', until every one of them is done; if one ends dead or cancelled instead,
-- it ends cancelled (and so, in turn, do the events waiting for it).
--
-- A waiting event is in no claim index (events_ready covers pending and failed), so waiting
-- events cost claims nothing. Its `after` array is indexed (GIN) while it waits, to find
-- the events an ending one releases. An event that others wait for is flagged `dependents`
-- by the publish that names it, under its row lock: the release trigger fires only for
-- flagged events (its WHEN clause is all that other updates pay), and a worker completing
-- the event at that moment waits for the publish to commit, then fires it.

ALTER TABLE pgtide.events
    ADD COLUMN IF NOT EXISTS after bigint[],
    ADD COLUMN IF NOT EXISTS dependents boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN pgtide.events.after IS
    'pgtide events: the events this one runs after (it waits until all are done)';
COMMENT ON COLUMN pgtide.events.dependents IS
    'pgtide events: some event waits for this one (its end releases or cancels them)';

ALTER TABLE pgtide.events DROP CONSTRAINT IF EXISTS events_state_check;
ALTER TABLE pgtide.events ADD CONSTRAINT events_state_check
    CHECK (state IN ('pending', 'running', 'done', 'failed', 'dead', 'cancelled', 'waiting'));

CREATE INDEX IF NOT EXISTS events_waiting ON pgtide.events USING gin (after)
    WHERE state = 'waiting';

-- An event that others wait for has ended. Done: each waiting event all of whose `after`
-- events are now done becomes pending (and waiting workers are woken). Dead or cancelled:
-- each waiting event that named it ends cancelled, with an error saying why (whoever waits
-- for it in wait() is told).
--
-- Two events a waiting one runs after may end at once, in two transactions, each seeing
-- the other not done yet. So the waiting events are locked first (in id order), and
-- checked by the next statement, whose snapshot is taken after the lock is granted: the
-- second transaction sees the first one's end and releases them.
CREATE OR REPLACE FUNCTION pgtide.events_release() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    released bigint;
    ended bigint[];
BEGIN
    PERFORM 1 FROM pgtide.events c
    WHERE c.after @> ARRAY[NEW.id] AND c.state = 'waiting' ORDER BY c.id FOR UPDATE;
    IF NEW.state = 'done' THEN
        WITH freed AS (
            UPDATE pgtide.events c SET state = 'pending', run_after = greatest(c.run_after, now())
            WHERE c.after @> ARRAY[NEW.id] AND c.state = 'waiting'
              AND NOT EXISTS (
                SELECT 1 FROM pgtide.events p
                WHERE p.id = ANY(c.after) AND p.id <> NEW.id AND p.state <> 'done')
            RETURNING c.id)
        SELECT max(id) INTO released FROM freed;
        IF released IS NOT NULL THEN
            IF pg_try_advisory_lock(1885828201, 4544078) THEN
                PERFORM pg_advisory_unlock(1885828201, 4544078);  -- no worker waits
            ELSE
                PERFORM pg_notify('pgtide_events', released::text);
            END IF;
        END IF;
    ELSE
        WITH lost AS (
            UPDATE pgtide.events c
            SET state = 'cancelled', finished_at = now(),
                error = format('cancelled: event %s, which it was to run after, ended %s',
                               NEW.id, NEW.state)
            WHERE c.after @> ARRAY[NEW.id] AND c.state = 'waiting'
            RETURNING c.id, c.watched)
        SELECT array_agg(id) FILTER (WHERE watched) INTO ended FROM lost;
        IF ended IS NOT NULL THEN
            PERFORM pg_notify('pgtide_events_done', CASE WHEN cardinality(ended) > 500 THEN ''
                                                         ELSE array_to_string(ended, ',') END);
        END IF;
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS events_release ON pgtide.events;
CREATE TRIGGER events_release AFTER UPDATE OF state ON pgtide.events
    FOR EACH ROW
    WHEN (NEW.dependents AND NEW.state IN ('done', 'dead', 'cancelled')
          AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION pgtide.events_release();
