"""Old spellings keep working for one release, with a warning that names the new one."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

import pgtide
from pgtide._compat import now_keyword_only, renamed


@now_keyword_only(1, "dsn", "conn")
def _send(channel: str, *, dsn: str | None = None, conn: object = None) -> tuple[Any, ...]:
    return channel, dsn, conn


def test_positional_dsn_still_works_with_a_warning() -> None:
    with pytest.warns(DeprecationWarning, match=r"write dsn=\.\.\."):
        assert _send("a", "db", 1) == ("a", "db", 1)
    assert _send("a", dsn="db") == ("a", "db", None)
    with pytest.raises(TypeError):
        _send("a", "db", 1, 2)


def test_signatures_stay_introspectable() -> None:
    for fn in (pgtide.notify, pgtide.notify_many, pgtide.install):
        assert inspect.signature(fn).parameters["dsn"].kind is inspect.Parameter.KEYWORD_ONLY


def test_renamed_alias_warns() -> None:
    class Thing:
        def close(self) -> str:
            return "closed"

        aclose = renamed("aclose", "close", close)

    with pytest.warns(DeprecationWarning, match=r"call close\(\) instead"):
        assert Thing().aclose() == "closed"


def test_one_duration_syntax() -> None:
    import typer

    from pgtide.cli._common import age, parse_duration

    assert [parse_duration(x) for x in ("30s", "5m", "2h", "7d", "250ms", "1.5", ".5s")] == [
        30.0,
        300.0,
        7200.0,
        604800.0,
        0.25,
        1.5,
        0.5,
    ]
    with pytest.raises(typer.BadParameter, match="250ms, 30s, 5m, 2h, 7d"):
        parse_duration("soon")
    from datetime import timedelta

    assert age(timedelta(seconds=5)) == "5 s ago" and age(timedelta(hours=50)) == "2 d ago"
