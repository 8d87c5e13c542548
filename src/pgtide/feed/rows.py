"""Typed rows: the Python values psycopg returns for ``SELECT *``, from captured rows.

Capture stores each row as ``to_json`` writes it (cheap for writers: nothing to look up at
capture time; rows captured before migration 017 as ``to_jsonb`` did, the same values). A
reader turns that JSON back into typed values with the column types of the table, fetched
once per reader and kept in :class:`RowTypes`: numbers come exact (numeric as
:class:`~decimal.Decimal`, parsed from the JSON text, never through float), and every value
that ``to_json`` writes as text (timestamps, bytea, uuid, inet, interval...) goes through the
same psycopg loader that ``SELECT *`` would use. Each read carries a fingerprint of those
tables' columns (computed once per query, in the same round trip), so a table altered while
a reader runs is looked up again, and never per row.

Changes captured before a table was altered are typed with its current columns: a column
added since is None, a column dropped since is left out. A change whose table no longer
exists comes as plain JSON values (as :func:`json.loads` gives them). A value that no longer
fits its column's type (the type was altered since) stays as its JSON value.

Any capture that stores rows the way ``to_json`` writes them gets typed rows from here.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from decimal import Decimal
from operator import itemgetter
from typing import Any, TypeAlias
from zoneinfo import ZoneInfo

import orjson
import psycopg
from psycopg import sql
from psycopg.adapt import AdaptersMap
from psycopg.pq import Format

from ..names import TableName
from ..session import Io, one, query
from .pgoutput import timestamp

Convert: TypeAlias = Callable[[Any], Any]

_exact = json.JSONDecoder(parse_float=Decimal)
_exact_scan: Callable[[str, int], tuple[Any, int]] = _exact.scan_once  # type: ignore[attr-defined]
_json_loads = json.JSONDecoder().decode
_fast_loads = orjson.loads


def _exact_loads(text: str) -> Any:
    """JSON with numbers as Decimal: an object straight from the scanner (no whitespace
    checks: to_json writes none around it), anything else through the full decoder."""
    if text[:1] == "{":
        try:
            return _exact_scan(text, 0)[0]
        except StopIteration:
            pass  # not JSON after all: the decoder names the error
    return _exact.decode(text)


def _plain_loads(text: str) -> Any:
    """JSON as :func:`json.loads` reads it, through orjson (several times faster); json
    itself for what orjson refuses (integers beyond 64 bits, lone surrogates)."""
    try:
        return _fast_loads(text)
    except orjson.JSONDecodeError:
        return _json_loads(text)


# The fingerprint of the columns of the tables a reader knows, as one bigint: a read query
# selects it (evaluated once per query, as an InitPlan) with the parameter %(known)s, the
# tables' quoted names. It changes when a column is added, dropped, renamed or retyped, and
# when a table is dropped or created again.
FINGERPRINT = sql.SQL(
    "(SELECT hashtextextended(coalesce(string_agg(concat_ws(':', a.attrelid, a.attnum, "
    "a.attname, a.atttypid), ',' ORDER BY a.attrelid, a.attnum), ''), 0) "
    "FROM pg_attribute a WHERE a.attrelid = ANY(ARRAY(SELECT to_regclass(k)::oid "
    "FROM unnest(%(known)s::text[]) AS k)) AND a.attnum > 0 AND NOT a.attisdropped)"
)
_SETTINGS = sql.Composed(
    [sql.SQL("SELECT "), FINGERPRINT, sql.SQL(", current_setting('TimeZone')")]
)
# The columns of the tables, in order, and every type they reach through domains (to their
# base type) and arrays (to their element type).
_COLUMNS = """
WITH RECURSIVE cols AS (
    SELECT k.name, a.attnum, a.attname, a.atttypid
    FROM unnest(%(names)s::text[], %(known)s::text[]) AS k(name, quoted)
    JOIN pg_attribute a ON a.attrelid = to_regclass(k.quoted)
    WHERE a.attnum > 0 AND NOT a.attisdropped
), reach(oid) AS (
    SELECT atttypid FROM cols
    UNION
    SELECT v.next FROM reach r JOIN pg_type t ON t.oid = r.oid
    CROSS JOIN LATERAL (VALUES (t.typbasetype),
        (CASE WHEN t.typcategory = 'A' THEN t.typelem ELSE 0 END)) AS v(next)
    WHERE v.next <> 0
)
SELECT 'column', name, attnum, attname, atttypid::int8, NULL, NULL::int8, NULL::int8
FROM cols
UNION ALL
SELECT 'type', NULL, NULL, NULL, t.oid::int8, t.typtype::text, t.typbasetype::int8,
       CASE WHEN t.typcategory = 'A' THEN t.typelem::int8 END
