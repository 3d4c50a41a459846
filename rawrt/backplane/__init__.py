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

Only `rawrt.backplane.redis` and its helper `redis_calls` import redis, and only when Redis
is configured.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from rawrt.hub import Hub

__all__ = ["Backplane", "LocalBackplane"]


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
