-- Ingest: a rejected line keeps its exact bytes. The text column `line` cannot hold a NUL
-- byte or invalid UTF-8 (those are shown as \0 and U+FFFD there); `raw` holds any bytes.
-- Lines rejected before this migration have no raw bytes (NULL): only their text was kept.
ALTER TABLE pgtide.rejects ADD COLUMN IF NOT EXISTS raw bytea;
COMMENT ON COLUMN pgtide.rejects.raw IS
    'pgtide ingest: the rejected line as it was in the file, byte for byte (no newline)';