FROM reach JOIN pg_type t ON t.oid = reach.oid
ORDER BY 1, 2, 3
"""

# Types whose JSON value (from to_json) is already what psycopg returns.
_AS_IS = frozenset({16, 18, 19, 20, 21, 23, 25, 1042, 1043})  # bool "char" name int text
_MEMO = 1024  # timestamptz texts remembered per column
_NUMERIC, _FLOAT4, _FLOAT8, _JSON, _JSONB, _TIMESTAMPTZ = 1700, 700, 701, 114, 3802, 1184
# Types whose captured JSON value already says what the typed value's JSON says (the
# sinks' encoding): the JSON of _AS_IS types, numeric's exact digits, uuid's text, and
# dates and times in ISO 8601 (as PostgreSQL wrote them: the offset of the writer's
# TimeZone, no trailing zeros in fractions of a second). Not floats (Infinity and NaN),
# json (re-encoded), bytea (hex, the sinks send base64) nor intervals.
_JSON_AS_IS = _AS_IS | {_NUMERIC, 2950, 1082, 1114, _TIMESTAMPTZ}  # uuid date timestamp(tz)


def instant(stamp: bytes, zone: tzinfo) -> datetime:
    """A timestamptz given in its binary form (``timestamptz_send``: microseconds since
    2000-01-01, 8 bytes big-endian), in ``zone``."""
    return timestamp(int.from_bytes(stamp, "big", signed=True)).astimezone(zone)


def json_value(value: Any) -> Any:
    """A JSON value read with exact numbers, as :func:`json.loads` gives it (floats)."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, list):
        return [json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: json_value(v) for k, v in value.items()}
    return value


