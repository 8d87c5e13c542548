-- pgtide's own schema: the version table every later migration records itself in.
-- (The schema itself and pgtide.schema_version are created by pgtide.schema before migrations.)
COMMENT ON SCHEMA pgtide IS 'pgtide: listen, follow, events and ingest state';
