-- Events: the start of a claim that was taken over is counted once, even when sent again.
--
-- 028 counts a start once while its event still carries the claim's token (started_at
-- says whether it was counted). Once another claim took the event over (a lapsed lease, or
-- the retry of a failure), that was no longer known: a worker whose round was recorded
-- but whose reply was lost (the server stopped between the two) sent the round again, and
-- the starts in it, now under an old token, were counted a second time. An event could go
-- dead one retry early. Now the event keeps the tokens of its earlier claims whose start
-- is counted: a claim that replaces one whose start was counted records that token, and
-- a start written under an old token is counted only when its token is not recorded yet,
-- then recorded. A first claim, the common case, writes nothing more.
ALTER TABLE pgtide.events ADD COLUMN IF NOT EXISTS counted_starts integer[];
COMMENT ON COLUMN pgtide.events.counted_starts IS
    'pgtide events: tokens of earlier claims whose start is counted in attempts';

-- As 022_events_claim_plan.sql (which describes it), recording the replaced claim's token.
CREATE OR REPLACE FUNCTION pgtide.events_claim(
    p_source text, p_names text[], p_limit integer, p_owner text, p_lease double precision)
RETURNS TABLE (id bigint, name text, payload text, created_at timestamptz, key text,
               source_id text, lease_token integer, attempts integer, priority integer)
LANGUAGE plpgsql
SET jit = off SET plan_cache_mode = force_generic_plan SET enable_seqscan = off AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH served AS (
        SELECT n.name FROM unnest(p_names) AS n(name)
        WHERE NOT EXISTS (
            SELECT 1 FROM pgtide.event_queues q
            WHERE q.source = p_source AND q.name = n.name
              AND (q.paused OR q.concurrency IS NOT NULL OR q.rate_count IS NOT NULL))
    ),
    candidates AS (
        SELECT c.id, c.priority FROM served CROSS JOIN LATERAL (
            SELECT e.id, e.priority FROM pgtide.events e
            WHERE e.source = p_source AND e.name = served.name
              AND e.state IN ('pending', 'failed') AND e.run_after <= now()
              AND (e.key IS NULL OR NOT EXISTS (
                    SELECT 1 FROM pgtide.events p
                    WHERE p.key = e.key AND p.source = e.source AND p.id < e.id
                      AND p.state IN ('pending', 'failed', 'running')))
            ORDER BY e.priority, e.id
            LIMIT p_limit
            FOR UPDATE OF e SKIP LOCKED) c
        UNION ALL
        SELECT c.id, c.priority FROM served CROSS JOIN LATERAL (
            SELECT e.id, e.priority FROM pgtide.events e
            WHERE e.source = p_source AND e.name = served.name AND e.state = 'running'
              AND e.lease_expires < now() AND NOT e.cancel_requested
            LIMIT p_limit
            FOR UPDATE OF e SKIP LOCKED) c
    )
    UPDATE pgtide.events e
    SET state = 'running', lease_owner = p_owner, lease_token = e.lease_token + 1,
        lease_expires = now() + p_lease * interval '1 second', started_at = NULL,
        counted_starts = CASE WHEN e.started_at IS NULL THEN e.counted_starts
                              ELSE array_append(e.counted_starts, e.lease_token) END
    WHERE e.id = ANY(ARRAY(SELECT c.id FROM candidates c ORDER BY c.priority, c.id
                           LIMIT p_limit))
    RETURNING e.id, e.name, e.payload::text, e.created_at, e.key, e.source_id, e.lease_token,
              e.attempts, e.priority;
END
$$;

-- As 011_events_queue.sql (which describes it), recording the replaced claim's token.
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
        lease_expires = now() + p_lease * interval '1 second', started_at = NULL,
        counted_starts = CASE WHEN e.started_at IS NULL THEN e.counted_starts
                              ELSE array_append(e.counted_starts, e.lease_token) END
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

-- As 028_events_start_once.sql, a start under an old token counted once.
CREATE OR REPLACE FUNCTION pgtide.events_complete(
    p_ids text, p_tokens text, p_results text[], p_starts text, p_owner text)
RETURNS void
LANGUAGE plpgsql
SET jit = off SET plan_cache_mode = force_generic_plan SET enable_seqscan = off
SET enable_nestloop = off AS $$
DECLARE
    ids bigint[] := string_to_array(p_ids, ',')::bigint[];
    tokens integer[] := string_to_array(p_tokens, ',')::integer[];
    starts integer[] := string_to_array(p_starts, ',')::integer[];
    running text := 'running';
    ended bigint[];
    watched bigint[];
BEGIN
    WITH done AS (
        UPDATE pgtide.events e
        SET state = CASE WHEN e.cancel_requested THEN 'cancelled' ELSE 'done' END,
            result = v.result::jsonb, finished_at = now(), lease_owner = NULL,
            lease_expires = NULL, attempts = e.attempts + v.n,
            started_at = CASE WHEN v.n > 0 THEN now() ELSE e.started_at END
        FROM unnest(ids, tokens, p_results, starts) AS v(id, token, result, n)
        WHERE e.id = ANY(ids) AND e.id = v.id AND e.lease_token = v.token
          AND e.lease_owner = p_owner AND e.state = running
        RETURNING e.id, e.watched)
    SELECT array_agg(d.id), array_agg(d.id) FILTER (WHERE d.watched) INTO ended, watched
    FROM done d;
    IF coalesce(cardinality(ended), 0) < cardinality(ids) THEN
        UPDATE pgtide.events e SET attempts = e.attempts + v.n,
            counted_starts = array_append(e.counted_starts, v.token)
        FROM unnest(ids, tokens, starts) AS v(id, token, n)
        WHERE e.id = ANY(ARRAY(SELECT r.id FROM unnest(ids, starts) AS r(id, n)
                               WHERE r.n > 0 AND r.id <> ALL(coalesce(ended, '{}'))))
          AND e.id = v.id AND e.lease_token <> v.token
          AND v.token <> ALL(coalesce(e.counted_starts, '{}'));
    END IF;
    IF watched IS NOT NULL THEN
        PERFORM pg_notify('pgtide_events_done', CASE WHEN cardinality(watched) > 500 THEN ''
                                                     ELSE array_to_string(watched, ',') END);
    END IF;
END
$$;
