-- pgtide.events_claim_limited: a claim of one limited name, at most `concurrency` running
-- (leases alive) and at most `rate_count` claims per `rate_period` seconds (a sliding
-- window), across all workers: the name's row in event_queues is locked while it decides.
-- Otherwise as events_claim (migration 011; counted_starts since migration 029; the trace
-- context since migration 034, which changed the columns returned).

DROP FUNCTION IF EXISTS pgtide.events_claim_limited(text, text, integer, text, double precision);
CREATE FUNCTION pgtide.events_claim_limited(
    p_source text, p_name text, p_want integer, p_owner text, p_lease double precision)
RETURNS TABLE (id bigint, name text, payload jsonb, created_at timestamptz, key text,
               source_id text, lease_token integer, attempts integer, priority integer,
               trace text)
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
        lease_expires = now() + p_lease * interval '1 second', started_at = NULL,
        counted_starts = CASE WHEN e.started_at IS NULL THEN e.counted_starts
                              ELSE array_append(e.counted_starts, e.lease_token) END
    WHERE e.id = ANY(ARRAY(SELECT c.id FROM candidates c ORDER BY c.priority, c.id LIMIT allowed))
    RETURNING e.id, e.name, e.payload, e.created_at, e.key, e.source_id, e.lease_token,
              e.attempts, e.priority, e.trace::text;
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
