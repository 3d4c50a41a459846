"""The Redis backplane: ids, history and fan-out between nodes, with nothing lost.

Theory of operation
-------------------
Redis holds, per channel C, a hash (the history's epoch, last sequence number and the
identity of the Redis lineage that wrote it) and a capped stream (the history); the Lua
scripts of `rawrt.backplane.redis_scripts` number a publish, append it and PUBLISH
`"<epoch> <seq> <ts> <data>"` on `{prefix}:m:C`, all atomically, and start a new epoch
whenever the live Redis is not the lineage that wrote the channel: after a restart or a
failover, when Redis may have lost acknowledged writes, ids are never reused (that module
says why this is race-free).

A node subscribes to a channel's pub/sub only while it has local subscribers (plus a short
linger), one subscription per channel, never per client. Attaching is:

1. SUBSCRIBE, and wait for Redis to confirm it: from then on every publish reaches us;
2. a snapshot of the history (epoch, head, newest entries), which the hub takes with
   `sync()`; messages that arrive meanwhile are held and applied after.

Pub/sub is at most once, so every message is checked against the hub's head: a hole in the
sequence, or a different epoch, makes the node take a fresh snapshot (`sync()` fills the
hole from history, or resets readers when history no longer covers it). After the pub/sub
connection drops, every attached channel is resubscribed and re-synced the same way, so a
node that missed messages fetches them, and a node whose Redis restarted or failed over
resets its readers at once (the snapshot starts the new epoch), whether or not anything is
published afterwards.

Connections: one pub/sub connection, one for publishes and the rest (redis_max_connections
in all) for snapshots. Work queues for them instead of opening more: publishes queued
together share one pipeline, snapshots too (`redis_calls.ScriptQueue`, one worker per
connection), and SUBSCRIBE/UNSUBSCRIBE wishes made together go out as one command each.
A burst of attaches (a node restarting, its clients coming back) costs a few round trips,
not a connection each; past redis_max_pending_attaches channels waiting, a new one is
refused like any overload (503, an error frame, SSE's retry).

Redis is found by URL or through Sentinel (`master_for`): every new connection asks the
Sentinels for the primary, and the pub/sub reader checks each second that its connection is
still on the primary Sentinel names, so both connections follow a failover. While Redis is
unreachable, live subscribers stay connected, publishes fail within redis_timeout_s with
BackplaneUnavailable (503), `ready` is False, and the node reconnects with backoff.

Join/leave events (`--presence-events`) ride the channel's topic too, as `"!e <node> <JSON>"`
PUBLISHed by an `EventSender` (rawrt.backplane.redis_presence); the reader hands other
nodes' to the listener and skips its own echo, which this node has delivered already.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from typing import Any

from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from rawrt.backplane.redis_calls import ScriptQueue, client_for, unavailable
from rawrt.backplane.redis_presence import EventSender
from rawrt.backplane.redis_scripts import PUBLISH, SNAPSHOT
from rawrt.config import Config
from rawrt.errors import BackplaneUnavailable, HubFull
from rawrt.hub import Entry, Hub
from rawrt.wire.ids import format_id, to_base36

__all__ = ["RedisBackplane"]

log = logging.getLogger("rawrt")

# A pub/sub connection quiet for this long is pinged.
_QUIET_S = 1.0
# Channels named in one SUBSCRIBE or UNSUBSCRIBE command at most.
_SUBSCRIBE_BATCH = 1000
# With Sentinel, the reader checks this often that its connection is still on the primary.
_PRIMARY_CHECK_S = 1.0
# Connections that are not for snapshots: pub/sub and publishes.
_OTHER_CONNECTIONS = 2
# Reconnection backoff, doubling from the first to the last.
_BACKOFF_S = (0.05, 5.0)
# Tries of one step of an attach (SUBSCRIBE confirmed, snapshot) while Redis stays connected.
_TRIES = 3
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


_Snapshot = tuple[str, int, list[Entry]]


class RedisBackplane:
    """One Redis (by `url`) or one Sentinel group (by `master`); see the module docstring.

    With neither, the target comes from the config: redis_url, else redis_master through
    redis_sentinel.
    """

    assigns_ids_locally = False

    def __init__(self, config: Config, *, url: str | None = None, master: str | None = None):
        assert url is None or master is None, "one target: a URL or a Sentinel master"
        self._config = config
        self._prefix = config.redis_prefix
        self._client, self._sentinel = client_for(config, url, master)
        timeout_s = config.redis_timeout_s
        self._publishes = ScriptQueue(
            self._client, PUBLISH, _message_id, timeout_s=timeout_s,
            limit=config.max_pending_publishes, what="publishes", deadline=True,
        )  # fmt: skip
        # At most one snapshot per attachment being synced: max_channels plus the pending
        # attaches. The bound is a backstop.
        self._snapshots = ScriptQueue(
            self._client, SNAPSHOT, _snapshot_of, timeout_s=timeout_s,
            limit=config.max_channels + config.redis_max_pending_attaches, what="snapshots",
            deadline=False,
        )  # fmt: skip
        self._hub: Hub | None = None
        self._attached: dict[str, _Attachment] = {}
        self._attaching = 0  # attachments not ready yet (bounded: redis_max_pending_attaches)
        self._wishes: dict[str, bool] = {}  # pub/sub topic -> subscribe (True) or not, to send
        self._wished = asyncio.Event()
        self._pubsub: PubSub | None = None
        self._connected = False
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()  # held so they are not collected
        # Read by rawrt.metrics: seconds from a message's publish (its timestamp, the
        # publishing node's clock) to its arrival here over pub/sub, for the last one.
        self.pubsub_lag_s = 0.0
        # Join/leave events (module docstring): None unless presence_events is on.
        self._events = EventSender(config, url, master) if config.presence_events else None
        self._event_mark = f"!e {_new_epoch()} "  # this node's: its echo is skipped
        self._on_event: Callable[[str, str], None] | None = None

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def on_round_trip(self) -> Callable[[float], None]:
        """Called with each publish pipeline's round trip, in seconds (rawrt.metrics)."""
        return self._publishes.on_round_trip

    @on_round_trip.setter
    def on_round_trip(self, observe: Callable[[float], None]) -> None:
        self._publishes.on_round_trip = observe

    @property
    def ready(self) -> bool:
        return self._connected

    async def start(self, hub: Hub) -> None:
        """Start the workers (publishes, snapshots, subscriptions, pub/sub reader); returns
        without waiting for Redis."""
        self._hub = hub
        snapshotters = self._config.redis_max_connections - _OTHER_CONNECTIONS
        self._tasks = [
            # One worker keeps publishes in order; snapshots have the other connections.
            asyncio.create_task(self._publishes.serve(), name="rawrt-redis-publisher"),
            asyncio.create_task(self._reader(), name="rawrt-redis-reader"),
            asyncio.create_task(self._subscriber(), name="rawrt-redis-subscriber"),
            *(
                asyncio.create_task(self._snapshots.serve(), name="rawrt-redis-snapshots")
                for _ in range(snapshotters)
            ),
        ]
        if self._events is not None:
            self._tasks.append(asyncio.create_task(self._events.serve(), name="rawrt-events"))

    async def stop(self) -> None:
        for task in [*self._tasks, *self._background]:
            task.cancel()
        for task in [*self._tasks, *self._background]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._publishes.fail_all(BackplaneUnavailable("server stopping"))
        self._snapshots.fail_all(BackplaneUnavailable("server stopping"))
        await self._close_pubsub()
        await self._client.aclose()
        if self._events is not None:
            await self._events.stop()
        if self._sentinel is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._sentinel.aclose()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- publishing ------------------------------------------------------------------------

    def publish(self, channel: str, data_json: str, timestamp_ms: int) -> asyncio.Future[str]:
        c = self._config
        args = [_new_epoch(), c.redis_history_ttl_s, data_json, timestamp_ms, c.history_size]
        return self._publishes.call(self._keys(channel), [*args, self._topic(channel)])

    async def _snapshot(self, channel: str) -> _Snapshot:
        """A consistent snapshot of `channel`'s shared history, taken with others queued.

        A snapshot that timed out is taken again while Redis stays connected (bounded): a
        burst of attaches keeps the event loop busy enough to trip a deadline while Redis
        itself answers in time, and the burst must be served, not refused.
        """
        c = self._config
        args = [_new_epoch(), c.redis_history_ttl_s, c.history_size]
        for _ in range(_TRIES - 1):
            try:
                return await self._snapshots.call(self._keys(channel), args)
            except BackplaneUnavailable:
                if not self._connected:
                    raise
        return await self._snapshots.call(self._keys(channel), args)

    def relay_event(self, channel: str, text: str) -> None:
        if self._events is not None:
            self._events.send(self._topic(channel), self._event_mark + text)

    def listen_events(self, receive: Callable[[str, str], None]) -> None:
        self._on_event = receive

    # --- subscribing -----------------------------------------------------------------------

    def _wish(self, channel: str, subscribed: bool) -> None:
        """Ask for a channel's pub/sub to be (un)subscribed; the last wish wins."""
        self._wishes[self._topic(channel)] = subscribed
        self._wished.set()

    async def _subscriber(self) -> None:
        """Send the wishes, up to _SUBSCRIBE_BATCH channels per command, one at a time."""
        while True:
            await self._wished.wait()
            topics = list(self._wishes)[:_SUBSCRIBE_BATCH]
            wanted = [self._wishes.pop(t) for t in topics]
            if not self._wishes:
                self._wished.clear()
            pubsub = self._pubsub
            if pubsub is None:
                continue  # the reconnect subscribes every attached channel itself
            try:
                if on := [t for t, w in zip(topics, wanted, strict=True) if w]:
                    await pubsub.subscribe(*on)
                off = [t for t, w in zip(topics, wanted, strict=True) if not w]
                if off := [t for t in off if t[len(self._prefix) + 3 :] not in self._attached]:
                    await pubsub.unsubscribe(*off)
            except (RedisError, OSError) as exc:
                log.info("subscribing failed (%s); the reader reconnects", exc)

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
            loop = asyncio.get_running_loop()
            if self._attaching >= self._config.redis_max_pending_attaches:
                refused: asyncio.Future[None] = loop.create_future()
                refused.set_exception(BackplaneUnavailable("too many channels attaching"))
                return refused
            attachment = self._attached[channel] = _Attachment(loop)
            self._attaching += 1
            attachment.ready.add_done_callback(self._attached_one)
            self._spawn(self._attach(channel, attachment))
        return attachment.ready

    def _attached_one(self, _: asyncio.Future[None]) -> None:
        self._attaching -= 1

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
            self._wish(channel, True)
            await self._confirmed(attachment)
            await self._sync(channel, attachment)
        except (TimeoutError, RedisError, OSError, BackplaneUnavailable, HubFull) as exc:
            # HubFull: every channel slot here is busy; the waiting client is told so.
            if self._attached.get(channel) is attachment:
                self._detach(channel)
            if not attachment.ready.done():
                attachment.ready.set_exception(
                    exc if isinstance(exc, HubFull) else unavailable(exc)
                )
            return
        if not attachment.ready.done():
            attachment.ready.set_result(None)

    async def _confirmed(self, attachment: _Attachment) -> None:
        """Wait for Redis to confirm the SUBSCRIBE; again while connected (bounded).

        In a burst of attaches the event loop parses thousands of requests before the
        SUBSCRIBE goes out, which may take longer than redis_timeout_s although Redis is
        fine. A reconnect replaces `confirmed` (the new connection subscribes again).
        """
        for _ in range(_TRIES - 1):
            try:
                return await asyncio.wait_for(
                    asyncio.shield(attachment.confirmed), self._config.redis_timeout_s
                )
            except TimeoutError:
                if not self._connected:
                    raise
        await asyncio.wait_for(asyncio.shield(attachment.confirmed), self._config.redis_timeout_s)

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
            self._wish(channel, False)

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
        for at in range(0, len(channels), _SUBSCRIBE_BATCH):
            await pubsub.subscribe(
                *(self._topic(c) for c, _ in channels[at : at + _SUBSCRIBE_BATCH])
            )
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
        checked = loop.time()
        while True:
            if self._sentinel is not None and loop.time() - checked > _PRIMARY_CHECK_S:
                await self._check_primary(pubsub)
                checked = loop.time()
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

    async def _check_primary(self, pubsub: PubSub) -> None:
        """Raise when Sentinel names another primary than the one pub/sub is connected to.

        A demoted primary still serves SUBSCRIBE, and even relays what its new primary
        publishes: nothing else would tell. Asking through the pool also drops its idle
        command connections to the old primary (redis-py's SentinelConnectionPool). When no
        Sentinel answers (or none names a primary that is up), the connection is kept: the
        pub/sub ping tells whether it still works, and nothing tells where else to go.
        """
        pool: Any = self._client.connection_pool
        try:
            async with asyncio.timeout(self._config.redis_timeout_s):
                primary = await pool.get_master_address()
        except (TimeoutError, RedisError, OSError) as exc:
            log.info("no Sentinel names a primary (%s); keeping the connection", exc)
            return
        connection: Any = pubsub.connection
        if connection is None or (connection.host, connection.port) != tuple(primary):
            raise RedisError(f"the primary moved to {primary[0]}:{primary[1]}")

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
            data = message["data"]
            if data[:1] == b"!":  # a join/leave event, never a message (module docstring)
                self._on_presence_event(channel, data)
            else:
                self._on_publish(channel, attachment, data)

    def _on_presence_event(self, channel: str, payload: bytes) -> None:
        text = payload.decode(errors="replace")
        if self._on_event is not None and not text.startswith(self._event_mark):
            self._on_event(channel, text.split(" ", 2)[-1])

    def _on_publish(self, channel: str, attachment: _Attachment, payload: bytes) -> None:
        epoch, seq, ts, data = payload.split(b" ", 3)
        item = (epoch.decode(), Entry(int(seq), int(ts), data.decode()))
        self.pubsub_lag_s = max(0.0, time.time() - item[1].timestamp_ms / 1000)
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


def _message_id(result: Any) -> str:
    epoch, seq = result
    return format_id(epoch.decode(), int(seq))


def _snapshot_of(result: Any) -> _Snapshot:
    epoch, head, raw = result
    entries = [_entry(entry_id, fields) for entry_id, fields in reversed(raw)]
    return epoch.decode(), int(head), entries
