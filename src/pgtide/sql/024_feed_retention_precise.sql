-- Retention: a partition is emptied once every change in it is acknowledged, judged change by
-- change, not by the oldest open transaction a consumer saw.
--
-- pgtide.truncate_partition_acked (migration 019) counted a partition acknowledged only when
-- all its changes were older than every consumer's snapshot xmin. A consumer that read its
-- last changes while an older transaction was open (any write elsewhere, a prune) keeps an
-- xmin below them until it reads again; if it never does (it stopped, or its tables went
-- quiet) and the writers left that window, no prune emptied the partition, and the row-by-row
-- delete works on the writers' window only: those changes stayed for good. The xmin test
-- stays as the fast path; when it fails, the partition is searched (by its xid index) for a
-- change some consumer has not acknowledged, with the predicate prune's row-by-row delete and
-- consumers() use: one at or past the consumer's snapshot xmax, or among its in-progress
-- xids, and not covered by its target. Without a consumer, every committed change counts.
-- Whether every change in `part` is acknowledged: NULL when it is empty. Called by the
-- SECURITY DEFINER function below, so it runs as the schema's owner there; called directly,
-- with the caller's own rights (%I keeps `part` a name).
CREATE FUNCTION pgtide.partition_acked(part text, bound xid8) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pgtide AS $$
DECLARE
    done boolean;
BEGIN
    EXECUTE format('SELECT max(xid) < $1 FROM pgtide.%I', part) INTO done USING bound;
    IF done IS NOT FALSE THEN  -- empty, or older than every consumer's snapshot
        RETURN done;
    END IF;
    -- two searches, each by the xid index and ending at its first find (one OR of both
    -- would read every match into a bitmap first: all of a busy partition's new changes)
    EXECUTE format($q$
        SELECT NOT EXISTS (
            SELECT FROM pgtide.consumers k
            WHERE EXISTS (SELECT FROM pgtide.%1$I c
                          WHERE c.xid >= pg_snapshot_xmax(k.snapshot)
                            AND NOT coalesce(c.xid <= k.after_xid
                                             AND pg_visible_in_snapshot(c.xid, k.target), false))
               OR EXISTS (SELECT FROM pgtide.%1$I c
                          WHERE c.xid = ANY(ARRAY(SELECT pg_snapshot_xip(k.snapshot)))
                            AND NOT coalesce(c.xid <= k.after_xid
                                             AND pg_visible_in_snapshot(c.xid, k.target), false)))
        $q$, part) INTO done;
    RETURN done;
END;
$$;

-- routine: truncate_partition_acked.sql e6dcdd5450fc
