-- Backfill: a backfill can be paused and resumed. A paused one keeps its progress and is not
-- run (runners leave it after their current chunk) until it is resumed.
ALTER TABLE pgtide.backfills ADD COLUMN IF NOT EXISTS paused_at timestamptz;
