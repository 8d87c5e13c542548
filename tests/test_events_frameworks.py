"""Events in the user's framework: ``publish(conn=...)`` inside a Django ``atomic()`` block
(Django's psycopg 3 backend) and a SQLAlchemy 2 session commits or rolls back with the user's
rows; a FastAPI lifespan runs an asyncio worker and stops it gracefully.

docs/events.md ("In your framework's transaction") shows this same code: the last test checks
that every line of those examples appears here.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from asgi_lifespan import LifespanManager
from docs_examples import DOCS
from events_helpers import count
from fastapi import FastAPI
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from starlette.types import Message, Receive, Scope, Send

import pgtide
import pgtide.aio


class Boom(Exception):
    """Raised inside the user's transaction to roll it back."""


@dataclass
class Worker:
    """pgtide's blocking face with a worker running; ``handled``: the payloads it handled."""

    events: pgtide.Events
    handled: list[dict[str, Any]]

    def nothing_ran(self, rolled_back: int) -> None:
        """The rolled-back event does not exist and never ran: a later event runs alone."""
        assert self.events.get(rolled_back) is None
        later = self.events.publish("order_created", {"order": -1})
        assert self.events.wait(later, timeout=10).state == "done"
        assert self.handled == [{"order": -1}]


@pytest.fixture
def worker(dsn: str) -> Iterator[Worker]:
    """A blocking worker on the test database, recording each payload it handles."""
    events = pgtide.Events(dsn=dsn, poll_interval=0.1)
    handled: list[dict[str, Any]] = []

    @events.handler("order_created")
    def on_order(event: pgtide.Event) -> dict[str, Any]:
        handled.append(event.payload)
        return {"emailed": event.payload["order"]}

    events.start(concurrency=2)
    try:
        yield Worker(events, handled)
    finally:
        events.close()


# -- Django ------------------------------------------------------------------------------


def _django_database(dsn: str) -> dict[str, Any]:
    params = {k: v for k, v in conninfo_to_dict(dsn).items() if v is not None}
    return {
        "ENGINE": "django.db.backends.postgresql",  # psycopg 3 when installed (it is here)
        "NAME": params.pop("dbname"),
        "USER": params.pop("user", ""),
        "PASSWORD": params.pop("password", ""),
        "HOST": params.pop("host", ""),
        "PORT": params.pop("port", ""),
        "OPTIONS": params,
    }


@cache
def _django_order_model() -> Any:
    """The ``Order`` model, defined once per process (Django registers models globally)."""
    from django.db import models

    class Order(models.Model):
        total: models.IntegerField[int, int] = models.IntegerField()

        class Meta:
            app_label = "shop"

    return Order


