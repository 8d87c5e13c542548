"""The listener survives a lost connection: server restart, terminated backend, network cut."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from listen_helpers import Collector, listener_backends, pgtide_threads, wait_until
from pgtide_testing import RestartableServer
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import pgtide
import pgtide.aio
from pgtide.channel import Receiver
from pgtide.listen._async import _Reader


class Reconnects:
    """An on_reconnect callback that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def deliver_after_fault(listener: pgtide.Listener, dsn: str, got: Collector, n: int) -> None:
    """Keep notifying until one arrives: proves the listener LISTENs again after a fault."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(psycopg.OperationalError):
            pgtide.notify("orders", {"after": n}, dsn=dsn)
        with contextlib.suppress(AssertionError):
            got.wait_for(n, timeout=0.5)
            return
    raise AssertionError("no notification delivered after the fault")


@pytest.mark.slow
def test_server_restart_then_reconnect_relisten_and_on_reconnect(
    restartable: RestartableServer,
) -> None:
    got, reconnects = Collector(), Reconnects()
    with pgtide.Listener(dsn=restartable.dsn, on_reconnect=reconnects) as listener:
        listener.subscribe("orders", got)
        listener.subscribe("my-Channel", got)
        pgtide.notify("orders", {"before": 1}, dsn=restartable.dsn)
        got.wait_for(1)
        restartable.restart()
        wait_until(lambda: reconnects.calls == 1, timeout=20, what="on_reconnect")
        status = listener.status()
        assert status["connected"] and status["reconnects"] == 1
        assert status["listening"] == ["my-Channel", "orders"]
        deliver_after_fault(listener, restartable.dsn, got, 2)
        pgtide.notify("my-Channel", "odd name too", dsn=restartable.dsn)
        assert got.wait_for(3)[-1] == "odd name too"


def test_terminated_backend_then_reconnect_relisten_and_on_reconnect(dsn: str) -> None:
    got, reconnects = Collector(), Reconnects()
    with pgtide.Listener(dsn=dsn, on_reconnect=reconnects) as listener:
        listener.subscribe("orders", got)
        [backend] = listener_backends(dsn)
        assert backend == listener.status()["backend_pid"]
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (backend,))
        wait_until(lambda: reconnects.calls == 1, timeout=10, what="on_reconnect")
        assert listener.status()["backend_pid"] not in (None, backend)
        pgtide.notify("orders", "after", dsn=dsn)
        assert got.wait_for(1) == ["after"]
        assert listener_backends(dsn) == [listener.status()["backend_pid"]]


def test_on_reconnect_comes_after_the_old_messages_and_before_the_new(dsn: str) -> None:
    events: list[object] = []
    with pgtide.Listener(dsn=dsn, on_reconnect=lambda: events.append("gap")) as listener:
        listener.subscribe("orders", lambda note: events.append(note.payload))
        pgtide.notify("orders", 1, dsn=dsn)
        wait_until(lambda: events == [1])
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (listener.status()["backend_pid"],))
        wait_until(lambda: events == [1, "gap"])
        pgtide.notify("orders", 2, dsn=dsn)
        wait_until(lambda: events == [1, "gap", 2])


def test_raising_on_reconnect_is_counted_and_delivery_goes_on(dsn: str) -> None:
    got = Collector()

    def broken() -> None:
        raise RuntimeError("resync failed")

    with pgtide.Listener(dsn=dsn, on_reconnect=broken) as listener:
        listener.subscribe("orders", got)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (listener.status()["backend_pid"],))
        wait_until(lambda: listener.status()["callback_errors"] == 1, what="on_reconnect")
        assert listener.status()["errors_by_subscriber"] == {"on_reconnect": 1}
        pgtide.notify("orders", "still here", dsn=dsn)
        assert got.wait_for(1) == ["still here"]


class BlackHoleProxy:
    """A TCP proxy to the server that can silently stop forwarding (a network cut)."""

    def __init__(self, dsn: str) -> None:
        params = conninfo_to_dict(dsn)
        host, port = str(params.get("host") or "localhost"), int(params.get("port") or 5432)
        self.target: tuple[int, object] = (
            (socket.AF_UNIX, f"{host}/.s.PGSQL.{port}")
            if host.startswith("/")
            else (socket.AF_INET, (host, port))
        )
        self.server = socket.create_server(("127.0.0.1", 0))
        self.dsn = make_conninfo(dsn, host="127.0.0.1", port=str(self.server.getsockname()[1]))
        self.cut = threading.Event()
        self.closing = False
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.closing:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            family, address = self.target
            upstream = socket.socket(family, socket.SOCK_STREAM)  # type: ignore[arg-type]
            upstream.connect(address)
            self.pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        cut_here = self.cut.is_set()
        while not self.closing:
            if self.cut.is_set() and not cut_here:
                time.sleep(0.05)  # swallow nothing, answer nothing: a silent network cut
                continue
            ready, _, _ = select.select([a, b], [], [], 0.05)
            for sock in ready:
                if self.cut.is_set() and not cut_here:
                    break
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                (b if sock is a else a).sendall(data)

    def close(self) -> None:
        self.closing = True
        self.server.close()
        for a, b in self.pairs:
            a.close()
            b.close()


@pytest.fixture
def proxy(dsn: str) -> Iterator[BlackHoleProxy]:
    proxy = BlackHoleProxy(dsn)
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.mark.slow
def test_silent_network_cut_is_noticed_by_the_probe(dsn: str, proxy: BlackHoleProxy) -> None:
    got, reconnects = Collector(), Reconnects()
    listener = pgtide.Listener(
        dsn=proxy.dsn, on_reconnect=reconnects, probe_interval=1.0, probe_timeout=1.0
    )
    with listener:
        listener.subscribe("orders", got)
        pgtide.notify("orders", "before", dsn=dsn)
        got.wait_for(1)
        old_backend = listener.status()["backend_pid"]
        proxy.cut.set()  # existing connections go silent; new ones pass (see _pump)
        began = time.monotonic()
        wait_until(lambda: reconnects.calls == 1, timeout=15, what="the cut to be noticed")
        assert time.monotonic() - began < 6  # idle, yet noticed within seconds
        assert listener.status()["backend_pid"] != old_backend
        assert "no answer" in (listener.status()["last_error"] or "")
        pgtide.notify("orders", "after", dsn=dsn)
        assert got.wait_for(2) == ["before", "after"]
    assert not pgtide_threads()


def test_stop_is_prompt_while_reconnecting(restartable: RestartableServer) -> None:
    listener = pgtide.Listener(dsn=restartable.dsn)
    listener.subscribe("orders", print)
    listener.start()
    restartable.stop()
    wait_until(lambda: not listener.status()["connected"], what="the loss to be noticed")
    time.sleep(0.3)  # now in the backoff / reconnect loop
    began = time.monotonic()
    listener.stop()
    assert time.monotonic() - began < 1.0
    assert not pgtide_threads()


@pytest.mark.slow
def test_an_outage_logs_one_sentence_per_attempt_at_most(
    restartable: RestartableServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="pgtide")
    reconnects = Reconnects()
    with pgtide.Listener(dsn=restartable.dsn, on_reconnect=reconnects) as listener:
        listener.subscribe("orders", print)
        caplog.clear()
        restartable.stop()
        wait_until(lambda: not listener.status()["connected"], what="the loss to be noticed")
        wait_until(  # a few backoff steps, the last ones longer than a second
            lambda: sum("still cannot reconnect" in r.getMessage() for r in caplog.records) >= 5,
            timeout=20,
            what="several reconnect attempts",
        )
        restartable.start()
        wait_until(lambda: reconnects.calls == 1, timeout=20, what="on_reconnect")
    records = [r for r in caplog.records if r.name.startswith("pgtide")]
    messages = [r.getMessage() for r in records]
    for record, message in zip(records, messages, strict=True):
        assert record.exc_info is None and "\n" not in message, message  # no traceback
        assert message[0].isupper() and message.endswith("."), message  # a whole sentence
    lost = [m for m in messages if "lost its connection" in m]
    first = [m for m in messages if "cannot reconnect to" in m]
    again = [m for m in messages if "still cannot reconnect" in m]
    back = [m for m in messages if "reconnected after" in m]
    assert len(lost) == 1 and len(back) == 1 and "on_reconnect" in lost[0]
    assert 1 <= len(first) <= 2  # the reason in full once (again only if it changes)
    assert "next attempt in" in again[0] and "check that" not in " ".join(messages)
    warnings = [r for r in records if r.levelno >= logging.WARNING]
    assert len(warnings) <= 3  # lost, cannot reconnect (+ a changed reason): not a flood
    attempts = len(first) + len(again)
    assert len(messages) <= attempts + 2  # one line per attempt at most, plus lost and back
    assert f"({attempts + 1} attempts)" in back[0]


# -- the direct lane: the dispatcher reads a trickle itself, and gives the socket back -----


@pytest.mark.parametrize("face", ["blocking", "asyncio"])
def test_a_trickle_is_read_by_the_dispatcher_itself_across_listen_probe_and_reconnect(
    dsn: str, face: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Notifications sent one at a time, each awaited: once idle, the dispatcher waits on the
    socket and reads them itself (one thread woken per notification, as in a driver loop,
    rather than the connection thread handing each over). A LISTEN, probes, a terminated
    backend and a restart meanwhile take the socket back to the connection thread, and the
    dispatcher reads again after them; nothing is lost or reordered."""
    direct: list[int] = []  # the sizes of the batches the dispatcher read itself
    take_now = Receiver.take_now

    def spy(self: Receiver, queue: Any, copy: Any) -> Any:
        batch = take_now(self, queue, copy)
        if not isinstance(batch, bool):  # a batch, not a file to wait on
            direct.append(len(batch[2]))
        return batch

    monkeypatch.setattr(Receiver, "take_now", spy)
    got = Collector()
    gaps = threading.Event()
    with psycopg.connect(dsn, autocommit=True) as sender:
        sent = 0

        def trickle() -> None:
            """Send one at a time, each awaited, until the dispatcher has read five itself
            (never, without the lane); how many that takes depends on the machine's load,
            so the bound is generous rather than a ratio."""
            nonlocal sent
            before = sum(direct)
            for _ in range(400):
                sender.execute("SELECT pg_notify('trickle', %s)", (str(sent),))
                sent += 1
                got.wait_for(sent)
                if sum(direct) - before >= 5:
                    return
            raise AssertionError(f"the dispatcher read {sum(direct) - before} of 400 itself")

        def scenario(listener: Any, call: Any) -> None:
            trickle()  # the dispatcher's own reads
            call(listener.subscribe("other", print))  # a LISTEN in flight
            trickle()
            (pid,) = listener_backends(dsn)
            sender.execute("SELECT pg_terminate_backend(%s)", (pid,))
            wait_until(gaps.is_set, what="on_reconnect after the terminated backend")
            trickle()
            call(listener.restart())
            trickle()
            assert got.payloads == list(range(sent))

        options: dict[str, Any] = {
            "dsn": dsn,
            "on_reconnect": gaps.set,
            "probe_interval": 0.05,  # probes between the notifications, too
        }
        if face == "blocking":
            with pgtide.Listener(**options) as listener:
                listener.subscribe("trickle", got)
                scenario(listener, lambda result: result)
        else:

            async def main() -> None:
                async with pgtide.aio.Listener(**options) as listener:
                    await listener.subscribe("trickle", got)
                    loop = asyncio.get_running_loop()

                    def call(result: Any) -> Any:  # run a coroutine from the worker thread
                        return asyncio.run_coroutine_threadsafe(result, loop).result(10)

                    await asyncio.to_thread(scenario, listener, call)

            asyncio.run(main())
    assert not pgtide_threads()


