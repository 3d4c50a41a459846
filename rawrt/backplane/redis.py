"""The Redis backplane: ids, history and fan-out between nodes, with nothing lost.

Theory of operation
-------------------
Redis holds, per channel C, a hash `{prefix}:{C}:h` (the history's epoch `e` and last
sequence number `s`) and a capped stream `{prefix}:{C}:x` (the history: entry `<seq>-0`
with fields `d`, the data's JSON, and `t`, the timestamp). One Lua script numbers a publish,
appends it to the stream and PUBLISHes `"<epoch> <seq> <ts> <data>"` on `{prefix}:m:C`, all
atomically: one round trip per publish, and a node's queued publishes share one pipeline.

A node subscribes to a channel's pub/sub only while it has local subscribers (plus a short
linger), one subscription per channel, never per client. Attaching is:

1. SUBSCRIBE, and wait for Redis to confirm it: from then on every publish reaches us;
2. a snapshot of the history (the second script: epoch, head, newest entries), which the
   hub takes with `sync()`; messages that arrive meanwhile are held and applied after.

Pub/sub is at most once, so every message is checked against the hub's head: a hole in the
sequence, or a different epoch, makes the node take a fresh snapshot (`sync()` fills the
hole from history, or resets readers when history no longer covers it). After the pub/sub
connection drops, every attached channel is resubscribed and re-synced the same way, so a
node that missed messages fetches them. If Redis lost the history (a restart without
persistence, a flush), the scripts start a new epoch and readers get a reset, never a gap.

While Redis is unreachable, live subscribers stay connected, publishes fail fast with
BackplaneUnavailable (503), `ready` is False, and the node reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import deque
from collections.abc import Coroutine
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from rawrt.config import Config
from rawrt.errors import BackplaneUnavailable, HubFull
from rawrt.hub import Entry, Hub
from rawrt.wire.ids import format_id, to_base36

__all__ = ["RedisBackplane"]

log = logging.getLogger("rawrt")

# Both scripts start here. KEYS: hash, stream. ARGV[1]: a candidate epoch, ARGV[2]: ttl
# seconds (0: keep). A missing hash means the history is gone (or never was): start a new
# epoch and drop any stream left behind, so ids of the old lifetime can never match.
_EPOCH = """
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 's', 0)
end
if tonumber(ARGV[2]) > 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
"""

# ARGV[3..6]: data, timestamp, history size, pub/sub channel. Returns the epoch and seq.
_PUBLISH = (
    _EPOCH
    + """
local seq = redis.call('HINCRBY', KEYS[1], 's', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], seq .. '-0', 'd', ARGV[3], 't', ARGV[4])
redis.call('PUBLISH', ARGV[6], epoch .. ' ' .. seq .. ' ' .. ARGV[4] .. ' ' .. ARGV[3])
return {epoch, seq}
"""
)

# ARGV[3]: history size. Returns the epoch, the head seq and the newest entries, newest
# first: one consistent snapshot.
_SNAPSHOT = (
    _EPOCH
    + """
