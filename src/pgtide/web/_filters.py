"""Row filters for browser feed streams: ``where=status=eq.open`` (several: all must hold).

A filter names a column, an operator and a value, PostgREST's way: ``eq``, ``neq``, ``lt``,
``lte``, ``gt``, ``gte``, ``in.(a,b)`` and ``is.null`` / ``is.true`` / ``is.false``. The value
is read as the type of the row's value (a number, a boolean, a date...), so ``id=gt.9``
compares numbers, not text. A change is sent when its row matches, or its old row does (an
update that takes a row out of the filter reaches the page that shows it, which drops it);
a delete whose old row lacks a filtered column (only its key was captured) is sent, and so
is a truncate: a page is never left holding a row that is gone.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any
from uuid import UUID

from ..feed import Change

_FILTER = re.compile(r"^(?P<column>[^=]+)=(?P<op>eq|neq|lt|lte|gt|gte|in|is)\.(?P<value>.*)$", re.S)
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "neq": operator.ne,
    "lt": operator.lt,
    "lte": operator.le,
    "gt": operator.gt,
    "gte": operator.ge,
}
_IS = {"null": None, "true": True, "false": False}
_MISSING = object()


class FilterError(ValueError):
    """A ``where`` filter that cannot be read (the message says how to write one)."""


@dataclass(frozen=True)
class Filter:
    """One ``column=op.value`` condition."""

    column: str
    op: str
    values: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Filter:
        match = _FILTER.match(text)
        if not match:
            raise FilterError(
                f"where={text!r} is not a filter; write COLUMN=OP.VALUE with OP one of eq, neq, "
                "lt, lte, gt, gte, in, is (e.g. where=status=eq.open, where=id=in.(1,2), "
                "where=note=is.null)"
            )
        column, op, value = match["column"].strip(), match["op"], match["value"]
        if op == "in":
            if not (value.startswith("(") and value.endswith(")")):
                raise FilterError(f"where={text!r}: in takes a list, as in.(a,b,c)")
            values = tuple(v.strip() for v in value[1:-1].split(",") if v.strip())
        elif op == "is":
            if value not in _IS:
                raise FilterError(f"where={text!r}: is takes null, true or false")
            values = (value,)
        else:
            values = (value,)
        return cls(column, op, values)

    def holds(self, row: dict[str, Any]) -> bool:
        """Whether ``row`` passes (it has the column)."""
        value = row[self.column]
        if self.op == "is":
            return value is _IS[self.values[0]]
        if value is None:  # as in SQL: NULL is neither equal nor unequal to anything
            return False
        wanted = [_as_type_of(value, v) for v in self.values]
        if self.op == "in":
            return any(w is not _MISSING and w == value for w in wanted)
        w = wanted[0]
        if w is _MISSING:
            return self.op == "neq"
        try:
            return _COMPARE[self.op](value, w)
        except TypeError:
            return False


def _as_type_of(value: Any, text: str) -> Any:
    """``text`` read as the type of ``value`` (_MISSING when it is not one)."""
    try:
        if isinstance(value, bool):
            return {"true": True, "false": False}.get(text.lower(), _MISSING)
        if isinstance(value, int):
            return int(text)
        if isinstance(value, float):
            return float(text)
        if isinstance(value, Decimal):
            return Decimal(text)
        if isinstance(value, datetime):
            return datetime.fromisoformat(text)
        if isinstance(value, date):
            return date.fromisoformat(text)
        if isinstance(value, time):
            return time.fromisoformat(text)
        if isinstance(value, UUID):
            return UUID(text)
        if isinstance(value, str):
            return text
    except (ValueError, InvalidOperation):
        return _MISSING
    return _MISSING if not isinstance(value, str) else text


def parse(texts: Sequence[str]) -> Callable[[Change], bool] | None:
    """The test a change must pass for ``where`` filters ``texts`` (None: no filter)."""
    filters = [Filter.parse(t) for t in texts]
    if not filters:
        return None

    def passes(row: dict[str, Any] | None, unknown: bool) -> bool:
        if row is None:
            return False
        if any(f.column not in row for f in filters):
            return unknown
        return all(f.holds(row) for f in filters)

    def wanted(change: Change) -> bool:
        if change.op == "truncate":
            return True
        if change.op == "delete":
            return passes(change.old, unknown=True)
        return passes(change.row, unknown=False) or passes(change.old, unknown=False)

    return wanted
