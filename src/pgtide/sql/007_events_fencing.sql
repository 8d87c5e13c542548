-- Events: a fencing token per claim, and attempts counted when a handler starts.
-- Every claim sets lease_token to a new value (one more than before); a worker starts a
-- handler, renews a lease and records an outcome only while the row still carries the
-- owner and token of its own claim, so a worker whose lease was taken over can do nothing.
-- A claimed event whose handler has not started yet has started_at NULL and the attempts of
-- before the claim: an attempt is counted when its handler starts.
ALTER TABLE pgtide.events ADD COLUMN IF NOT EXISTS lease_token integer NOT NULL DEFAULT 0;
COMMENT ON COLUMN pgtide.events.lease_token IS
    'pgtide events: the fencing token of the current claim (bumped by each claim)';
