-- Events: OpenTelemetry. An event published while the program traces keeps the context of
-- its publish span (the propagator's carrier, as JSON: W3C traceparent by default), and a
-- worker runs its handler in a span that continues that trace (pgtide.events._tracing).
-- NULL for every event published untraced: nothing more to write or read.
ALTER TABLE pgtide.events ADD COLUMN IF NOT EXISTS trace jsonb;
COMMENT ON COLUMN pgtide.events.trace IS
    'pgtide events: the trace context of the publish (OpenTelemetry carrier), or NULL';

-- The claims return it (a new column: the functions are dropped and created again).
-- routine: events_claim.sql 268cd7f08430
-- routine: events_claim_limited.sql 35a89e9b88f3
