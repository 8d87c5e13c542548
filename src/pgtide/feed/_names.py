"""Table names as users write them ("orders", "sales.orders") and as pgtide stores them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from ..errors import UnknownTable

_LOOKUP = """
SELECT n.nspname, c.relname, c.relkind
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s
"""


@dataclass(frozen=True)
class TableName:
    """A schema-qualified table name; ``str()`` is the canonical ``schema.table`` form."""

    schema: str
    name: str

    @classmethod
    def parse(cls, text: str) -> TableName:
        """Accept ``table`` (schema ``public``) or ``schema.table``; names are taken exactly."""
        if not isinstance(text, str) or not text.strip():
            raise UnknownTable("a table name is required, such as 'orders' or 'public.orders'")
        parts = text.strip().split(".")
        if len(parts) > 2 or not all(parts):
            raise UnknownTable(f"{text!r} is not a table name; write 'table' or 'schema.table'")
        return cls("public", parts[0]) if len(parts) == 1 else cls(parts[0], parts[1])

    @property
    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"


def existing(conn: psycopg.Connection[Any], table: str | TableName) -> TableName:
    """The table named ``table``, which must exist as an ordinary or partitioned table."""
    name = table if isinstance(table, TableName) else TableName.parse(table)
    row = conn.execute(_LOOKUP, (name.schema, name.name)).fetchone()
    if row is None:
        raise UnknownTable(
            f"table {name} does not exist; create it first, or check the spelling "
            "(names are case-sensitive; write 'schema.table' outside schema public)"
        )
    if row[2] not in ("r", "p"):
        raise UnknownTable(
            f"{name} is not a table (relkind {row[2]!r}); only tables can be tracked"
        )
    return name
