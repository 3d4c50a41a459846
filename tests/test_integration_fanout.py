"""Every publish route reaches every subscriber on every transport: each message once, in order.

A WebSocket, an SSE and a long-poll subscriber listen to one channel while one of five
publishers sends N messages: the three HTTP publish routes, a WebSocket `publish` frame and
the embedding API. Each subscriber waits for its own ready signal (the `subscribed` frame, the
`connected` event, the head cursor) before anything is published.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest
from support.clients import (
    HttpClient,
    PollClient,
    SseClient,
    event_json,
    ws_connect,
    ws_recv,
    ws_recv_many,
    ws_subscribe,
)

import rawrt

N = 25
PUBLISHERS = ["broadcast", "publish", "sse_publish", "ws_frame", "server_publish"]


async def _publish(
    how: str, server: rawrt.Server, stack: contextlib.AsyncExitStack, channel: str, items: list[Any]
) -> list[str] | None:
    """Publish `items` in order the way `how` names; their ids when the route returns them."""
    if how == "server_publish":
        return [await server.publish(channel, item) for item in items]
    if how == "ws_frame":
        ws = await stack.enter_async_context(ws_connect(server.port))
        for item in items:
            await ws.send(json.dumps({"type": "publish", "channel": channel, "data": item}))
        return None
    target, flag = {
        "broadcast": (f"/api/broadcast/{channel}", "sent"),
        "publish": (f"/api/publish/{channel}", "published"),
        "sse_publish": (f"/api/sse/publish/{channel}", "published"),
    }[how]
    http = await stack.enter_async_context(HttpClient(server.port))
    ids = []
    for item in items:
        reply = await http.post_json(target, item)
        assert reply[flag] is True, reply
        ids.append(reply["id"])
    assert http.connections_opened == 1  # all of them on one kept-alive connection
    return ids


@pytest.mark.parametrize("how", PUBLISHERS)
async def test_ws_sse_and_poll_subscribers_each_get_every_message_once_in_order(
    server: rawrt.Server, stack: contextlib.AsyncExitStack, how: str
) -> None:
    channel = f"fanout-{how}"
    ws = await stack.enter_async_context(ws_connect(server.port))
    await ws_subscribe(ws, channel)
    sse = await stack.enter_async_context(SseClient(server.port, f"/api/sse/subscribe/{channel}"))
    connected = await sse.next_event()
    assert connected is not None and event_json(connected) == {"type": "connected"}
    poller = await stack.enter_async_context(PollClient(server.port, channel))
    await poller.start_at_head()
    polling = asyncio.create_task(poller.collect(N))

    items = [{"n": n, "by": how, "text": "é\r\n✓"} for n in range(N)]
    ids = await _publish(how, server, stack, channel, items)

    ws_messages = await ws_recv_many(ws, N)
    sse_events = await sse.events(N)
    polled = await asyncio.wait_for(polling, 5)

    assert [m["type"] for m in ws_messages] == ["message"] * N
    assert [m["channel"] for m in ws_messages] == [channel] * N
    assert [m["data"] for m in ws_messages] == items
    assert [event_json(e) for e in sse_events] == items
    assert [e.type for e in sse_events] == ["message"] * N
    assert polled == items
    # One id per message, the same on every transport, and as the publisher was told.
    ws_ids = [m["id"] for m in ws_messages]
    assert len(set(ws_ids)) == N
    assert [e.last_event_id for e in sse_events] == ws_ids
    assert poller.cursor == ws_ids[-1]
    if ids is not None:
        assert ids == ws_ids

    # Nothing comes twice: the next thing each subscriber sees is a later message.
    await server.publish(channel, "end")
    assert (await ws_recv(ws))["data"] == "end"
    end = await sse.next_event()
    assert end is not None and event_json(end) == "end"
    assert await poller.collect(1) == ["end"]


async def test_poll_subscriber_by_post_gets_messages_like_get(
    server: rawrt.Server, stack: contextlib.AsyncExitStack
) -> None:
    poller = await stack.enter_async_context(PollClient(server.port, "by-post", method="POST"))
    await poller.start_at_head()
    polling = asyncio.create_task(poller.collect(3))
    for n in range(3):
        await server.publish("by-post", n)
    assert await asyncio.wait_for(polling, 5) == [0, 1, 2]
    assert poller.connections_opened == 1


async def test_sse_stream_has_event_stream_headers_retry_and_heartbeats(
    start_server: Any, stack: contextlib.AsyncExitStack
) -> None:
    server = await start_server(sse_heartbeat_s=0.1, sse_retry_ms=1234)
    sse = await stack.enter_async_context(SseClient(server.port, "/api/sse/subscribe/beat"))
    assert sse.status == 200
    assert sse.headers["content-type"].startswith("text/event-stream")
    assert sse.headers["cache-control"] == "no-cache"
    assert sse.headers["x-accel-buffering"] == "no"
    assert sse.headers["access-control-allow-origin"] == "*"  # EventSource across origins
    first = await sse.next_event()
    assert first is not None and event_json(first) == {"type": "connected"}
    assert sse.parser.reconnection_time_ms == 1234
    # A fresh stream carries the head id, so a reconnect before any message misses nothing.
    assert first.last_event_id
    await sse.wait_for_comments(3, timeout_s=5)
    await server.publish("beat", {"after": "heartbeats"})
    event = await sse.next_event()
    assert event is not None and event_json(event) == {"after": "heartbeats"}
