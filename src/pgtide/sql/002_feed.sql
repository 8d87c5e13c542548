-- The change feed: captured changes, tracked tables, consumers and their positions.

-- Every captured change. `xid` is the writing transaction (xid8, never wraps); the feed reads
-- by its visibility in snapshots, never by `id > last` (ids are drawn before commit order).
-- One index only, (xid, id), the feed's read order: each index costs capture throughput.
CREATE TABLE pgtide.changes (
    id         bigint GENERATED ALWAYS AS IDENTITY,
    xid        xid8        NOT NULL DEFAULT pg_current_xact_id(),
    table_name text        NOT NULL,
    op         text        NOT NULL CHECK (op IN ('insert', 'update', 'delete', 'truncate')),
    row        jsonb,
    old        jsonb,
    at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (xid, id)
);

-- The tables pgtide captures, and how.
CREATE TABLE pgtide.tracked (
    table_name text        PRIMARY KEY,          -- canonical "schema.table"
    ops        text[]      NOT NULL,
    notify     boolean     NOT NULL DEFAULT true,
    tracked_at timestamptz NOT NULL DEFAULT now()
);

-- Each consumer's acknowledged position: everything visible in `snapshot` is done, and when
-- `target` is set, so are the transactions visible in `target` whose xid is <= `after_xid`
-- (a snapshot step split into several batches).
CREATE TABLE pgtide.consumers (
    name       text        PRIMARY KEY,
    snapshot   pg_snapshot NOT NULL,
    target     pg_snapshot,
    after_xid  xid8,
    tables     text[],
    created_at timestamptz NOT NULL DEFAULT now(),
    acked_at   timestamptz NOT NULL DEFAULT now()
);

-- Capture functions. TG_ARGV[0] is the canonical table name, TG_ARGV[1] 'notify' or 'quiet'.
-- They are created by migration 014 (pgtide.capture_rows, capture_update, capture_statement).
-- Databases installed before it also hold capture_insert, capture_delete, capture_truncate and
-- capture_wakeup, which earlier versions of this file created (and 014 replaced for new
-- triggers); triggers installed then still use them.