def test_the_asyncio_dispatcher_keeps_its_reader_and_never_spins_in_a_slow_callback(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The asyncio dispatcher keeps its duplicate of the socket registered with the loop from
    one wait to the next (not an add_reader per notification), registers the new one after a
    reconnect, and, when the socket becomes readable while an async callback is still
    running, unregisters it (the loop would otherwise wake for it at every turn until the
    callback ends), and registers it again at the next wait; nothing is lost or reordered."""
    readable = 0  # the reader's calls
    original = _Reader._readable

    def counted(self: _Reader) -> None:
        nonlocal readable
        readable += 1
        original(self)

    monkeypatch.setattr(_Reader, "_readable", counted)
    got = Collector()
    gaps = threading.Event()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        added: list[int] = []
        add_reader = loop.add_reader

        def adding(fd: Any, callback: Any, *args: Any) -> None:
            added.append(fd)
            add_reader(fd, callback, *args)

        monkeypatch.setattr(loop, "add_reader", adding)
        release = asyncio.Event()
        slow_started = asyncio.Event()
        slow: list[Any] = []

        async def slow_callback(note: pgtide.Notification) -> None:
            slow_started.set()
            await release.wait()
            slow.append(note.payload)

        async with pgtide.aio.Listener(dsn=dsn, on_reconnect=gaps.set) as listener:
            await listener.subscribe("trickle", got)
            await listener.subscribe("slow", slow_callback)
            with psycopg.connect(dsn, autocommit=True) as sender:

                def trickle(first: int, count: int) -> None:
                    for i in range(first, first + count):
                        sender.execute("SELECT pg_notify('trickle', %s)", (str(i),))
                        got.wait_for(i + 1)

                await asyncio.to_thread(trickle, 0, 30)
                assert 1 <= len(added) <= 10  # one per notification before
                before = len(added)
                await listener.restart()
                await asyncio.to_thread(trickle, 30, 30)
                assert len(added) - before <= 10
                assert len(set(added)) >= 1
                # a slow async callback, and a notification arriving meanwhile
                sender.execute("SELECT pg_notify('slow', 'a')")
                await asyncio.wait_for(slow_started.wait(), 10)
                calls = readable
                sender.execute("SELECT pg_notify('slow', 'b')")
                deadline = loop.time() + 10
                while readable == calls:  # the loop sees it: the reader runs...
                    assert loop.time() < deadline, "the reader never ran"
                    await asyncio.sleep(0.001)
                for _ in range(200):  # ...but not at every turn of the loop
                    await asyncio.sleep(0)
                assert readable - calls <= 2
                release.set()
                await asyncio.to_thread(trickle, 60, 10)
                assert slow == ["a", "b"]
        assert got.payloads == list(range(70))

    asyncio.run(main())
    assert not pgtide_threads()
