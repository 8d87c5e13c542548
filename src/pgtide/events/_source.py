"""Where events come from: pgtide's own table, or a table of yours (bring your own table).

Each setting can be given in code or by environment variable (code wins), as seed 003's
server could: ``PGTIDE_EVENTS_TABLE``, ``PGTIDE_EVENTS_ID_COLUMN``,
``PGTIDE_EVENTS_NAME_COLUMN``, ``PGTIDE_EVENTS_PAYLOAD_COLUMN``, ``PGTIDE_EVENTS_CHANNEL``
and ``PGTIDE_EVENTS_POLL_INTERVAL``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

import psycopg

from ..errors import ConfigError
from . import _sql

ENV_PREFIX = "PGTIDE_EVENTS_"


def env_setting(name: str, given: Any) -> Any:
    """``given`` when set, else the environment variable ``PGTIDE_EVENTS_<NAME>``."""
    if given is not None:
        return given
    value = os.environ.get(ENV_PREFIX + name.upper())
    return value if value else None


def env_float(name: str, given: float | None, default: float) -> float:
    value = env_setting(name, given)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(
            f"{ENV_PREFIX}{name.upper()}={value!r} is not a number of seconds; set e.g. 1.0"
        ) from None
    if not number > 0:
        raise ConfigError(f"{name} must be a positive number of seconds, not {number}")
    return number


@dataclass(frozen=True)
class Source:
    """A user's events table: its (schema-qualified) name, id, name and payload columns."""

    table: str
    id_column: str = "id"
    name_column: str = "name"
    payload_column: str | None = None
    channel: str = "events"
    schema: str = ""

    @property
    def key(self) -> str:
        """How pgtide.events tells this table's rows apart: ``schema.table``."""
        return f"{self.schema}.{self.table}"

    def checked(self, conn: psycopg.Connection[Any]) -> Source:
        """This source with its schema filled in, after checking the table and columns exist."""
        schema, table = _split(self.table)
        if not schema:
            row = conn.execute(_sql.CURRENT_SCHEMA).fetchone()
            schema = str(row[0]) if row and row[0] else "public"
        found = {r[0] for r in conn.execute(_sql.COLUMNS, (schema, table)).fetchall()}
        if not found:
            raise ConfigError(
                f"events table {schema}.{table} does not exist; create it, or set table= "
                f"(or {ENV_PREFIX}TABLE) to your events table"
            )
        wanted = {
            "id column": (self.id_column, "ID_COLUMN", "id_column"),
            "name column": (self.name_column, "NAME_COLUMN", "name_column"),
        }
        if self.payload_column:
            wanted["payload column"] = (self.payload_column, "PAYLOAD_COLUMN", "payload_column")
        for what, (column, env, arg) in wanted.items():
            if column not in found:
                raise ConfigError(
                    f"events table {schema}.{table} has no {what} {column!r} (columns: "
                    f"{', '.join(sorted(found))}); set {arg}= (or {ENV_PREFIX}{env})"
                )
        return replace(self, table=table, schema=schema)


def _split(qualified: str) -> tuple[str, str]:
    parts = qualified.split(".")
    if len(parts) == 1 and parts[0]:
        return "", parts[0]
    if len(parts) == 2 and all(parts):
        return parts[0], parts[1]
    raise ConfigError(f"bad events table name {qualified!r}: use 'table' or 'schema.table'")


def source_from(
    table: str | None,
    id_column: str | None,
    name_column: str | None,
    payload_column: str | None,
    channel: str | None,
) -> Source | None:
    """The user's table from arguments or environment, or None for pgtide's own table."""
    table = env_setting("table", table)
    if table is None:
        return None
    _split(table)
    return Source(
        table=table,
        id_column=env_setting("id_column", id_column) or "id",
        name_column=env_setting("name_column", name_column) or "name",
        payload_column=env_setting("payload_column", payload_column),
        channel=env_setting("channel", channel) or "events",
    )
