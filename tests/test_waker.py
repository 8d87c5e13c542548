"""The waker's direct mode: the waiting thread (or task) reads the NOTIFYs itself."""

from __future__ import annotations

import asyncio
import threading
import time

import psycopg

from pgtide.channel import Waker
from pgtide.connect import resolve


def _direct_waker(dsn: str, seen: list[tuple[str, int]]) -> Waker:
    def on_notify(_channel: str, payload: str) -> bool:
        seen.append((payload, threading.get_ident()))
        return payload != "quiet"

    return Waker(resolve(dsn), ["wake_me"], on_notify=on_notify, direct=True)


def _notify(dsn: str, payload: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_notify('wake_me', %s)", (payload,))


def test_a_direct_waker_reads_the_notify_in_the_waiting_thread(dsn: str) -> None:
    seen: list[tuple[str, int]] = []
    waker = _direct_waker(dsn, seen)
    assert waker.start()
    try:
        waker.wait(0)  # the wake-up of the start itself
        assert not waker.wait(0.05)  # nothing: it times out
        me = threading.get_ident()
        _notify(dsn, "quiet")  # read in passing: it does not wake
        _notify(dsn, "one")
        assert waker.wait(5)
        for n in range(20):
            _notify(dsn, str(n))
            assert waker.wait(5)
        assert [p for p, _ in seen] == ["quiet", "one", *map(str, range(20))]
        # on_notify runs here, not in the connection thread (but for the moments it reads
        # the socket: while it hands the socket over, or probes the connection)
        assert sum(t == me for _, t in seen) >= 15
        began = time.monotonic()
        threading.Timer(0.05, waker.set).start()  # set() from another thread wakes it too
        assert waker.wait(5)
        assert time.monotonic() - began < 2
    finally:
        waker.stop()
    assert not waker.wait(0)  # stopped: a plain flag again


def test_a_direct_waker_reads_the_notify_in_the_waiting_task(dsn: str) -> None:
    seen: list[tuple[str, int]] = []
    waker = _direct_waker(dsn, seen)

    async def main() -> None:
        await asyncio.to_thread(waker.start)
        await waker.wait_async(0)
        assert not await waker.wait_async(0.05)
        for n in range(20):
            await asyncio.to_thread(_notify, dsn, str(n))
            assert await waker.wait_async(5)
        assert [p for p, _ in seen] == list(map(str, range(20)))
        assert sum(t == threading.get_ident() for _, t in seen) >= 15  # the loop's thread
        await asyncio.to_thread(waker.stop)

    asyncio.run(main())
