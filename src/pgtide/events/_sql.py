"""The SQL of the events feature, as named constants (identifiers only via sql.Identifier)."""

from __future__ import annotations

from collections.abc import Iterable

from psycopg import sql

from ..names import TableName

CHANNEL = "pgtide_events"
"""The channel every insert into pgtide.events notifies (see 003_events.sql)."""

PUBLISH = """
INSERT INTO pgtide.events (name, payload, run_after, key, priority, dedupe_key, trace)
VALUES (%s, %s::jsonb, coalesce(%s::timestamptz, now()), %s, %s, %s, %s::jsonb)
ON CONFLICT (source, dedupe_key)
    WHERE dedupe_key IS NOT NULL AND state IN ('pending', 'failed', 'running') DO NOTHING
RETURNING id
"""
"""Nothing is inserted (no row comes back) while an event with the same dedupe key is
pending, failed or running: the unique index decides, so concurrent publishers agree. SQL
callers have the same insert and look-up in ``pgtide.publish()`` (routine
``events_publish.sql``); Events.publish sends them itself, since a plpgsql call made each
publish ~15% dearer on a slow machine (2026-12-02, 4 alternated partial runs)."""

DEDUPED = """
SELECT id FROM pgtide.events
WHERE source = '' AND dedupe_key = %s AND state IN ('pending', 'failed', 'running')
"""
"""The unfinished event that holds a dedupe key."""

DEDUPED_MANY = """
SELECT dedupe_key, id FROM pgtide.events
WHERE source = '' AND dedupe_key = ANY(%s::text[]) AND state IN ('pending', 'failed', 'running')
"""

PUBLISH_MANY = """
INSERT INTO pgtide.events (name, payload, run_after, key, priority, dedupe_key, trace)
SELECT %s, p, coalesce(%s::timestamptz, now()), %s, %s, d, %s::jsonb
FROM ROWS FROM (jsonb_array_elements(%s::jsonb), unnest(%s::text[])) WITH ORDINALITY AS t(p, d, n)
ORDER BY n
ON CONFLICT (source, dedupe_key)
    WHERE dedupe_key IS NOT NULL AND state IN ('pending', 'failed', 'running') DO NOTHING
RETURNING id, dedupe_key
"""

PUBLISH_MANY_PLAIN = """
WITH inserted AS (
    INSERT INTO pgtide.events (name, payload, run_after, key, priority, trace)
    SELECT %s, p, coalesce(%s::timestamptz, now()), %s, %s, %s::jsonb
    FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS t(p, n)
    ORDER BY n
    RETURNING id)
SELECT string_agg(id::text, ',' ORDER BY id) FROM inserted
"""
"""Payloads arrive as one JSON array (one value to send and parse, not one per event); the
ids come back as one comma-separated text, in the payloads' order (each row takes its id
in that order): one value to read, not a row per event."""

PUBLISH_AFTER = """
WITH parents AS (
    UPDATE pgtide.events SET dependents = true
    WHERE id = ANY(%(after)s::bigint[]) AND source = ''
    RETURNING id, state),
seen AS (
    SELECT count(*) AS found, count(*) FILTER (WHERE state <> 'done') AS open,
           (array_agg(id ORDER BY id) FILTER (WHERE state IN ('dead', 'cancelled')))[1] AS lost,
           (array_agg(state ORDER BY id) FILTER (WHERE state IN ('dead', 'cancelled')))[1] AS how
    FROM parents),
inserted AS (
    INSERT INTO pgtide.events (name, payload, run_after, key, priority, after, state, error,
                               finished_at, trace)
    SELECT %(name)s, t.p, coalesce(%(run_at)s::timestamptz, now()), %(key)s, %(priority)s,
           %(after)s::bigint[],
           CASE WHEN s.lost IS NOT NULL THEN 'cancelled'
                WHEN s.open > 0 THEN 'waiting' ELSE 'pending' END,
           CASE WHEN s.lost IS NOT NULL THEN format(
               'cancelled: event %%s, which it was to run after, ended %%s', s.lost, s.how) END,
           CASE WHEN s.lost IS NOT NULL THEN now() END, %(trace)s::jsonb
    FROM seen s, jsonb_array_elements(%(payloads)s::jsonb) WITH ORDINALITY AS t(p, n)
    WHERE s.found = cardinality(%(after)s::bigint[])
    ORDER BY t.n
    RETURNING id)
SELECT (SELECT found FROM seen), (SELECT string_agg(id::text, ',' ORDER BY id) FROM inserted)
"""
"""Publish events that run after others, in one statement (so on any connection, in the
caller's transaction or not): the events named are flagged and locked (a worker ending one
meanwhile waits for this to commit, then releases the new events: see 032_events_after.sql),
and the new events are inserted ``waiting`` while any of them is not done (``pending`` when
all are; ``cancelled`` when one ended dead or cancelled). Nothing is inserted when an id is
not one of pgtide's events: the first value then counts those found."""

