"""DESIGN section 3's public names and keywords: a contract users and checks rely on."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

import pgtide
import pgtide.aio

CONTRACT: dict[str, dict[str, set[str]]] = {
    "Listener": {
        "__init__": {"dsn", "on_reconnect", "decode"},
        "subscribe": {"channel", "callback", "id"},
        "unsubscribe": {"id", "channel"},
        "remove_channel": {"channel"},
        "mute": {"channel"},
        "unmute": {"channel"},
        "mute_subscriber": {"id"},
        "unmute_subscriber": {"id", "channel"},
        "channels": set(),
        "active_channels": set(),
        "status": set(),
        "iter": {"channel", "timeout"},
        "start": set(),
        "stop": set(),
        "close": set(),
        "run_forever": set(),
        "add_channel": set(),
        "muted_channels": set(),
        "restart": set(),
        "is_running": set(),
    },
    "LatestFetcher": {
        "__init__": {"table", "process", "dsn"},
        "process": {"row"},
        "run": set(),
        "start": set(),
        "stop": set(),
    },
    "Feed": {
        "__init__": {"consumer", "tables", "dsn"},
        "batches": {"start", "stop", "max_changes", "timeout"},
        "position": set(),
        "seek": {"position"},
        "run": {"fn"},
        "stop": set(),
        "close": set(),
    },
    "Events": {
        "__init__": {"dsn"},
        "handler": {"name", "retries", "timeout"},
        "publish": {"name", "payload", "conn"},
        "run": {"concurrency"},
        "start": set(),
        "stop": set(),
        "status": set(),
    },
    "FileWatcher": {
        "__init__": {"path", "table", "columns", "pattern", "format", "sql", "start", "dsn"},
        "run": set(),
        "start": set(),
        "stop": set(),
        "status": set(),
    },
}
FUNCTIONS = {
    "notify": {"channel", "payload", "dsn", "conn"},
    "install": {"dsn"},
    "track": {"table", "dsn"},
    "untrack": {"table", "dsn"},
    "latest": {"table", "dsn"},
    "dsn": {"dsn"},
}


def _params(fn: Callable[..., Any]) -> set[str]:
    return set(inspect.signature(fn).parameters) - {"self"}


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_blocking_classes_have_the_designed_methods(name: str) -> None:
    cls = getattr(pgtide, name)
    for method, keywords in CONTRACT[name].items():
        assert keywords <= _params(getattr(cls, method)), f"{name}.{method}"


@pytest.mark.parametrize("name", ["Listener", "Feed", "Events", "FileWatcher"])
def test_asyncio_faces_exist(name: str) -> None:
    assert name in pgtide.aio.__all__
    assert getattr(pgtide.aio, name) is not getattr(pgtide, name)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_functions_take_the_designed_keywords(name: str) -> None:
    assert FUNCTIONS[name] <= _params(getattr(pgtide, name))


def test_records_carry_the_designed_fields() -> None:
    fields = {
        pgtide.Notification: {"channel", "payload", "raw", "pid", "received_at", "subscriber"},
        pgtide.Change: {"id", "table", "op", "row", "old", "xid"},
        pgtide.Event: {"id", "name", "payload", "attempt", "created_at"},
    }
    for cls, wanted in fields.items():
        assert wanted <= set(cls.__dataclass_fields__), cls.__name__
    assert callable(pgtide.Batch.ack) and callable(pgtide.Batch.transaction)


def test_every_error_derives_from_pgtide_error() -> None:
    errors = [v for v in vars(pgtide).values() if isinstance(v, type) and issubclass(v, Exception)]
    assert errors and all(issubclass(e, pgtide.PgtideError) for e in errors)
    assert issubclass(pgtide.PayloadTooLarge, ValueError)


SECRET_DSN = "postgresql://app:hunter2-secret@127.0.0.1:1/shop"


@pytest.mark.parametrize(
    "make",
    [
        lambda tmp: pgtide.Listener(dsn=SECRET_DSN),
        lambda tmp: pgtide.aio.Listener(dsn=SECRET_DSN),
        lambda tmp: pgtide.Feed("indexer", dsn=SECRET_DSN),
        lambda tmp: pgtide.aio.Feed("indexer", dsn=SECRET_DSN),
        lambda tmp: pgtide.Events(dsn=SECRET_DSN),
        lambda tmp: pgtide.aio.Events(dsn=SECRET_DSN),
        lambda tmp: pgtide.FileWatcher(tmp, table="t", columns=["a"], dsn=SECRET_DSN),
        lambda tmp: pgtide.aio.FileWatcher(tmp, table="t", columns=["a"], dsn=SECRET_DSN),
    ],
    ids=[
        "Listener",
        "aio.Listener",
        "Feed",
        "aio.Feed",
        "Events",
        "aio.Events",
        "FileWatcher",
        "aio.FileWatcher",
    ],
)
def test_no_password_in_reprs(make: Callable[[Any], object], tmp_path: Any) -> None:
    obj = make(tmp_path)
    assert "hunter2-secret" not in repr(obj) and "hunter2-secret" not in str(obj)
