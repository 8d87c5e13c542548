-- Ingest: where each watched file has been read up to, and the lines that could not land.
-- A batch's rows, its rejects and the file's new offset commit in one transaction, so the
-- offset here is always exactly the end of the last line that reached the target.
CREATE TABLE pgtide.file_offsets (
    watcher         text        NOT NULL DEFAULT 'default',
    path            text        NOT NULL,
    device          numeric(20) NOT NULL,
    inode           numeric(20) NOT NULL,
    fingerprint     bytea       NOT NULL,
    fingerprint_len integer     NOT NULL,
    byte_offset     bigint      NOT NULL,
    line_count      bigint      NOT NULL,
    rows_written    bigint      NOT NULL DEFAULT 0,
    rejected        bigint      NOT NULL DEFAULT 0,
    target          text        NOT NULL DEFAULT '',
    version         bigint      NOT NULL DEFAULT 1,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (watcher, path)
);
COMMENT ON TABLE pgtide.file_offsets IS
    'pgtide ingest: per watched file, its identity and the offset of the last committed line';

CREATE TABLE pgtide.rejects (
    id      bigserial   PRIMARY KEY,
    watcher text        NOT NULL DEFAULT 'default',
    path    text        NOT NULL,
    line_no bigint      NOT NULL,
    line    text        NOT NULL,
    error   text        NOT NULL,
    at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rejects_path_line_idx ON pgtide.rejects (path, line_no);
COMMENT ON TABLE pgtide.rejects IS
    'pgtide ingest: lines that could not be parsed or inserted, with the reason';