MISSING_EVENTS = """
SELECT array_agg(a ORDER BY a) FROM unnest(%s::bigint[]) AS a
WHERE NOT EXISTS (SELECT 1 FROM pgtide.events e WHERE e.id = a AND e.source = '')
"""

CLAIM = """
SELECT id, name, payload, created_at, key, source_id, lease_token, attempts, priority, trace
FROM pgtide.events_claim(%(source)s::text, %(names)s::text[], %(limit)s::integer,
                         %(owner)s::text, %(lease)s::double precision)
"""
"""A claim reserves events (a new fencing token each, a lease) but counts no attempt. It
reads, for each name served that is neither paused nor limited, the waiting events in
(priority, id) order (index ``events_ready``) and the lapsed leases (``events_running``):
finished events, names nobody serves and paused names cost it nothing. The function (see
022_events_claim_plan.sql) keeps one plan a session: planning the statement anew cost more
than running it. Payloads come back as text: the worker decodes them (faster than the
driver's JSON loader)."""

CLAIM_LIMITED = """
SELECT id, name, payload::text, created_at, key, source_id, lease_token, attempts, priority,
       trace
FROM pgtide.events_claim_limited(%(source)s, %(name)s, %(limit)s, %(owner)s, %(lease)s)
"""
"""A claim of one name with global limits (see 011_events_queue.sql): the name's queue row
is locked, so the limits hold across every worker."""

QUEUES_DECLARE = """
INSERT INTO pgtide.event_queues (source, name, concurrency, rate_count, rate_period)
SELECT %(source)s, n, c, r, p
FROM unnest(%(names)s::text[], %(concurrency)s::integer[], %(rate_count)s::integer[],
            %(rate_period)s::float8[]) AS v(n, c, r, p)
ON CONFLICT (source, name) DO UPDATE
SET concurrency = EXCLUDED.concurrency, rate_count = EXCLUDED.rate_count,
    rate_period = EXCLUDED.rate_period, updated_at = now()
WHERE (event_queues.concurrency, event_queues.rate_count, event_queues.rate_period)
      IS DISTINCT FROM (EXCLUDED.concurrency, EXCLUDED.rate_count, EXCLUDED.rate_period)
"""
"""A worker declares its handlers' limits (the last worker started wins)."""

QUEUE_PAUSE = """
INSERT INTO pgtide.event_queues (source, name, paused) VALUES (%s, %s, %s)
ON CONFLICT (source, name) DO UPDATE SET paused = EXCLUDED.paused, updated_at = now()
"""

QUEUES_LIST = """
SELECT name, paused, concurrency, rate_count, rate_period FROM pgtide.event_queues
WHERE source = %s ORDER BY name
"""

# The outcomes, renewals and releases below are fenced: each touches a row only while it
# still carries this worker's owner and the token of its claim, so a worker whose lease was
# taken over (after an outage longer than the lease, say) can neither renew, complete, fail
# nor release an event that another worker now owns. (id = ANY(...) lets the planner use
# the primary key whatever its statistics say.)

