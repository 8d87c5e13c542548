-- Backfill: a tracked table's existing rows emitted as changes of op 'read', in primary key
-- chunks, with the progress of each backfill (saved in the same transaction as its chunk).

ALTER TABLE pgtide.changes DROP CONSTRAINT changes_op_check;
ALTER TABLE pgtide.changes ADD CONSTRAINT changes_op_check
    CHECK (op IN ('insert', 'update', 'delete', 'truncate', 'read')) NOT VALID;

CREATE TABLE pgtide.backfills (
    table_name  text        PRIMARY KEY,      -- canonical "schema.table"
    key_columns text[]      NOT NULL,         -- the primary key, in index order
    last_key    jsonb,                        -- the key of the last row emitted (NULL: none)
    rows        bigint      NOT NULL DEFAULT 0,
    chunks      bigint      NOT NULL DEFAULT 0,
    started_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz,
    done_at     timestamptz
);
