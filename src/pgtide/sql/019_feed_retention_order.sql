-- Retention: the partition writers enter next is emptied last.
--
-- pgtide.truncate_acked (migration 014) empties the acknowledged partitions in one
-- transaction, and each one it empties stays locked (ACCESS EXCLUSIVE) until that
-- transaction ends. It took them in the order of their numbers, so the partition of the next
-- id window was often among the first: a writer whose ids moved into it while prune went on
-- waited for all the rest (0.2 s, in the bench's prune of 1M changes). Writers only move
-- forward, one window after the other, so the partitions are now taken from the one writers
-- left the longest ago (the window before the current one) to the one they enter next (the
-- window after it): the partition writers can reach while prune runs is locked last, for the
-- few milliseconds until the transaction ends, and the others hold no writer up. Everything
-- else is as migration 014 describes; the step for one partition is a function of its own.

-- Empties `part` if every change in it is acknowledged (and, with `age`, older than that),
-- locked first (waiting at most `lock_wait`); returns how many changes it removed, else 0.
-- Safe for any partition: under the lock no writer adds to it and every change in it is
-- committed, so what it checks then is final (truncate_acked leaves the writers' own alone).
-- routine: truncate_partition_acked.sql e6dcdd5450fc

CREATE OR REPLACE FUNCTION pgtide.truncate_acked(age interval, lock_wait interval)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgtide AS $$
DECLARE
    current int := (SELECT ((last_value >> 16) & 15)::int FROM pgtide.changes_id_seq);
    total bigint := 0;
BEGIN
    FOR k IN 0..14 LOOP  -- current - 1 (left the longest ago) first, current + 1 last
        total := total + pgtide.truncate_partition_acked(
            'changes_' || ((current + 15 - k) % 16), age, lock_wait);
    END LOOP;
    RETURN total;
END;
$$;
