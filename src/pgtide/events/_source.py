"""Where events come from: pgtide's own table, or a table of yours (bring your own table).

Each setting can be given in code or by environment variable (code wins), as seed 003's
server could: ``PGTIDE_EVENTS_TABLE``, ``PGTIDE_EVENTS_ID_COLUMN``,
``PGTIDE_EVENTS_NAME_COLUMN``, ``PGTIDE_EVENTS_PAYLOAD_COLUMN``, ``PGTIDE_EVENTS_CHANNEL``
and ``PGTIDE_EVENTS_POLL_INTERVAL``. Table names are read by :mod:`pgtide.names`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

from .. import names
from ..errors import ConfigError, InvalidName
from ..names import TableName
from ..session import Io

ENV_PREFIX = "PGTIDE_EVENTS_"

RELATION_KINDS = frozenset({"r", "p", "v", "m", "f"})
"""What a worker can read events from: tables, views, materialized views, foreign tables."""


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
    """A user's events table: its name (schema filled in once checked) and its columns."""

    table: TableName
    id_column: str = "id"
    name_column: str = "name"
    payload_column: str | None = None
    channel: str = "events"

    @property
    def key(self) -> str:
        """How pgtide.events tells this table's rows apart: ``schema.table`` (once checked)."""
        return f"{self.table.schema}.{self.table.name}"


def check(source: Source) -> Io[Source]:
    """``source`` with its schema filled in, after checking the table and columns exist."""
    found = yield from names.lookup(source.table)
    if found is None or found[1] not in RELATION_KINDS:
        raise ConfigError(
            f"events table {source.table} does not exist; create it, or set table= "
            f"(or {ENV_PREFIX}TABLE) to your events table"
        )
    table = found[0]
    columns = set((yield from names.columns(table)))
    wanted = {
        "id column": (source.id_column, "ID_COLUMN", "id_column"),
        "name column": (source.name_column, "NAME_COLUMN", "name_column"),
    }
    if source.payload_column:
        wanted["payload column"] = (source.payload_column, "PAYLOAD_COLUMN", "payload_column")
    for what, (column, env, arg) in wanted.items():
        if column not in columns:
            raise ConfigError(
                f"events table {table} has no {what} {column!r} (columns: "
                f"{', '.join(sorted(columns))}); set {arg}= (or {ENV_PREFIX}{env})"
            )
    return replace(source, table=table)


def parse_table(text: str) -> TableName:
    """The user's table name, or :class:`~pgtide.InvalidName` saying it is an events table."""
    try:
        return TableName.parse(text)
    except InvalidName as exc:
        raise InvalidName(f"bad events table name {text!r}: {exc}") from None


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
    return Source(
        table=parse_table(table),
        id_column=env_setting("id_column", id_column) or "id",
        name_column=env_setting("name_column", name_column) or "name",
        payload_column=env_setting("payload_column", payload_column),
        channel=env_setting("channel", channel) or "events",
    )
