-- Events: a start is counted once, even when a round is sent again.
--
-- The session runs a worker's round again after an outage, rebuilt from what it had not
-- seen recorded. When the server stopped between the round's commit and its reply, the
-- round had been recorded after all, and the starts it counted (STARTED, and the starts
-- of refused outcomes here) were counted a second time: an event that lived through the
-- outage could go dead one retry early. A start belongs to one claim, whose fencing token
-- it carries. An outcome refused while the event still carries that token was recorded
-- already (by this very round, sent before): its start too, so it counts nothing now. Only
-- the start of an outcome refused because another claim took the event over (a new token)
-- is counted here, as before, and it leaves started_at to the claim that holds the event
-- now. (STARTED, sent by the worker, follows the same rule: see pgtide.events._sql.)
-- Otherwise as 023_events_complete.sql, which describes the function.
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
        UPDATE pgtide.events e SET attempts = e.attempts + v.n
        FROM unnest(ids, tokens, starts) AS v(id, token, n)
        WHERE e.id = ANY(ARRAY(SELECT r.id FROM unnest(ids, starts) AS r(id, n)
                               WHERE r.n > 0 AND r.id <> ALL(coalesce(ended, '{}'))))
          AND e.id = v.id AND e.lease_token <> v.token;
    END IF;
    IF watched IS NOT NULL THEN
        PERFORM pg_notify('pgtide_events_done', CASE WHEN cardinality(watched) > 500 THEN ''
                                                     ELSE array_to_string(watched, ',') END);
    END IF;
END
$$;
