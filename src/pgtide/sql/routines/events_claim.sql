-- pgtide.events_claim: claim up to p_limit events of the unlimited names p_names for
-- p_owner, leased for p_lease seconds: waiting events (priority, then id order; one event a
-- dedupe key at a time) and running ones whose lease lapsed. Each claim gets a new fencing
-- token; a claim that replaces one whose start was counted records that token in
-- counted_starts. One generic plan a session, sequential scans off, no JIT (migration 022
-- says why); counted_starts since migration 029; the publisher's trace context (its
-- tracing carrier, as JSON text) since migration 034, which changed the columns returned.

DROP FUNCTION IF EXISTS pgtide.events_claim(text, text[], integer, text, double precision);
CREATE FUNCTION pgtide.events_claim(
    p_source text, p_names text[], p_limit integer, p_owner text, p_lease double precision)
RETURNS TABLE (id bigint, name text, payload text, created_at timestamptz, key text,
               source_id text, lease_token integer, attempts integer, priority integer,
               trace text)
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
              e.attempts, e.priority, e.trace::text;
END
$$;
