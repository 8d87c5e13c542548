-- Retention: the partition writers enter next is emptied last.
--
-- pgtide.truncate_acked (migration 014) empties the acknowledged partitions in one
-- transaction, and each one it empties stays locked (ACCESS EXCLUSIVE) until that
-- transaction ends. It took them in the order of their numbers, so the partition of the next
-- id window was often among the first: a writer whose ids moved into it while prune went on
-- waited for all the rest (0.2 s, in the bench's prune of 1M changes). Writers only move
-- forward, one window after the other, so the partitions are now taken from the one writers
-- left the longest ago (the window after the current one comes back last of all) to the one
-- they enter next: the partitions writers can reach while prune runs are locked last, for
-- the few milliseconds until the transaction ends, and the others hold no writer up.
-- Everything else is as migration 014 describes.
CREATE OR REPLACE FUNCTION pgtide.truncate_acked(age interval, lock_wait interval)
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
    -- current - 1 (left the longest ago) first, ..., current + 1 (entered next) last
    FOR part IN SELECT 'changes_' || ((current + 15 - k) % 16)
                FROM generate_series(0, 14) AS k ORDER BY k LOOP
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
