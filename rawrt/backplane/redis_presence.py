"""Presence across nodes through Redis: each node's counts, kept with a time to live.

Theory of operation
-------------------
Per channel C, on the Redis that holds C (the same shard as its messages: pick_shard):

    {prefix}:presence:{C}        hash   node id -> that node's report (rawrt.presence)
    {prefix}:presence:{C}:nodes  zset   node id -> when its report expires (ms, Redis clock)

From the server's sweep, every third of `presence_ttl_s`, a node sends the report of every
busy channel (REPORT: HSET, ZADD with Redis's own TIME plus the ttl, PEXPIRE of both keys),
and a LEAVE for each channel it reported before and holds no subscriber of now: one pipeline
per Redis, one round trip, never two in flight. The number of calls is bounded by
max_channels, each report's size by presence_max_users.

An answer (READ) first drops the reports whose time has passed, then returns the others;
this node's own, possibly older, is replaced by its fresh counts. A node that dies stops
reporting: its counts vanish from every answer within `presence_ttl_s`, and both keys expire
once no node reports the channel. Expiry is judged on the Redis clock alone, so the nodes'
clocks need not agree. A node id is the server's run id, new at every start. The board
keeps clients of its own (rawrt.backplane.redis_calls.client_for: a URL or a Sentinel
master, followed through failovers), at most two connections per Redis on top of the
backplane's `redis_max_connections`, so presence never queues behind publishes.

Join/leave events (`--presence-events`, rawrt.presence_events) travel on the channel's own
pub/sub topic, where the nodes that hold the channel already listen, as a plain PUBLISH of
`"!e <node> <event JSON>"` (no message payload starts with `!`: those start with an epoch).
An `EventSender` sends them, fire and forget: queued (at most presence_events_max_pending,
then dropped), one pipeline at a time on a connection of its own per Redis (`rawrt-events`),
so events never take a publish's or a snapshot's connection. A pipeline that fails is
dropped, not retried: an event is at most once, and a Redis outage loses the events of its
time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisError

from rawrt.backplane.board import Reports
from rawrt.backplane.redis_calls import client_for
from rawrt.backplane.sharded import pick_shard
from rawrt.config import Config, redis_address, redis_urls
from rawrt.errors import BackplaneUnavailable
from rawrt.presence import Presence, merge

__all__ = ["EventSender", "RedisBoard"]

log = logging.getLogger("rawrt")

# Connections the board holds per Redis, apart from the backplane's redis_max_connections
# (Redis lists them as `{prefix}-presence`): a report and an answer may be in flight at once;
# more answers wait their turn.
_CONNECTIONS = 2

_NOW_MS = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000) "
# KEYS: hash, zset. ARGV: node, report, ttl in ms.
_REPORT = (
    _NOW_MS + "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) "
    "redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1]) "
    "redis.call('PEXPIRE', KEYS[1], ARGV[3]) redis.call('PEXPIRE', KEYS[2], ARGV[3]) return 1"
)
# KEYS: hash, zset. ARGV: node.
_LEAVE = "redis.call('HDEL', KEYS[1], ARGV[1]) redis.call('ZREM', KEYS[2], ARGV[1]) return 1"
# KEYS: hash, zset. Returns the live reports as [node, report, node, report, ...].
_READ = (
    _NOW_MS + "local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now) "
    "for _, node in ipairs(dead) do redis.call('HDEL', KEYS[1], node) end "
    "if #dead > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now) end "
    "return redis.call('HGETALL', KEYS[1])"
)


def _client(
    config: Config, url: str | None, master: str | None
) -> tuple[aioredis.Redis, Sentinel | None]:
    """A client like the backplane's (client_for: timeouts, no retry, Sentinel), with a pool
    of its own size and name, and the Sentinel that finds its primary (None for a URL)."""
    client, sentinel = client_for(config, url, master)
    pool = client.connection_pool
    pool.max_connections = _CONNECTIONS
    pool.connection_kwargs["client_name"] = f"{config.redis_prefix}-presence"
    return client, sentinel


class RedisBoard:
    """The presence board of a node with one Redis or several (shards)."""

    def __init__(self, config: Config, node_id: str) -> None:
        self._config = config
        self._node = node_id
        self._ttl_ms = max(1, int(config.presence_ttl_s * 1000))
        # One client per shard, under the id the backplane gives it (its address, or its
        # Sentinel master's name), so a channel's presence sits beside its messages.
        made: dict[str, tuple[aioredis.Redis, Sentinel | None]] = {}
        if config.redis_url:
            for url in redis_urls(config.redis_url):
                made[redis_address(url)] = _client(config, url, None)
        else:
            for name in (config.redis_master or "").split(","):
                made[name.strip()] = _client(config, None, name.strip())
        self._clients = {shard: client for shard, (client, _) in made.items()}
        self._sentinels = [sentinel for _, sentinel in made.values() if sentinel is not None]
        # Each call holds a pooled connection while in flight: never more calls than the pool
        # holds (a pool asked for one more refuses rather than waits).
        self._slots = asyncio.Semaphore(_CONNECTIONS)
        self._scripts = {
            shard: (c.register_script(_REPORT), c.register_script(_LEAVE), c.register_script(_READ))
            for shard, c in self._clients.items()
        }
        self._shards = sorted(self._clients)
        self._reported: set[str] = set()  # channels whose report this node last sent
        self._next_report = 0.0
        self._reporting: asyncio.Task[None] | None = None

    async def start(self) -> None:
        pass  # connections open on first use; a Redis down now is retried at each report

    async def stop(self) -> None:
        if self._reporting is not None:
            self._reporting.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                await self._reporting
        # Leave at once rather than linger for the ttl: this node's clients are gone.
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await asyncio.wait_for(self._send({}), self._config.redis_timeout_s)
        for client in self._clients.values():
            await client.aclose(close_connection_pool=True)  # also a Sentinel master's pool
        for sentinel in self._sentinels:
            with contextlib.suppress(RedisError, OSError):
                await sentinel.aclose()

    def _keys(self, channel: str) -> list[str]:
        key = f"{self._config.redis_prefix}:presence:{{{channel}}}"
        return [key, key + ":nodes"]

    def _shard(self, channel: str) -> str:
        return pick_shard(self._shards, channel) if len(self._shards) > 1 else self._shards[0]

    # --- reporting -------------------------------------------------------------------------

    def report(self, now: float, local: Reports) -> None:
        if now < self._next_report or self._reporting is not None:
            return
        self._next_report = now + self._config.presence_ttl_s / 3
        self._reporting = asyncio.ensure_future(self._report(local()))
        self._reporting.add_done_callback(self._reported_one)

    def _reported_one(self, task: asyncio.Task[None]) -> None:
        self._reporting = None
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not report presence to Redis: %s", task.exception())

    async def _report(self, presences: dict[str, Presence]) -> None:
        async with self._slots:
            await asyncio.wait_for(self._send(presences), self._config.redis_timeout_s)

    async def _send(self, presences: dict[str, Presence]) -> None:
        """One pipeline per Redis: a REPORT per busy channel, a LEAVE per one gone quiet."""
        pipes = {shard: self._clients[shard].pipeline(transaction=False) for shard in self._shards}
        try:
            await self._fill_and_send(pipes, presences)
        finally:  # a pipeline left unreset (a timeout, no primary) warns when collected
            for pipe in pipes.values():
                await pipe.reset()  # type: ignore[no-untyped-call]

    async def _fill_and_send(self, pipes: dict[str, Any], presences: dict[str, Presence]) -> None:
        for channel, presence in presences.items():
            shard = self._shard(channel)
            report = self._scripts[shard][0]
            args = (self._node, presence.report(), self._ttl_ms)
            await report(keys=self._keys(channel), args=args, client=pipes[shard])
        for channel in self._reported - presences.keys():
            shard = self._shard(channel)
            await self._scripts[shard][1](
                keys=self._keys(channel), args=[self._node], client=pipes[shard]
            )
        sent = [pipe.execute() for pipe in pipes.values() if len(pipe)]
        self._reported = set(presences)
        await asyncio.gather(*sent)

    # --- answering -------------------------------------------------------------------------

    def presence(self, channel: str, local: Presence) -> asyncio.Future[Presence]:
        return asyncio.ensure_future(self._presence(channel, local))

    async def _presence(self, channel: str, local: Presence) -> Presence:
        shard = self._shard(channel)
        read = self._scripts[shard][2]
        try:
            async with asyncio.timeout(self._config.redis_timeout_s), self._slots:
                flat: list[Any] = await read(keys=self._keys(channel))
        except (RedisError, OSError, TimeoutError) as exc:
            raise BackplaneUnavailable(f"presence unavailable: {exc or 'timed out'}") from None
        others = []
        for node, text in zip(flat[::2], flat[1::2], strict=True):
            if node.decode() == self._node:
                continue  # this node's own counts are fresher than its last report
            try:
                others.append(Presence.from_report(text))
            except ValueError as exc:
                log.warning("ignoring node %r's presence of %r: %s", node, channel, exc)
        return merge([local, *others], self._config.presence_max_users)


# Events sent in one pipeline at most.
_EVENT_BATCH = 256


class EventSender:
    """PUBLISHes of join/leave events to one Redis, fire and forget (module docstring)."""

    def __init__(self, config: Config, url: str | None, master: str | None) -> None:
        self._config = config
        self._client, self._sentinel = client_for(config, url, master)
        pool = self._client.connection_pool
        pool.max_connections = 1  # one pipeline in flight at a time
        pool.connection_kwargs["client_name"] = f"{config.redis_prefix}-events"
        self._queue: deque[tuple[str, str]] = deque()
        self._queued = asyncio.Event()
        self.dropped = 0  # events lost to a full queue or a failed pipeline

    def send(self, topic: str, payload: str) -> None:
        """Queue one PUBLISH; dropped when presence_events_max_pending are waiting."""
        if len(self._queue) >= self._config.presence_events_max_pending:
            self.dropped += 1
            return
        self._queue.append((topic, payload))
        self._queued.set()

    async def serve(self) -> None:
        """Send what is queued, a pipeline at a time, forever (cancel to stop)."""
        while True:
            await self._queued.wait()
            batch = [self._queue.popleft() for _ in range(min(_EVENT_BATCH, len(self._queue)))]
            if not self._queue:
                self._queued.clear()
            try:
                async with asyncio.timeout(self._config.redis_timeout_s):
                    async with self._client.pipeline(transaction=False) as pipe:
                        for topic, payload in batch:
                            pipe.publish(topic, payload)
                        await pipe.execute()
            except (RedisError, OSError, TimeoutError) as exc:
                self.dropped += len(batch)
                log.info("dropped %d presence events: Redis: %s", len(batch), exc)

    async def stop(self) -> None:
        await self._client.aclose(close_connection_pool=True)
        if self._sentinel is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._sentinel.aclose()
