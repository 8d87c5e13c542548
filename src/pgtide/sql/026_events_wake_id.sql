-- Events: the wake-up of an insert says which event it announces.
--
-- Until now every insert notified pgtide_events with an empty payload, so a worker claimed
-- once per NOTIFY; at a steady publish rate about half of those claims came back empty (the
-- claim woken by one publish had already taken the events published meanwhile), and a
-- NOTIFY arriving behind such a claim waited for its round trip. Now the payload is the
-- highest id the statement inserted: a worker whose own claim already returned that id
-- skips the claim (that claim's snapshot held the whole statement: it took every row it
-- could, and when it came back full the worker claims again anyway). A statement that
-- inserted nothing (publish with a dedupe_key already held) wakes nobody. The ids are read
-- from the statement's transition table (COPY and explicit ids included); a payload that
-- is not an id ('' from pgtide's own wake-ups, 'schedule') still wakes every worker.
CREATE OR REPLACE FUNCTION pgtide.events_wake() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    newest bigint := (SELECT max(id) FROM inserted);
BEGIN
    IF newest IS NOT NULL THEN
        PERFORM pg_notify('pgtide_events', newest::text);
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER events_wake ON pgtide.events;
CREATE TRIGGER events_wake AFTER INSERT ON pgtide.events
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION pgtide.events_wake();
