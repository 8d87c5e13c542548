"""Redis Streams: ``XADD`` with explicit entry ids, atomically with a record of what was
delivered, so that a batch sent again after a crash adds nothing twice.

Each batch goes in one Lua script call (one round trip, atomic): it checks that the sink's
record of each stream is the one the sink read and that nothing else added to the stream
since, adds the entries with explicit, strictly increasing ids, and records the batch's
feed position for each stream it touched. The checks come before the first write, so a
call that is refused changed nothing. A change whose transaction that recorded position
has seen was delivered before and is not sent again (the feed can re-read a batch in a
different order after a crash, so the entry id alone could not tell).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Unpack

import orjson
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .. import Change, Position
from ..errors import ConfigError
from ._base import BatchLike, Messages, Sink, SinkError, SinkOptions, Template, check_url

log = logging.getLogger("pgtide.sinks")

SCHEMES = ("redis", "rediss", "unix")
FIELD = "change"
"""The entry field that holds the change's JSON."""

DELIVER = """
-- KEYS[1] the delivery record (a hash), KEYS[2..n+1] the streams. ARGV[1] maxlen or '';
-- then for each stream i, at 2 + 3 * (i - 1): the record read, the record to write and the
-- entry ids (space separated); last, every body, one argument each, stream by stream.
local n = #KEYS - 1
for i = 1, n do
  local cur = redis.call('HGET', KEYS[1], KEYS[i + 1]) or ''
  if cur ~= ARGV[3 * i - 1] then return {'stale', KEYS[i + 1]} end
end
local function parts(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
for i = 1, n do
  local kind = redis.call('TYPE', KEYS[i + 1])['ok']
  if kind == 'stream' then
    local info = redis.call('XINFO', 'STREAM', KEYS[i + 1])
    local last = '0-0'
    for k = 1, #info, 2 do
      if info[k] == 'last-generated-id' then last = info[k + 1] end
    end
    local lms, lseq = parts(last)
    local fms, fseq = parts(string.match(ARGV[3 * i + 1], '^%S+'))
    if fms < lms or (fms == lms and fseq <= lseq) then return {'behind', KEYS[i + 1], last} end
  elseif kind ~= 'none' then
    return {'type', KEYS[i + 1], kind}
  end
end
local at = 3 * n + 2
for i = 1, n do
  local key = KEYS[i + 1]
  for id in string.gmatch(ARGV[3 * i + 1], '%S+') do
    if ARGV[1] == '' then
      redis.call('XADD', key, id, 'change', ARGV[at])
    else
      redis.call('XADD', key, 'MAXLEN', '~', ARGV[1], id, 'change', ARGV[at])
    end
    at = at + 1
  end
  redis.call('HSET', KEYS[1], key, ARGV[3 * i])
end
return {'ok'}
"""
DELIVER_SHA = hashlib.sha1(DELIVER.encode()).hexdigest().encode()


class _Lengths(dict[int, bytes]):
    """``$<n>``, the Redis protocol's head of an argument of n bytes, made once per n (up
    to :data:`_LENGTHS_KEPT` lengths)."""

    def __missing__(self, n: int) -> bytes:
        head = b"$%d" % n
        if len(self) < _LENGTHS_KEPT:
            self[n] = head
        return head


_LENGTHS_KEPT = 65536


_LENGTHS = _Lengths()


def _command(keys: list[str], args: list[str], bodies: list[bytes]) -> list[bytes]:
    """``EVALSHA`` of :data:`DELIVER` with ``keys``, then ``args``, then each of ``bodies``,
    in the Redis protocol. Made in one pass here: redis-py would pack each argument in a
    Python loop of its own, and one argument per body (not one string of them all, which the
    script cut apart) spares Redis a copy of each body (half the script's time)."""
    small = [DELIVER_SHA, str(len(keys)).encode(), *(a.encode() for a in (*keys, *args))]
    parts = [*small, *bodies]
    out = [b""] * (2 * len(parts))  # each argument's length, then the argument
    out[::2] = map(_LENGTHS.__getitem__, map(len, parts))  # in C: no Python call per body
    out[1::2] = parts
    return [b"*%d\r\n$7\r\nEVALSHA\r\n" % (1 + len(parts)), b"\r\n".join(out), b"\r\n"]


