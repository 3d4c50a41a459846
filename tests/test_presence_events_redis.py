"""Join and leave events across two nodes through a real redis-server: a subscriber on one
node is seen joining and leaving by the WebSocket and SSE subscribers of both, once each (a
node skips its own echo), without a number in the shared history, and a node's bound holds
for the others' events too; Redis down loses events but breaks nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.clients import SseClient, event_json, request, ws_connect, ws_recv, ws_subscribe
from support.redis_server import RedisServer
from websockets.asyncio.client import ClientConnection

import rawrt

pytestmark = pytest.mark.asyncio(loop_factories=["asyncio"])

Stack = contextlib.AsyncExitStack
NODE: dict[str, Any] = {"allowed_origins": "", "presence_events": True, "redis_timeout_s": 1.0}


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def event(kind: str, transport: str = "ws") -> dict[str, Any]:
    return {"type": kind, "channel": "room", "user": None, "transport": transport}


async def ready(*servers: rawrt.Server) -> None:
    async with asyncio.timeout(10):
        while not all(server.ready for server in servers):
            await asyncio.sleep(0.02)


async def watch_ws(stack: Stack, port: int) -> ClientConnection:
    ws = await stack.enter_async_context(ws_connect(port))
    await ws_subscribe(ws, "room")
    return ws


async def watch_sse(stack: Stack, port: int) -> SseClient:
    sse = await stack.enter_async_context(SseClient(port, "/api/sse/subscribe/room"))
    first = await sse.next_event()
    assert first is not None and event_json(first) == {"type": "connected"}
    return sse


async def sse_next(sse: SseClient) -> tuple[str, Any]:
    got = await sse.next_event()
    assert got is not None, "the stream ended"
    return got.type, event_json(got)


async def test_a_join_and_leave_reach_every_node_once(
    redis_server: RedisServer, start_server: Any, stack: Stack
) -> None:
    a = await start_server(redis_url=redis_server.url, **NODE)
    b = await start_server(redis_url=redis_server.url, **NODE)
    await ready(a, b)
    on_a = await watch_ws(stack, a.port)
    on_b = await watch_ws(stack, b.port)
    assert await ws_recv(on_a) == event("join")  # on_b's, from node b through Redis
    sse_b = await watch_sse(stack, b.port)
    for ws in (on_a, on_b):
        assert await ws_recv(ws) == event("join", "sse")
    first = await a.publish("room", "before")
    for ws in (on_a, on_b):
        assert (await ws_recv(ws))["id"] == first
    assert await sse_next(sse_b) == ("message", "before")

    async with ws_connect(a.port) as joiner:  # joins on a, then closes
        await ws_subscribe(joiner, "room")
        for ws in (on_a, on_b):
            assert await ws_recv(ws) == event("join")
        assert await sse_next(sse_b) == ("join", event("join"))
    for ws in (on_a, on_b):
        assert await ws_recv(ws) == event("leave")
    assert await sse_next(sse_b) == ("leave", event("leave"))

    # Once: node a's own echo was skipped, b's copy came once; next comes the message.
    last = await b.publish("room", "after")
    for ws in (on_a, on_b):
        assert (await ws_recv(ws))["id"] == last
    assert await sse_next(sse_b) == ("message", "after")
    # The events took no number in the shared history: the two messages are neighbours.
    assert int(last.rsplit("-", 1)[1]) == int(first.rsplit("-", 1)[1]) + 1
    history = await request(b.port, "GET", f"/api/history/room?since={first}")
    assert [m["id"] for m in json.loads(history.body)["messages"]] == [last]


async def test_a_node_past_the_size_bound_writes_no_events_from_others(
    redis_server: RedisServer, start_server: Any, stack: Stack
) -> None:
    a = await start_server(redis_url=redis_server.url, **NODE)
    b = await start_server(
        redis_url=redis_server.url, **{**NODE, "presence_events_max_subscribers": 1}
    )
    await ready(a, b)
    on_a = await watch_ws(stack, a.port)
    crowd = [await watch_ws(stack, b.port)]
    assert await ws_recv(on_a) == event("join")  # one on b: within its bound
    crowd.append(await watch_ws(stack, b.port))  # two: past it, b sends nothing
    async with ws_connect(a.port) as joiner:
        await ws_subscribe(joiner, "room")
        assert await ws_recv(on_a) == event("join")
    assert await ws_recv(on_a) == event("leave")
    message_id = await a.publish("room", "only this")
    for ws in (*crowd, on_a):
        assert (await ws_recv(ws))["id"] == message_id


async def test_redis_down_loses_events_but_never_doubles_them(
    redis_server: RedisServer, start_server: Any, stack: Stack
) -> None:
    a = await start_server(redis_url=redis_server.url, **NODE)
    b = await start_server(redis_url=redis_server.url, **NODE)
    await ready(a, b)
    on_a = await watch_ws(stack, a.port)
    on_b = await watch_ws(stack, b.port)
    assert await ws_recv(on_a) == event("join")
    redis_server.stop()
    async with ws_connect(a.port) as joiner:
        await ws_subscribe(joiner, "room")
        assert await ws_recv(on_a) == event("join")  # this node's own still arrive
    assert await ws_recv(on_a) == event("leave")
    redis_server.start()
    await ready(a, b)
    # Both nodes hear each other again once a message goes through (they re-synced).
    async with asyncio.timeout(15):
        while True:
            try:
                message_id = await a.publish("room", "back")
                break
            except rawrt.BackplaneUnavailable:
                await asyncio.sleep(0.1)
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        while not seen or seen[-1].get("id") != message_id:
            seen.append(await ws_recv(on_b))
    # What the outage held up may come late, but at most once each.
    events = [m for m in seen if m["type"] in ("join", "leave")]
    assert events.count(event("join")) <= 1 and events.count(event("leave")) <= 1
    async with ws_connect(a.port) as joiner:
        await ws_subscribe(joiner, "room")
        assert await ws_recv(on_b) == event("join")
    assert await ws_recv(on_b) == event("leave")


@pytest.fixture
def two_shards(tmp_path: Path) -> Iterator[str]:
    """Two redis-servers, as one redis_url of two shards; stopped after the servers."""
    shards = [RedisServer(tmp_path / f"shard{n}") for n in range(2)]
    for shard in shards:
        shard.start()
    yield ",".join(shard.url for shard in shards)
    for shard in shards:
        shard.stop()


async def test_events_cross_on_the_shard_that_holds_the_channel(
    two_shards: str, start_server: Any, stack: Stack
) -> None:
    a = await start_server(redis_url=two_shards, **NODE)
    b = await start_server(redis_url=two_shards, **NODE)
    await ready(a, b)
    on_a = await watch_ws(stack, a.port)
    on_b = await watch_ws(stack, b.port)
    assert await ws_recv(on_a) == event("join")
    async with ws_connect(b.port) as joiner:
        await ws_subscribe(joiner, "room")
        for ws in (on_a, on_b):
            assert await ws_recv(ws) == event("join")
    for ws in (on_a, on_b):
        assert await ws_recv(ws) == event("leave")
    message_id = await a.publish("room", "after")
    for ws in (on_a, on_b):
        assert (await ws_recv(ws))["id"] == message_id
