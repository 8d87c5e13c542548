-- Events: the completion of a batch of events as a function whose plan is made once a session.
--
-- The worker's session plans every statement anew (see 022_events_claim_plan.sql); planning
-- the completion statement of 500 events took about 1 ms, a fifth of the time it then ran.
-- Here PL/pgSQL keeps one generic plan a session. A generic plan knows neither the lists'
-- lengths nor the state compared (a variable), so it is steered: sequential scans and
-- nested loops off, the events found by the primary key (the state's variable keeps the
-- plan off events_running, which holds every worker's running events and, until a vacuum,
-- the entries of those finished since), joined to the lists by a hash (measured: a generic
-- nested loop over 500 events read the list 500 times, 140 ms instead of 5). The lists are
-- parsed once, and the attempts of refused outcomes (a lease taken over) are written by a
-- second statement only when an outcome was refused: in the common case, one update.
--
-- p_ids, p_tokens and p_starts are comma-separated integers (cheaper to send than arrays):
-- the events, the fencing tokens of their claims, and the attempts started and not counted
-- yet; p_results their results (JSON texts) or NULL for none. An outcome is recorded only
-- while the event still carries p_owner and its token (fenced); an event whose cancel was
-- asked ends cancelled. A start is counted even when the outcome is refused. Whoever waits
-- for an event that ended is told on pgtide_events_done (the ids, or '' when too many).
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
        UPDATE pgtide.events e SET attempts = e.attempts + v.n, started_at = now()
        FROM unnest(ids, starts) AS v(id, n)
        WHERE e.id = ANY(ARRAY(SELECT r.id FROM unnest(ids, starts) AS r(id, n)
                               WHERE r.n > 0 AND r.id <> ALL(coalesce(ended, '{}'))))
          AND e.id = v.id;
    END IF;
    IF watched IS NOT NULL THEN
        PERFORM pg_notify('pgtide_events_done', CASE WHEN cardinality(watched) > 500 THEN ''
                                                     ELSE array_to_string(watched, ',') END);
    END IF;
END
$$;
