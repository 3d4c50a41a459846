"""Join and leave events (--presence-events) on one real server: WebSocket and SSE subscribers
see every other subscriber come and go, once each; none arrive with the option off or past the
channel-size bound; events carry no id and never disturb the messages' ids, order or resume."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from support.clients import (
    PollClient,
    SseClient,
    event_json,
    request,
    ws_connect,
    ws_recv,
    ws_subscribe,
)
from websockets.asyncio.client import ClientConnection

import rawrt
from rawrt.tokens import issue_token

Stack = contextlib.AsyncExitStack
StartServer = Callable[..., Awaitable[rawrt.Server]]
SECRET = "presence-events-secret-0123456789abcdef"
NODE: dict[str, Any] = {
    "jwt_secret": SECRET,
    "public_channels": "open:*",
    "allowed_origins": "",
    "presence_events": True,
}


def bearer(sub: str) -> list[tuple[str, str]]:
    token = issue_token(SECRET, sub=sub, channels=["*"], publish=[], now=time.time(), ttl_s=600)
    return [("Authorization", f"Bearer {token}")]


def event(kind: str, channel: str, user: str | None, transport: str) -> dict[str, Any]:
    return {"type": kind, "channel": channel, "user": user, "transport": transport}


async def until_total(port: int, channel: str, total: int) -> None:
    """Wait (bounded) until the server counts `total` subscribers of `channel`."""
    async with asyncio.timeout(5):
        while True:
            response = await request(port, "GET", f"/api/presence/{channel}", headers=bearer("o"))
            if json.loads(response.body)["subscribers"]["total"] == total:
                return
            await asyncio.sleep(0.02)


async def watcher_ws(stack: Stack, port: int, channel: str, sub: str) -> ClientConnection:
    ws = await stack.enter_async_context(ws_connect(port, additional_headers=bearer(sub)))
    await ws_subscribe(ws, channel)
    return ws


async def watcher_sse(stack: Stack, port: int, channel: str, sub: str) -> SseClient:
    sse = await stack.enter_async_context(
        SseClient(port, f"/api/sse/subscribe/{channel}", bearer(sub))
    )
    first = await sse.next_event()
    assert first is not None and event_json(first) == {"type": "connected"}
    return sse


async def sse_next(sse: SseClient) -> tuple[str, str, Any]:
    """The next event's type, the lastEventId it leaves (as a browser keeps it), its data."""
    got = await sse.next_event()
    assert got is not None, "the stream ended"
    return got.type, got.last_event_id, event_json(got)


async def test_ws_and_sse_subscribers_see_others_join_and_leave_once(
    start_server: StartServer, stack: Stack
) -> None:
    server = await start_server(**NODE)
    port = server.port
    alice = await watcher_ws(stack, port, "room", "alice")
    bob = await watcher_sse(stack, port, "room", "bob")
    assert await ws_recv(alice) == event("join", "room", "bob", "sse")
    first_id = await server.publish("room", "first")
    assert (await ws_recv(alice))["id"] == first_id
    assert await sse_next(bob) == ("message", first_id, "first")

    async with ws_connect(port, additional_headers=bearer("carol")) as carol:
        await ws_subscribe(carol, "room")
        assert await ws_recv(alice) == event("join", "room", "carol", "ws")
        # No id: the stream's lastEventId stays the last message's, for a resume.
        assert await sse_next(bob) == ("join", first_id, event("join", "room", "carol", "ws"))
        # Carol is told of nobody's join, her own included: next comes the message.
        carol_id = await server.publish("room", "to carol")
        assert (await ws_recv(carol))["id"] == carol_id
        assert (await ws_recv(alice))["id"] == carol_id
        assert await sse_next(bob) == ("message", carol_id, "to carol")
    # Carol's connection is gone: a leave for each.
    assert await ws_recv(alice) == event("leave", "room", "carol", "ws")
    assert await sse_next(bob) == ("leave", carol_id, event("leave", "room", "carol", "ws"))

    # Anonymous (a public channel), and an unsubscribe that keeps the socket.
    anon = await stack.enter_async_context(ws_connect(port))
    await ws_subscribe(alice, "open:hall")
    await ws_subscribe(anon, "open:hall")
    assert await ws_recv(alice) == event("join", "open:hall", None, "ws")
    await anon.send(json.dumps({"type": "unsubscribe", "channel": "open:hall"}))
    assert (await ws_recv(anon))["type"] == "unsubscribed"
    assert await ws_recv(alice) == event("leave", "open:hall", None, "ws")

    # Once each: what comes next is the message published after them, nothing else.
    last_id = await server.publish("room", "after")
    assert (await ws_recv(alice))["id"] == last_id
    assert await sse_next(bob) == ("message", last_id, "after")


