"""What a least-privilege role needs to use each feature, and the GRANTs that give it.

The schema's owner (who ran ``pgtide install``) runs ``pgtide grant ROLE`` once; a role
without them gets :class:`~pgtide.PermissionDenied` naming that command, never a raw driver
error. Identifiers are quoted by :mod:`psycopg.sql`.
"""

from __future__ import annotations

from collections.abc import Iterable

import psycopg
from psycopg import sql

from .errors import ConfigError, PermissionDenied
from .session import Io, Query, atomic

FEATURE_TABLES: dict[str, tuple[str, ...]] = {
    "listen": (),
    "feed": ("changes", "tracked", "consumers", "wal", "backfills"),
    "events": ("events", "event_workers", "event_queues", "event_schedules"),
    "ingest": ("file_offsets", "rejects"),
}
"""The tables of schema pgtide each feature reads and writes (listen needs only the schema)."""

FEATURES = tuple(FEATURE_TABLES)


def statements(role: str, features: Iterable[str] | None = None) -> list[sql.Composed]:
    """The GRANTs that let ``role`` use ``features`` (every feature when None)."""
    chosen = list(FEATURES if features is None else dict.fromkeys(features))
    unknown = [f for f in chosen if f not in FEATURE_TABLES]
    if unknown:
        raise ConfigError(
            f"unknown feature {', '.join(unknown)}; choose among {', '.join(FEATURES)}"
        )
    who = sql.Identifier(role)
    grants = [
        sql.SQL("GRANT USAGE ON SCHEMA pgtide TO {}").format(who),
        sql.SQL("GRANT SELECT ON pgtide.schema_version TO {}").format(who),
    ]
    tables = [t for f in chosen for t in FEATURE_TABLES[f]]
    if tables:
        names = sql.SQL(", ").join(sql.Identifier("pgtide", t) for t in tables)
        grants.append(
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {}").format(names, who)
        )
        grants.append(
            sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA pgtide TO {}").format(who)
        )
    return grants


def grant(role: str, features: Iterable[str] | None = None) -> Io[list[sql.Composed]]:
    """Run the GRANTs for ``role`` in one transaction; return them."""
    done = statements(role, features)

    def work() -> Io[None]:
        for statement in done:
            yield Query(statement)

    yield from atomic(work())
    return done


def denied(exc: psycopg.errors.InsufficientPrivilege, role: str) -> PermissionDenied:
    """The pgtide error for a privilege the role lacks: what failed, and the fix."""
    what = exc.diag.message_primary or str(exc).strip().splitlines()[0]
    return PermissionDenied(
        f"role {role!r} lacks a privilege pgtide needs ({what}); as the owner of schema "
        f"pgtide (who ran `pgtide install`), run `pgtide grant {role}` (it grants USAGE on "
        "schema pgtide and SELECT, INSERT, UPDATE, DELETE on its tables; see docs/deploy.md)",
        role=role,
    )
