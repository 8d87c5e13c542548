-- Ingest: a file rotated away (renamed to a name the watcher does not match) is still read
-- while its writer may hold it open; its offset row then carries its new name in `path`
-- and the watched name it had in `rotated_from` (NULL for a file under a watched name).
ALTER TABLE pgtide.file_offsets ADD COLUMN IF NOT EXISTS rotated_from text;
COMMENT ON COLUMN pgtide.file_offsets.rotated_from IS
    'pgtide ingest: the watched name of a rotated file still being read (NULL otherwise)';

-- A rejected line remembers where it was going (table or sql template, columns, format),
-- so that `pgtide rejects retry` can land it through the same writer once it is fixed.
ALTER TABLE pgtide.rejects ADD COLUMN IF NOT EXISTS target jsonb;
COMMENT ON COLUMN pgtide.rejects.target IS
    'pgtide ingest: how the line was to be written (NULL for lines rejected before 008)';
