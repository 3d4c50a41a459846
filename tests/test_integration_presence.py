"""Presence and history over HTTP, on a real server with tokens: who is on a channel (by
transport, and the distinct users their tokens name) and what its history holds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from support.clients import PollClient, SseClient, request, ws_connect, ws_subscribe

import rawrt
from rawrt.tokens import issue_token

Stack = contextlib.AsyncExitStack
StartServer = Callable[..., Awaitable[rawrt.Server]]
SECRET = "presence-secret-0123456789abcdefghij"
LOCKED: dict[str, Any] = {
    "jwt_secret": SECRET,
    "public_channels": "public:*",
    "allowed_origins": "",
}


def bearer(sub: str, channels: str = "room:*") -> list[tuple[str, str]]:
    token = issue_token(
        SECRET, sub=sub, channels=[channels], publish=[], now=time.time(), ttl_s=600
    )
    return [("Authorization", f"Bearer {token}")]


async def get_json(port: int, target: str, headers: list[tuple[str, str]]) -> Any:
    response = await request(port, "GET", target, headers=headers)
    assert response.status == 200, (response.status, response.body)
    return json.loads(response.body)


async def presence(port: int, channel: str) -> Any:
    return await get_json(port, f"/api/presence/{channel}", bearer("ops"))


async def until_presence(port: int, channel: str, total: int) -> Any:
    """The presence answer once it counts `total` subscribers (bounded)."""
    async with asyncio.timeout(5):
        while (answer := await presence(port, channel))["subscribers"]["total"] != total:
            await asyncio.sleep(0.02)
    return answer


async def test_presence_counts_each_transport_and_names_the_distinct_users(
    start_server: StartServer, stack: Stack
) -> None:
    server = await start_server(**LOCKED)
    port = server.port
    for sub in ("alice", "bob"):
        ws = await stack.enter_async_context(ws_connect(port, additional_headers=bearer(sub)))
        await ws_subscribe(ws, "room:1")
    other = await stack.enter_async_context(ws_connect(port, additional_headers=bearer("dan")))
    await ws_subscribe(other, "room:2")
    sse = await stack.enter_async_context(
        SseClient(port, "/api/sse/subscribe/room:1", bearer("carol"))
    )
    await sse.next_event()  # connected: subscribed
    poller = await stack.enter_async_context(PollClient(port, "room:1", headers=bearer("alice")))
    await poller.start_at_head()
    await poller.poll_sent(timeout=30)

    answer = await until_presence(port, "room:1", 4)
    assert answer == {
        "channel": "room:1",
        "subscribers": {"websocket": 2, "sse": 1, "poll": 1, "total": 4},
        "users": ["alice", "bob", "carol"],
        "users_truncated": False,
        "nodes": 1,
    }
    await sse.close()
    after = await until_presence(port, "room:1", 3)
    assert after["subscribers"]["sse"] == 0 and after["users"] == ["alice", "bob"]
    nobody = await presence(port, "room:none")
    assert nobody["subscribers"]["total"] == 0 and nobody["users"] == []


async def test_presence_lists_at_most_the_configured_users(
    start_server: StartServer, stack: Stack
) -> None:
    server = await start_server(**LOCKED, presence_max_users=2)
    for sub in ("u1", "u2", "u3"):
        ws = await stack.enter_async_context(
            ws_connect(server.port, additional_headers=bearer(sub))
        )
        await ws_subscribe(ws, "room:big")
    answer = await until_presence(server.port, "room:big", 3)
    assert len(answer["users"]) == 2 and answer["users_truncated"] is True


async def test_presence_and_history_follow_the_rules_of_subscribing(
    start_server: StartServer,
) -> None:
    server = await start_server(**LOCKED)
    for route in ("presence", "history"):
        unauthenticated = await request(server.port, "GET", f"/api/{route}/room:1")
        assert unauthenticated.status == 401
        assert json.loads(unauthenticated.body)["error"]
        other = await request(
            server.port, "GET", f"/api/{route}/room:1", headers=bearer("eve", "lobby")
        )
        assert other.status == 403
        public = await request(server.port, "GET", f"/api/{route}/public:news")
        assert public.status == 200


@pytest.mark.parametrize("server", [{"history_size": 4, "history_max_limit": 3}], indirect=True)
async def test_history_answers_what_it_holds_after_since(server: rawrt.Server) -> None:
    port = server.port
    ids = [await server.publish("log", {"n": n}) for n in range(6)]  # the log keeps 2..5

    async def history(query: str) -> Any:
        return await get_json(port, f"/api/history/log{query}", [])

    page = await history(f"?since={ids[2]}&limit=2")
    assert [m["id"] for m in page["messages"]] == ids[3:5]
    assert [m["data"] for m in page["messages"]] == [{"n": 3}, {"n": 4}]
    assert all(abs(m["timestamp"] - time.time() * 1000) < 60_000 for m in page["messages"])
    assert page["head"] == ids[5] and page["reset"] is False and page["channel"] == "log"

    newest = await history("")  # no since: the newest, up to the largest limit
    assert [m["id"] for m in newest["messages"]] == ids[3:6] and newest["reset"] is False
    gone = await history(f"?since={ids[0]}")  # no longer held: a reset, from the oldest held
    assert gone["reset"] is True and [m["id"] for m in gone["messages"]] == ids[2:5]
    current = await history(f"?since={ids[5]}")
    assert current["messages"] == [] and current["reset"] is False

    for bad in ("0", "4", "x", "-1"):
        refused = await request(port, "GET", f"/api/history/log?limit={bad}")
        assert refused.status == 400 and "limit" in json.loads(refused.body)["error"]