@dataclass
class StreamState:
    """What the sink recorded for one stream: its last entry id and the feed positions up
    to which changes were delivered (usually one; two or three right after a crash)."""

    raw: str = ""
    last: tuple[int, int] = (0, 0)
    seen: list[Position] = field(default_factory=list)

    @classmethod
    def parse(cls, raw: str) -> StreamState:
        data = orjson.loads(raw)
        ms, _, seq = str(data["last"]).partition("-")
        return cls(raw, (int(ms), int(seq)), [Position.parse(p) for p in data["seen"]])

    def delivered(self, xid: int) -> bool:
        return any(p.seen(xid) for p in self.seen)

    def after(self, position: Position, last: tuple[int, int], forget: bool = False) -> str:
        """The record once a batch ending at ``position`` was added, up to id ``last``
        (``forget``: the positions recorded before belong to another history)."""
        seen = [] if forget else [p for p in self.seen if not p <= position]
        return orjson.dumps(
            {"last": f"{last[0]}-{last[1]}", "seen": [str(p) for p in [*seen, position]]}
        ).decode()


class _Plan:
    """The entries one stream gets in a batch: ids (increasing from the record's last),
    bodies, and the changes skipped as delivered before."""

    __slots__ = ("bodies", "forget", "ids", "known", "last", "skipped", "state")

    def __init__(self, state: StreamState) -> None:
        self.state = state
        self.last = state.last
        self.ids: list[str] = []
        self.bodies: list[bytes] = []
        self.known: dict[int, bool] = {}
        self.skipped = 0
        self.forget = False

    def extend(
        self, xids: Iterable[int], times: Iterable[datetime], bodies: Iterable[bytes]
    ) -> None:
        """Plan the messages with ``bodies`` of the changes of ``xids`` and ``times`` (their
        ``at``; all to this stream, in feed order)."""
        state, known = self.state, self.known
        add_id, add_body = self.ids.append, self.bodies.append
        recorded = state.last[0]
        ms, seq = self.last
        moment: datetime | None = None
        at = 0
        for xid, when, body in zip(xids, times, bodies, strict=True):
            if when is not moment:  # a transaction's changes share their time
                moment = when
                at = int(moment.timestamp() * 1000)
            seen = known.get(xid)
            if seen is None:
                seen = known[xid] = state.delivered(xid)
            if seen:
                if at <= recorded:
                    self.skipped += 1
                    continue
                # covered by the record's positions, yet newer than every entry the record
                # added: those positions come from another history (the database was reset
                # or restored), so they do not tell what was delivered, and are forgotten
                self.forget = True
            if at <= ms:
                seq += 1
            else:
                ms, seq = at, 0
            add_id(f"{ms}-{seq}")
            add_body(body)
        self.last = (ms, seq)


