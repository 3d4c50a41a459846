"""Backplanes: who numbers a channel's messages, and how every node hears of them.

A `Backplane` sits between the server and the hub:

- `publish()` gives a message its id. In one process (`LocalBackplane`) the hub numbers it
  at once and the call returns the id; with Redis (`rawrt.backplane.redis`) a script numbers
  it in Redis and the call returns a future of the id. Either way every node's hub receives
  the message with that id and fans it out.
- `attach()` makes a channel usable in the local hub. Locally every channel is; with Redis a
  channel is first subscribed to and synced from the shared history, so the call may return
  a future to wait on.
- `ready` says whether publishing can work now (`/readyz`).
- `relay_event()` / `listen_events()` carry join/leave events between nodes (at most once,
  never numbered); alone there is nobody to carry them to.

`backplane_for(config)` builds the one a Config asks for: `LocalBackplane` without Redis, a
`RedisBackplane` for one Redis (a URL, or a Sentinel master), and for several a
`ShardedBackplane` (`rawrt.backplane.sharded`) that spreads channels over one
`RedisBackplane` per Redis.

Only `rawrt.backplane.redis` and its helper `redis_calls` import redis, and only when Redis
is configured.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from rawrt.config import Config, redis_address, redis_urls

if TYPE_CHECKING:
    from rawrt.hub import Hub

__all__ = ["Backplane", "LocalBackplane", "backplane_for"]


class Backplane(Protocol):
    #: False when ids come from elsewhere and the hub must not number messages itself.
    assigns_ids_locally: bool

    @property
    def ready(self) -> bool: ...

    async def start(self, hub: Hub) -> None: ...

    async def stop(self) -> None: ...

    def publish(self, channel: str, data_json: str, timestamp_ms: int) -> str | asyncio.Future[str]:
        """The new message's id, or a future of it; a failure is BackplaneUnavailable."""
        ...

    def attach(self, channel: str, since: str | None = None) -> asyncio.Future[None] | None:
        """None when `channel` can be used in the hub now, else a future to wait on.

        `since`, a client's position, may be newer than what this node has heard of yet;
        then the future waits until the hub holds it.
        """
        ...

    def on_evict(self, channel: str) -> None:
        """The hub forgot an idle channel."""
        ...

    def sweep(self, now: float) -> None:
        """Periodic housekeeping (the server's sweep calls it)."""
        ...

    def relay_event(self, channel: str, text: str) -> None:
        """Carry a join/leave event (rawrt.presence_events) to the other nodes that hold
        `channel`, at most once: fire and forget, dropped when it cannot go."""
        ...

    def listen_events(self, receive: Callable[[str, str], None]) -> None:
        """Hand the other nodes' events to `receive(channel, text)` from now on."""
        ...


class LocalBackplane:
    """Everything in this process: the hub numbers messages, every channel is attached."""

    assigns_ids_locally = True

    def __init__(self) -> None:
        self._hub: Hub | None = None

    @property
    def ready(self) -> bool:
        return self._hub is not None

    async def start(self, hub: Hub) -> None:
        self._hub = hub

    async def stop(self) -> None:
        self._hub = None

    def publish(self, channel: str, data_json: str, timestamp_ms: int) -> str:
        assert self._hub is not None
        return self._hub.publish(channel, data_json, timestamp_ms).id

    def attach(self, channel: str, since: str | None = None) -> None:
        return None

    def on_evict(self, channel: str) -> None:
        pass

    def sweep(self, now: float) -> None:
        pass

    def relay_event(self, channel: str, text: str) -> None:
        pass  # no other node

    def listen_events(self, receive: Callable[[str, str], None]) -> None:
        pass


def backplane_for(config: Config) -> Backplane:
    """The backplane `config` asks for: in this process, one Redis, or several as shards.

    Several Redis are several URLs in `redis_url`, or several master names in `redis_master`
    (Sentinel groups found through the same `redis_sentinel`). A shard's id, which the channel
    hash uses, is its server's address or its master name: never the order of the list.
    """
    if not (config.redis_url or config.redis_master):
        return LocalBackplane()
    # Imported here: redis is an optional dependency, needed only with Redis configured.
    from rawrt.backplane.redis import RedisBackplane

    if config.redis_url:
        targets = {redis_address(url): {"url": url} for url in redis_urls(config.redis_url)}
    else:
        assert config.redis_master
        names = [name.strip() for name in config.redis_master.split(",")]
        targets = {name: {"master": name} for name in names}
    shards: dict[str, Backplane] = {
        shard_id: RedisBackplane(config, **target) for shard_id, target in targets.items()
    }
    if len(shards) == 1:
        (only,) = shards.values()
        return only
    from rawrt.backplane.sharded import ShardedBackplane

    # A shard's first connection attempt (connect, then SUBSCRIBE) is over within twice the
    # Redis timeout: by then a node has reached every shard it can.
    return ShardedBackplane(shards, settle_s=2 * config.redis_timeout_s)
