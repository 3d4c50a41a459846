"""Presence across nodes through a real redis-server: every node's subscribers add up, users
are united, and a node killed with SIGKILL drops out of the answer within presence_ttl_s."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.clients import PollClient, SseClient, request, ws_connect, ws_subscribe
from support.redis_server import RedisServer

import rawrt
from rawrt.tokens import issue_token

pytestmark = pytest.mark.asyncio(loop_factories=["asyncio"])

Stack = contextlib.AsyncExitStack
SECRET = "presence-redis-secret-0123456789abcdef"
TTL_S = 1.5
NODE: dict[str, Any] = {
    "jwt_secret": SECRET,
    "allowed_origins": "",
    "presence_ttl_s": TTL_S,
    "sse_heartbeat_s": 0.5,
}


def bearer(sub: str) -> list[tuple[str, str]]:
    token = issue_token(SECRET, sub=sub, channels=["room"], publish=[], now=time.time(), ttl_s=600)
    return [("Authorization", f"Bearer {token}")]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


async def presence(port: int) -> Any:
    response = await request(port, "GET", "/api/presence/room", headers=bearer("ops"))
    assert response.status == 200, (response.status, response.body)
    return json.loads(response.body)


async def until(port: int, total: int, nodes: int, bound_s: float) -> Any:
    """The answer of the node on `port` once it counts `total` on `nodes` nodes (bounded)."""
    async with asyncio.timeout(bound_s):
        while True:
            answer = await presence(port)
            if answer["subscribers"]["total"] == total and answer["nodes"] == nodes:
                return answer
            await asyncio.sleep(0.05)


async def ready(server: rawrt.Server) -> None:
    async with asyncio.timeout(10):
        while not server.ready:
            await asyncio.sleep(0.02)


async def test_presence_adds_up_every_node_and_forgets_a_killed_one(
    redis_server: RedisServer, start_server: Any, spawn_rawrt: Any, stack: Stack
) -> None:
    a = await start_server(redis_url=redis_server.url, **NODE)
    b = await start_server(redis_url=redis_server.url, **NODE)
    await ready(a)
    await ready(b)
    env = {
        "RAWRT_JWT_SECRET": SECRET,
        "RAWRT_ALLOWED_ORIGINS": "",
        "RAWRT_PRESENCE_TTL_S": str(TTL_S),
        "RAWRT_REDIS_URL": redis_server.url,
    }
    c = spawn_rawrt("--port", "0", env=env)

    ws = await stack.enter_async_context(ws_connect(a.port, additional_headers=bearer("alice")))
    await ws_subscribe(ws, "room")
    sse = await stack.enter_async_context(
        SseClient(b.port, "/api/sse/subscribe/room", bearer("bob"))
    )
    await sse.next_event()
    on_c = await stack.enter_async_context(ws_connect(c.port, additional_headers=bearer("carol")))
    await ws_subscribe(on_c, "room")
    poller = await stack.enter_async_context(PollClient(c.port, "room", headers=bearer("dave")))
    await poller.start_at_head()
    await poller.poll_sent(timeout=60)

    everyone = await until(a.port, total=4, nodes=3, bound_s=TTL_S + 10)
    assert everyone["subscribers"] == {"websocket": 2, "sse": 1, "poll": 1, "total": 4}
    assert everyone["users"] == ["alice", "bob", "carol", "dave"]
    assert (await until(b.port, total=4, nodes=3, bound_s=5))["users"] == everyone["users"]

    c.proc.send_signal(signal.SIGKILL)  # no goodbye: its reports just stop
    c.proc.wait(10)
    killed = time.monotonic()
    left = await until(b.port, total=2, nodes=2, bound_s=TTL_S + 5)
    gone_after_s = time.monotonic() - killed
    assert gone_after_s < TTL_S + 5
    assert left["subscribers"] == {"websocket": 1, "sse": 1, "poll": 0, "total": 2}
    assert left["users"] == ["alice", "bob"]
    assert await c.stopped() == -signal.SIGKILL  # collects it; sends nothing more


async def test_a_stopped_node_leaves_at_once_and_redis_down_is_503(
    redis_server: RedisServer, start_server: Any, stack: Stack
) -> None:
    a = await start_server(redis_url=redis_server.url, **{**NODE, "presence_ttl_s": 60.0})
    b = await start_server(redis_url=redis_server.url, **{**NODE, "presence_ttl_s": 60.0})
    await ready(a)
    await ready(b)
    ws = await stack.enter_async_context(ws_connect(b.port, additional_headers=bearer("bob")))
    await ws_subscribe(ws, "room")
    await until(a.port, total=1, nodes=2, bound_s=5)
    await ws.close()
    await asyncio.wait_for(b.stop(), 10)
    # A stopped node takes its reports with it, long before their 60 s would run out.
    await until(a.port, total=0, nodes=1, bound_s=5)
    redis_server.stop()
    down = await request(a.port, "GET", "/api/presence/room", headers=bearer("ops"))
    assert down.status == 503 and "presence unavailable" in json.loads(down.body)["error"]


async def test_history_of_another_node_comes_from_the_shared_history(
    redis_server: RedisServer, start_server: Any
) -> None:
    a = await start_server(redis_url=redis_server.url, history_size=3)
    b = await start_server(redis_url=redis_server.url, history_size=3)
    await ready(a)
    await ready(b)
    ids = [await a.publish("shared", n) for n in range(5)]  # b holds nothing of it yet
    response = await request(b.port, "GET", f"/api/history/shared?since={ids[2]}")
    assert response.status == 200, response.body
    answer = json.loads(response.body)
    assert [m["id"] for m in answer["messages"]] == ids[3:]
    assert [m["data"] for m in answer["messages"]] == [3, 4]
    assert answer["head"] == ids[4] and answer["reset"] is False
    gone = json.loads((await request(b.port, "GET", f"/api/history/shared?since={ids[0]}")).body)
    assert gone["reset"] is True and [m["id"] for m in gone["messages"]] == ids[2:]
