-- Events: the claim of unlimited names as a function whose plan is made once a session.
--
-- The worker's session plans every statement anew (plan_cache_mode = force_custom_plan:
-- a generic plan of its batch updates would ignore the arrays' sizes; measured: a generic
-- plan of the completion of 250 events ran 2.5x slower, and a worker's throughput fell
-- 30-fold). For the claim, planning cost more than running it: on PostgreSQL 18, 0.52 ms of
-- planning against 0.17 ms of execution for a claim of one event, on every wake-up. Here it
-- keeps one generic plan (PL/pgSQL caches it for the session), made with sequential scans
-- off so that it reads the indexes the claim was shaped for whatever the table's size or
-- statistics when the plan was made: events_ready for the waiting events of each name
-- served, events_running for the lapsed leases, the primary key for the update.
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
        lease_expires = now() + p_lease * interval '1 second', started_at = NULL
    WHERE e.id = ANY(ARRAY(SELECT c.id FROM candidates c ORDER BY c.priority, c.id
                           LIMIT p_limit))
    RETURNING e.id, e.name, e.payload::text, e.created_at, e.key, e.source_id, e.lease_token,
              e.attempts, e.priority;
END
$$;

