"""The WebSocket protocol end to end: subscribe, unsubscribe, publish, ping, several channels."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from urllib.parse import quote

import pytest
from support.clients import (
    HOST,
    OP_TEXT,
    PollClient,
    RawWebSocket,
    SseClient,
    client_frame,
    event_json,
    request,
    ws_connect,
    ws_recv,
    ws_recv_many,
    ws_subscribe,
)

import rawrt

Stack = contextlib.AsyncExitStack


async def test_unsubscribed_client_gets_nothing_more_from_that_channel(
    server: rawrt.Server, stack: Stack
) -> None:
    ws = await stack.enter_async_context(ws_connect(server.port))
    await ws_subscribe(ws, "a")
    await ws_subscribe(ws, "b")
    await ws.send(json.dumps({"type": "unsubscribe", "channel": "a"}))
    assert await ws_recv(ws) == {"type": "unsubscribed", "channel": "a"}
    await server.publish("a", "not for you")
    b_id = await server.publish("b", "for you")
    frame = await ws_recv(ws)
    assert (frame["channel"], frame["data"], frame["id"]) == ("b", "for you", b_id)


async def test_client_on_several_channels_gets_each_channel_in_order(
    server: rawrt.Server, stack: Stack
) -> None:
    ws = await stack.enter_async_context(ws_connect(server.port))
    for channel in ("x", "y", "z"):
        await ws_subscribe(ws, channel)
    for n in range(5):
        for channel in ("x", "y", "z"):
            await server.publish(channel, n)
    frames = await ws_recv_many(ws, 15)
    for channel in ("x", "y", "z"):
        assert [f["data"] for f in frames if f["channel"] == channel] == list(range(5))


async def test_publisher_subscribed_to_its_channel_gets_its_own_message(
    server: rawrt.Server, stack: Stack
) -> None:
    ws = await stack.enter_async_context(ws_connect(server.port))
    await ws_subscribe(ws, "echo")
    await ws.send(json.dumps({"type": "publish", "channel": "echo", "data": {"k": [1, None]}}))
    frame = await ws_recv(ws)
    assert (frame["type"], frame["channel"], frame["data"]) == ("message", "echo", {"k": [1, None]})
    assert isinstance(frame["timestamp"], int) and frame["timestamp"] > 1_600_000_000_000


async def test_subscribing_again_with_since_replays_from_there(
    server: rawrt.Server, stack: Stack
) -> None:
    ids = [await server.publish("again", n) for n in range(4)]
    ws = await stack.enter_async_context(ws_connect(server.port))
    subscribed = await ws_subscribe(ws, "again")
    assert subscribed["id"] == ids[-1]  # the head: nothing is replayed without `since`
    await ws_subscribe(ws, "again", since=ids[1])
    assert [f["data"] for f in await ws_recv_many(ws, 2)] == [2, 3]
    live = await server.publish("again", 4)
    assert (await ws_recv(ws))["id"] == live  # once: the first subscription was replaced


async def test_subscribed_id_resumes_a_poll_and_an_sse_stream(
    server: rawrt.Server, stack: Stack
) -> None:
    await server.publish("head", "before")
    ws = await stack.enter_async_context(ws_connect(server.port))
    head = (await ws_subscribe(ws, "head"))["id"]
    after = await server.publish("head", "after")
    poller = await stack.enter_async_context(PollClient(server.port, "head"))
    assert await poller.poll(since=head) == {"messages": ["after"], "ids": [after], "cursor": after}
    target = f"/api/sse/subscribe/head?lastEventId={head}"
    sse = await stack.enter_async_context(SseClient(server.port, target))
    events = await sse.events(2)
    assert [event_json(e) for e in events] == [{"type": "connected"}, "after"]


async def test_first_frame_in_the_same_segment_as_the_upgrade_is_not_lost(
    server: rawrt.Server,
) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    upgrade = (
        f"GET /ws HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
    ).encode()
    frames = b"".join(
        client_frame(json.dumps(m).encode())
        for m in ({"type": "ping"}, {"type": "subscribe", "channel": "early"})
    )
    sock = await RawWebSocket.open_socket(server.port)
    async with RawWebSocket(sock) as ws:
        await ws.send_raw(upgrade + frames)  # one write: the frames ride with the request
        await ws.read_handshake(key.encode())
        assert (await ws.recv_json())["type"] == "pong"
        assert (await ws.recv_json())["type"] == "subscribed"
        message_id = await server.publish("early", "seen")
        opcode, payload = await ws.recv_frame()
        assert opcode == OP_TEXT and json.loads(payload)["id"] == message_id


@pytest.mark.parametrize("channel", ["café", "a/b", "with space", "x" * 256])
async def test_channel_names_mean_the_same_on_every_transport(
    server: rawrt.Server, stack: Stack, channel: str
) -> None:
    ws = await stack.enter_async_context(ws_connect(server.port))
    await ws_subscribe(ws, channel)
    path = quote(channel, safe="")
    sse = await stack.enter_async_context(SseClient(server.port, f"/api/sse/subscribe/{path}"))
    await sse.next_event()  # connected
    poller = await stack.enter_async_context(PollClient(server.port, path))
    await poller.start_at_head()
    http_ws = await stack.enter_async_context(ws_connect(server.port))
    await http_ws.send(json.dumps({"type": "publish", "channel": channel, "data": 1}))
    assert (await ws_recv(ws))["channel"] == channel
    event = await sse.next_event()
    assert event is not None and event_json(event) == 1
    assert await poller.collect(1) == [1]


async def test_channel_name_over_max_channel_bytes_is_refused_everywhere(
    server: rawrt.Server, stack: Stack
) -> None:
    ws = await stack.enter_async_context(ws_connect(server.port))
    await ws.send(json.dumps({"type": "subscribe", "channel": "x" * 257}))
    assert (await ws_recv(ws))["type"] == "error"
    poller = PollClient(server.port, "x" * 257)
    async with poller:
        response = await poller.send("GET", f"/api/poll/{'x' * 257}?timeout=0")
    assert response.status == 400


async def test_client_close_is_answered_with_the_same_code(
    server: rawrt.Server, stack: Stack
) -> None:
    ws = await stack.enter_async_context(ws_connect(server.port))
    await ws_subscribe(ws, "leaving")
    await ws.close(code=4000, reason="done here")
    assert ws.close_code == 4000  # §5.5.1: the server echoes the code it received
    # The server forgot the subscription: publishing to the channel still works.
    assert (await request(server.port, "POST", "/api/publish/leaving", "1")).status == 200


async def test_client_ping_frame_gets_a_pong_with_its_payload(
    server: rawrt.Server, stack: Stack
) -> None:
    ws = await stack.enter_async_context(ws_connect(server.port))
    async with asyncio.timeout(5):
        latency = await (await ws.ping(b"are you there"))
    assert latency >= 0


async def test_publish_with_a_ref_is_answered_with_its_id_and_reaches_every_transport(
    server: rawrt.Server, stack: Stack
) -> None:
    sse = await stack.enter_async_context(SseClient(server.port, "/api/sse/subscribe/acks"))
    await sse.next_event()  # connected
    poll = asyncio.ensure_future(
        request(server.port, "GET", "/api/poll/acks?since=" + quote(server.hub.head_id("acks")))
    )
    subscriber = await stack.enter_async_context(ws_connect(server.port))
    await ws_subscribe(subscriber, "acks")
    publisher = await stack.enter_async_context(ws_connect(server.port))
    for ref in (7, "second"):
        await publisher.send(
            json.dumps({"type": "publish", "channel": "acks", "data": ref, "ref": ref})
        )
    acks = await ws_recv_many(publisher, 2)
    assert [(a["type"], a["channel"], a["ref"]) for a in acks] == [
        ("published", "acks", 7),
        ("published", "acks", "second"),
    ]
    delivered = await ws_recv_many(subscriber, 2)
    assert [(m["data"], m["id"]) for m in delivered] == [
        (7, acks[0]["id"]),
        ("second", acks[1]["id"]),
    ]
    event = await sse.next_event()
    assert (event.last_event_id, event_json(event)) == (acks[0]["id"], 7)
    answer = json.loads((await asyncio.wait_for(poll, 5)).body)
    assert answer["messages"][0] == 7 and answer["ids"][0] == acks[0]["id"]


async def test_publish_without_a_ref_gets_no_answer_and_a_bad_ref_an_error_frame(
    server: rawrt.Server, stack: Stack
) -> None:
    start = server.hub.head_id("quiet")
    ws = await stack.enter_async_context(ws_connect(server.port))
    await ws.send(json.dumps({"type": "publish", "channel": "quiet", "data": 1}))
    await ws.send(json.dumps({"type": "publish", "channel": "quiet", "data": 2, "ref": [1]}))
    await ws.send(json.dumps({"type": "publish", "channel": "quiet", "data": 3, "ref": "x" * 65}))
    await ws.send(json.dumps({"type": "ping"}))
    frames = await ws_recv_many(ws, 3)
    assert [f["type"] for f in frames] == ["error", "error", "pong"]  # nothing for the first
    assert all("'ref'" in f["reason"] for f in frames[:2])
    # The refused publishes published nothing; the first one did.
    answer = json.loads(
        (await request(server.port, "GET", "/api/poll/quiet?since=" + quote(start))).body
    )
    assert answer["messages"] == [1]
