-- Retention by whole partitions: the writers' own partition too, when it is acknowledged.
--
-- prune used to delete row by row the acknowledged changes of every partition that also held
-- unacknowledged ones. That happens when writers come back to a partition (a full ring of
-- 16 windows, about 1M changes, after they left it) before it was emptied: the partition
-- then holds an old window, acknowledged, and the writers' new one. Deleting the old window
-- row by row cost the writers a quarter of their pace while prune ran (the bench's prune of
-- 1M changes deleted 279k such rows: 0.37 s of CPU and 45 MiB of write-ahead log, which the
-- writers' commits waited to flush), and its space stayed in the table until VACUUM anyway.
-- prune now leaves such a partition whole until every change in it is acknowledged, then
-- empties it (TRUNCATE): it deletes row by row only within the current id window (see
-- pgtide.feed.retention), at most one window's changes.
--
-- So that an idle log is still emptied entirely, truncate_acked now also takes the
-- partition of the current window, last of all (writers enter it only if they write again
-- in the few milliseconds until prune's transaction ends; while they are writing, its
-- newest change is not acknowledged and it is not locked at all). Everything else is as
-- migrations 014 and 019 describe.

CREATE OR REPLACE FUNCTION pgtide.truncate_acked(age interval, lock_wait interval)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgtide AS $$
DECLARE
    current int := (SELECT ((last_value >> 16) & 15)::int FROM pgtide.changes_id_seq);
    total bigint := 0;
BEGIN
    -- current - 1 (left the longest ago) first, then on to current + 1, and current last
    FOR k IN 0..15 LOOP
        total := total + pgtide.truncate_partition_acked(
            'changes_' || ((current + 15 - k) % 16), age, lock_wait);
    END LOOP;
    RETURN total;
END;
$$;
