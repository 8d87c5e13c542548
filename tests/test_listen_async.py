"""pgtide.aio.Listener: the same core with async with, async for and async callbacks."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest
from listen_helpers import listener_backends, pgtide_threads

import pgtide
import pgtide.aio


async def until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_async_face_end_to_end(dsn: str) -> None:
    async def main() -> None:
        got: list[Any] = []
        plain: list[Any] = []
        gaps: list[str] = []

        async def on_note(note: pgtide.Notification) -> None:
            await asyncio.sleep(0.001)  # a real await inside the callback
            got.append((note.channel, note.payload))

        async def resync() -> None:
            gaps.append("gap")

        async with pgtide.aio.Listener(dsn=dsn, on_reconnect=resync) as listener:
            assert await listener.subscribe("orders", on_note, id=42) == 42
            await listener.subscribe("my-Channel", lambda note: plain.append(note.payload))
            assert listener.status()["listening"] == ["my-Channel", "orders"]
            await pgtide.aio.notify("orders", {"id": 1}, dsn=dsn)
            await pgtide.aio.notify_many([("orders", [1, 2]), ("my-Channel", "hi")], dsn=dsn)
            await until(lambda: len(got) == 2 and plain == ["hi"])
            assert got == [("orders", {"id": 1}), ("orders", [1, 2])]

            # mute / unmute
            await listener.mute("orders")
            assert listener.active_channels() == ["my-Channel"]
            await listener.unmute("orders")
            await listener.mute_subscriber(42)
            await listener.unmute_subscriber(42, "orders")
            assert listener.active_channels() == ["my-Channel", "orders"]

            # a dropped connection: reconnect, LISTEN again, on_reconnect (async) called
            backend = listener.status()["backend_pid"]
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("SELECT pg_terminate_backend(%s)", (backend,))
            await until(lambda: gaps == ["gap"])
            await pgtide.aio.notify("orders", "after", dsn=dsn)
            await until(lambda: got[-1:] == [("orders", "after")])
            began = time.monotonic()
        assert time.monotonic() - began < 1.0
        assert not pgtide_threads()
        assert not listener.running

    asyncio.run(main())
    assert not listener_backends(dsn)


def test_async_iter_yields_in_order_and_unsubscribes(dsn: str) -> None:
    async def main() -> None:
        async with pgtide.aio.Listener(dsn=dsn) as listener:
            async with listener.iter("feed", timeout=1.0) as notes:
                assert listener.status()["listening"] == ["feed"]  # subscribed on entry
                await pgtide.aio.notify_many([("feed", i) for i in range(5)], dsn=dsn)
                values = []
                async for note in notes:
                    values.append(note.payload)
                    if len(values) == 3:
                        break
            assert values == [0, 1, 2]
            assert listener.channels() == []  # left the block: unsubscribed

            # a plain async for ends by itself after `timeout` idle seconds
            began = time.monotonic()
            assert [n async for n in listener.iter("quiet", timeout=0.2)] == []
            assert 0.2 <= time.monotonic() - began < 2
            assert listener.channels() == []

    asyncio.run(main())


def test_async_raising_callbacks_and_bad_payloads(dsn: str) -> None:
    async def main() -> None:
        got: list[Any] = []

        async def broken(note: pgtide.Notification) -> None:
            raise ValueError("nope")

        async with pgtide.aio.Listener(dsn=dsn, decode="literal") as listener:
            await listener.subscribe("x", broken, id="broken")
            await listener.subscribe("x", lambda n: got.append((n.payload, n.error is None)))
            await pgtide.aio.notify_many([("x", "true"), ("x", "(1, 2)")], dsn=dsn)
            await until(lambda: len(got) == 2)
            assert got == [("true", False), ((1, 2), True)]
            assert listener.status()["errors_by_subscriber"] == {"broken": 2}

    asyncio.run(main())


def test_async_stop_from_a_callback_ends_run_forever(dsn: str) -> None:
    async def main() -> None:
        listener = pgtide.aio.Listener(dsn=dsn)

        async def on_note(note: pgtide.Notification) -> None:
            await listener.stop()

        await listener.subscribe("quit", on_note)
        loop = asyncio.get_running_loop()
        loop.call_later(0.3, lambda: asyncio.ensure_future(pgtide.aio.notify("quit", dsn=dsn)))
        await asyncio.wait_for(listener.run_forever(), 10)
        assert not listener.running

    asyncio.run(main())
    assert not pgtide_threads()


def test_async_unreachable_database(bare_dsn: str) -> None:
    async def main() -> None:
        with pytest.raises(pgtide.ConnectionFailed):
            async with pgtide.aio.Listener(dsn="postgresql://u:secret@127.0.0.1:1/x"):
                pass

    asyncio.run(main())


def test_async_concurrent_starts_open_one_connection(dsn: str) -> None:
    async def main() -> None:
        listener = pgtide.aio.Listener(dsn=dsn)
        await listener.subscribe("x", print)
        await asyncio.gather(*(listener.start() for _ in range(5)))
        assert len(listener_backends(dsn)) == 1
        assert len(pgtide_threads()) == 1  # the connection thread; callbacks run on the loop
        await listener.stop()

    asyncio.run(main())
    assert not pgtide_threads()


def test_async_close_is_the_closing_verb(dsn: str) -> None:
    async def main() -> None:
        got: list[Any] = []
        listener = pgtide.aio.Listener(dsn=dsn)
        await listener.subscribe("c", lambda note: got.append(note.payload))
        await listener.start()
        async with listener.iter("c") as notes:
            await pgtide.aio.notify("c", 1, dsn=dsn)
            await until(lambda: got == [1])
            assert (await anext(notes)).payload == 1
            await listener.close()
            assert [n async for n in notes] == []  # open iterators end
        assert not listener.running
        await listener.close()  # twice is fine

    asyncio.run(main())
    assert not pgtide_threads()
    assert not listener_backends(dsn)


def test_async_parity_add_channel_names_restart(dsn: str) -> None:
    async def main() -> None:
        gaps: list[str] = []
        seen: list[Any] = []
        async with pgtide.aio.Listener(dsn=dsn, on_reconnect=lambda: gaps.append("gap")) as lis:
            await lis.add_channel(["quiet", "loud"])
            await lis.subscribe("loud", lambda note: seen.append(note.subscriber), id="x")
            await lis.subscribe("other", print)
            assert lis.status()["listening"] == ["loud", "other", "quiet"]
            await lis.mute("loud", "other")
            assert lis.muted_channels() == ["loud", "other"]
            await until(lambda: lis.status()["listening"] == ["quiet"])  # UNLISTEN
            await lis.unmute()
            old = lis.status()["backend_pid"]
            await lis.restart()
            assert lis.is_running() and lis.status()["backend_pid"] != old
            await until(lambda: gaps == ["gap"])
            assert lis.status()["listening"] == ["loud", "other", "quiet"]
            await pgtide.aio.notify("loud", 1, dsn=dsn)
            await pgtide.aio.notify("quiet", 2, dsn=dsn)
            await until(lambda: lis.status()["without_subscriber"] == {"quiet": 1})
            assert seen == ["x"]
            assert await lis.remove_channel() is True
            await until(lambda: lis.status()["listening"] == [])
        assert not lis.is_running()

    asyncio.run(main())
