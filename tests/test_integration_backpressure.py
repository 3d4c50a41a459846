"""A subscriber that stops reading costs a cursor, not a stall.

A raw-socket WebSocket (or SSE) subscriber with a small receive buffer stops reading while many
messages are published. The server stops writing to it above write_high_water; the other
subscribers get everything promptly meanwhile. When the slow one reads again it catches up
from the log, in order and without duplicates, or, if it fell off the log's tail, gets a
reset and then live messages.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from support.clients import (
    PollClient,
    RawSse,
    RawWebSocket,
    SseClient,
    event_json,
    ws_connect,
    ws_recv_many,
    ws_subscribe,
)
from websockets.asyncio.client import ClientConnection

import rawrt

COUNT = 400
BATCH = 10
# Loopback send buffers autotune to about 4 MiB, which the kernel fills before rawrt's own
# high-water mark comes into play: COUNT messages of this size are well beyond that.
PAYLOAD = "p" * 16_000
FLOW = {
    "write_high_water": 16 * 1024,
    "write_low_water": 4 * 1024,
    "history_max_bytes": 64 * 1024 * 1024,  # the history is bounded by count in these tests
}
SLOW_RCVBUF = 4096  # the slow subscriber's SO_RCVBUF
SLOW_KINDS = ["ws", "sse"]
Stack = contextlib.AsyncExitStack


class FastSubscribers:
    """A WebSocket, an SSE and a poll subscriber that keep reading."""

    def __init__(self, ws: ClientConnection, sse: SseClient, poller: PollClient) -> None:
        self.ws, self.sse, self.poller = ws, sse, poller

    @classmethod
    async def join(cls, server: rawrt.Server, stack: Stack, channel: str) -> FastSubscribers:
        ws = await stack.enter_async_context(ws_connect(server.port, max_size=None))
        await ws_subscribe(ws, channel)
        target = f"/api/sse/subscribe/{channel}"
        sse = await stack.enter_async_context(SseClient(server.port, target))
        await sse.next_event()  # connected
        poller = await stack.enter_async_context(PollClient(server.port, channel))
        await poller.start_at_head()
        return cls(ws, sse, poller)

    async def receive(self, count: int) -> list[list[int]]:
        """The next `count` messages on each transport, as their `n`."""
        ws, sse, polled = await asyncio.gather(
            ws_recv_many(self.ws, count), self.sse.events(count), self.poller.collect(count)
        )
        return [
            [m["data"]["n"] for m in ws],
            [event_json(e)["n"] for e in sse],
            [m["n"] for m in polled],
        ]


class SlowSubscriber:
    """A raw-socket subscriber (WebSocket or SSE) with a small receive buffer that reads
    only when told; what it reads comes out as `{"type", "id", "data"?}` either way."""

    def __init__(self, kind: str, peer: RawWebSocket | RawSse) -> None:
        self.kind, self.peer = kind, peer

    @classmethod
    async def join(
        cls, kind: str, server: rawrt.Server, stack: Stack, channel: str, since: str | None = None
    ) -> SlowSubscriber:
        """Subscribe (from `since` if given) and wait for the ready signal."""
        if kind == "ws":
            ws = await RawWebSocket.connect(server.port, rcvbuf=SLOW_RCVBUF)
            await stack.enter_async_context(ws)
            command = {"type": "subscribe", "channel": channel}
            await ws.send_json({**command, "since": since} if since else command)
            assert (await ws.recv_json())["type"] == "subscribed"
            return cls(kind, ws)
        target = f"/api/sse/subscribe/{channel}" + (f"?lastEventId={since}" if since else "")
        sse = await RawSse.connect(server.port, target, rcvbuf=SLOW_RCVBUF)
        await stack.enter_async_context(sse)
        assert event_json(await sse.next_event()) == {"type": "connected"}
        return cls(kind, sse)

    async def next(self) -> dict[str, Any]:
        if isinstance(self.peer, RawWebSocket):
            return dict(await self.peer.recv_json())
        event = await self.peer.next_event()
        if event.type == "reset":
            return {"type": "reset", "id": event.last_event_id}
        return {"type": event.type, "id": event.last_event_id, "data": event_json(event)}


async def _publish_while_one_is_stalled(
    kind: str, server: rawrt.Server, stack: Stack, channel: str
) -> tuple[SlowSubscriber, list[str]]:
    slow = await SlowSubscriber.join(kind, server, stack, channel)
    fast = await FastSubscribers.join(server, stack, channel)
    loop = asyncio.get_running_loop()
    started = loop.time()
    ids: list[str] = []
    # In batches, each received by the fast subscribers before the next goes out: a publisher
    # at the pace of its readers, so only the subscriber that stopped reading falls behind.
    for first in range(0, COUNT, BATCH):
        batch = range(first, first + BATCH)
        ids += [await server.publish(channel, {"n": n, "pad": PAYLOAD}) for n in batch]
        assert await fast.receive(BATCH) == [list(batch)] * 3
    # Everything reached the readers promptly while the slow one read nothing.
    assert loop.time() - started < 5
    return slow, ids


async def _read_until(slow: SlowSubscriber, done: Any) -> list[dict[str, Any]]:
    """The slow subscriber reads again: everything until `done(item)` holds."""
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        while not frames or not done(frames[-1]):
            frames.append(await slow.next())
    return frames


def _check_sequence(frames: list[dict[str, Any]], ids: list[str], first: int = 0) -> int:
    """Each message follows the one before it (the first is `ids[first]`), or follows the
    reset before it; returns how many resets there were."""
    position = {message_id: n for n, message_id in enumerate(ids)}
    expected, resets = first, 0
    for frame in frames:
        if frame["type"] == "reset":
            resets += 1
            expected = position[frame["id"]] + 1  # the reset names the head it restarts from
            continue
        assert frame["type"] == "message", frame
        assert position[frame["id"]] == expected, (frame["id"], expected)
        assert frame["data"]["n"] == expected
        expected += 1
    return resets


@pytest.mark.parametrize("kind", SLOW_KINDS)
@pytest.mark.parametrize("server", [{**FLOW, "history_size": COUNT + 10}], indirect=True)
async def test_stalled_subscriber_catches_up_from_the_log_in_order(
    server: rawrt.Server, stack: Stack, kind: str
) -> None:
    slow, ids = await _publish_while_one_is_stalled(kind, server, stack, "flood")
    frames = await _read_until(slow, lambda frame: frame.get("id") == ids[-1])
    assert _check_sequence(frames, ids) == 0
    assert [f["data"]["n"] for f in frames] == list(range(COUNT))
    # Caught up, it is live again.
    live = await server.publish("flood", {"n": COUNT})
    frame = await slow.next()
    assert (frame["type"], frame["id"], frame["data"]) == ("message", live, {"n": COUNT})


@pytest.mark.parametrize("kind", SLOW_KINDS)
@pytest.mark.parametrize("server", [{**FLOW, "history_size": 20}], indirect=True)
async def test_stalled_subscriber_that_fell_off_the_log_gets_a_reset_then_live(
    server: rawrt.Server, stack: Stack, kind: str
) -> None:
    slow, ids = await _publish_while_one_is_stalled(kind, server, stack, "flood")
    # What the socket buffers held comes first, then the reset to the head.
    frames = await _read_until(slow, lambda frame: frame["type"] == "reset")
    assert frames[-1]["id"] == ids[-1]
    assert 0 < len(frames) - 1 < COUNT - 20, "the slow reader never fell off the log"
    live = [await server.publish("flood", {"n": COUNT + n}) for n in range(3)]
    frames += await _read_until(slow, lambda frame: frame.get("id") == live[-1])
    assert _check_sequence(frames, ids + live) == 1
    assert [f["id"] for f in frames[-3:]] == live


@pytest.mark.parametrize("kind", SLOW_KINDS)
@pytest.mark.parametrize(
    "server",
    [{**FLOW, "history_size": COUNT + 10, "catch_up_chunk_bytes": 8 * 1024}],
    indirect=True,
)
async def test_subscriber_resuming_far_behind_gets_the_whole_backlog_in_order(
    server: rawrt.Server, stack: Stack, kind: str
) -> None:
    ids = [await server.publish("backlog", {"n": n, "pad": PAYLOAD}) for n in range(COUNT)]
    slow = await SlowSubscriber.join(kind, server, stack, "backlog", since=ids[0])
    frames = await _read_until(slow, lambda frame: frame.get("id") == ids[-1])
    assert _check_sequence(frames, ids, first=1) == 0
    assert [f["data"]["n"] for f in frames] == list(range(1, COUNT))
    live = await server.publish("backlog", {"n": COUNT})
    assert (await slow.next())["id"] == live