async def test_no_events_with_the_option_off(start_server: StartServer, stack: Stack) -> None:
    server = await start_server(**{**NODE, "presence_events": False})
    port = server.port
    alice = await watcher_ws(stack, port, "room", "alice")
    bob = await watcher_sse(stack, port, "room", "bob")
    async with ws_connect(port, additional_headers=bearer("carol")) as carol:
        await ws_subscribe(carol, "room")
        await until_total(port, "room", 3)
    await until_total(port, "room", 2)  # carol's join and leave are behind us now
    message_id = await server.publish("room", "only this")
    assert (await ws_recv(alice))["id"] == message_id
    assert await sse_next(bob) == ("message", message_id, "only this")


async def test_a_channel_past_the_size_bound_gets_no_events(
    start_server: StartServer, stack: Stack
) -> None:
    server = await start_server(**{**NODE, "presence_events_max_subscribers": 2})
    port = server.port
    alice = await watcher_ws(stack, port, "room", "alice")
    bob = await watcher_ws(stack, port, "room", "bob")  # two: still within the bound
    assert await ws_recv(alice) == event("join", "room", "bob", "ws")
    carol = await watcher_ws(stack, port, "room", "carol")  # three: past it
    await carol.close()
    await until_total(port, "room", 2)
    message_id = await server.publish("room", "no events before me")
    for ws in (alice, bob):
        assert (await ws_recv(ws))["id"] == message_id
    # Back within the bound (the one coming or going counted), events flow again.
    await bob.close()
    assert await ws_recv(alice) == event("leave", "room", "bob", "ws")
    dave = await watcher_ws(stack, port, "room", "dave")
    assert await ws_recv(alice) == event("join", "room", "dave", "ws")
    await dave.close()
    assert await ws_recv(alice) == event("leave", "room", "dave", "ws")


async def test_events_leave_message_ids_and_resume_untouched(
    start_server: StartServer, stack: Stack
) -> None:
    server = await start_server(**NODE)
    port = server.port
    alice = await watcher_ws(stack, port, "room", "alice")
    sse = SseClient(port, "/api/sse/subscribe/room", bearer("bob"))
    await sse.connect()
    assert (await sse_next(sse))[0] == "message"  # the connected event, with the head id
    assert await ws_recv(alice) == event("join", "room", "bob", "sse")
    ids = [await server.publish("room", 0)]
    assert (await sse_next(sse))[1] == ids[0]
    assert (await ws_recv(alice))["id"] == ids[0]
    await sse.close()  # bob leaves; events and messages go on without him
    assert await ws_recv(alice) == event("leave", "room", "bob", "sse")
    for n in range(1, 4):
        async with ws_connect(port, additional_headers=bearer(f"u{n}")) as other:
            await ws_subscribe(other, "room")
            ids.append(await server.publish("room", n))
        assert await ws_recv(alice) == event("join", "room", f"u{n}", "ws")
        assert (await ws_recv(alice))["id"] == ids[-1]
        assert await ws_recv(alice) == event("leave", "room", f"u{n}", "ws")
    # The ids run without a gap: events took no number.
    seqs = [int(i.rsplit("-", 1)[-1]) for i in ids]
    assert seqs == list(range(seqs[0], seqs[0] + 4)), ids

    # SSE resumes from the last message it saw: the messages it missed, and no event.
    back = await stack.enter_async_context(
        SseClient(port, "/api/sse/subscribe/room", [("Last-Event-ID", ids[0]), *bearer("bob")])
    )
    assert (await sse_next(back))[0] == "message"  # connected
    replayed = [await sse_next(back) for _ in ids[1:]]
    assert replayed == [("message", i, n) for n, i in enumerate(ids[1:], 1)]
    # A WebSocket resume likewise: the replay is messages only, in order.
    ws = await stack.enter_async_context(ws_connect(port, additional_headers=bearer("eve")))
    await ws_subscribe(ws, "room", since=ids[0])
    assert [(await ws_recv(ws))["id"] for _ in ids[1:]] == ids[1:]
    last_id = await server.publish("room", "live")
    assert (await ws_recv(ws))["id"] == last_id
    assert await sse_next(back) == ("join", ids[-1], event("join", "room", "eve", "ws"))
    assert await sse_next(back) == ("message", last_id, "live")


