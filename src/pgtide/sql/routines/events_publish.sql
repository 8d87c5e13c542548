-- pgtide.publish: publish an event from SQL (a trigger, psql, a program in another language)
-- in the caller's transaction, as Events.publish does: the insert's trigger wakes waiting
-- workers, and the event exists only if that transaction commits. The new event's id, or,
-- while an unfinished event holds dedupe_key, that event's id (nothing is inserted then).
-- Bad arguments raise errors that name the fix, as the Python API does.

CREATE OR REPLACE FUNCTION pgtide.publish(
    name text, payload jsonb DEFAULT 'null', run_at timestamptz DEFAULT NULL,
    key text DEFAULT NULL, priority integer DEFAULT 0, dedupe_key text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    found bigint;
BEGIN
    IF publish.name IS NULL OR length(publish.name) > 200 OR publish.name !~ '^\S'
       OR publish.name !~ '\S$' THEN
        RAISE EXCEPTION 'bad event name %: use a non-empty string of at most 200 characters '
            'without leading or trailing whitespace', quote_nullable(publish.name)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF publish.priority IS NULL THEN
        RAISE EXCEPTION 'priority must be an integer, not NULL (the default is 0)'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR attempt IN 1..10 LOOP  -- the key's holder may end between the two statements
        INSERT INTO pgtide.events (name, payload, run_after, key, priority, dedupe_key)
        VALUES (publish.name, coalesce(publish.payload, 'null'),
                coalesce(publish.run_at, now()), publish.key, publish.priority,
                publish.dedupe_key)
        ON CONFLICT (source, dedupe_key)
            WHERE dedupe_key IS NOT NULL AND state IN ('pending', 'failed', 'running')
            DO NOTHING
        RETURNING id INTO found;
        IF found IS NOT NULL OR publish.dedupe_key IS NULL THEN
            RETURN found;
        END IF;
        SELECT e.id INTO found FROM pgtide.events e
        WHERE e.source = '' AND e.dedupe_key = publish.dedupe_key
          AND e.state IN ('pending', 'failed', 'running');
        IF found IS NOT NULL THEN
            RETURN found;
        END IF;
    END LOOP;
    RAISE EXCEPTION 'could not publish % with dedupe_key %', publish.name, publish.dedupe_key;
END
$$;
