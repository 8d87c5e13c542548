"""Table and column names as users write them, parsed one way for every feature.

Rules: ``table`` or ``schema.table``; each part is taken as written (names are
case-sensitive: ``Orders`` is not ``orders``); a part in double quotes may hold dots or
spaces (``"my.schema"."odd table"``, with ``""`` for a quote). A name without a schema is
found through the connection's ``search_path``, as PostgreSQL does; :func:`lookup` returns
the schema-qualified name of the table that exists. A name pgtide cannot read raises
:class:`InvalidName` (a :class:`~pgtide.ConfigError`), whichever feature was given it.
Identifiers reach SQL only through :class:`psycopg.sql.Identifier`.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from .errors import InvalidName
from .session import Io, one, query

_LOOKUP = """
SELECT n.nspname, c.relname, c.relkind
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass(%s)
"""
_COLUMNS = """
SELECT a.attname FROM pg_attribute a
WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

TABLE_KINDS = frozenset({"r", "p"})
"""relkinds that are tables: ordinary and partitioned."""


def _split(text: str, what: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    was_quoted = False
    i = 0
    while i < len(text):
        ch = text[i]
        if quoted:
            if ch == '"':
                if text[i + 1 : i + 2] == '"':
                    current.append('"')
                    i += 1
                else:
                    quoted = False
            else:
                current.append(ch)
        elif ch == '"' and not current:
            quoted = was_quoted = True
        elif ch == ".":
            if not current and not was_quoted:
                break  # an empty part
            parts.append("".join(current))
            current, was_quoted = [], False
        elif ch == '"' or (was_quoted and not quoted):
            break  # a quote inside an unquoted part, or text after a closing quote
        else:
            current.append(ch)
        i += 1
    else:
        if not quoted and (current or was_quoted):
            parts.append("".join(current))
            return parts
    raise InvalidName(
        f"{text!r} is not a {what} name; write '{what}' or 'schema.{what}', and put a part "
        "in double quotes if it holds a dot or a quote ('\"my.schema\".orders')"
    )


@dataclass(frozen=True)
class TableName:
    """A table name; ``schema`` is None when the ``search_path`` decides.

    ``str()`` gives the canonical ``schema.table`` form pgtide stores (parts as they are).
    """

    schema: str | None
    name: str

    @classmethod
    def parse(cls, text: str | TableName, *, what: str = "table") -> TableName:
        """Read ``table``, ``schema.table`` or their quoted forms; :class:`InvalidName` else."""
        if isinstance(text, TableName):
            return text
        if not isinstance(text, str) or not text.strip():
            raise InvalidName(
                f"a {what} name is required, such as 'orders' or 'public.orders'; got {text!r}"
            )
        parts = _split(text.strip(), what)
        if len(parts) > 2 or not all(parts):
            raise InvalidName(f"{text!r} is not a {what} name; write '{what}' or 'schema.{what}'")
        return cls(None, parts[0]) if len(parts) == 1 else cls(parts[0], parts[1])

    @property
    def identifier(self) -> sql.Identifier:
        """The name for SQL, quoted part by part."""
        if self.schema is None:
            return sql.Identifier(self.name)
        return sql.Identifier(self.schema, self.name)

    def quoted(self) -> str:
        """The quoted form, as ``to_regclass`` reads it (``"schema"."table"``)."""
        parts = [self.name] if self.schema is None else [self.schema, self.name]
        return ".".join('"' + p.replace('"', '""') + '"' for p in parts)

    def __str__(self) -> str:
        parts = [self.name] if self.schema is None else [self.schema, self.name]
        return ".".join(_plain(p) for p in parts)


def _plain(part: str) -> str:
    """A part as written, quoted only when it could not be read back otherwise."""
    if part and "." not in part and '"' not in part and part == part.strip():
        return part
    return '"' + part.replace('"', '""') + '"'


def lookup(name: TableName) -> Io[tuple[TableName, str] | None]:
    """The existing relation ``name`` refers to (schema filled in) and its relkind, or None."""
    row = yield from one(_LOOKUP, (name.quoted(),))
    if row is None:
        return None
    return TableName(row[0], row[1]), row[2]


def columns(name: TableName) -> Io[list[str]]:
    """The columns of table ``name``, in order (empty when there is no such table)."""
    rows = yield from query(_COLUMNS, (name.quoted(),))
    return [r[0] for r in rows]