STARTED = """
UPDATE pgtide.events e
SET attempts = e.attempts + v.n,
    started_at = CASE WHEN e.lease_token = v.token THEN now() ELSE e.started_at END,
    counted_starts = CASE WHEN e.lease_token = v.token THEN e.counted_starts
                          ELSE array_append(e.counted_starts, v.token) END
FROM unnest(%(ids)s::bigint[], %(tokens)s::integer[], %(counts)s::integer[]) AS v(id, token, n)
WHERE e.id = ANY(%(ids)s::bigint[]) AND e.id = v.id
  AND CASE WHEN e.lease_token = v.token THEN e.started_at IS NULL
           ELSE v.token <> ALL(coalesce(e.counted_starts, '{}')) END
"""
"""Count the attempts whose handlers started and have not ended by the worker's next round
(a counter of what really happened, so not fenced: a start is counted even if another
worker owns the event by the time it is written). Each id comes with the token of its
newest start: while the event still carries it, the start is counted only if its claim's
start was not counted yet (``started_at`` is NULL from the claim on); once another claim
took the event over, only if its token is not among the event's ``counted_starts`` (then it
is added). So a round sent again after an outage, when the first sending had committed
after all, counts nothing twice (see 028_events_start_once.sql and
029_events_counted_starts.sql). The worker sends it in the transaction of its round (see
:data:`COMPLETE` for the attempts of handlers that already ended)."""

DONE_CHANNEL = "pgtide_events_done"
"""Where the end (done, dead or cancelled) of an event someone waits for is notified: the
payload is the ids, comma-separated ('' when too many: every waiter looks)."""

CANCEL_CHANNEL = "pgtide_events_cancel"
"""Where a cancel of a running event is notified (the payload is its id)."""

_NOTIFY_ENDED = """
SELECT pg_notify('pgtide_events_done',
                 CASE WHEN count(*) > 500 THEN '' ELSE string_agg(id::text, ',') END)
FROM ended WHERE watched HAVING count(*) > 0
"""

COMPLETE = """
SELECT pgtide.events_complete(%(ids)s, %(tokens)s, %(results)s::text[], %(starts)s, %(owner)s)
"""
"""Record handlers' results, fenced (an event whose cancel was asked ends ``cancelled``);
wake whoever waits for them, in the same transaction (see 023_events_complete.sql: one
plan a session, one update in the common case). ``starts`` counts, per event, the attempts
started and not counted yet (a quick handler's start is written with its outcome: one row
version, not two); a start is counted even when the outcome is refused (the lease was taken
over), as :data:`STARTED` does. ``ids``, ``tokens`` and ``starts`` are comma-separated
integers (:func:`csv`: far cheaper to send than arrays); ``results`` is a text array, or
None when no handler returned anything."""


def csv(numbers: Iterable[int]) -> str:
    """Integers as one comma-separated text (``string_to_array(%s, ',')::bigint[]`` reads it)."""
    return ",".join(map(str, numbers))


FAIL = (
    """
WITH ended AS (
    UPDATE pgtide.events e
    SET state = CASE WHEN e.cancel_requested THEN 'cancelled' ELSE v.state END,
        error = v.error,
        run_after = now() + v.delay * interval '1 second',
        finished_at = CASE WHEN e.cancel_requested OR v.state = 'dead' THEN now() END,
        lease_owner = NULL, lease_expires = NULL
    FROM unnest(%(ids)s::bigint[], %(tokens)s::integer[], %(states)s::text[],
                %(errors)s::text[], %(delays)s::float8[]) AS v(id, token, state, error, delay)
    WHERE e.id = ANY(%(ids)s::bigint[]) AND e.id = v.id AND e.lease_token = v.token
      AND e.lease_owner = %(owner)s AND e.state = 'running'
    RETURNING e.id, e.watched AND e.state IN ('dead', 'cancelled') AS watched)"""
    + _NOTIFY_ENDED
)
"""Record handlers' failures, fenced, in one statement for the lot: ``failed`` (retried
after its ``delays`` seconds, on the server's clock) or ``dead``; an event whose cancel was
asked ends ``cancelled``. Whoever waits for one that ended is woken."""

RELEASE = """
UPDATE pgtide.events e
SET state = CASE WHEN e.cancel_requested THEN 'cancelled'
                 WHEN e.error IS NULL THEN 'pending' ELSE 'failed' END,
    finished_at = CASE WHEN e.cancel_requested THEN now() END,
    lease_owner = NULL, lease_expires = NULL, started_at = NULL
FROM unnest(%(ids)s::bigint[], %(tokens)s::integer[]) AS v(id, token)
WHERE e.id = ANY(%(ids)s::bigint[]) AND e.id = v.id AND e.lease_token = v.token
  AND e.lease_owner = %(owner)s AND e.state = 'running'
"""
"""Give events back at once (a stopping worker): pending again, attempts as they are."""