class RedisSink(Sink):
    """Adds each change to a Redis stream (``XADD``), a batch per atomic script call."""

    kind: ClassVar[str] = "Redis"
    _outages: ClassVar[tuple[type[BaseException], ...]] = (
        *Sink._outages,
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
    )
    max_changes: int = 5000
    """A batch is one script call: larger batches cost fewer feed reads, acknowledgements
    and round trips per change (over ``bench sinks``' changes: about 1.2x the changes/s
    of batches of 1000)."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379",
        stream: str = "pg:{table}",
        maxlen: int | None = None,
        *,
        state_key: str = "pgtide:sink-state",
        timeout: float = 10.0,
        **options: Unpack[SinkOptions],
    ) -> None:
        super().__init__(check_url(url, SCHEMES, "the Redis sink"), **options)
        self.stream = Template(stream, "stream")
        if maxlen is not None and (not isinstance(maxlen, int) or maxlen < 1):
            raise ConfigError(f"maxlen must be None or a positive number of entries, not {maxlen}")
        if not state_key:
            raise ConfigError("state_key must be a non-empty Redis key name")
        if timeout <= 0:
            raise ConfigError(f"timeout must be > 0 seconds, not {timeout}")
        self.maxlen = maxlen
        self.state_key = state_key
        self._timeout = timeout
        self._client: aioredis.Redis | None = None
        self._states: dict[str, StreamState] = {}

    def _destination(self, change: Change, key: str | None) -> str:
        return self.stream.render(change, key)

    async def _connect(self) -> None:
        client = aioredis.Redis.from_url(
            self.url,
            socket_connect_timeout=self._timeout,
            socket_timeout=self._timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._client = client
        await client.ping()

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        self._states.clear()  # read afresh: a failed call may have been applied
        if client is not None:
            await client.aclose()

    async def _load(self, streams: list[str]) -> None:
        client = self._client
        assert client is not None
        missing = [s for s in streams if s not in self._states]
        if not missing:
            return
        raws = await client.hmget(self.state_key, missing)
        for stream, raw in zip(missing, raws, strict=True):
            if raw is not None:
                text = raw.decode() if isinstance(raw, bytes) else str(raw)
                self._states[stream] = StreamState.parse(text)
                continue
            state = StreamState()
            try:  # a stream written before (without a record): go on after its last id
                info = await client.execute_command("XINFO", "STREAM", stream)  # type: ignore[no-untyped-call]
                found = dict(zip(info[::2], info[1::2], strict=False))
                last = found.get(b"last-generated-id", b"0-0").decode()
                ms, _, seq = last.partition("-")
                state.last = (int(ms), int(seq))
            except redis.exceptions.ResponseError:
                pass  # no such stream (or not a stream: the script says so)
            self._states[stream] = state

    async def _deliver(self, batch: BatchLike, messages: Messages) -> None:
        streams = list(dict.fromkeys(messages.dests))
        for _ in range(3):
            await self._load(streams)
            if await self._try(batch, messages, streams):
                return
            self._states.clear()  # another writer changed the record: read it again
        raise SinkError(
            f"{self}: the delivery record {self.state_key!r} keeps changing; is another sink "
            "writing the same streams with the same state_key?"
        )

    async def _try(self, batch: BatchLike, messages: Messages, streams: list[str]) -> bool:
        states = self._states
        plans = {s: _Plan(states[s]) for s in streams}
        if len(plans) == 1:
            plans[streams[0]].extend(messages.xids, messages.times, messages.bodies)
        else:
            each: dict[str, tuple[list[int], list[datetime], list[bytes]]] = {
                s: ([], [], []) for s in streams
            }
            for xid, when, body, dest in zip(
                messages.xids, messages.times, messages.bodies, messages.dests, strict=True
            ):
                xids, times, bodies = each[dest]
                xids.append(xid)
                times.append(when)
                bodies.append(body)
            for stream, plan in plans.items():
                plan.extend(*each[stream])
        skipped = sum(p.skipped for p in plans.values())
        touched = {s: p for s, p in plans.items() if p.ids}
        if not touched:
            self.counts.duplicates += skipped
            return True
        args = ["" if self.maxlen is None else str(self.maxlen)]
        new: dict[str, str] = {}
        for stream, plan in touched.items():
            if plan.forget:
                log.warning(
                    "%s: the record of stream %r holds feed positions of another history "
                    "(the database was reset or restored); they are forgotten",
                    self,
                    stream,
                )
            new[stream] = plan.state.after(batch.position, plan.last, plan.forget)
            args += (plan.state.raw, new[stream], " ".join(plan.ids))
        sending = list(touched.values())
        bodies = sending[0].bodies if len(sending) == 1 else [b for p in sending for b in p.bodies]
        reply = await self._call(_command([self.state_key, *touched], args, bodies))
        status = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        if status == "stale":
            return False
        if status == "behind":
            raise SinkError(
                f"Redis stream {reply[1].decode()!r} already has entries up to id "
                f"{reply[2].decode()}, past what this sink recorded in {self.state_key!r}: "
                "another program adds to it; give this sink a stream of its own"
            )
        if status == "type":
            raise SinkError(
                f"Redis key {reply[1].decode()!r} is a {reply[2].decode()}, not a stream"
            )
        for stream, text in new.items():
            states[stream] = StreamState.parse(text)
        self.counts.delivered += sum(len(p.ids) for p in touched.values())
        self.counts.duplicates += skipped
        return True

    async def _call(self, command: list[bytes]) -> Any:
        """The reply to ``command`` (an ``EVALSHA`` of :data:`DELIVER`), loading the script
        first if Redis does not hold it (a restart or ``SCRIPT FLUSH`` forgets it)."""
        client = self._client
        assert client is not None
        for _ in range(2):
            pool = client.connection_pool
            conn = await pool.get_connection()  # type: ignore[no-untyped-call]
            try:
                await conn.send_packed_command(command)
                return await conn.read_response()
            except redis.exceptions.NoScriptError:
                pass  # nothing ran: load the script, then send the batch again
            except BaseException:
                await conn.disconnect()  # a reply may still come: the connection is spent
                raise
            finally:
                await pool.release(conn)
            await client.script_load(DELIVER)
        raise SinkError(f"{self}: Redis keeps forgetting the delivery script")

    def _describe(self) -> str:
        return f"stream={self.stream.text!r} maxlen={self.maxlen}"