async def test_a_parked_long_poll_is_not_woken_by_events(
    start_server: StartServer, stack: Stack
) -> None:
    server = await start_server(**NODE)
    port = server.port
    poller = await stack.enter_async_context(PollClient(port, "open:hall"))
    await poller.start_at_head()
    parked = await poller.poll_sent(timeout=10)
    watcher = await watcher_ws(stack, port, "open:hall", "alice")
    async with ws_connect(port) as other:
        await ws_subscribe(other, "open:hall")
        assert await ws_recv(watcher) == event("join", "open:hall", None, "ws")
    assert await ws_recv(watcher) == event("leave", "open:hall", None, "ws")
    assert not parked.done()  # the joins and leaves did not answer it
    message_id = await server.publish("open:hall", "m")
    body = await asyncio.wait_for(parked, 5)
    assert body["messages"] == ["m"] and body["cursor"] == message_id


async def test_joins_past_the_rate_bound_in_one_second_are_dropped(
    start_server: StartServer, stack: Stack
) -> None:
    server = await start_server(**{**NODE, "presence_events_per_s": 2})
    port = server.port
    watcher = await watcher_ws(stack, port, "open:hall", "alice")  # its own join counts: 1
    started = time.monotonic()
    for _ in range(8):
        await watcher_ws(stack, port, "open:hall", "crowd")
    took_s = time.monotonic() - started
    message_id = await server.publish("open:hall", "marker")
    seen = []
    while (frame := await ws_recv(watcher)).get("id") != message_id:
        seen.append(frame)
    assert all(frame["type"] == "join" for frame in seen)
    # Two per calendar second, the watcher's own join included: the eight joins spanned
    # at most int(took_s) + 2 seconds (three events in well under a second).
    assert 1 <= len(seen) <= 2 * (int(took_s) + 2) - 1, (len(seen), took_s)


async def test_sockets_that_negotiated_deflate_see_events_and_are_named_ws(
    start_server: StartServer, stack: Stack
) -> None:
    # A deflate socket is its own Kind in the hub: events must reach it (plain frames, RSV1
    # clear) and name it "ws", beside a plain socket, with messages still in order around them.
    server = await start_server(**{**NODE, "ws_compression": True})
    port = server.port
    zipped = await stack.enter_async_context(
        ws_connect(port, additional_headers=bearer("zed"), compression="deflate")
    )
    assert zipped.protocol.extensions, "the client did not negotiate permessage-deflate"
    await ws_subscribe(zipped, "room")
    plain = await watcher_ws(stack, port, "room", "pat")
    assert await ws_recv(zipped) == event("join", "room", "pat", "ws")
    first_id = await server.publish("room", {"text": "x" * 600})  # compressed for `zipped`
    assert (await ws_recv(zipped))["id"] == first_id
    assert (await ws_recv(plain))["id"] == first_id
    await zipped.close()
    assert await ws_recv(plain) == event("leave", "room", "zed", "ws")
