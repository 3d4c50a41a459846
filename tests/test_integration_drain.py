"""Drains: SIGTERM makes /readyz say 503 at once, then closes the connections spread over
--drain-s (WebSocket 1001, SSE streams end, parked polls answered), a second signal cuts
the wait, and nothing published before a client's close is lost to it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from pathlib import Path
from typing import Any

import pytest
from support.clients import HOST, request, ws_connect, ws_recv, ws_subscribe
from support.redis_server import RedisServer
from websockets.asyncio.client import ClientConnection

import rawrt

Stack = contextlib.AsyncExitStack
CONNECT_BOUND_S = 60.0  # a thousand clients connect within this, on a shared machine
DELAY_S = 0.5
WINDOW_S = 3.0
# Each client's close is seen within this of when the plan made it due (a tick is 50 ms).
LATE_S = 0.6


async def _ws_client(port: int, stack: Stack, closed: dict[str, float]) -> Any:
    ws: ClientConnection = await stack.enter_async_context(ws_connect(port))
    await ws_subscribe(ws, "drain")

    async def wait() -> int | None:
        await ws.wait_closed()
        closed[f"ws{id(ws)}"] = asyncio.get_running_loop().time()
        return ws.close_code

    return wait


async def _http_client(port: int, target: str, closed: dict[str, float], key: str) -> Any:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    await writer.drain()

    async def wait() -> bytes:
        try:
            body = await reader.read(-1)  # to the end: the server closes when it drains
            closed[key] = asyncio.get_running_loop().time()
            return body
        finally:
            writer.close()

    return wait


async def _until(predicate: Any, bound_s: float) -> None:
    async with asyncio.timeout(bound_s):
        while not await predicate():
            await asyncio.sleep(0.02)


async def _readyz(port: int) -> int:
    return (await request(port, "GET", "/readyz")).status


@pytest.mark.asyncio(loop_factories=["asyncio"])
async def test_sigterm_spreads_a_thousand_closes_over_the_drain_window(
    spawn_rawrt: Any, stack: Stack
) -> None:
    child = spawn_rawrt("--port", "0", "--drain-delay-s", str(DELAY_S), "--drain-s", str(WINDOW_S))
    port = child.port
    closed: dict[str, float] = {}
    async with asyncio.timeout(CONNECT_BOUND_S):
        ws = [await _ws_client(port, stack, closed) for _ in range(400)]
        sse = [
            await _http_client(port, "/api/sse/subscribe/drain", closed, f"sse{i}")
            for i in range(300)
        ]
        polls = [
            await _http_client(port, "/api/poll/drain?timeout=100", closed, f"poll{i}")
            for i in range(300)
        ]
    assert await _readyz(port) == 200
    loop = asyncio.get_running_loop()
    waits = [asyncio.create_task(w()) for w in (*ws, *sse, *polls)]
    signalled = loop.time()
    child.proc.send_signal(signal.SIGTERM)
    assert await _readyz(port) == 503  # at once, while every connection is still open
    assert not closed
    results = await asyncio.wait_for(asyncio.gather(*waits), DELAY_S + WINDOW_S + 10)
    await asyncio.to_thread(child.proc.wait, 10)  # it exits by itself once drained
    assert await child.stopped() == 0

    assert results[:400] == [1001] * 400  # WebSocket: going away
    for body in results[400:700]:
        assert body.startswith(b"HTTP/1.1 200") and b"retry: " in body  # streams end cleanly
    for body in results[700:]:
        assert body.startswith(b"HTTP/1.1 200"), body[:80]  # parked polls answered
        assert json.loads(body.partition(b"\r\n\r\n")[2])["messages"] == []

    start = signalled + DELAY_S
    times = sorted(t - start for t in closed.values())
    assert len(times) == 1000
    assert times[0] > -0.05, "nothing closes before the delay has passed"
    assert times[0] < LATE_S, "the first closes come at the window's start"
    assert times[-1] > WINDOW_S * 0.9, "the last closes come near the window's end"
    assert times[-1] < WINDOW_S + LATE_S
    tenths = [0] * 10
    for t in times:
        tenths[min(9, max(0, int(t / WINDOW_S * 10)))] += 1
    assert max(tenths) <= 2 * 100, f"closes per tenth of the window: {tenths}"


@pytest.mark.asyncio(loop_factories=["asyncio"])
async def test_a_second_sigterm_cuts_the_drain_short(spawn_rawrt: Any, stack: Stack) -> None:
    child = spawn_rawrt("--port", "0", "--drain-delay-s", "60", "--drain-s", "60")
    ws = await stack.enter_async_context(ws_connect(child.port))
    await ws_subscribe(ws, "cut")
    child.proc.send_signal(signal.SIGTERM)
    await _until(lambda: _is_503(child.port), 5)
    assert ws.close_code is None  # still served during the delay
    loop = asyncio.get_running_loop()
    started = loop.time()
    child.proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(5):
        await ws.wait_closed()
    assert ws.close_code == 1001
    # It exits by itself (a third signal at exit would find no handler left).
    await asyncio.to_thread(child.proc.wait, 10)
    assert await child.stopped() == 0  # sends nothing now: it collects the exit status
    assert loop.time() - started < 5


async def _is_503(port: int) -> bool:
    return await _readyz(port) == 503


async def test_a_message_published_just_before_the_drain_reaches_the_subscriber_first(
    server: rawrt.Server, stack: Stack
) -> None:
    ws = await stack.enter_async_context(ws_connect(server.port))
    await ws_subscribe(ws, "last")
    server.publish_json("last", '"last words"')  # handed out at a later flush ...
    await server.drain()  # ... but this runs first, up to its goodbyes
    assert (await ws_recv(ws))["data"] == "last words"
    async with asyncio.timeout(5):
        await ws.wait_closed()
    assert ws.close_code == 1001


@pytest.mark.parametrize("server", [{"drain_delay_s": 30.0}], indirect=True)
async def test_drain_keeps_serving_through_its_delay(server: rawrt.Server, stack: Stack) -> None:
    draining = asyncio.create_task(server.drain())
    await _until(lambda: _is_503(server.port), 5)
    assert (await request(server.port, "GET", "/healthz")).status == 200
    ws = await stack.enter_async_context(ws_connect(server.port))
    await ws_subscribe(ws, "still")
    server.cut_drain()
    await asyncio.wait_for(draining, 5)
    assert server.stopping


@pytest.mark.asyncio(loop_factories=["asyncio"])
async def test_workers_drain_and_a_second_sigterm_to_the_supervisor_cuts_it(
    spawn_rawrt: Any, stack: Stack, tmp_path: Path
) -> None:
    redis_server = RedisServer(tmp_path / "redis")
    redis_server.start()
    try:
        supervisor = spawn_rawrt(
            "--port", "0", "--workers", "2", "--redis", redis_server.url,
            "--drain-delay-s", "60", "--drain-s", "60",
        )  # fmt: skip
        port = supervisor.port
        await _until(lambda: _both_listening(supervisor), 15)  # a signal before would kill one
        await _until(lambda: _is_200(port), 10)  # a worker has reached Redis
        ws = await stack.enter_async_context(ws_connect(port))
        await ws_subscribe(ws, "workers")
        supervisor.proc.send_signal(signal.SIGTERM)
        await _until(lambda: _is_503(port), 5)  # the signal reached the workers
        assert ws.close_code is None
        supervisor.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(5):
            await ws.wait_closed()
        assert ws.close_code == 1001
        await asyncio.to_thread(supervisor.proc.wait, 10)
        assert await supervisor.stopped() == 0
    finally:
        redis_server.stop()


async def _is_200(port: int) -> bool:
    return await _readyz(port) == 200


async def _both_listening(supervisor: Any) -> bool:
    return sum("listening on" in line for line in supervisor.lines) == 2
