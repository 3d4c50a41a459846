"""Bad input is refused with the status or close code it deserves, and disturbs nobody else.

A WebSocket and an SSE subscriber watch one channel for the whole of each test; after the
bad input they must still get every message, in order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from support.clients import (
    HOST,
    HttpClient,
    PollClient,
    RawWebSocket,
    SseClient,
    request,
    ws_connect,
    ws_recv,
    ws_subscribe,
)
from support.controls import Controls, open_controls
from websockets.exceptions import ConnectionClosedError

import rawrt

SMALL_LIMITS = {"max_message_bytes": 1024, "max_body_bytes": 1024}
Stack = contextlib.AsyncExitStack


@pytest.fixture
async def bystanders(server: rawrt.Server, stack: Stack) -> AsyncIterator[Controls]:
    """A subscriber on each transport that must not notice anything."""
    watchers = await open_controls(server, stack)
    yield watchers
    await watchers.check()


# --- WebSocket messages -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "this is not json",
        "{",
        "[1, 2]",
        '"subscribe"',
        '{"type": "dance", "channel": "x"}',
        '{"type": "subscribe"}',
        '{"type": "subscribe", "channel": 7}',
        '{"type": "subscribe", "channel": "x", "since": 5}',
        '{"type": "publish", "channel": ""}',
        "NaN",
    ],
)
async def test_ws_client_sending_a_bad_message_gets_an_error_frame_and_stays_connected(
    server: rawrt.Server, stack: Stack, bystanders: Controls, text: str
) -> None:
    ws = await stack.enter_async_context(ws_connect(server.port))
    await ws.send(text)
    error = await ws_recv(ws)
    assert error["type"] == "error"
    assert error["data"] == "Invalid message format"
    # Still open, and still served.
    await ws.send(json.dumps({"type": "ping"}))
    assert (await ws_recv(ws))["type"] == "pong"
    await ws_subscribe(ws, "after-error")
    message_id = await server.publish("after-error", "fine")
    assert (await ws_recv(ws))["id"] == message_id


async def test_ws_client_sending_a_binary_frame_gets_an_error_frame(
    server: rawrt.Server, stack: Stack, bystanders: Controls
) -> None:
    ws = await stack.enter_async_context(ws_connect(server.port))
    await ws.send(b'{"type": "ping"}')
    assert (await ws_recv(ws))["type"] == "error"
    await ws.send(json.dumps({"type": "ping"}))
    assert (await ws_recv(ws))["type"] == "pong"


@pytest.mark.parametrize("server", [SMALL_LIMITS], indirect=True)
async def test_ws_message_over_max_message_bytes_closes_with_1009(
    server: rawrt.Server, stack: Stack, bystanders: Controls
) -> None:
    ws = await stack.enter_async_context(ws_connect(server.port))
    await ws_subscribe(ws, "watch")
    big = json.dumps({"type": "publish", "channel": "watch", "data": "x" * 2000})
    await ws.send(big)
    with pytest.raises(ConnectionClosedError) as closed:
        await ws_recv(ws)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    # The message was refused, not published: the bystanders' next message is theirs.


@pytest.mark.parametrize("server", [SMALL_LIMITS], indirect=True)
async def test_ws_message_over_the_limit_in_fragments_closes_with_1009(
    server: rawrt.Server, stack: Stack, bystanders: Controls
) -> None:
    ws = await stack.enter_async_context(ws_connect(server.port))
    with pytest.raises(ConnectionClosedError) as closed:
        await ws.send(["x" * 400 for _ in range(4)])  # 1600 bytes in four frames
        await ws_recv(ws)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


@pytest.mark.parametrize("server", [SMALL_LIMITS], indirect=True)
async def test_ws_message_at_max_message_bytes_is_accepted(
    server: rawrt.Server, stack: Stack, bystanders: Controls
) -> None:
    ws = await stack.enter_async_context(ws_connect(server.port))
    await ws_subscribe(ws, "exact")
    prefix = json.dumps({"type": "publish", "channel": "exact", "data": ""})
    text = prefix[:-2] + "y" * (1024 - len(prefix)) + '"}'
    assert len(text.encode()) == 1024
    await ws.send(text)
    assert (await ws_recv(ws))["data"] == "y" * (1024 - len(prefix))


# --- HTTP requests ----------------------------------------------------------------------------


def _assert_json_error(response: Any, status: int) -> None:
    assert response.status == status, (response.status, response.body)
    assert response.headers["content-type"] == "application/json"
    assert response.json()["status"] == status


@pytest.mark.parametrize("server", [SMALL_LIMITS], indirect=True)
async def test_publish_with_a_body_over_max_body_bytes_gets_413(
    server: rawrt.Server, bystanders: Controls
) -> None:
    body = json.dumps({"x": "y" * 2000})
    response = await request(server.port, "POST", "/api/publish/watch", body)
    _assert_json_error(response, 413)


@pytest.mark.parametrize("server", [SMALL_LIMITS], indirect=True)
async def test_publish_with_a_chunked_body_over_max_body_bytes_gets_413(
    server: rawrt.Server, bystanders: Controls
) -> None:
    chunk = b'"' + b"y" * 598 + b'"'
    raw = (
        f"POST /api/broadcast/watch HTTP/1.1\r\nHost: {HOST}\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    ).encode() + b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(2))
    response = await request(server.port, "POST", "", raw=raw)
    _assert_json_error(response, 413)


@pytest.mark.parametrize(
    ("body", "status"),
    [("not json", 400), ("", 400), ("NaN", 400), (b"\xff\xfe", 400)],
)
async def test_publish_with_a_body_that_is_not_json_gets_400(
    server: rawrt.Server, bystanders: Controls, body: str | bytes, status: int
) -> None:
    response = await request(server.port, "POST", "/api/publish/watch", body)
    _assert_json_error(response, status)


async def test_unknown_route_gets_404_with_json(server: rawrt.Server, bystanders: Controls) -> None:
    for target in ("/nope", "/api/poll", "/api/sse/subscribe/", "/ws/extra"):
        _assert_json_error(await request(server.port, "GET", target), 404)


async def test_wrong_method_on_a_known_route_gets_405_with_allow(
    server: rawrt.Server, bystanders: Controls
) -> None:
    response = await request(server.port, "GET", "/api/publish/watch")
    _assert_json_error(response, 405)
    assert "POST" in response.headers["allow"]


async def test_plain_get_on_ws_without_upgrade_gets_426(
    server: rawrt.Server, bystanders: Controls
) -> None:
    response = await request(server.port, "GET", "/ws")
    _assert_json_error(response, 426)
    assert response.headers["upgrade"].lower() == "websocket"


@pytest.mark.parametrize(
    "key",
    ["", "abc", "dGhlIHNhbXBsZSBub25jZQ", "dGhlIHNhbXBsZSBub25jZQ==x", "AAAAAAAAAAAAAAAAAAAAAAAA"],
)
async def test_upgrade_with_a_bad_sec_websocket_key_gets_400(
    server: rawrt.Server, bystanders: Controls, key: str
) -> None:
    headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", key),
    ]
    _assert_json_error(await request(server.port, "GET", "/ws", headers=headers), 400)


async def test_upgrade_with_another_websocket_version_gets_426(
    server: rawrt.Server, bystanders: Controls
) -> None:
    headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "8"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ]
    response = await request(server.port, "GET", "/ws", headers=headers)
    _assert_json_error(response, 426)
    assert response.headers["sec-websocket-version"] == "13"


async def test_headers_over_the_head_limit_get_431(
    server: rawrt.Server, bystanders: Controls
) -> None:
    big = [("X-Filler", "a" * 20_000)]
    _assert_json_error(await request(server.port, "GET", "/healthz", headers=big), 431)


async def test_too_many_header_fields_get_431(server: rawrt.Server, bystanders: Controls) -> None:
    many = [(f"X-H{i}", "1") for i in range(150)]
    _assert_json_error(await request(server.port, "GET", "/healthz", headers=many), 431)


async def test_content_length_with_transfer_encoding_gets_400(
    server: rawrt.Server, bystanders: Controls
) -> None:
    raw = (
        f"POST /api/publish/watch HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 3\r\n"
        "Transfer-Encoding: chunked\r\n\r\n3\r\n123\r\n0\r\n\r\n"
    ).encode()
    _assert_json_error(await request(server.port, "POST", "", raw=raw), 400)


async def test_garbage_instead_of_http_gets_400(server: rawrt.Server, bystanders: Controls) -> None:
    raw = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n"
    _assert_json_error(await request(server.port, "GET", "", raw=raw), 400)


async def test_bad_poll_timeout_gets_400_and_the_connection_goes_on(
    server: rawrt.Server, stack: Stack, bystanders: Controls
) -> None:
    http = await stack.enter_async_context(HttpClient(server.port))
    _assert_json_error(await http.send("GET", "/api/poll/watch?timeout=soon"), 400)
    _assert_json_error(await http.send("GET", "/api/poll/watch?timeout=-1"), 400)
    assert (await http.send("GET", "/healthz")).status == 200
    assert http.connections_opened == 1


async def test_raw_ws_peer_sending_an_unmasked_frame_is_closed_with_1002(
    server: rawrt.Server, stack: Stack, bystanders: Controls
) -> None:
    peer = await stack.enter_async_context(await RawWebSocket.connect(server.port))
    await peer.send_raw(b"\x81\x05hello")  # §5.1: a client MUST mask every frame
    frames = await peer.frames_until_eof()
    assert frames[-1][0] == 0x8 and frames[-1][1][:2] == (1002).to_bytes(2, "big")


# --- capacity ---------------------------------------------------------------------------------

ONE_CHANNEL = {"max_channels": 1}


@pytest.mark.parametrize("server", [ONE_CHANNEL], indirect=True)
async def test_when_every_channel_slot_is_busy_each_transport_says_so_and_recovers(
    server: rawrt.Server, stack: Stack
) -> None:
    ws = await stack.enter_async_context(ws_connect(server.port))
    await ws_subscribe(ws, "busy")  # the one slot, held by a listener
    # A WebSocket subscribe gets an error frame and stays open.
    await ws.send(json.dumps({"type": "subscribe", "channel": "other"}))
    error = await ws_recv(ws)
    assert error["type"] == "error"
    # Publishing over HTTP and polling get 503.
    _assert_json_error(await request(server.port, "POST", "/api/publish/other", "1"), 503)
    _assert_json_error(await request(server.port, "GET", "/api/poll/other?timeout=0"), 503)
    # An event stream gets a 200 that ends at once with a retry hint (a browser's EventSource
    # gives up for good on any other status, and reconnects after `retry` on a clean end).
    sse = await stack.enter_async_context(SseClient(server.port, "/api/sse/subscribe/other"))
    assert sse.status == 200
    assert await sse.read_to_end(timeout_s=2) == []
    assert sse.parser.reconnection_time_ms is not None
    # Once the slot is free, the same requests succeed.
    await ws.send(json.dumps({"type": "unsubscribe", "channel": "busy"}))
    assert (await ws_recv(ws))["type"] == "unsubscribed"
    await ws_subscribe(ws, "other")
    reply = await request(server.port, "POST", "/api/publish/other", "1")
    assert reply.status == 200
    assert (await ws_recv(ws))["id"] == reply.json()["id"]


async def test_unsupported_transfer_encoding_gets_501_and_is_not_logged_as_a_bug(
    server: rawrt.Server, bystanders: Controls, caplog: pytest.LogCaptureFixture
) -> None:
    head = f"POST /api/publish/watch HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: "
    with caplog.at_level(logging.ERROR, logger="rawrt"):
        raw = (head + "gzip, chunked\r\n\r\n").encode()
        _assert_json_error(await request(server.port, "POST", "", raw=raw), 501)
        # RFC 9112 §6.3: chunked not the final coding leaves the length unknown: 400.
        raw = (head + "gzip\r\n\r\n").encode()
        _assert_json_error(await request(server.port, "POST", "", raw=raw), 400)
    assert caplog.records == []


async def test_request_target_over_max_target_bytes_gets_414(
    server: rawrt.Server, bystanders: Controls
) -> None:
    _assert_json_error(await request(server.port, "GET", "/api/poll/" + "x" * 9000), 414)


# --- clients that vanish ----------------------------------------------------------------------


async def test_subscribers_that_vanish_mid_stream_leave_no_trace(
    server: rawrt.Server, stack: Stack, bystanders: Controls, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="rawrt")
    ws = await RawWebSocket.connect(server.port)
    await ws.send_json({"type": "subscribe", "channel": "watch"})
    assert (await ws.recv_json())["type"] == "subscribed"
    sse = SseClient(server.port, "/api/sse/subscribe/watch")
    await sse.connect()
    await sse.next_event()  # connected
    poller = PollClient(server.port, "watch")
    await poller.start_at_head()
    parked = await poller.poll_sent(timeout=30)
    assert (await request(server.port, "GET", "/healthz")).status == 200  # the poll is parked
    # All three go away without a goodbye; the WebSocket with a reset (SO_LINGER 0).
    ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.close()
    await sse.close()
    parked.cancel()
    await poller.close()
    for _ in range(3):
        await bystanders.check()  # publishes while the server finds out
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
