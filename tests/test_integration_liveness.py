"""WebSocket liveness: the server pings every ping_interval_s and terminates a peer whose pong
has not come back within ping_timeout_s; peers that answer stay connected."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from support.clients import (
    OP_PING,
    OP_PONG,
    RawWebSocket,
    client_frame,
    ws_connect,
    ws_recv,
    ws_subscribe,
)

import rawrt

INTERVAL_S, TIMEOUT_S = 0.2, 0.3
FAST_PINGS = {"ping_interval_s": INTERVAL_S, "ping_timeout_s": TIMEOUT_S}
# First ping after one interval, then the pong deadline; the sweep runs a few times per
# period, and a loaded machine gets some slack on top.
TERMINATED_WITHIN_S = INTERVAL_S + TIMEOUT_S + 1.0


async def _answer_pings(peer: RawWebSocket, count: int) -> None:
    """Answer `count` server pings, like any live client; a clock counted in intervals."""
    seen = 0
    while seen < count:
        opcode, payload = await peer.recv_frame()
        if opcode == OP_PING:
            seen += 1
            await peer.send_raw(client_frame(payload, OP_PONG))


@pytest.mark.parametrize("server", [FAST_PINGS], indirect=True)
async def test_silent_peer_is_terminated_while_answering_peers_stay_connected(
    server: rawrt.Server, stack: contextlib.AsyncExitStack
) -> None:
    live = await stack.enter_async_context(ws_connect(server.port))
    await ws_subscribe(live, "alive")
    answering = await stack.enter_async_context(await RawWebSocket.connect(server.port))
    silent = await stack.enter_async_context(await RawWebSocket.connect(server.port))
    loop = asyncio.get_running_loop()
    started = loop.time()
    answering_six = asyncio.create_task(_answer_pings(answering, 6))

    # The silent peer answers nothing; it reads only to see when its stream ends.
    frames = await silent.frames_until_eof(timeout_s=TERMINATED_WITHIN_S)
    assert loop.time() - started < TERMINATED_WITHIN_S
    assert frames, "the server never pinged"
    assert {opcode for opcode, _ in frames} == {OP_PING}

    # Several intervals later, the peers that answer are still there and still served.
    await asyncio.wait_for(answering_six, 5)
    await live.send(json.dumps({"type": "ping"}))
    assert (await ws_recv(live))["type"] == "pong"
    message_id = await server.publish("alive", "still here")
    message = await ws_recv(live)
    assert (message["type"], message["data"]) == ("message", "still here")
    assert message["id"] == message_id
    await answering.send_json({"type": "ping"})
    assert (await answering.recv_json())["type"] == "pong"


@pytest.mark.parametrize("server", [FAST_PINGS], indirect=True)
async def test_peer_that_stops_answering_after_a_while_is_terminated(
    server: rawrt.Server, stack: contextlib.AsyncExitStack
) -> None:
    peer = await stack.enter_async_context(await RawWebSocket.connect(server.port))
    async with asyncio.timeout(5):
        await _answer_pings(peer, 3)
    loop = asyncio.get_running_loop()
    went_quiet = loop.time()
    frames = await peer.frames_until_eof(timeout_s=TERMINATED_WITHIN_S)
    assert loop.time() - went_quiet < TERMINATED_WITHIN_S
    assert {opcode for opcode, _ in frames} <= {OP_PING}
