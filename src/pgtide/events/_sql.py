"""The SQL of the events feature, as named constants (identifiers only via sql.Identifier)."""

from __future__ import annotations

from psycopg import sql

from ..names import TableName

CHANNEL = "pgtide_events"
"""The channel every insert into pgtide.events notifies (see 003_events.sql)."""

PUBLISH = """
INSERT INTO pgtide.events (name, payload, run_after, key)
VALUES (%s, %s::jsonb, coalesce(%s::timestamptz, now()), %s)
RETURNING id
"""

PUBLISH_MANY = """
INSERT INTO pgtide.events (name, payload, run_after, key)
SELECT %s, p::jsonb, coalesce(%s::timestamptz, now()), %s
FROM unnest(%s::text[]) WITH ORDINALITY AS t(p, n)
ORDER BY n
RETURNING id
"""

CLAIM = """
WITH candidates AS (
    SELECT e.id FROM pgtide.events e
    WHERE e.source = %(source)s
      AND e.state IN ('pending', 'failed', 'running')
      AND e.name = ANY(%(names)s)
      AND CASE WHEN e.state = 'running' THEN e.lease_expires < now()
               ELSE e.run_after <= now() END
      AND (e.key IS NULL OR NOT EXISTS (
            SELECT 1 FROM pgtide.events p
            WHERE p.key = e.key AND p.source = e.source AND p.id < e.id
              AND p.state IN ('pending', 'failed', 'running')))
    ORDER BY e.source, e.id  -- the order of events_claim, so that index (not the pkey) is used
    LIMIT %(limit)s
    FOR UPDATE OF e SKIP LOCKED
)
UPDATE pgtide.events e
SET state = 'running', lease_owner = %(owner)s, lease_token = e.lease_token + 1,
    lease_expires = now() + %(lease)s * interval '1 second', started_at = NULL
WHERE e.id = ANY(ARRAY(SELECT id FROM candidates))
RETURNING e.id, e.name, e.payload, e.created_at, e.key, e.source_id, e.lease_token, e.attempts
"""
"""A claim reserves events (a new fencing token each, a lease) but counts no attempt."""

# The outcomes, renewals and releases below are fenced: each touches a row only while it
# still carries this worker's owner and the token of its claim, so a worker whose lease was
# taken over (after an outage longer than the lease, say) can neither renew, complete, fail
# nor release an event that another worker now owns. (id = ANY(...) lets the planner use
# the primary key whatever its statistics say.)

STARTED = """
UPDATE pgtide.events e
SET attempts = e.attempts + v.n, started_at = now()
FROM unnest(%(ids)s::bigint[], %(counts)s::integer[]) AS v(id, n),
     (SELECT set_config('synchronous_commit', 'off', true)) AS quick
WHERE e.id = ANY(%(ids)s::bigint[]) AND e.id = v.id
"""
"""Count the attempts whose handlers started (a counter of what really happened, so not
fenced: a start is counted even if another worker owns the event by the time it is
written). Its commit does not wait for the disk: a server crash may forget a start."""

COMPLETE = """
UPDATE pgtide.events e
SET state = 'done', result = v.result::jsonb, finished_at = now(),
    lease_owner = NULL, lease_expires = NULL
FROM unnest(%(ids)s::bigint[], %(tokens)s::integer[], %(results)s::text[])
     AS v(id, token, result)
WHERE e.id = ANY(%(ids)s::bigint[]) AND e.id = v.id AND e.lease_token = v.token
  AND e.lease_owner = %(owner)s AND e.state = 'running'
"""

FAIL = """
UPDATE pgtide.events
SET state = %(state)s, error = %(error)s,
    run_after = now() + %(delay)s * interval '1 second',
    finished_at = CASE WHEN %(state)s = 'dead' THEN now() END,
    lease_owner = NULL, lease_expires = NULL
WHERE id = %(id)s AND lease_token = %(token)s AND lease_owner = %(owner)s AND state = 'running'
"""

RELEASE = """
UPDATE pgtide.events e
SET state = CASE WHEN e.error IS NULL THEN 'pending' ELSE 'failed' END,
    lease_owner = NULL, lease_expires = NULL, started_at = NULL
FROM unnest(%(ids)s::bigint[], %(tokens)s::integer[]) AS v(id, token)
WHERE e.id = ANY(%(ids)s::bigint[]) AND e.id = v.id AND e.lease_token = v.token
  AND e.lease_owner = %(owner)s AND e.state = 'running'
"""
"""Give events back at once (a stopping worker): pending again, attempts as they are."""

WAKE = "SELECT pg_notify(%s, '')"

WORKER_SESSION = "SET plan_cache_mode = force_custom_plan"
"""The worker's session: a generic plan of the batch updates would ignore the arrays' sizes
and scan the table. (Claims, heartbeats and outcomes commit synchronously: a claim lost in a
server crash could let a second worker start an event that a live worker is still running.)"""

HEARTBEAT = """
UPDATE pgtide.events e SET lease_expires = now() + %(lease)s * interval '1 second'
FROM unnest(%(ids)s::bigint[], %(tokens)s::integer[], %(started)s::boolean[])
     AS v(id, token, started)
WHERE e.id = ANY(%(ids)s::bigint[]) AND e.id = v.id AND e.lease_token = v.token
  AND e.lease_owner = %(owner)s AND e.state = 'running'
  AND (v.started OR e.lease_expires > now())
RETURNING e.id
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
       run_after, created_at, started_at, finished_at
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
UPDATE pgtide.events
SET state = 'pending', attempts = 0, run_after = now(), finished_at = NULL
WHERE id = %s AND state IN ('done', 'failed', 'dead')
RETURNING id
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


EVENTS_INSTALLED = "SELECT to_regclass('pgtide.events') IS NOT NULL"

BY_SOURCE = """
SELECT source,
       count(*) FILTER (WHERE state = 'pending'),
       count(*) FILTER (WHERE state = 'running'),
       count(*) FILTER (WHERE state = 'done'),
       count(*) FILTER (WHERE state = 'failed'),
       count(*) FILTER (WHERE state = 'dead')
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
