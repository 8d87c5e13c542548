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
-- One wake-up NOTIFY per statement (PostgreSQL folds equal ones within a transaction).
CREATE FUNCTION pgtide.capture_insert() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    INSERT INTO pgtide.changes (table_name, op, row)
        SELECT TG_ARGV[0], 'insert', to_jsonb(r) FROM pgtide_new AS r;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 AND TG_ARGV[1] = 'notify' THEN
        PERFORM pg_notify('pgtide_changes', TG_ARGV[0]);
    END IF;
    RETURN NULL;
END;
$$;

CREATE FUNCTION pgtide.capture_delete() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    INSERT INTO pgtide.changes (table_name, op, old)
        SELECT TG_ARGV[0], 'delete', to_jsonb(r) FROM pgtide_old AS r;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 AND TG_ARGV[1] = 'notify' THEN
        PERFORM pg_notify('pgtide_changes', TG_ARGV[0]);
    END IF;
    RETURN NULL;
END;
$$;

-- UPDATE is captured per row: OLD and NEW come paired, whatever the key (or a changed key).
CREATE FUNCTION pgtide.capture_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pgtide.changes (table_name, op, row, old)
        VALUES (TG_ARGV[0], 'update', to_jsonb(NEW), to_jsonb(OLD));
    RETURN NULL;
END;
$$;

CREATE FUNCTION pgtide.capture_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pgtide.changes (table_name, op) VALUES (TG_ARGV[0], 'truncate');
    IF TG_ARGV[1] = 'notify' THEN
        PERFORM pg_notify('pgtide_changes', TG_ARGV[0]);
    END IF;
    RETURN NULL;
END;
$$;

-- The statement-level wake-up for row-level captures (UPDATE).
CREATE FUNCTION pgtide.capture_wakeup() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_ARGV[1] = 'notify' THEN
        PERFORM pg_notify('pgtide_changes', TG_ARGV[0]);
    END IF;
    RETURN NULL;
END;
$$;
