"""One parser for table names, used by every feature (no database needed)."""

from __future__ import annotations

import pytest

import pgtide
from pgtide.names import TableName


@pytest.mark.parametrize(
    ("text", "schema", "name"),
    [
        ("orders", None, "orders"),
        ("public.orders", "public", "orders"),
        ("Orders", None, "Orders"),
        (' "my.schema"."odd ""t" ', "my.schema", 'odd "t'),
        ('sales."Big Table"', "sales", "Big Table"),
    ],
)
def test_names_parse_and_read_back(text: str, schema: str | None, name: str) -> None:
    parsed = TableName.parse(text)
    assert (parsed.schema, parsed.name) == (schema, name)
    assert TableName.parse(str(parsed)) == parsed


@pytest.mark.parametrize("text", ["", "  ", "a.b.c", "a.", ".a", 'a"b', '"a"b', '"open', "a..b"])
def test_bad_names_raise_one_error_type(text: str) -> None:
    with pytest.raises(pgtide.InvalidName, match="table"):
        TableName.parse(text)


def test_invalid_name_is_a_config_error() -> None:
    assert issubclass(pgtide.InvalidName, pgtide.ConfigError)
    with pytest.raises(ValueError):
        TableName.parse(3)  # type: ignore[arg-type]
