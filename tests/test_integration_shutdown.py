"""Graceful stop: WebSocket clients get close code 1001, event streams end, parked polls are
answered, and nothing waits for the shutdown timeout."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from support.clients import (
    HOST,
    PollClient,
    SseClient,
    request,
    ws_connect,
    ws_subscribe,
)
from websockets.asyncio.client import ClientConnection

import rawrt

Stack = contextlib.AsyncExitStack
# Well above what a graceful stop takes, well below the shutdown timeout (5 s by default).
STOPS_WITHIN_S = 2.0


class Clients:
    """One client of each kind, connected and waiting when the server stops."""

    def __init__(
        self,
        ws: ClientConnection,
        sse: SseClient,
        head: str,
        poll: asyncio.Task[dict[str, Any]],
        idle: _IdleConnection,
    ) -> None:
        self.ws, self.sse, self.head, self.poll, self.idle = ws, sse, head, poll, idle

    @classmethod
    async def connect(cls, port: int, stack: Stack) -> Clients:
        ws = await stack.enter_async_context(ws_connect(port))
        await ws_subscribe(ws, "bye")
        sse = await stack.enter_async_context(SseClient(port, "/api/sse/subscribe/bye"))
        await sse.next_event()  # connected
        poller = await stack.enter_async_context(PollClient(port, "bye"))
        head = await poller.start_at_head()
        poll = await poller.poll_sent(timeout=30, bound_s=10)
        idle = await stack.enter_async_context(_IdleConnection(port))
        # A round trip that starts after the poll was written: the poll is parked by its end.
        assert (await request(port, "GET", "/healthz")).status == 200
        return cls(ws, sse, head, poll, idle)

    async def check_goodbyes(self) -> None:
        async with asyncio.timeout(STOPS_WITHIN_S):
            await self.ws.wait_closed()
            assert self.ws.close_code == 1001
            assert await self.sse.read_to_end() == []
            assert self.sse.ended
            assert await self.poll == {"messages": [], "ids": [], "cursor": self.head}
            assert await self.idle.reader.read() == b""  # an idle keep-alive is closed


class _IdleConnection:
    """A kept-alive HTTP connection between requests."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def __aenter__(self) -> _IdleConnection:
        self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        self.writer.write(f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await self.reader.readexactly(length)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


async def test_stop_says_goodbye_to_every_kind_of_client(
    server: rawrt.Server, stack: Stack
) -> None:
    port = server.port
    clients = await Clients.connect(port, stack)
    loop = asyncio.get_running_loop()
    started = loop.time()
    stopping = asyncio.create_task(server.stop())
    await clients.check_goodbyes()
    await asyncio.wait_for(stopping, STOPS_WITHIN_S)
    assert loop.time() - started < STOPS_WITHIN_S
    with pytest.raises(OSError):
        await request(port, "GET", "/healthz")


async def _half_sent(
    port: int, method: str, target: str, body: bytes, headers: str = ""
) -> tuple[Any, Any]:
    """A request whose head the server has read (it said 100 Continue), its body held back.

    100 Continue is the one thing a server says between reading a head and reading the
    body, so it is the signal that the request is under way. (A GET may carry a body.)
    """
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(
        (
            f"{method} {target} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len(body)}\r\n"
            f"Expect: 100-continue\r\n{headers}\r\n"
        ).encode()
    )
    async with asyncio.timeout(5):
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    return reader, writer


UPGRADE = (
    "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)
# (method, target, extra head lines, what the whole response must contain)
UNDER_WAY = {
    "publish": ("POST", "/api/publish/late", "", b'"published":true'),
    "poll": ("POST", "/api/poll/late?timeout=30", "", b'{"messages":[],"ids":[],"cursor":'),
    "sse": ("GET", "/api/sse/subscribe/late", "", b'data: {"type":"connected"}'),
    # The 101, then a close frame with code 1001 (0x03e9).
    "websocket": ("GET", "/ws", UPGRADE, b"\r\n\r\n\x88\x16\x03\xe9"),
}


@pytest.mark.parametrize("kind", list(UNDER_WAY))
async def test_request_under_way_when_stop_begins_is_answered_then_closed(
    server: rawrt.Server, kind: str
) -> None:
    method, target, headers, answer = UNDER_WAY[kind]
    body = b"{}"
    reader, writer = await _half_sent(server.port, method, target, body, headers)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        stopping = asyncio.create_task(server.stop())
        await asyncio.sleep(0)  # one turn of the loop: stop() says its goodbyes first
        assert server.stopping
        writer.write(body)
        async with asyncio.timeout(STOPS_WITHIN_S):
            response = await reader.read()  # the whole response, then the server closes
            await stopping
        assert answer in response, response
        if kind in ("publish", "poll"):  # RFC 9112 §9.6: the last answer says it is the last
            assert b"\r\nconnection: close\r\n" in response.lower()
        assert loop.time() - started < STOPS_WITHIN_S
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@pytest.mark.asyncio(loop_factories=["asyncio"])
async def test_sigterm_to_the_process_says_goodbye_to_every_kind_of_client(
    spawn_rawrt: Any, stack: Stack
) -> None:
    child = spawn_rawrt("--port", "0")
    clients = await Clients.connect(child.port, stack)
    loop = asyncio.get_running_loop()
    started = loop.time()
    exit_status = asyncio.create_task(child.stopped())
    await clients.check_goodbyes()
    assert await asyncio.wait_for(exit_status, 10) == 0
    assert loop.time() - started < STOPS_WITHIN_S + 1