@pytest.fixture(params=[False, True], ids=["client-binding", "server-binding"])
def django_order(dsn: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    """Django set up on the test database (settings are configured once per process; later
    tests point the default alias at their own database), with the ``Order`` table created.
    Both of Django's psycopg 3 cursor kinds: client-side binding (its default) and
    ``OPTIONS={"server_side_binding": True}``."""
    import django
    from django.conf import settings
    from django.db import connection, connections

    database = _django_database(dsn)
    database["OPTIONS"]["server_side_binding"] = request.param
    if not settings.configured:
        settings.configure(
            DATABASES={"default": database}, INSTALLED_APPS=[], USE_TZ=True, TIME_ZONE="UTC"
        )
        django.setup()
    else:
        connections.close_all()
        del connections["default"]
        settings.DATABASES["default"].update(database)
    Order = _django_order_model()
    with connection.schema_editor() as editor:
        editor.create_model(Order)
    try:
        yield Order
    finally:
        connections.close_all()


def test_django_atomic_commit_publishes_with_the_row(django_order: Any, worker: Worker) -> None:
    events = worker.events
    from django.db import connection, transaction

    Order = django_order
    with transaction.atomic():
        order = Order.objects.create(total=42)
        assert isinstance(connection.connection, psycopg.Connection)  # Django's psycopg 3
        published = events.publish("order_created", {"order": order.pk}, conn=connection.connection)
        assert not connection.get_autocommit()  # still Django's open transaction

    record = events.wait(published, timeout=10)
    assert record.state == "done" and record.result == {"emailed": order.pk}
    assert Order.objects.filter(pk=order.pk, total=42).exists()
    assert worker.handled == [{"order": order.pk}]


def test_django_atomic_rollback_drops_the_event_with_the_row(
    django_order: Any, worker: Worker, dsn: str
) -> None:
    events = worker.events
    from django.db import connection, transaction

    Order = django_order
    published: list[int] = []
    with pytest.raises(Boom), transaction.atomic():
        order = Order.objects.create(total=42)
        published.append(
            events.publish("order_created", {"order": order.pk}, conn=connection.connection)
        )
        raise Boom

    assert not Order.objects.exists()
    assert count(dsn, "SELECT count(*) FROM pgtide.events") == 0
    worker.nothing_ran(published[0])


def test_django_savepoint_rollback_keeps_the_outer_transaction(
    django_order: Any, worker: Worker
) -> None:
    events = worker.events
    """A nested ``atomic()`` (a savepoint) that fails takes its event with it; the outer
    block's event and row commit."""
    from django.db import connection, transaction

    Order = django_order
    dropped: list[int] = []
    with transaction.atomic():
        kept_order = Order.objects.create(total=1)
        kept = events.publish("order_created", {"order": kept_order.pk}, conn=connection.connection)
        with pytest.raises(Boom), transaction.atomic():
            dropped.append(
                events.publish("order_created", {"order": 0}, conn=connection.connection)
            )
            raise Boom

    assert events.wait(kept, timeout=10).state == "done"
    assert events.get(dropped[0]) is None
    assert Order.objects.count() == 1


# -- SQLAlchemy --------------------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)


@pytest.fixture
def engine(dsn: str) -> Iterator[Any]:
    """An engine on the psycopg 3 dialect (postgresql+psycopg), the ``orders`` table made."""
    params = {k: v for k, v in conninfo_to_dict(dsn).items() if v is not None}
    engine = create_engine("postgresql+psycopg://", connect_args=params)
    Base.metadata.create_all(engine)
    try:
        yield engine
    finally:
        engine.dispose()


def test_sqlalchemy_session_commit_publishes_with_the_row(engine: Any, worker: Worker) -> None:
    events = worker.events
    with Session(engine) as session, session.begin():
        session.add(Order(id=43))
        raw = session.connection().connection.driver_connection
        assert isinstance(raw, psycopg.Connection) and not raw.autocommit
        published = events.publish("order_created", {"order": 43}, conn=raw)

    record = events.wait(published, timeout=10)
    assert record.state == "done" and record.result == {"emailed": 43}
    with Session(engine) as session:
        assert session.get(Order, 43) is not None
    assert worker.handled == [{"order": 43}]


def test_sqlalchemy_session_rollback_drops_the_event_with_the_row(
    engine: Any, worker: Worker, dsn: str
) -> None:
    events = worker.events
    published: list[int] = []
    with pytest.raises(Boom), Session(engine) as session, session.begin():
        session.add(Order(id=43))
        raw = session.connection().connection.driver_connection
        published.append(events.publish("order_created", {"order": 43}, conn=raw))
        raise Boom

    with Session(engine) as session:
        assert session.get(Order, 43) is None
    assert count(dsn, "SELECT count(*) FROM pgtide.events") == 0
    worker.nothing_ran(published[0])


def test_sqlalchemy_explicit_rollback_drops_the_event(engine: Any, worker: Worker) -> None:
    events = worker.events
    with Session(engine) as session:
        session.add(Order(id=44))
        raw = session.connection().connection.driver_connection
        published = events.publish("order_created", {"order": 44}, conn=raw)
        session.rollback()
        assert session.get(Order, 44) is None
    worker.nothing_ran(published)


# -- FastAPI -----------------------------------------------------------------------------


def test_fastapi_lifespan_runs_the_worker_and_stops_it_gracefully(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGTIDE_DSN", dsn)  # pgtide.aio.Events() reads it, as in the docs

    async def main() -> None:
        jobs = pgtide.aio.Events()

        @jobs.handler("order_created")
        async def on_order(event: pgtide.Event) -> dict[str, Any]:
            return {"emailed": event.payload["order"]}

        @asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            await jobs.start(concurrency=16)
            yield
            await jobs.close()  # running handlers finish, the rest go back

        app = FastAPI(lifespan=lifespan)

        @app.post("/orders/{order}")
        async def create_order(order: int) -> dict[str, int]:
            return {"event": await jobs.publish("order_created", {"order": order})}

        # A handler still running when the shutdown begins must finish, not be cut off.
        loop_thread = threading.get_ident()
        started = asyncio.Event()
        shutting_down = asyncio.Event()

        @jobs.handler("slow")
        async def slow(event: pgtide.Event) -> str:
            assert threading.get_ident() == loop_thread  # on the app's event loop
            started.set()
            await shutting_down.wait()
            return "finished"

        async def watched(scope: Scope, receive: Receive, send: Send) -> None:
            async def spy() -> Message:
                message = await receive()
                if message["type"] == "lifespan.shutdown":
                    shutting_down.set()
                return message

            await app(scope, spy, send)

        async with LifespanManager(watched, shutdown_timeout=20) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                response = await client.post("/orders/7")
                assert response.status_code == 200
                record = await jobs.wait(response.json()["event"], timeout=10)
                assert record.state == "done" and record.result == {"emailed": 7}
            assert count(dsn, "SELECT count(*) FROM pgtide.event_workers") == 1
            slow_id = await jobs.publish("slow")
            await asyncio.wait_for(started.wait(), 10)
        # The lifespan has shut down: the slow handler ran to its end, the worker is gone.
        assert shutting_down.is_set()
        finished = pgtide.Events(dsn=dsn)
        try:
            ended = finished.get(slow_id)
        finally:
            finished.close()
        assert ended is not None and ended.state == "done" and ended.result == "finished"
        assert count(dsn, "SELECT count(*) FROM pgtide.event_workers") == 0
        leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert leftover == []

    asyncio.run(main())


# -- the docs show this code -------------------------------------------------------------


def _framework_examples() -> list[str]:
    """The code lines of the framework examples in docs/events.md (comments and blank
    lines dropped, imports kept)."""
    text = (DOCS / "events.md").read_text(encoding="utf-8")
    section = text.split("### In your framework's transaction", 1)[1].split("\n## ", 1)[0]
    lines: list[str] = []
    for block in re.findall(r"^```python notest\n(.*?)^```", section, re.M | re.S):
        for line in block.splitlines():
            code = line.split("  #", 1)[0].strip()
            if code and not code.startswith("#"):
                lines.append(code)
    return lines


def test_docs_framework_examples_are_the_tested_code() -> None:
    """Every code line of the docs' framework examples appears in this module (imports may be
    spelled differently here; they are checked by name)."""
    here = Path(__file__).read_text(encoding="utf-8")
    lines = _framework_examples()
    assert len(lines) >= 20
    missing = []
    for line in lines:
        if line.startswith(("from ", "import ")):
            names = re.split(r"[ ,]+", line.split(" import ", 1)[-1].removeprefix("import "))
            missing += [n for n in names if n and n not in here]
        elif line not in here:
            missing.append(line)
    assert missing == []
