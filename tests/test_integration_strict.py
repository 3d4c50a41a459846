"""Strict HTTP parsing over real sockets: every input h11 alone would read leniently gets 400
and a close, and the request hidden behind it never runs.

Three control subscribers (a WebSocket, an event stream and a long poller) watch one channel
for the whole of each test. Each attack hides a publish to that channel where a strict parser
sees body (or trailer) bytes; after it, the next message each control gets is the one the
test publishes, so the hidden publish was never run, and nobody but the offender noticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator

import pytest
from support.clients import (
    HOST,
    TIMEOUT_S,
    RawSocket,
    SseClient,
    event_json,
    request,
    ws_connect,
    ws_recv,
    ws_subscribe,
)
from support.controls import Controls, open_controls

import rawrt

Stack = contextlib.AsyncExitStack
SMUGGLED = b'{"smuggled":true}'


def publish(channel: str = "watch", version: str = "1.1") -> bytes:
    """The request an attacker hides: a publish of SMUGGLED to the watched channel."""
    return (
        f"POST /api/publish/{channel} HTTP/{version}\r\nHost: {HOST}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(SMUGGLED)}\r\n\r\n"
    ).encode() + SMUGGLED


@pytest.fixture
async def controls(server: rawrt.Server, stack: Stack) -> AsyncIterator[Controls]:
    watchers = await open_controls(server, stack)
    yield watchers
    await watchers.check()


async def exchange(port: int, data: bytes) -> bytes:
    """Send `data` on a fresh connection and read until the server closes it (bounded)."""
    async with asyncio.timeout(TIMEOUT_S):
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            writer.write(data)
            return await reader.read()  # to EOF: the server must close
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def assert_refused(output: bytes, status: int = 400) -> None:
    """One answer, the JSON error, with Connection: close; nothing after it."""
    assert output.count(b"HTTP/1.1 ") == 1, output
    head, _, body = output.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), output
    assert b"\r\nConnection: close" in head
    assert json.loads(body)["status"] == status


UPGRADE = (
    b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)
HEAD = f"POST /api/publish/watch HTTP/1.1\r\nHost: {HOST}\r\n".encode()
CHUNKED = HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
SMUGGLING = {
    # h11 would have answered the first request and then run the publish.
    "bare LF head": f"GET /healthz HTTP/1.1\nHost: {HOST}\n\n".encode() + publish(),
    "bare LF ends a CRLF head": f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\n\n".encode() + publish(),
    # The same on each transport's own request: an upgrade, an event stream, a poll.
    "bare LF upgrade": f"GET /ws HTTP/1.1\r\nHost: {HOST}\r\n".encode()
    + UPGRADE
    + b"\n"
    + publish(),
    "bare LF event stream": f"GET /api/sse/subscribe/watch HTTP/1.1\nHost: {HOST}\n\n".encode()
    + publish(),
    "bare LF poll": f"GET /api/poll/watch?timeout=0 HTTP/1.1\r\nHost: {HOST}\n\r\n".encode()
    + publish(),
    "TE on HTTP/1.0": b"POST /api/publish/watch HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"2\r\n{}\r\n0\r\n\r\n" + publish(),
    "CL and TE": HEAD
    + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    + publish(),
    "CL twice": HEAD + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}" + publish(),
    "CL as a list": HEAD + b"Content-Length: 2, 2\r\n\r\n{}" + publish(),
    "obs-fold": HEAD + b"Content-Length: 2\r\nX: a\r\n b\r\n\r\n{}" + publish(),
    "bare CR in a chunk extension": CHUNKED + b"2;a\rb\r\n{}\r\n0\r\n\r\n" + publish(),
    "space after a chunk size": CHUNKED + b"2 \r\n{}\r\n0\r\n\r\n" + publish(),
    # A proxy that waits for the blank line reads the publish as trailer fields; h11 runs it.
    "bare LF ends the trailers": CHUNKED + b"2\r\n{}\r\n0\r\n\n" + publish(),
    "bare LF in a trailer": CHUNKED + b"2\r\n{}\r\n0\r\nX: y\n\r\n" + publish(),
    "bare LF last chunk": CHUNKED + b"2\r\n{}\r\n0\n\n" + publish(),
    "TE not chunked last": HEAD + b"Transfer-Encoding: chunked, identity\r\n\r\n" + publish(),
}


@pytest.mark.parametrize("data", SMUGGLING.values(), ids=SMUGGLING.keys())
async def test_smuggling_attempt_gets_400_and_its_hidden_publish_never_runs(
    server: rawrt.Server, controls: Controls, data: bytes
) -> None:
    assert_refused(await exchange(server.port, data))
    # The fixture's last check: each control's next message is the test's, not SMUGGLED.


@pytest.mark.parametrize("cut", [1, 17, 40, 60])
async def test_smuggling_split_across_writes_is_refused_the_same(
    server: rawrt.Server, controls: Controls, cut: int
) -> None:
    data = SMUGGLING["bare LF ends the trailers"]
    async with RawSocket(await RawSocket.open_socket(server.port)) as raw:
        await raw.send_raw(data[:cut])
        await raw.send_raw(data[cut:])
        status, headers = await raw._read_head()
        assert status == 400 and headers["connection"] == "close"


HOSTS = {
    "non-ASCII": "é.example".encode(),
    "several": b"a\r\nHost: b",
    "too long": b"a" * 254,
    "empty": b"",
    "not host:port": b"a b",
    "bad port": b"a:80x",
    "userinfo": b"u@a",
}


@pytest.mark.parametrize("host", HOSTS.values(), ids=HOSTS.keys())
@pytest.mark.parametrize("route", ["publish", "upgrade", "sse", "poll"])
async def test_invalid_host_gets_400_on_every_route(
    server: rawrt.Server, controls: Controls, host: bytes, route: str
) -> None:
    start = {
        "publish": b"POST /api/publish/watch HTTP/1.1\r\n",
        "upgrade": b"GET /ws HTTP/1.1\r\n" + UPGRADE,
        "sse": b"GET /api/sse/subscribe/watch HTTP/1.1\r\n",
        "poll": b"GET /api/poll/watch?timeout=0 HTTP/1.1\r\n",
    }[route]
    body = b"Content-Length: 17\r\n\r\n" + SMUGGLED if route == "publish" else b"\r\n"
    assert_refused(await exchange(server.port, start + b"Host: " + host + b"\r\n" + body))


async def test_valid_hosts_are_served(server: rawrt.Server) -> None:
    for host in ("localhost", "127.0.0.1:8000", "[::1]:80", "xn--caf-dma.example"):
        response = await request(server.port, "GET", "", raw=_get(host))
        assert response.status == 200, (host, response.body)


def _get(host: str) -> bytes:
    return f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()


# --- a connection that sends nothing ------------------------------------------------------------


@pytest.mark.parametrize("server", [{"request_timeout_s": 0.5}], indirect=True)
async def test_connection_that_sends_nothing_is_closed_at_the_request_deadline(
    server: rawrt.Server, controls: Controls
) -> None:
    started = time.monotonic()
    async with RawSocket(await RawSocket.open_socket(server.port)) as idle:
        with pytest.raises(EOFError):
            async with asyncio.timeout(TIMEOUT_S):  # keepalive_timeout_s is 75 s
                await idle._fill()
        assert idle._buffer == bytearray()  # closed without a word: it asked nothing
    assert time.monotonic() - started >= 0.4


# --- channel names: one grammar for URLs and frames ---------------------------------------------

BAD_NAMES = {
    "empty namespace": ("a::b", "a%3A%3Ab"),
    "trailing separator": ("a:", "a%3A"),
    "wildcard": ("news:*", "news%3A%2A"),
    "NUL": ("a\x00b", "a%00b"),
    "C1 control": ("a\x85", "a%C2%85"),
    "too long": ("x" * 257, "x" * 257),
}


@pytest.mark.parametrize(("name", "encoded"), BAD_NAMES.values(), ids=BAD_NAMES.keys())
async def test_bad_channel_name_is_refused_alike_on_every_transport(
    server: rawrt.Server, stack: Stack, controls: Controls, name: str, encoded: str
) -> None:
    for method, target in [
        ("GET", f"/api/sse/subscribe/{encoded}"),
        ("GET", f"/api/poll/{encoded}?timeout=0"),
        ("POST", f"/api/publish/{encoded}"),
    ]:
        response = await request(server.port, method, target, body="1")
        assert response.status == 400, (target, response.body)
        assert "channel name" in response.json()["error"]
    ws = await stack.enter_async_context(ws_connect(server.port))
    for kind in ("subscribe", "publish"):
        await ws.send(json.dumps({"type": kind, "channel": name, "data": 1}))
        error = await ws_recv(ws)
        assert error["type"] == "error" and "channel name" in error["reason"], error
    await ws.send(json.dumps({"type": "ping"}))
    assert (await ws_recv(ws))["type"] == "pong"  # the offender is still served


async def test_namespaced_channel_names_work_on_every_transport(
    server: rawrt.Server, stack: Stack
) -> None:
    ws = await stack.enter_async_context(ws_connect(server.port))
    await ws_subscribe(ws, "room:42:chat")
    sse = await stack.enter_async_context(
        SseClient(server.port, "/api/sse/subscribe/room%3A42%3Achat")
    )
    await sse.next_event()
    response = await request(server.port, "POST", "/api/publish/room:42:chat", body='"hi"')
    assert response.status == 200, response.body
    assert (await ws_recv(ws))["data"] == "hi"
    event = await sse.next_event()
    assert event is not None and event_json(event) == "hi"


# --- at the connection cap ----------------------------------------------------------------------

# The three controls hold the three connections the server may have.
AT_CAP = {"max_connections": 3, "max_shed_connections": 2}


@pytest.mark.parametrize("server", [AT_CAP], indirect=True)
async def test_at_the_cap_an_event_stream_gets_200_retry_and_an_end(
    server: rawrt.Server, controls: Controls
) -> None:
    output = await exchange(server.port, _sse_request("watch"))
    head, _, body = output.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"text/event-stream" in head
    assert b"retry: " in body and b"data:" not in body  # it ended, with nothing sent


@pytest.mark.parametrize("server", [AT_CAP], indirect=True)
@pytest.mark.parametrize(
    "data",
    [
        f"GET /api/poll/watch?timeout=0 HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode(),
        publish(),
        f"GET /ws HTTP/1.1\r\nHost: {HOST}\r\n".encode() + UPGRADE + b"\r\n",
    ],
    ids=["poll", "publish", "upgrade"],
)
async def test_at_the_cap_other_routes_keep_503(
    server: rawrt.Server, controls: Controls, data: bytes
) -> None:
    assert_refused(await exchange(server.port, data), 503)
    # The publish was not run: the controls' next message is the fixture's own.


@pytest.mark.parametrize("server", [{**AT_CAP, "max_shed_connections": 1}], indirect=True)
async def test_past_the_shed_bound_a_connection_gets_503_at_once(
    server: rawrt.Server, controls: Controls
) -> None:
    async with RawSocket(await RawSocket.open_socket(server.port)) as held:
        # `held` sends nothing and fills the one shed slot; the next gets 503 unasked.
        output = await exchange(server.port, b"")
        assert output.startswith(b"HTTP/1.1 503 ")
        await held.send_raw(_sse_request("watch"))
        status, headers = await held._read_head()
        assert status == 200 and headers["content-type"].startswith("text/event-stream")


def _sse_request(channel: str) -> bytes:
    return f"GET /api/sse/subscribe/{channel} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
