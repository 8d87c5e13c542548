-- Events: an insert wakes the workers only while one waits.
--
-- Every insert into pgtide.events notified pgtide_events. A NOTIFY takes a lock for the
-- whole database when its transaction commits and keeps it through the commit's WAL flush,
-- so publishers commit one after the other: eight threads publishing one event a call
-- reached about half the rate they reached without the NOTIFY. A worker whose claims come
-- back full claims again anyway and needs no wake-up; only a waiting worker does. A waiting
-- worker holds the advisory lock (1885828201, 4544078) shared on its claiming connection
-- (pgtide.channel._gate, which also describes how a worker that registers misses no event
-- of a publisher that decided just before), as waiting feeds hold theirs (021). The
-- insert notifies only when it cannot take that lock exclusively for an instant: a
-- publisher pays for the NOTIFY only while a worker waits for it. Two publishers testing at
-- the same instant may both notify: harmless.
--
-- The test comes after the rows are in (the transaction has its id by then). The lock is
-- taken and released by two consecutive calls; were it ever left held (a cancel landing
-- between them), every insert would notify, as before this migration. The payload is the
-- newest id the statement inserted (026).
CREATE OR REPLACE FUNCTION pgtide.events_wake() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    newest bigint := (SELECT max(id) FROM inserted);
BEGIN
    IF newest IS NOT NULL THEN
        IF pg_try_advisory_lock(1885828201, 4544078) THEN
            PERFORM pg_advisory_unlock(1885828201, 4544078);  -- no worker waits
        ELSE
            PERFORM pg_notify('pgtide_events', newest::text);
        END IF;
    END IF;
    RETURN NULL;
END
$$;