CANCEL = """
WITH asked AS (
    UPDATE pgtide.events
    SET cancel_requested = true,
        state = CASE WHEN state = 'running' AND lease_expires >= now() THEN state
                     ELSE 'cancelled' END,
        finished_at = CASE WHEN state = 'running' AND lease_expires >= now() THEN finished_at
                           ELSE now() END
    WHERE id = %s AND state IN ('pending', 'failed', 'running', 'waiting')
    RETURNING id, state)
SELECT state, pg_notify(CASE WHEN state = 'running' THEN 'pgtide_events_cancel'
                             ELSE 'pgtide_events_done' END, id::text)
FROM asked
"""
"""Cancel: a waiting event (or one whose lease lapsed) ends ``cancelled`` at once; a running
one is flagged, and its worker told by NOTIFY (heartbeats tell it too, if that is missed)."""

SWEEP_CANCELLED = """
UPDATE pgtide.events SET state = 'cancelled', finished_at = now(),
    lease_owner = NULL, lease_expires = NULL
WHERE source = %s AND state = 'running' AND cancel_requested AND lease_expires < now()
  AND name = ANY(%s::text[])
"""
"""Cancelled running events whose worker died: they end ``cancelled``, never run again."""

WATCH = """
WITH w AS (UPDATE pgtide.events SET watched = true WHERE id = %(id)s RETURNING state)
SELECT state, CASE WHEN state IN ('pending', 'failed') THEN pg_notify(%(channel)s, '') END
FROM w
"""
"""A waiter's interest: from now on, the event's end is notified. The update locks the row
for an instant, and a claim meanwhile skips it (SKIP LOCKED) and finds nothing else: so while
the event waits to be claimed, the workers are woken to claim again after this commits (else
``id = publish(...); wait(id)`` could leave it to the next poll)."""

ENDED_STATES = ("done", "dead", "cancelled")

WAKE = "SELECT pg_notify(%s, '')"

WAKE_SCHEDULES = "SELECT pg_notify(%s, 'schedule')"
"""Workers look at the schedules again (one was added or changed)."""

WORKER_SESSION = "SET plan_cache_mode = force_custom_plan; SET jit = off"
"""The worker's session: no JIT compilation (a claim's estimate on a large table would
compile every claim for nothing); a generic plan of the batch updates would ignore the arrays' sizes
and scan the table. (Claims, heartbeats and outcomes commit synchronously: a claim lost in a
server crash could let a second worker start an event that a live worker is still running.)"""

HEARTBEAT = """
UPDATE pgtide.events e SET lease_expires = now() + %(lease)s * interval '1 second'
FROM unnest(%(ids)s::bigint[], %(tokens)s::integer[], %(started)s::boolean[])
     AS v(id, token, started)
WHERE e.id = ANY(%(ids)s::bigint[]) AND e.id = v.id AND e.lease_token = v.token
  AND e.lease_owner = %(owner)s AND e.state = 'running'
  AND (v.started OR e.lease_expires > now())
RETURNING e.id, e.cancel_requested
"""
"""Renew the leases this worker holds; those not returned are lost. A lease that lapsed is
renewed only for a handler already running (nobody took it over: stealing it now would run
the event twice at once); a claimed event not started yet whose lease lapsed is given up."""

WORKER_SEEN = "UPDATE pgtide.event_workers SET seen_at = now() WHERE id = %s"

WORKER_REGISTER = """
INSERT INTO pgtide.event_workers (id, source, names, host, pid) VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (id) DO UPDATE SET names = EXCLUDED.names, seen_at = now()
"""

WORKER_FORGET = "DELETE FROM pgtide.event_workers WHERE id = %s"

WORKERS_PRUNE = "DELETE FROM pgtide.event_workers WHERE seen_at < now() - interval '10 minutes'"

COUNTS = "SELECT state, count(*) FROM pgtide.events WHERE source = %s GROUP BY state"

PAUSED = "SELECT name FROM pgtide.event_queues WHERE source = %s AND paused ORDER BY name"

# Waiting events whose name no live worker (heartbeat within the window) handles.
UNHANDLED = """
SELECT e.name, count(*) FROM pgtide.events e
WHERE e.source = %(source)s AND e.state IN ('pending', 'failed')
  AND NOT EXISTS (
    SELECT 1 FROM pgtide.event_workers w
    WHERE w.source = e.source AND e.name = ANY(w.names)
      AND w.seen_at > now() - %(window)s * interval '1 second')
GROUP BY e.name ORDER BY e.name
"""