local seq = redis.call('HGET', KEYS[1], 's')
return {epoch, seq, redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[3])}
"""
)

# What a client is told when Redis cannot be used.
_UNAVAILABLE = "the backplane (Redis) is unavailable"
# A pub/sub connection quiet for this long is pinged.
_QUIET_S = 1.0
# Publishes sent in one pipeline at most; more wait for the next round trip.
_BATCH = 256
# Reconnection backoff, doubling from the first to the last.
_BACKOFF_S = (0.05, 5.0)
# Messages held per channel while its snapshot is taken; past this the snapshot is retaken.
_HELD_MAX = 10_000


class _Attachment:
    """A channel this node is subscribed to, or subscribing to."""

    __slots__ = ("confirmed", "held", "idle_since", "ready", "syncing")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.confirmed: asyncio.Future[None] = loop.create_future()  # SUBSCRIBE acknowledged
        self.ready: asyncio.Future[None] = loop.create_future()  # the hub has the channel
        self.held: list[tuple[str, Entry]] | None = []  # None once live
        self.idle_since: float | None = None
        self.syncing: asyncio.Future[None] | None = None  # a re-sync in progress


class RedisBackplane:
    assigns_ids_locally = False

    def __init__(self, config: Config, *, url: str | None = None) -> None:
        url = url or config.redis_url
        assert url
        self._config = config
        self._prefix = config.redis_prefix
        self._client = aioredis.Redis.from_url(
            url,
            socket_timeout=config.redis_timeout_s,
            socket_connect_timeout=config.redis_timeout_s,
            # One retry, at once: enough to replace a pooled connection a Redis restart left
            # dead, not enough to hang a publish while Redis is down.
            retry=Retry(NoBackoff(), 1),
            decode_responses=False,
        )
        self._publish_script = self._client.register_script(_PUBLISH)
        self._snapshot_script = self._client.register_script(_SNAPSHOT)
        self._hub: Hub | None = None
        self._attached: dict[str, _Attachment] = {}
        self._queue: deque[tuple[str, str, int, asyncio.Future[str]]] = deque()
        self._queued = asyncio.Event()
        self._pubsub: PubSub | None = None
        self._connected = False
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()  # held so they are not collected

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._connected

    async def start(self, hub: Hub) -> None:
        """Start the publisher and the pub/sub reader; returns without waiting for Redis."""
        self._hub = hub
        self._tasks = [
            asyncio.create_task(self._publisher(), name="rawrt-redis-publisher"),
            asyncio.create_task(self._reader(), name="rawrt-redis-reader"),
        ]

    async def stop(self) -> None:
        for task in [*self._tasks, *self._background]:
            task.cancel()
        for task in [*self._tasks, *self._background]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._fail_queue(BackplaneUnavailable("server stopping"))
        await self._close_pubsub()
        await self._client.aclose()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- publishing ------------------------------------------------------------------------

    def publish(self, channel: str, data_json: str, timestamp_ms: int) -> asyncio.Future[str]:
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        if len(self._queue) >= self._config.max_pending_publishes:
            future.set_exception(BackplaneUnavailable("too many publishes waiting for Redis"))
            return future
        self._queue.append((channel, data_json, timestamp_ms, future))
        self._queued.set()
        return future

    async def _publisher(self) -> None:
        """Send queued publishes in order, a pipeline of up to _BATCH per round trip."""
        while True:
            await self._queued.wait()
            batch = [self._queue.popleft() for _ in range(min(_BATCH, len(self._queue)))]
            if not self._queue:
                self._queued.clear()
            try:
                results = await self._run_batch(batch)
            except (RedisError, OSError) as exc:
                log.warning("publishing %d messages failed: %s", len(batch), exc)
                results = [BackplaneUnavailable(_UNAVAILABLE)] * len(batch)
            except Exception:  # a bug: fail these publishes, keep serving the next ones
                log.exception("bug in the Redis publisher")
                results = [BackplaneUnavailable("internal error")] * len(batch)
            for (_, _, _, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(_unavailable(result))
                else:
                    future.set_result(format_id(result[0].decode(), int(result[1])))

    async def _run_batch(self, batch: list[tuple[str, str, int, asyncio.Future[str]]]) -> list[Any]:
        # Not redis-py's Script helper: in a pipeline it sends SCRIPT EXISTS before every
        # execute(), a second round trip per batch (per publish, when they come one at a
        # time), and on failure it keeps a pool connection. SCRIPT LOAD (idempotent, cheap
        # when cached) goes first in the same pipeline instead: Redis runs one client's
        # commands in order, so every EVALSHA after it finds the script, even right after a
        # restart emptied the script cache. One round trip per batch.
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.script_load(_PUBLISH)
            for channel, data_json, timestamp_ms, _ in batch:
                pipe.evalsha(
                    self._publish_script.sha,
                    2,
                    *self._keys(channel),
                    _new_epoch(),
                    self._config.redis_history_ttl_s,
                    data_json,
                    timestamp_ms,
                    self._config.history_size,
                    self._topic(channel),
                )
            results = list(await pipe.execute(raise_on_error=False))
        # The load's own answer does not matter: had it failed, each EVALSHA says so itself.
        return results[1:]

    def _fail_queue(self, error: BaseException) -> None:
        while self._queue:
            future = self._queue.popleft()[3]
            if not future.done():
                future.set_exception(error)

    # --- attaching channels ----------------------------------------------------------------

    def attach(self, channel: str, since: str | None = None) -> asyncio.Future[None] | None:
        attachment = self._attached.get(channel)
        if attachment is not None and attachment.ready.done() and self._hub_has(channel):
            assert self._hub is not None
            if since is None or not self._hub.is_ahead(channel, since):
                return None
            # A client saw a newer message on another node than this one has heard of yet:
            # fetch it from the shared history rather than call the client's position lost.
            syncing = self._start_sync(channel, attachment)
            return asyncio.ensure_future(self._synced_within_timeout(syncing))
        if attachment is None:
            attachment = self._attached[channel] = _Attachment(asyncio.get_running_loop())
            self._spawn(self._attach(channel, attachment))
        return attachment.ready

    async def _synced_within_timeout(self, syncing: asyncio.Future[None]) -> None:
        """Wait for a re-sync, but no longer than redis_timeout_s.

        A re-sync retries until Redis answers; while Redis is down, a client bringing a newer
        id would wait as long (a poll past its own timeout, an SSE stream without its head).
        It gets the unavailable answer instead: 503, or SSE's retry.
        """
        try:
            await asyncio.wait_for(asyncio.shield(syncing), self._config.redis_timeout_s)
        except TimeoutError:
            raise BackplaneUnavailable("Redis: cannot fetch the history") from None

    def _hub_has(self, channel: str) -> bool:
        return self._hub is not None and self._hub.has(channel)

    async def _attach(self, channel: str, attachment: _Attachment) -> None:
        try:
            if self._pubsub is None or not self._connected:
                raise BackplaneUnavailable("Redis is not connected")
            await self._pubsub.subscribe(self._topic(channel))
            await asyncio.wait_for(
                asyncio.shield(attachment.confirmed), self._config.redis_timeout_s
            )
            await self._sync(channel, attachment)
        except (TimeoutError, RedisError, OSError, BackplaneUnavailable, HubFull) as exc:
            # HubFull: every channel slot here is busy; the waiting client is told so.
            if self._attached.get(channel) is attachment:
                self._detach(channel)
            if not attachment.ready.done():
                attachment.ready.set_exception(
                    exc if isinstance(exc, HubFull) else _unavailable(exc)
                )
            return
        if not attachment.ready.done():
            attachment.ready.set_result(None)

    async def _sync(self, channel: str, attachment: _Attachment) -> None:
        """Take a snapshot into the hub, then apply what arrived meanwhile (bounded retries)."""
        assert self._hub is not None
        for _ in range(5):
            attachment.held = attachment.held if attachment.held is not None else []
            epoch, head, entries = await self._snapshot(channel)
            if self._attached.get(channel) is not attachment:
                return  # detached meanwhile
            self._hub.sync(channel, epoch, head, entries)
            held, attachment.held = attachment.held, None
            if held is not None and all(self._hub.accept(channel, e, m) for e, m in held):
                return
            attachment.held = []  # a hole even after the snapshot: take another
        raise BackplaneUnavailable(f"could not sync channel {channel!r}")

    async def _snapshot(self, channel: str) -> tuple[str, int, list[Entry]]:
        epoch, head, raw = await self._snapshot_script(
            keys=self._keys(channel),
            args=[_new_epoch(), self._config.redis_history_ttl_s, self._config.history_size],
        )
        entries = [_entry(entry_id, fields) for entry_id, fields in reversed(raw)]
        return epoch.decode(), int(head), entries

    def on_evict(self, channel: str) -> None:
        self._detach(channel)

    def sweep(self, now: float) -> None:
        """Unsubscribe from channels that have had no local subscriber for the linger time."""
        if self._hub is None:
            return
        for channel, attachment in list(self._attached.items()):
            if not attachment.ready.done() or not self._hub.is_idle(channel):
                attachment.idle_since = None
            elif attachment.idle_since is None:
                attachment.idle_since = now
            elif now - attachment.idle_since >= self._config.redis_linger_s and self._hub.drop(
                channel
            ):
                self._detach(channel)

    def _detach(self, channel: str) -> None:
        if self._attached.pop(channel, None) is not None and self._pubsub is not None:
            self._spawn(self._unsubscribe(channel))

    async def _unsubscribe(self, channel: str) -> None:
        if self._pubsub is not None and channel not in self._attached:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.unsubscribe(self._topic(channel))

    # --- the pub/sub reader ----------------------------------------------------------------

    async def _reader(self) -> None:
        """Keep one pub/sub connection, resubscribing and re-syncing after each loss."""
        delay = _BACKOFF_S[0]
        while True:
            try:
                await self._connect()
                delay = _BACKOFF_S[0]
                await self._read_messages()
            except (TimeoutError, RedisError, OSError) as exc:
                if self._connected:
                    log.warning("lost Redis (%s); reconnecting", exc)
                self._connected = False
                await self._close_pubsub()
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_S[1])

    async def _connect(self) -> None:
        pubsub = self._client.pubsub()
        # A channel of our own keeps the connection subscribed even with no channel attached.
        await pubsub.subscribe(f"{self._prefix}:node:{_new_epoch()}")
        self._pubsub = pubsub
        channels = list(self._attached.items())
        for _, attachment in channels:
            attachment.confirmed = asyncio.get_running_loop().create_future()
            attachment.held = []
        if channels:
            await pubsub.subscribe(*(self._topic(c) for c, _ in channels))
        self._connected = True
        log.info("connected to Redis; %d channels to re-sync", len(channels))
        for channel, attachment in channels:
            self._start_sync(channel, attachment)

    def _start_sync(self, channel: str, attachment: _Attachment) -> asyncio.Future[None]:
        """Re-sync an attached channel, retrying with backoff until it works or is detached."""
        if attachment.syncing is None or attachment.syncing.done():
            attachment.syncing = asyncio.get_running_loop().create_future()
            self._spawn(self._sync_until_done(channel, attachment, attachment.syncing))
        return attachment.syncing

    async def _sync_until_done(
        self, channel: str, attachment: _Attachment, done: asyncio.Future[None]
    ) -> None:
        delay = _BACKOFF_S[0]
        while self._attached.get(channel) is attachment:
            try:
                await asyncio.wait_for(
                    asyncio.shield(attachment.confirmed), self._config.redis_timeout_s
                )
                await self._sync(channel, attachment)
                break
            except (TimeoutError, RedisError, OSError, BackplaneUnavailable) as exc:
                log.warning("sync of %r failed (%s); retrying in %.2f s", channel, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_S[1])
        if not done.done():
            done.set_result(None)

    async def _read_messages(self) -> None:
        """Deliver pub/sub messages; ping the pub/sub connection itself when it is quiet.

        NOTES: a subscriber connection can look alive while delivering nothing, and only a
        PING on that very connection, with a deadline for its pong, tells.
        """
        pubsub, loop = self._pubsub, asyncio.get_running_loop()
        assert pubsub is not None
        ping_sent: float | None = None
        while True:
            message = await pubsub.get_message(timeout=_QUIET_S)
            if message is not None:
                ping_sent = None  # any traffic shows the connection is alive
                if message["type"] != "pong":
                    self._on_message(message)
            elif ping_sent is None:
                await pubsub.ping()
                ping_sent = loop.time()
            elif loop.time() - ping_sent > self._config.redis_timeout_s:
                raise TimeoutError("the pub/sub connection stopped answering")

    def _on_message(self, message: dict[str, Any]) -> None:
        topic = message["channel"].decode()
        if not topic.startswith(self._prefix + ":m:"):
            return
        channel = topic[len(self._prefix) + 3 :]
        attachment = self._attached.get(channel)
        if attachment is None:
            return
        if message["type"] == "subscribe":
            if not attachment.confirmed.done():
                attachment.confirmed.set_result(None)
        elif message["type"] == "message":
            self._on_publish(channel, attachment, message["data"])

    def _on_publish(self, channel: str, attachment: _Attachment, payload: bytes) -> None:
        epoch, seq, ts, data = payload.split(b" ", 3)
        item = (epoch.decode(), Entry(int(seq), int(ts), data.decode()))
        if attachment.held is not None:
            if len(attachment.held) < _HELD_MAX:
                attachment.held.append(item)
            return
        assert self._hub is not None
        if not self._hub.accept(channel, *item):
            log.info("gap or new epoch on %r at seq %s; syncing from history", channel, seq)
            attachment.held = [item]
            self._start_sync(channel, attachment)

    async def _close_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    # --- names -----------------------------------------------------------------------------

    def _keys(self, channel: str) -> list[str]:
        # The braces are a Redis Cluster hash tag: both keys of a channel share a slot.
        return [f"{self._prefix}:{{{channel}}}:h", f"{self._prefix}:{{{channel}}}:x"]

    def _topic(self, channel: str) -> str:
        return f"{self._prefix}:m:{channel}"


def _new_epoch() -> str:
    """A candidate epoch; used only if Redis holds none for the channel."""
    return to_base36(secrets.randbits(40))


def _entry(entry_id: bytes, fields: list[bytes]) -> Entry:
    values = dict(zip(fields[::2], fields[1::2], strict=True))
    return Entry(int(entry_id.split(b"-")[0]), int(values[b"t"]), values[b"d"].decode())


def _unavailable(exc: BaseException) -> BackplaneUnavailable:
    if isinstance(exc, BackplaneUnavailable):
        return exc
    log.info("Redis call failed: %s", exc)
    return BackplaneUnavailable(_UNAVAILABLE)  # clients learn no addresses or internals
