-- pgtide.events_complete: record a worker's outcomes in one statement, fenced (migration 023
-- says why it is a function and how its plan is steered).
--
-- p_ids, p_tokens and p_starts are comma-separated integers (cheaper to send than arrays):
-- the events, the fencing tokens of their claims, and the attempts started and not counted
-- yet (as the worker knows: a start its claim has counted already, started_at set, is not
-- counted again); p_results their results (JSON texts) or NULL for none. An outcome is
-- recorded only while the event still carries p_owner and its token; an event whose cancel
-- was asked ends cancelled. A refused outcome's start is counted only when another claim took the
-- event over and that start is not counted yet (migrations 028 and 029). Whoever waits for
-- an event that ended is told on pgtide_events_done (the ids, or '' when too many).

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
            lease_expires = NULL,
            attempts = e.attempts + CASE WHEN e.started_at IS NULL THEN v.n ELSE 0 END,
            started_at = CASE WHEN v.n > 0 AND e.started_at IS NULL THEN now()
                              ELSE e.started_at END
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
