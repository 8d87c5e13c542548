-- Capture cost of a single-row transaction: no CHECK on the log's `op`, and a shorter
-- capture_rows.
--
-- A CHECK constraint is compiled again by every statement that inserts into its table (the
-- executor reads the stored expression, plans it and builds its evaluator for each INSERT:
-- PostgreSQL caches none of it across statements). A capture trigger runs one INSERT into
-- the log per captured statement, so a single-row transaction paid that compilation for one
-- row: measured on PostgreSQL 18 (backend CPU per single-row transaction, commits included),
-- about 10 of the 36 microseconds that capture added to an untracked INSERT, more than what
-- partition routing and the index by table of migration 014 cost together. Every writer of
-- the log is pgtide's own (the capture functions, the WAL relay, backfill), each writing a
-- fixed op ('insert', 'update', 'delete', 'truncate', 'read').
--
-- The constraint's name depends on the database's history (migration 014 created the
-- partitioned log while the old table still held `changes_op_check`), so it is found by the
-- column it checks. Dropping it from the partitioned table drops it from every partition.

DO $$
DECLARE
    name text;
BEGIN
    FOR name IN
        SELECT c.conname FROM pg_constraint AS c
        JOIN pg_attribute AS a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
        WHERE c.conrelid = 'pgtide.changes'::regclass AND c.contype = 'c' AND a.attname = 'op'
    LOOP
        EXECUTE format('ALTER TABLE pgtide.changes DROP CONSTRAINT %I', name);
    END LOOP;
END;
$$;

-- The same capture as migration 017's (which describes it), with one test fewer per
-- statement: FOUND says whether the INSERT captured a row (no GET DIAGNOSTICS, no counter).
-- PL/pgSQL prepares each expression it evaluates again in every transaction, which a
-- single-row transaction pays in full.
-- routine: capture_rows.sql 067ba1b6bf67
