"""The asyncio face: same core, same table; async handlers run on the caller's loop."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pgtide_testing
import psycopg
import pytest

import pgtide
import pgtide.aio


async def _until(condition: Any, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not await condition():
            await asyncio.sleep(0.02)


def test_async_face_publish_run_and_inspect(dsn: str) -> None:
    async def main() -> None:
        loop_thread = threading.get_ident()
        ran_on: list[int] = []
        async with pgtide.aio.Events(dsn=dsn, poll_interval=0.05, retry_delay=0.01) as events:

            @events.handler("order_created")
            async def on_order(event: pgtide.Event) -> dict[str, Any]:
                ran_on.append(threading.get_ident())
                await asyncio.sleep(0)
                return {"emailed": event.payload["order"]}

            @events.handler("plain", retries=0)
            def plain(event: pgtide.Event) -> None:
                raise RuntimeError("plain handlers work too")

            first = await events.publish("order_created", {"order": 1})
            ids = await events.publish_many("order_created", [{"order": n} for n in (2, 3)])
            broken = await events.publish("plain")
            await events.start(concurrency=4)

            async def finished() -> bool:
                status = await events.status()
                return status["done"] == 3 and status["dead"] == 1

            await _until(finished)
            rec = await events.get(first)
            assert rec is not None and rec.result == {"emailed": 1}
            assert [r.id for r in await events.recent(state="done")] == sorted(
                [first, *ids], reverse=True
            )
            dead = await events.get(broken)
            assert dead is not None and "plain handlers work too" in (dead.error or "")
            assert await events.retry(broken)
            await events.stop()
        assert ran_on and set(ran_on) == {loop_thread}  # async handlers ran on our loop

    asyncio.run(main())


def test_async_publish_in_rolled_back_transaction(dsn: str) -> None:
    async def main() -> None:
        events = pgtide.aio.Events(dsn=dsn)
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            await events.publish("x", {"a": 1}, conn=conn)
            await conn.rollback()
        assert (await events.status())["pending"] == 0
        with pytest.raises(pgtide.EventPayloadError):
            await events.publish("x", {"a": object()})
        await events.aclose()

    asyncio.run(main())


def test_async_run_stops_gracefully_on_cancel(dsn: str) -> None:
    async def main() -> None:
        events = pgtide.aio.Events(dsn=dsn, poll_interval=0.05)
        started = asyncio.Event()
        finished: list[int] = []

        @events.handler("work")
        async def work(event: pgtide.Event) -> None:
            started.set()
            await asyncio.sleep(0.3)
            finished.append(event.id)

        id_ = await events.publish("work")
        task = asyncio.create_task(events.run(concurrency=1))
        await asyncio.wait_for(started.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert finished == [id_]  # the running handler finished before run() returned
        rec = await events.get(id_)
        assert rec is not None and rec.state == "done"
        await events.aclose()

    asyncio.run(main())


def test_async_stop_ends_a_wait_to_reconnect_at_once(
    restartable: pgtide_testing.RestartableServer,
) -> None:
    """As the blocking worker: stop() during an outage does not wait out the backoff."""
    pgtide.install(dsn=restartable.dsn)

    async def main() -> float:
        events = pgtide.aio.Events(dsn=restartable.dsn, poll_interval=0.05)
        events.register("x", lambda e: None)
        await events.start(concurrency=1)
        await asyncio.to_thread(restartable.stop)
        await asyncio.sleep(4)  # the outage: the reconnect backoff grows to seconds
        began = time.monotonic()
        await asyncio.wait_for(events.stop(), 10)
        took = time.monotonic() - began
        await events.close()
        return took

    assert asyncio.run(main()) < 0.5
