-- pgtide.capture_rows: the statement trigger of a tracked table (migration 017 describes the
-- capture: transition tables, UPDATE's old and new rows paired by position). TG_ARGV[0] is
-- the canonical table name, TG_ARGV[1] 'notify' or 'quiet'. The wake-up NOTIFY is sent only
-- while a feed waits (migration 021: the feeds' shared advisory lock), once per statement
-- that captured rows.

CREATE OR REPLACE FUNCTION pgtide.capture_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO pgtide.changes (table_name, op, row)
            SELECT TG_ARGV[0], 'insert', to_json(r) FROM pgtide_new AS r;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO pgtide.changes (table_name, op, old)
            SELECT TG_ARGV[0], 'delete', to_json(r) FROM pgtide_old AS r;
    ELSE
        INSERT INTO pgtide.changes (table_name, op, row, old)
            SELECT TG_ARGV[0], 'update', r.row, o.old
            FROM (SELECT row_number() OVER () AS k, to_json(r) AS row FROM pgtide_new AS r) AS r
            JOIN (SELECT row_number() OVER () AS k, to_json(o) AS old FROM pgtide_old AS o)
                AS o USING (k)
            ORDER BY k;
    END IF;
    IF FOUND AND TG_ARGV[1] = 'notify' THEN
        IF pg_try_advisory_lock(1885828201, 5720901) THEN
            PERFORM pg_advisory_unlock(1885828201, 5720901);  -- nobody waits
        ELSE
            PERFORM pg_notify('pgtide_changes', TG_ARGV[0]);
        END IF;
    END IF;
    RETURN NULL;
END;
$$;
