-- pgtide.truncate_partition_acked: empty the change-log partition `part` if every change in
-- it is acknowledged (and, with `age`, older than that), locked first (waiting at most
-- `lock_wait`); return how many changes it removed, else 0. Safe for any partition: under
-- the lock no writer adds to it and every change in it is committed, so what it checks then
-- is final (migration 019; the precise acknowledged test, pgtide.partition_acked, since 024).

CREATE OR REPLACE FUNCTION pgtide.truncate_partition_acked(part text, age interval, lock_wait interval)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgtide AS $$
DECLARE
    waited text := current_setting('lock_timeout');
    bound xid8 := (SELECT coalesce(min(pg_snapshot_xmin(snapshot)),
                                   pg_snapshot_xmin(pg_current_snapshot()))
                   FROM pgtide.consumers);
    acked boolean;
    n bigint;
BEGIN
    IF part !~ '^changes_(1[0-5]|[0-9])$' THEN  -- SECURITY DEFINER: the log's partitions only
        RAISE EXCEPTION 'pgtide.truncate_partition_acked: % is not a partition of pgtide.changes',
            quote_literal(part) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF pgtide.partition_acked(part, bound) IS NOT TRUE THEN  -- empty, writers there, a lag
        RETURN 0;
    END IF;
    EXECUTE format('SELECT count(*) FROM pgtide.%I', part) INTO n;  -- before the lock
    PERFORM set_config('lock_timeout', (extract(epoch FROM lock_wait) * 1000)::int || 'ms', true);
    BEGIN
        EXECUTE format('LOCK TABLE pgtide.%I IN ACCESS EXCLUSIVE MODE', part);
    EXCEPTION WHEN lock_not_available THEN
        n := 0;  -- writers or readers hold it: the next call tries again
    END;
    PERFORM set_config('lock_timeout', waited, true);
    IF n > 0 THEN  -- locked: the check below is final, and the count exact
        acked := pgtide.partition_acked(part, bound);
        IF acked AND age IS NOT NULL THEN
            EXECUTE format('SELECT NOT EXISTS (SELECT FROM pgtide.%I WHERE at >= now() - $1)',
                           part) INTO acked USING age;
        END IF;
        IF acked THEN
            EXECUTE format('TRUNCATE pgtide.%I', part);
            RETURN n;
        END IF;
    END IF;
    RETURN 0;
END;
$$;
