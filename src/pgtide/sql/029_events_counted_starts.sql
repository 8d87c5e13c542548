-- Events: the start of a claim that was taken over is counted once, even when sent again.
--
-- 028 counts a start once while its event still carries the claim's token (started_at
-- says whether it was counted). Once another claim took the event over (a lapsed lease, or
-- the retry of a failure), that was no longer known: a worker whose round was recorded
-- but whose reply was lost (the server stopped between the two) sent the round again, and
-- the starts in it, now under an old token, were counted a second time. An event could go
-- dead one retry early. Now the event keeps the tokens of its earlier claims whose start
-- is counted: a claim that replaces one whose start was counted records that token, and
-- a start written under an old token is counted only when its token is not recorded yet,
-- then recorded. A first claim, the common case, writes nothing more.
ALTER TABLE pgtide.events ADD COLUMN IF NOT EXISTS counted_starts integer[];
COMMENT ON COLUMN pgtide.events.counted_starts IS
    'pgtide events: tokens of earlier claims whose start is counted in attempts';

-- As 022_events_claim_plan.sql (which describes it), recording the replaced claim's token.
-- routine: events_claim.sql 6650b7dab79e

-- As 011_events_queue.sql (which describes it), recording the replaced claim's token.
-- routine: events_claim_limited.sql 46876950a459

-- As 028_events_start_once.sql, a start under an old token counted once.
-- routine: events_complete.sql 61490963497e
