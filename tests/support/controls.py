"""Control subscribers: one per transport on a watched channel, which must miss nothing.

A test that makes one client misbehave opens these first and calls `check()` after each
offence: every control gets the next message, and nothing else, next.
"""

from __future__ import annotations

import contextlib
from typing import Any

import rawrt
from support.clients import (
    TIMEOUT_S,
    PollClient,
    SseClient,
    event_json,
    ws_connect,
    ws_recv,
    ws_subscribe,
)

__all__ = ["Controls", "open_controls"]


class Controls:
    """A WebSocket, an SSE and a long-poll subscriber of `channel`."""

    def __init__(
        self, server: rawrt.Server, channel: str, ws: Any, sse: SseClient, poll: PollClient
    ) -> None:
        self.server, self.channel, self.ws, self.sse, self.poll = server, channel, ws, sse, poll
        self.sent = 0

    async def check(self) -> None:
        """Publish the next message: each control gets it, and nothing else, next."""
        self.sent += 1
        message_id = await self.server.publish(self.channel, {"n": self.sent})
        frame = await ws_recv(self.ws)
        assert (frame["data"], frame["id"]) == ({"n": self.sent}, message_id)
        event = await self.sse.next_event()
        assert event is not None
        assert (event_json(event), event.last_event_id) == ({"n": self.sent}, message_id)
        body = await self.poll.poll(timeout=TIMEOUT_S)
        assert body["messages"] == [{"n": self.sent}]


async def open_controls(
    server: rawrt.Server, stack: contextlib.AsyncExitStack, channel: str = "watch"
) -> Controls:
    """The three controls, subscribed, each proven by one message."""
    ws = await stack.enter_async_context(ws_connect(server.port))
    await ws_subscribe(ws, channel)
    sse = await stack.enter_async_context(SseClient(server.port, f"/api/sse/subscribe/{channel}"))
    await sse.next_event()  # connected
    poll = await stack.enter_async_context(PollClient(server.port, channel))
    await poll.start_at_head()
    controls = Controls(server, channel, ws, sse, poll)
    await controls.check()
    return controls
