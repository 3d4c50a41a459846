"""rawrt embedded in an application's own loop (stock asyncio and uvloop), and run as a process.

The embedding tests run on every loop the conftest offers; the process tests talk to a child
`python -m rawrt` (which picks uvloop itself when installed), so the client loop does not
matter and they run once.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from support.clients import (
    HttpClient,
    PollClient,
    SseClient,
    event_json,
    request,
    ws_connect,
    ws_recv,
    ws_subscribe,
)

import rawrt

uvloop: Any
try:
    import uvloop
except ImportError:
    uvloop = None

Stack = contextlib.AsyncExitStack
ONE_LOOP = pytest.mark.asyncio(loop_factories=["asyncio"])


async def _serves(port: int, stack: Stack, publish: object) -> None:
    """A WebSocket subscriber gets what `publish(channel, data)` sends; health is ok."""
    assert (await request(port, "GET", "/healthz")).json() == {"status": "ok"}
    assert (await request(port, "GET", "/readyz")).json() == {"ready": True}
    ws = await stack.enter_async_context(ws_connect(port))
    await ws_subscribe(ws, "embedded")
    message_id = await publish("embedded", {"hello": "world"})  # type: ignore[operator]
    frame = await ws_recv(ws)
    assert (frame["data"], frame["id"]) == ({"hello": "world"}, message_id)


async def test_embedded_server_starts_publishes_and_stops_in_the_running_loop(
    stack: Stack,
) -> None:
    server = rawrt.Server(rawrt.Config(host="127.0.0.1", port=0))
    await server.start()
    port = server.port
    try:
        assert port > 0
        assert server.url == f"http://127.0.0.1:{port}"
        await _serves(port, stack, server.publish)
        await stack.aclose()
    finally:
        await asyncio.wait_for(server.stop(), 10)
    assert not server.ready
    with pytest.raises(OSError):
        await request(port, "GET", "/healthz")


async def test_embedded_server_as_async_context_manager(stack: Stack) -> None:
    async with rawrt.Server(rawrt.Config(host="127.0.0.1", port=0)) as server:
        port = server.port
        await _serves(port, stack, server.publish)
        await stack.aclose()
    assert server.port == port  # still known, for the embedder's logs
    with pytest.raises(OSError):
        await request(port, "GET", "/healthz")


@pytest.mark.skipif(uvloop is None, reason="uvloop is not installed")
@pytest.mark.asyncio(loop_factories=["uvloop"])
async def test_embedded_server_runs_on_uvloop(server: rawrt.Server, stack: Stack) -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
    await _serves(server.port, stack, server.publish)


async def test_two_embedded_servers_in_one_loop_keep_separate_channels(
    start_server: object, stack: Stack
) -> None:
    first = await start_server()  # type: ignore[operator]
    second = await start_server()  # type: ignore[operator]
    ws = await stack.enter_async_context(ws_connect(first.port))
    await ws_subscribe(ws, "same-name")
    await second.publish("same-name", "for the other server")
    mine = await first.publish("same-name", "for this one")
    assert (await ws_recv(ws))["id"] == mine


# --- the command line -------------------------------------------------------------------------


@ONE_LOOP
async def test_cli_logs_its_address_serves_and_exits_0_on_sigterm(
    spawn_rawrt: object, stack: Stack
) -> None:
    child = spawn_rawrt("--host", "127.0.0.1", "--port", "0", "--history-size", "2")  # type: ignore[operator]
    assert any(f"listening on http://127.0.0.1:{child.port}" in line for line in child.lines)
    http = await stack.enter_async_context(HttpClient(child.port))

    async def publish(channel: str, data: object) -> str:
        reply = await http.post_json(f"/api/publish/{channel}", data)
        return str(reply["id"])

    await _serves(child.port, stack, publish)
    # --history-size took effect: the log holds the last two of four messages.
    ids = [await publish("short", n) for n in range(4)]
    poller = await stack.enter_async_context(PollClient(child.port, "short"))
    assert (await poller.poll(since=ids[1]))["messages"] == [2, 3]
    body = await poller.poll(since=ids[0])
    assert body == {"messages": [], "ids": [], "cursor": ids[3], "reset": True}

    await stack.aclose()
    assert await child.stopped() == 0
    assert any("stopping" in line for line in child.lines)


@ONE_LOOP
async def test_cli_takes_its_port_from_rawrt_port_in_the_environment(
    spawn_rawrt: object, stack: Stack
) -> None:
    child = spawn_rawrt(env={"RAWRT_PORT": "0", "RAWRT_SSE_HEARTBEAT_S": "0.1"})  # type: ignore[operator]
    assert child.port > 0
    sse = await stack.enter_async_context(SseClient(child.port, "/api/sse/subscribe/env"))
    first = await sse.next_event()
    assert first is not None and event_json(first) == {"type": "connected"}
    await sse.wait_for_comments(2)  # the heartbeat setting came from the environment too
    await stack.aclose()
    assert await child.stopped() == 0


@ONE_LOOP
async def test_cli_command_line_wins_over_the_environment(spawn_rawrt: object) -> None:
    child = spawn_rawrt("--port", "0", env={"RAWRT_PORT": "1"})  # type: ignore[operator]
    assert child.port not in (0, 1)
    assert (await request(child.port, "GET", "/healthz")).status == 200
