-- Events: the claim of unlimited names and the record of completions as functions whose
-- plans are made once a session.
--
-- The worker's session plans every statement anew (plan_cache_mode = force_custom_plan:
-- a generic plan of its batch updates could pick a sequential scan). For the two statements
-- each event costs at a steady pace, that cost more than running them: on PostgreSQL 18,
-- 0.52 ms of planning against 0.17 ms of execution for a claim of one event, 0.36 ms against
-- 0.19 ms for its completion. Here each keeps one generic plan (PL/pgSQL caches it for the
-- session), made with sequential scans off so that it reads the indexes the statement was
-- shaped for whatever the table's size or statistics when the plan was made: events_ready
-- for the waiting events of each name served, events_running for the lapsed leases, the
-- primary key for the updates by id.
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

-- Record handlers' results, fenced by owner and token (see COMPLETE in events/_sql.py); wake
-- whoever waits for them (pgtide_events_done), in the same transaction.
CREATE OR REPLACE FUNCTION pgtide.events_complete(
    p_ids text, p_tokens text, p_results text[], p_starts text, p_owner text)
RETURNS void
LANGUAGE plpgsql
SET jit = off SET plan_cache_mode = force_generic_plan SET enable_seqscan = off AS $$
DECLARE
    watched_n integer;
    watched_ids text;
BEGIN
    WITH ended AS (
        UPDATE pgtide.events e
        SET state = CASE WHEN e.cancel_requested THEN 'cancelled' ELSE 'done' END,
            result = v.result::jsonb, finished_at = now(), lease_owner = NULL,
            lease_expires = NULL, attempts = e.attempts + v.n,
            started_at = CASE WHEN v.n > 0 THEN now() ELSE e.started_at END
        FROM unnest(string_to_array(p_ids, ',')::bigint[],
                    string_to_array(p_tokens, ',')::integer[], p_results,
                    string_to_array(p_starts, ',')::integer[]) AS v(id, token, result, n)
        WHERE e.id = ANY(string_to_array(p_ids, ',')::bigint[]) AND e.id = v.id
          AND e.lease_token = v.token AND e.lease_owner = p_owner AND e.state = 'running'
        RETURNING e.id, e.watched),
    refused AS (
        UPDATE pgtide.events e SET attempts = e.attempts + v.n, started_at = now()
        FROM unnest(string_to_array(p_ids, ',')::bigint[],
                    string_to_array(p_starts, ',')::integer[]) AS v(id, n)
        WHERE e.id = ANY(ARRAY(SELECT v.id FROM unnest(string_to_array(p_ids, ',')::bigint[],
                                                       string_to_array(p_starts, ',')::integer[])
                                                AS v(id, n)
                               WHERE v.n > 0 AND v.id NOT IN (SELECT id FROM ended)))
          AND e.id = v.id)
    SELECT count(*), string_agg(id::text, ',') INTO watched_n, watched_ids
    FROM ended WHERE watched;
    IF watched_n > 0 THEN
        PERFORM pg_notify('pgtide_events_done',
                          CASE WHEN watched_n > 500 THEN '' ELSE watched_ids END);
    END IF;
END
$$;
