-- UPDATE captured per statement, like INSERT and DELETE.
--
-- Migration 014's row-level UPDATE capture ran one INSERT into the partitioned change log per
-- updated row: each one set up the executor and the log's partition routing again, which
-- made tracked UPDATE statements several times slower than untracked ones. This function
-- writes a statement's updates with one INSERT ... SELECT from its transition tables.
--
-- Old and new rows are paired by their position in the two transition tables: PostgreSQL
-- appends each updated row's old version and new version to them together (also for a row
-- that moves between partitions, and for ON CONFLICT DO UPDATE, whose rows have tables of
-- their own), so the n-th old row is the n-th new row before the update, whatever its key.
-- The changes keep the statement's order of the rows. TG_ARGV as in migration 014: the
-- canonical table name, then 'notify' or 'quiet'. Tables tracked before this migration keep
-- their row-level triggers (capture_update and capture_statement, which do the same) until
-- they are tracked again.

CREATE FUNCTION pgtide.capture_updates() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    INSERT INTO pgtide.changes (table_name, op, row, old)
        SELECT TG_ARGV[0], 'update', r.row, o.old
        FROM (SELECT row_number() OVER () AS k, to_jsonb(r) AS row FROM pgtide_new AS r) AS r
        JOIN (SELECT row_number() OVER () AS k, to_jsonb(o) AS old FROM pgtide_old AS o) AS o
            USING (k)
        ORDER BY k;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 AND TG_ARGV[1] = 'notify' THEN
        PERFORM pg_notify('pgtide_changes', TG_ARGV[0]);
    END IF;
    RETURN NULL;
END;
$$;
