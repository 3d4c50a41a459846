"""rawrt.client: an asyncio client of a rawrt server that never loses its place.

    import rawrt.client

    async with rawrt.client.connect("http://127.0.0.1:8000", token=None) as client:
        async for event in client.subscribe("news", since=None):
            if isinstance(event, rawrt.client.Message):
                print(event.channel, event.id, event.data, event.timestamp)
            else:  # rawrt.client.Reset: the history no longer held our position
                reload_state()
        message_id = await client.publish("news", {"title": "hello"})

Theory of operation
-------------------
One WebSocket carries every subscription of a client. Each subscription remembers the id of
the last event it queued for the application and subscribes with it as `since`, on the
first connection and on every reconnect, so the server replays exactly what came after it
(or sends a reset when its history no longer holds it). Frames of a stale subscription and
ids at or before the position are dropped: the application sees each message once, in
order, across any number of reconnects, server restarts (with Redis) and nodes.

When the WebSocket ends (a network error, the server's 1001 at a drain, a ping without an
answer), the client reconnects after a full-jitter backoff (ClientConfig.backoff_min_s to
backoff_max_s, reset after a stable connection), forever. It gives up only when the server
refuses for good: a handshake answered 4xx (but 408 and 429), close code 4401 (with a
fixed token) or 1008; a subscription the server refuses ends alone with `Refused`, and one
it cannot serve yet ("Server busy") is retried alone, with backoff, on the same socket.

A slow application costs a bounded queue per subscription (ClientConfig.queue_size and
queue_max_bytes): past it the subscription unsubscribes, and resubscribes from its position
once the application has caught up halfway, so the server's history fills the gap and the
other channels on the socket keep flowing. `publish` is an HTTP POST that returns the id.

Built on wsproto's client side and h11, which the server already depends on: the client
adds no dependency, and the few things wsproto leaves to its user (a message-size limit,
pings for liveness) are in rawrt.client.transport.
"""

from __future__ import annotations

from rawrt.client.api import Client, connect
from rawrt.client.auth import Token
from rawrt.client.core import Event, Message, Reset
from rawrt.client.subscription import Subscription
from rawrt.config import ClientConfig
from rawrt.errors import ClientError, Refused, Unreachable

__all__ = [
    "Client",
    "ClientConfig",
    "ClientError",
    "Event",
    "Message",
    "Refused",
    "Reset",
    "Subscription",
    "Token",
    "Unreachable",
    "connect",
]
