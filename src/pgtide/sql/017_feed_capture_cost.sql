-- Capture cost: rows stored as json, and UPDATE captured per statement.
--
-- Rows as json (text), not jsonb. to_jsonb builds each captured row as a binary document
-- (keys sorted, numbers converted to numeric), about a quarter of what a 1,000-row INSERT on
-- a tracked table costs its writer beyond the untracked INSERT; to_json writes the row's
-- text as is, in column order, which is what a reader asks for anyway (row::text: nothing to
-- convert back), and in fewer bytes. The values are the same JSON values (the same rule for
-- each type: numbers as numbers, NaN and infinities as strings, timestamps in ISO form...),
-- so readers type them as before. Existing changes are converted (every partition is
-- rewritten: prune before upgrading a large log). The WAL relay COPYs json fields (the text
-- itself), or inserts from its jsonb staging table (cast on insert).
--
-- UPDATE per statement. The row-level UPDATE capture of migration 014 ran one INSERT into
-- the partitioned log per updated row, each setting up the executor and partition routing
-- again. capture_rows now also captures UPDATE, from the statement's two transition tables,
-- pairing old and new rows by position: PostgreSQL appends each updated row's old and new
-- versions to them together (also for a row moved between partitions of a partitioned table,
-- and for ON CONFLICT DO UPDATE, whose updated rows have tables of their own), so the n-th
-- old row is the n-th new row before the update, whatever its key. The changes keep the
-- statement's order of the rows. Tables tracked before this migration keep their row-level
-- trigger (capture_update, capture_statement) until they are tracked again.
--
-- TG_ARGV[0] is the canonical table name, TG_ARGV[1] 'notify' or 'quiet'; one wake-up
-- NOTIFY per statement that captured rows (PostgreSQL folds equal ones in a transaction).

ALTER TABLE pgtide.changes ALTER COLUMN row TYPE json, ALTER COLUMN old TYPE json;

-- routine: capture_rows.sql 067ba1b6bf67
