-- The change log at scale: rotating partitions (retention by TRUNCATE), and an index by
-- table for consumers that follow some tables only.
--
-- pgtide.changes keeps its columns and its insert interface (the capture triggers, the WAL
-- relay and backfill insert (table_name, op, row, old) and let the rest default); it becomes
-- a table partitioned by windows of 65,536 change ids over 16 partitions: writers fill one
-- partition after the other, and retention empties a whole partition at once (TRUNCATE) when
-- every consumer has acknowledged all of it, instead of deleting rows one by one (which
-- slowed writers and left the table's size behind until VACUUM). A window of ids comes back
-- to its partition after 16 windows (1M changes); a partition not yet emptied then holds
-- both.
--
-- The columns keep their types (row and old stay jsonb): the relay writes them with a binary
-- COPY of jsonb fields.

ALTER TABLE pgtide.changes RENAME TO changes_013;
ALTER SEQUENCE pgtide.changes_id_seq RENAME TO changes_013_id_seq;

CREATE TABLE pgtide.changes (
    id         bigint GENERATED ALWAYS AS IDENTITY,
    xid        xid8        NOT NULL DEFAULT pg_current_xact_id(),
    table_name text        NOT NULL,
    op         text        NOT NULL
               CHECK (op IN ('insert', 'update', 'delete', 'truncate', 'read')),
    row        jsonb,
    old        jsonb,
    at         timestamptz NOT NULL DEFAULT now()
) PARTITION BY LIST (((id >> 16) & 15));

DO $$
BEGIN
    FOR part IN 0..15 LOOP
        EXECUTE format('CREATE TABLE pgtide.%I PARTITION OF pgtide.changes FOR VALUES IN (%s)',
                       'changes_' || part, part);
    END LOOP;
END;
$$;

-- The feed's read order, as before (a partitioned table cannot have a primary key on an
-- expression's columns; ids are unique by their identity anyway).
CREATE INDEX changes_xid_id ON pgtide.changes (xid, id);
-- A consumer of some tables reads its own tables' changes only: by a hash of the table name
-- (an int4 key, as narrow as the one above), then in read order.
CREATE INDEX changes_table_xid_id ON pgtide.changes (hashtext(table_name), xid, id);

INSERT INTO pgtide.changes (id, xid, table_name, op, row, old, at) OVERRIDING SYSTEM VALUE
    SELECT id, xid, table_name, op, row, old, at FROM pgtide.changes_013;
SELECT setval('pgtide.changes_id_seq', s.last_value, s.is_called)
    FROM pgtide.changes_013_id_seq AS s;
DROP TABLE pgtide.changes_013;

-- Capture. TG_ARGV[0] is the canonical table name, TG_ARGV[1] 'notify' or 'quiet'; one
-- wake-up NOTIFY per statement (PostgreSQL folds equal ones within a transaction). Triggers
-- installed before this migration keep the functions of migration 002 (capture_insert, capture_delete, capture_truncate,
-- capture_wakeup), which do the same; tracking a table again moves it here.
-- INSERT, DELETE and UPDATE are captured by pgtide.capture_rows, created by migration 017
-- (which also describes it). Databases installed before 017 also hold the capture_rows and
-- the row-level capture_update that earlier versions of this file created (migration 017
-- replaced capture_rows); triggers installed then still use them, until tracked again.

-- TRUNCATE as one change, and the statement-level wake-up of UPDATE's row-level capture
-- (tables tracked before migration 017).
CREATE FUNCTION pgtide.capture_statement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        INSERT INTO pgtide.changes (table_name, op) VALUES (TG_ARGV[0], 'truncate');
    END IF;
    IF TG_ARGV[1] = 'notify' THEN
        PERFORM pg_notify('pgtide_changes', TG_ARGV[0]);
    END IF;
    RETURN NULL;
END;
$$;

-- Retention by partition: empty each partition whose every change is acknowledged by every
-- consumer (with no consumer: every change of a transaction ended before this call), and,
-- with `age`, older than that.
-- The partition of the current id window is left alone (writers are there; prune deletes
-- its acknowledged rows). A partition is locked first, waiting at most `lock_wait`: from then on no writer
-- can add to it, and every change in it is committed (a writer holds its lock until it
-- ends), so the check made under the lock is final. A partition that cannot be locked in
-- time is left for the next call. Returns the number of changes removed.
-- SECURITY DEFINER: TRUNCATE needs the owner's privilege; it only removes acknowledged rows.
CREATE FUNCTION pgtide.truncate_acked(age interval, lock_wait interval)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgtide AS $$
DECLARE
    waited text := current_setting('lock_timeout');
    bound xid8;
    current int;
    part text;
    newest xid8;
    young boolean;
    n bigint;
    total bigint := 0;
BEGIN
    SELECT coalesce(min(pg_snapshot_xmin(snapshot)), pg_snapshot_xmin(pg_current_snapshot()))
        INTO bound FROM pgtide.consumers;
    SELECT ((last_value >> 16) & 15)::int INTO current FROM pgtide.changes_id_seq;
    FOR part IN SELECT 'changes_' || p FROM generate_series(0, 15) AS p WHERE p <> current LOOP
        EXECUTE format('SELECT max(xid) FROM pgtide.%I', part) INTO newest;  -- by the index
        CONTINUE WHEN newest IS NULL OR newest >= bound;
        -- Counted before the lock, which readers then wait for only briefly. Exact: a
        -- transaction with an xid below `bound` had ended when the consumers' snapshots were
        -- taken, so whatever comes into the partition from now on fails the check below.
        EXECUTE format('SELECT count(*) FROM pgtide.%I', part) INTO n;
        BEGIN
            PERFORM set_config('lock_timeout', (extract(epoch FROM lock_wait) * 1000)::int || 'ms',
                               true);
            EXECUTE format('LOCK TABLE pgtide.%I IN ACCESS EXCLUSIVE MODE', part);
            EXECUTE format('SELECT max(xid) FROM pgtide.%I', part) INTO newest;
            EXECUTE format('SELECT $1 IS NOT NULL AND EXISTS (SELECT FROM pgtide.%I '
                           'WHERE at >= now() - $1)', part) INTO young USING age;
            IF newest < bound AND NOT young THEN
                EXECUTE format('TRUNCATE pgtide.%I', part);
                total := total + n;
            END IF;
        EXCEPTION WHEN lock_not_available THEN
            NULL;  -- writers or readers hold it: the next call tries again
        END;
    END LOOP;
    PERFORM set_config('lock_timeout', waited, true);
    RETURN total;
END;
$$;
