-- WAL capture: tables captured by logical decoding, and the relay's position.

-- How a tracked table is captured: by pgtide's triggers, or from the write-ahead log (a
-- publication read through this database's replication slot by the relay).
ALTER TABLE pgtide.tracked
    ADD COLUMN capture text NOT NULL DEFAULT 'trigger' CHECK (capture IN ('trigger', 'wal')),
    ADD COLUMN old_full boolean NOT NULL DEFAULT false;

-- The database's slot and publication, and what the relay has written to pgtide.changes:
-- `relayed_lsn` (the end of the last source transaction relayed) is updated in the same
-- transaction as the changes it writes, so after a crash the relay skips what is there.
CREATE TABLE pgtide.wal (
    slot             text        PRIMARY KEY,
    publication      text        NOT NULL,
    relayed_lsn      pg_lsn      NOT NULL DEFAULT '0/0',
    relayed_at       timestamptz,          -- when the relay last wrote changes
    source_commit_at timestamptz,          -- commit time of the last source transaction relayed
    checked_at       timestamptz,          -- when the relay last knew it had relayed everything
    created_at       timestamptz NOT NULL DEFAULT now()
);