_ROW = """
SELECT id, name, state, attempts, payload, result, error, key, source_id,
       run_after, created_at, started_at, finished_at, priority, dedupe_key, after
FROM pgtide.events
"""

LIST = (
    _ROW
    + """
WHERE source = %(source)s
  AND (%(state)s::text IS NULL OR state = %(state)s)
  AND (%(name)s::text IS NULL OR name = %(name)s)
ORDER BY id DESC
LIMIT %(limit)s
"""
)

GET = _ROW + "WHERE id = %s"

RETRY = """
UPDATE pgtide.events e
SET state = 'pending', attempts = 0, run_after = now(), finished_at = NULL,
    cancel_requested = false
WHERE e.id = %s AND e.state IN ('done', 'failed', 'dead', 'cancelled')
  AND (e.dedupe_key IS NULL OR NOT EXISTS (
        SELECT 1 FROM pgtide.events p
        WHERE p.source = e.source AND p.dedupe_key = e.dedupe_key AND p.id <> e.id
          AND p.state IN ('pending', 'failed', 'running')))
RETURNING id
"""
"""(An event whose dedupe key another unfinished event holds stays as it is.)"""

RETRY_DEAD = """
WITH revived AS (
    UPDATE pgtide.events e
    SET state = 'pending', attempts = 0, run_after = now(), finished_at = NULL,
        cancel_requested = false
    WHERE e.source = %(source)s AND e.state = 'dead'
      AND (%(name)s::text IS NULL OR e.name = %(name)s)
      AND (e.dedupe_key IS NULL OR (
            NOT EXISTS (
                SELECT 1 FROM pgtide.events p
                WHERE p.source = e.source AND p.dedupe_key = e.dedupe_key
                  AND p.state IN ('pending', 'failed', 'running'))
            AND e.id = (SELECT max(d.id) FROM pgtide.events d
                        WHERE d.source = e.source AND d.dedupe_key = e.dedupe_key
                          AND d.state = 'dead')))
    RETURNING 1)
SELECT count(*) FROM revived
"""
"""Dead events back to pending (of one name or all); of dead events sharing a dedupe key,
only the newest, and none whose key an unfinished event holds."""

PURGE_KEPT = """
WITH purged AS (
    DELETE FROM pgtide.events WHERE id = ANY(ARRAY(
        SELECT id FROM pgtide.events
        WHERE source = '' AND state IN ('done', 'cancelled')
          AND finished_at < now() - %s * interval '1 second'
        LIMIT 5000))
    RETURNING 1)
SELECT count(*) FROM purged
"""
"""A worker's retention round (``keep_done``): at most 5,000 finished events at a time."""

SCHEDULE_SET = """
INSERT INTO pgtide.event_schedules (id, name, cron, tz, payload, next_at)
VALUES (%s, %s, %s, %s, %s::jsonb, %s)
ON CONFLICT (id) DO UPDATE
SET name = EXCLUDED.name, cron = EXCLUDED.cron, tz = EXCLUDED.tz, payload = EXCLUDED.payload,
    next_at = EXCLUDED.next_at
"""

UNSCHEDULE = "DELETE FROM pgtide.event_schedules WHERE id = %s RETURNING id"

SCHEDULES = """
SELECT id, name, cron, tz, payload, next_at, last_at FROM pgtide.event_schedules ORDER BY id
"""

SCHEDULES_DUE = """
SELECT id, name, cron, tz, payload, next_at, now() FROM pgtide.event_schedules
WHERE next_at <= now() ORDER BY next_at LIMIT 100
FOR UPDATE SKIP LOCKED
"""
"""Due schedules, locked: the worker that holds one enqueues its tick and moves it on."""

SCHEDULE_TICK = """
INSERT INTO pgtide.events (name, payload, dedupe_key) VALUES (%s, %s::jsonb, %s)
ON CONFLICT (source, dedupe_key)
    WHERE dedupe_key IS NOT NULL AND state IN ('pending', 'failed', 'running') DO NOTHING
"""

SCHEDULE_ADVANCE = "UPDATE pgtide.event_schedules SET next_at = %s, last_at = %s WHERE id = %s"