def _array_text(value: Any) -> str:
    """An array literal as PostgreSQL writes it (what psycopg returns for an array type it
    has no loader for, such as an array of enums)."""
    if value is None:
        return "NULL"
    if isinstance(value, list):
        return "{" + ",".join(_array_text(v) for v in value) + "}"
    if isinstance(value, bool):
        return "t" if value else "f"
    text = format(value, "f") if isinstance(value, Decimal) else str(value)
    if not text or text.upper() == "NULL" or any(c in text for c in '{}",\\ \t\n\r\v\f'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


Decode: TypeAlias = Callable[[str], dict[str, Any]]


@dataclass(frozen=True)
class _Table:
    """How to type one table's rows: its JSON decoder (exact numbers when it has numeric
    columns), its columns in order, and the columns whose JSON value needs converting."""

    loads: Callable[[str], Any]
    names: tuple[str, ...]
    convert: tuple[tuple[str, Convert], ...]
    plain: bool = False  # its captured JSON is what a sink sends (see :meth:`RowTypes.plain`)

    def decoder(self) -> Decode:
        """The typed row from its captured JSON text, as one function compiled for this
        table (the read path runs it for every change): the row is made as one dict display
        of its columns in order, each value converted where its type needs it. A row it
        does not fit (a column added since, a value that no longer fits its type, a column
        marked unchanged, JSON that orjson refuses) takes :meth:`general`, which says what
        every such row means."""
        general = self.general()
        converters = dict(self.convert)
        scope: dict[str, Any] = {"loads": self.loads, "general": general, "MARK": MARK}
        values = []
        for i, name in enumerate(self.names):
            key = repr(name)  # a Python literal of any column name
            if name in converters:
                scope[f"c{i}"] = converters[name]
                values.append(f"{key}: None if (v := row[{key}]) is None else c{i}(v)")
            else:
                values.append(f"{key}: row[{key}]")
        source = (
            "def decode(text):\n"
            "    if MARK in text:\n"
            "        return general(text)\n"
            "    try:\n"
            "        row = loads(text)\n"
            f"        return {{{', '.join(values)}}}\n"
            "    except Exception:\n"
            "        return general(text)\n"
        )
        exec(source, scope)  # made of column names as literals, nothing else
        decode: Decode = scope["decode"]
        return decode

    def general(self) -> Decode:
        """The typed row from its captured JSON text, whatever the row holds: columns added
        since come as None, dropped ones are left out, a value that no longer fits its
        column's type stays its JSON value, a column WAL capture marked unchanged stays so."""
        loads, names, convert = self.loads, self.names, self.convert
        # the values in column order, in one C call (KeyError: a column added since)
        pick: Callable[[dict[str, Any]], Any] = (
            itemgetter(*names) if len(names) > 1 else lambda row: tuple(row[n] for n in names)
        )

        def decode(text: str) -> dict[str, Any]:
            try:
                row: dict[str, Any] = loads(text)
            except ValueError:  # what orjson refuses (integers beyond 64 bits...)
                row = _json_loads(text)
            try:  # jsonb (the relay's staged rows) orders keys by length: column order
                row = dict(zip(names, pick(row), strict=True))
            except KeyError:
                get = row.get
                row = {name: get(name) for name in names}  # added since: None
            # columns WAL capture marked as unchanged (TOAST it could not read) stay so
            for name, conv in convert if MARK not in text else _converting(row, convert):
                value = row[name]
                if value is not None:
                    try:
                        row[name] = conv(value)
                    except Exception:
                        row[name] = json_value(value)  # no longer fits its (altered) type
            return row

        return decode


def _converting(
    row: dict[str, Any], convert: tuple[tuple[str, Convert], ...]
) -> list[tuple[str, Convert]]:
    """The conversions of a row with columns marked unchanged, which stay unconverted."""
    marked = _unchanged(row)
    return [(name, conv) for name, conv in convert if name not in marked]


@dataclass
class _Type:
    kind: str  # pg_type.typtype: b(ase), d(omain), e(num), c(omposite), r(ange)...
    base: int  # a domain's base type
    elem: int | None  # an array's element type


@dataclass
class RowTypes:
    """The column types of the tables a reader meets, fetched once and checked on each read.

    A read query selects :data:`FINGERPRINT` with :meth:`params`, then calls :meth:`update`
    with the tables of its rows and the fingerprint it got, then :meth:`decode` for each
    row. ``adapters``: the psycopg adapters whose loaders type the values (the global
    ``psycopg.adapters`` by default, so that types registered there apply)."""

    adapters: AdaptersMap = field(default_factory=lambda: psycopg.adapters, repr=False)
    tables: dict[str, _Table | None] = field(default_factory=dict, repr=False)
    fingerprint: int | None = None
    zone: tzinfo = UTC
    fetches: int = 0
    _known: list[str] = field(default_factory=list, repr=False)
    _decoders: dict[str, tuple[_Table, Decode]] = field(default_factory=dict, repr=False)

    def params(self) -> dict[str, Any]:
        """The parameter of :data:`FINGERPRINT`: the known tables, quoted."""
        return {"known": self._known}

    def update(self, tables: Iterable[str], fingerprint: int | None) -> Io[None]:
        """Look the column types up again if a table is new or the fingerprint changed."""
        new = {t for t in tables if t not in self.tables}
        if new or (self.tables and fingerprint != self.fingerprint):
            yield from self.fetch(sorted({*self.tables, *new}))

    def fetch(self, names: list[str]) -> Io[None]:
        """Look up the columns of tables ``names`` (canonical names), replacing the known."""
        known = [TableName.parse(n).quoted() for n in names]
        settings = yield from one(_SETTINGS, {"known": known})
        assert settings is not None
        rows = yield from query(_COLUMNS, {"names": names, "known": known})
        types = {r[4]: _Type(r[5], r[6], r[7]) for r in rows if r[0] == "type"}
        columns: dict[str, list[tuple[str, int]]] = {}
        for _kind, name, _num, column, oid, *_ in (r for r in rows if r[0] == "column"):
            columns.setdefault(name, []).append((column, oid))
        found = {n: self._table(columns[n], types) if n in columns else None for n in names}
        self.tables, self.fingerprint, self._known = found, settings[0], known
        self.zone = _zone(settings[1])
        self.fetches += 1

    def decoder(self, table: str) -> Decode:
        """The function typing ``table``'s rows from their captured JSON text (a table
        dropped since: its values as JSON gives them)."""
        typed = self.tables.get(table)
        if typed is None:
            return _plain_loads
        found = self._decoders.get(table)
        if found is None or found[0] is not typed:
            found = self._decoders[table] = (typed, typed.decoder())
        return found[1]

    def instant(self, stamp: bytes) -> datetime:
        """A timestamptz given in its binary form (``timestamptz_send``: microseconds since
        2000-01-01, 8 bytes big-endian), in the session's time zone (as psycopg returns a
        timestamptz)."""
        return instant(stamp, self.zone)

    def plain(self, table: str) -> bool:
        """Whether ``table``'s captured JSON text, as it is, already holds what the JSON of its
        typed rows holds (every column of a type in :data:`_JSON_AS_IS`, enums too): a sink
        may send that text instead of decoding and encoding again. (The keys come in column
        order, or in jsonb's for rows stored as jsonb text.)"""
        typed = self.tables.get(table)
        return typed is not None and typed.plain

    def decode(self, table: str, text: str | None) -> dict[str, Any] | None:
        """The typed row of ``table`` from its captured JSON text (None stays None)."""
        return None if text is None else self.decoder(table)(text)

    # -- converters: one per column, built once -------------------------------------------
    def _table(self, columns: list[tuple[str, int]], types: dict[int, _Type]) -> _Table:
        # Numbers are parsed exactly (as Decimal) only for a table with numeric columns:
        # float parsing is faster, and exact for every other type.
        exact = any(_NUMERIC in (_base(o, types), _element(o, types)) for _, o in columns)
        convert = [(n, self._converter(o, types, exact)) for n, o in columns]
        return _Table(
            _exact_loads if exact else _fast_loads,
            tuple(n for n, _ in columns),
            tuple((n, c) for n, c in convert if c is not None),
            all(_json_as_is(o, types) for _, o in columns),
        )

    def _converter(self, oid: int, types: dict[int, _Type], exact: bool) -> Convert | None:
        oid = _base(oid, types)
        found = types.get(oid)
        if found is not None and found.elem:
            return self._array(oid, _base(found.elem, types), types, exact)
        return self._scalar(oid, exact)

    def _scalar(self, oid: int, exact: bool) -> Convert | None:
        if oid in _AS_IS:
            return None
        if oid == _NUMERIC:
            return Decimal
        if oid in (_FLOAT4, _FLOAT8):
            return float
        plain = json_value if exact else None  # exact numbers back to JSON's floats
        if oid in (_JSON, _JSONB):
            return plain
        loader = self.adapters.get_loader(oid, Format.TEXT)
        if loader is None:
            return plain  # psycopg returns the text (enums, unregistered types)
        load = loader(oid, None).load
        if oid == _TIMESTAMPTZ:
            return self._instants(load)
        return lambda v: load(v.encode()) if isinstance(v, str) else json_value(v)

    def _instants(self, load: Callable[[bytes], Any]) -> Convert:
        """The timestamptz converter: the rows of one transaction often share a time (its
        ``now()``), so recent texts are remembered with their value (datetimes are
        immutable), in the session's time zone of the moment."""
        memo: dict[str, datetime] = {}
        zone: list[tzinfo] = [self.zone]

        def instant(text: str) -> datetime:
            found = memo.get(text)
            if found is None or zone[0] is not self.zone:
                if len(memo) >= _MEMO or zone[0] is not self.zone:
                    memo.clear()
                    zone[0] = self.zone
                found = memo[text] = load(text.encode()).astimezone(self.zone)
            return found

        return instant

    def _array(self, oid: int, elem: int, types: dict[int, _Type], exact: bool) -> Convert | None:
        if self.adapters.get_loader(oid, Format.TEXT) is None:
            return _array_text  # psycopg has no loader for it: it returns the literal
        convert = self._converter(elem, types, exact)
        if convert is None:
            return None
        if elem in (_JSON, _JSONB):
            return lambda v: [json_value(x) for x in v]

        def each(value: list[Any]) -> list[Any]:
            return [
                None if x is None else each(x) if isinstance(x, list) else convert(x) for x in value
            ]

        return each


MARK = '"$pgtide": "unchanged-toast"'


def _unchanged(row: dict[str, Any]) -> set[str]:
    """Put :data:`~pgtide.feed.pgoutput.UNCHANGED` for the columns WAL capture marked as an
    unchanged TOAST value it could not read; return their names."""
    from .pgoutput import UNCHANGED

    found = {k for k, v in row.items() if isinstance(v, dict) and v.get("$pgtide")}
    for name in found:
        row[name] = UNCHANGED
    return found


def _base(oid: int, types: dict[int, _Type]) -> int:
    """A domain's base type (psycopg sees domains as their base type), else ``oid``."""
    seen = 0
    while (t := types.get(oid)) is not None and t.kind == "d" and seen < 32:
        oid, seen = t.base, seen + 1
    return oid


def _json_as_is(oid: int, types: dict[int, _Type]) -> bool:
    """Whether a column of type ``oid`` has a captured JSON value that needs no re-encoding
    (:data:`_JSON_AS_IS`, and enums, which come as their label either way)."""
    oid = _base(oid, types)
    found = types.get(oid)
    return oid in _JSON_AS_IS or (found is not None and found.kind == "e")


def _element(oid: int, types: dict[int, _Type]) -> int | None:
    """The element type of array type ``oid`` (through domains), or None."""
    found = types.get(_base(oid, types))
    return None if found is None or not found.elem else _base(found.elem, types)


def _zone(name: str | None) -> tzinfo:
    """The session's TimeZone as psycopg reads it (UTC when Python does not know it)."""
    try:
        return ZoneInfo(name) if name else UTC
    except (KeyError, ValueError, OSError):
        return UTC


# -- JSON with exact numbers (pgtide follow) -----------------------------------------------
def to_json(value: Any) -> str:
    """``value`` as compact JSON, numbers exact: a :class:`~decimal.Decimal` is written as
    its digits (0.1000000001 stays so), bytes as base64, dates and times in ISO 8601,
    intervals as ISO 8601 durations, UUIDs and addresses as text."""
    return _encode(value)


def _encode(value: Any) -> str:
    if isinstance(value, Decimal):
        if value.is_finite():
            return format(value, "f")  # the digits PostgreSQL wrote, never 1E-7
        return json.dumps(str(value))  # NaN, Infinity: JSON has no such number
    if isinstance(value, dict):
        return "{" + ",".join(f"{_string(str(k))}:{_encode(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_encode(v) for v in value) + "]"
    if isinstance(value, float) and not math.isfinite(value):
        return '"NaN"' if math.isnan(value) else '"Infinity"' if value > 0 else '"-Infinity"'
    return json.dumps(value, ensure_ascii=False, default=_default, allow_nan=False)


def _string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return _duration(value)
    return str(value)


def _duration(value: timedelta) -> str:
    """An ISO 8601 duration: P1DT2H3M4.5S (a negative one starts with -)."""
    sign = "-" if value < timedelta(0) else ""
    value = abs(value)
    hours, rest = divmod(value.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    secs = f"{seconds}.{value.microseconds:06d}".rstrip("0").rstrip(".")
    clock = "".join(f"{n}{unit}" for n, unit in ((hours, "H"), (minutes, "M")) if n) + (
        f"{secs}S" if seconds or value.microseconds else ""
    )
    days = f"{value.days}D" if value.days else ""
    if not days and not clock:
        return "PT0S"
    return f"{sign}P{days}" + (f"T{clock}" if clock else "")