SCHEDULE_SOONEST = """
SELECT extract(epoch FROM min(next_at) - now())::float8 FROM pgtide.event_schedules
"""

PURGE_COUNTED = """
WITH purged AS (
    DELETE FROM pgtide.events
    WHERE source = '' AND state = ANY(%s) AND finished_at < now() - %s * interval '1 second'
    RETURNING 1)
SELECT count(*) FROM purged
"""


def mirror(
    table: TableName,
    id_column: str,
    name_column: str,
    payload_column: str | None,
    *,
    one: bool = False,
) -> sql.Composed:
    """Copy rows of a user's table that pgtide has not seen yet into pgtide.events.

    The payload is the payload column when one is named, else the whole row as JSON. With
    ``one``, only the row whose id is ``%(id)s`` (a notified id: the server casts the text
    to the id column's type, so the primary key's index serves it).
    """
    payload = (
        sql.SQL("to_jsonb(u.{})").format(sql.Identifier(payload_column))
        if payload_column
        else sql.SQL("to_jsonb(u)")
    )
    return sql.SQL(
        """
INSERT INTO pgtide.events (name, payload, source, source_id)
SELECT coalesce(u.{name}::text, ''), {payload}, %(source)s, u.{id}::text
FROM {table} u
WHERE {only} NOT EXISTS (
    SELECT 1 FROM pgtide.events e WHERE e.source = %(source)s AND e.source_id = u.{id}::text)
ORDER BY u.{id}
ON CONFLICT (source, source_id) WHERE source_id IS NOT NULL DO NOTHING
"""
    ).format(
        name=sql.Identifier(name_column),
        payload=payload,
        id=sql.Identifier(id_column),
        table=table.identifier,
        only=sql.SQL("u.{} = %(id)s AND").format(sql.Identifier(id_column)) if one else sql.SQL(""),
    )


def publish_own(
    table: TableName, id_column: str, name_column: str, payload_column: str | None
) -> sql.Composed:
    """Publish into a user's table and notify its channel with the new id, in one statement.

    One statement is one transaction on an autocommit connection, and part of the caller's
    transaction on theirs: the row and its wake-up are committed or rolled back together.
    Parameters: ``name``, ``payload`` (when there is a payload column) and ``channel``.
    """
    columns = [sql.Identifier(name_column)]
    values: list[sql.Composable] = [sql.Placeholder("name")]
    if payload_column:
        columns.append(sql.Identifier(payload_column))
        values.append(sql.SQL("{}::jsonb").format(sql.Placeholder("payload")))
    return sql.SQL(
        "WITH inserted AS (INSERT INTO {} ({}) VALUES ({}) RETURNING {}::text AS id) "
        "SELECT id, pg_notify(%(channel)s, id) FROM inserted"
    ).format(
        table.identifier,
        sql.SQL(", ").join(columns),
        sql.SQL(", ").join(values),
        sql.Identifier(id_column),
    )


SCHEMA_EXISTS = "SELECT to_regclass('pgtide.schema_version') IS NOT NULL"

SCHEMA_APPLIED = "SELECT version FROM pgtide.schema_version"

EVENTS_INSTALLED = "SELECT to_regclass('pgtide.events') IS NOT NULL"

BY_SOURCE = """
SELECT source,
       count(*) FILTER (WHERE state = 'pending'),
       count(*) FILTER (WHERE state = 'running'),
       count(*) FILTER (WHERE state = 'done'),
       count(*) FILTER (WHERE state = 'failed'),
       count(*) FILTER (WHERE state = 'dead'),
       count(*) FILTER (WHERE state = 'cancelled'),
       count(*) FILTER (WHERE state = 'waiting')
FROM pgtide.events GROUP BY source ORDER BY source
"""

UNHANDLED_BY_SOURCE = """
SELECT e.source, count(*) FROM pgtide.events e
WHERE e.state IN ('pending', 'failed')
  AND NOT EXISTS (
    SELECT 1 FROM pgtide.event_workers w
    WHERE w.source = e.source AND e.name = ANY(w.names)
      AND w.seen_at > now() - %s * interval '1 second')
GROUP BY e.source
"""

LIVE_WORKERS = """
SELECT source, count(*) FROM pgtide.event_workers
WHERE seen_at > now() - %s * interval '1 second' GROUP BY source
"""
