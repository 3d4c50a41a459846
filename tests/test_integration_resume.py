"""Resuming across transports, and the explicit reset when a position cannot be resumed.

A message id is the same string on every transport (SSE `id:`, WebSocket `id`, poll
`cursor`), so a position learnt on one resumes any other. An id from another server run, one
older than the log holds, or one rawrt never made, is answered with a reset (a WebSocket
`reset` frame, an SSE `event: reset`, a poll `"reset": true`) followed by live messages.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from support.clients import (
    PollClient,
    SseClient,
    event_json,
    ws_connect,
    ws_recv,
    ws_recv_many,
    ws_subscribe,
)

import rawrt

TRANSPORTS = ["ws", "sse-header", "sse-query", "poll"]

Stack = contextlib.AsyncExitStack


class Resumer:
    """A subscriber on one transport that starts from a given id."""

    def __init__(self, kind: str, port: int, channel: str, stack: Stack) -> None:
        self.kind, self.port, self.channel, self.stack = kind, port, channel, stack
        self.reset_id: str | None = None
        self._first_poll: dict[str, Any] | None = None

    async def resume(self, since: str) -> None:
        """Connect from `since`; afterwards `reset_id` is set if the server answered a reset."""
        await getattr(self, "_resume_" + self.kind.split("-")[0])(since)

    async def _resume_ws(self, since: str) -> None:
        ws = await self.stack.enter_async_context(ws_connect(self.port))
        await ws_subscribe(ws, self.channel, since)
        self._ws = ws

    async def _resume_sse(self, since: str) -> None:
        target = f"/api/sse/subscribe/{self.channel}"
        headers = []
        if self.kind == "sse-header":
            headers.append(("Last-Event-ID", since))
        else:
            target += f"?lastEventId={since}"
        sse = await self.stack.enter_async_context(SseClient(self.port, target, headers))
        connected = await sse.next_event()
        assert connected is not None and event_json(connected) == {"type": "connected"}
        self._sse = sse

    async def _resume_poll(self, since: str) -> None:
        # The first poll goes out now, as the other transports connect now: a reset it gets
        # is about the log as it is before the test publishes anything more.
        self._poller = await self.stack.enter_async_context(PollClient(self.port, self.channel))
        self._first_poll = await self._poller.poll(since, timeout=5)

    async def messages(self, count: int) -> list[tuple[Any, str]]:
        """The next `count` messages as (data, id); a reset on the way sets `reset_id`."""
        got: list[tuple[Any, str]] = []
        async with asyncio.timeout(5):
            while len(got) < count:
                got += await getattr(self, "_next_" + self.kind.split("-")[0])()
        assert len(got) == count, got
        return got

    async def _next_ws(self) -> list[tuple[Any, str]]:
        frame = await ws_recv(self._ws)
        if frame["type"] == "reset":
            assert frame["channel"] == self.channel
            self.reset_id = frame["id"]
            return []
        assert frame["type"] == "message", frame
        return [(frame["data"], frame["id"])]

    async def _next_sse(self) -> list[tuple[Any, str]]:
        event = await self._sse.next_event()
        assert event is not None, "the stream ended"
        if event.type == "reset":
            assert event_json(event) == {
                "type": "reset",
                "channel": self.channel,
                "id": event.last_event_id,
            }
            self.reset_id = event.last_event_id
            return []
        assert event.type == "message", event
        return [(event_json(event), event.last_event_id)]

    async def _next_poll(self) -> list[tuple[Any, str]]:
        body, self._first_poll = self._first_poll or await self._poller.poll(timeout=5), None
        if body.get("reset"):
            assert body["messages"] == []
            self.reset_id = body["cursor"]
            return []
        # A poll carries data, and the cursor is the id of its last item.
        items = [(data, "") for data in body["messages"]]
        if items:
            items[-1] = (items[-1][0], body["cursor"])
        return items


async def _publish(server: rawrt.Server, channel: str, values: range) -> list[str]:
    return [await server.publish(channel, {"n": n}) for n in values]


async def _learn_ids_on(source: str, server: rawrt.Server, stack: Stack, channel: str) -> list[str]:
    """Subscribe at the head on `source`, publish 1..3, return the ids `source` saw."""
    port = server.port
    if source == "ws":
        ws = await stack.enter_async_context(ws_connect(port))
        await ws_subscribe(ws, channel)
        await _publish(server, channel, range(1, 4))
        return [m["id"] for m in await ws_recv_many(ws, 3)]
    if source == "sse":
        sse = await stack.enter_async_context(SseClient(port, f"/api/sse/subscribe/{channel}"))
        await sse.next_event()  # connected
        await _publish(server, channel, range(1, 4))
        return [e.last_event_id for e in await sse.events(3)]
    poller = await stack.enter_async_context(PollClient(port, channel))
    await poller.start_at_head()
    ids = []
    for n in range(1, 4):  # one message per poll, so each poll's cursor is that message's id
        await _publish(server, channel, range(n, n + 1))
        body = await poller.poll(timeout=5)
        assert body["messages"] == [{"n": n}], body
        ids.append(body["cursor"])
    return ids


@pytest.mark.parametrize("target", TRANSPORTS)
@pytest.mark.parametrize("source", ["ws", "sse", "poll"])
async def test_id_seen_on_one_transport_resumes_another(
    server: rawrt.Server, stack: Stack, source: str, target: str
) -> None:
    channel = f"resume-{source}-{target}"
    ids = await _learn_ids_on(source, server, stack, channel)
    later = await _publish(server, channel, range(4, 6))

    resumer = Resumer(target, server.port, channel, stack)
    await resumer.resume(ids[1])  # after message 2
    replayed = await resumer.messages(3)
    assert [data for data, _ in replayed] == [{"n": 3}, {"n": 4}, {"n": 5}]
    assert replayed[-1][1] == later[-1]

    live = await _publish(server, channel, range(6, 7))
    assert await resumer.messages(1) == [({"n": 6}, live[0])]
    assert resumer.reset_id is None


async def _expect_reset_then_live(
    server: rawrt.Server, stack: Stack, target: str, channel: str, since: str, head: str
) -> None:
    resumer = Resumer(target, server.port, channel, stack)
    await resumer.resume(since)
    live = await _publish(server, channel, range(100, 102))
    got = await resumer.messages(2)
    assert resumer.reset_id == head
    assert [data for data, _ in got] == [{"n": 100}, {"n": 101}]
    assert got[-1][1] == live[-1]


@pytest.mark.parametrize("target", TRANSPORTS)
async def test_id_from_another_server_run_gets_reset_then_live(
    start_server: Any, stack: Stack, target: str
) -> None:
    earlier = await start_server()
    old_ids = await _publish(earlier, "news", range(1, 4))
    await earlier.stop()
    server = await start_server()
    head = (await _publish(server, "news", range(1, 6)))[-1]
    # The old run's id names message 2, which this run also has: only the epoch differs.
    await _expect_reset_then_live(server, stack, target, "news", old_ids[1], head)


@pytest.mark.parametrize("server", [{"history_size": 3}], indirect=True)
@pytest.mark.parametrize("target", TRANSPORTS)
async def test_id_older_than_the_log_gets_reset_then_live(
    server: rawrt.Server, stack: Stack, target: str
) -> None:
    ids = await _publish(server, "short", range(1, 11))  # the log holds 8, 9, 10
    await _expect_reset_then_live(server, stack, target, "short", ids[5], ids[-1])


@pytest.mark.parametrize("server", [{"history_size": 3}], indirect=True)
@pytest.mark.parametrize("target", TRANSPORTS)
async def test_id_just_before_the_log_tail_still_resumes(
    server: rawrt.Server, stack: Stack, target: str
) -> None:
    ids = await _publish(server, "edge", range(1, 11))
    resumer = Resumer(target, server.port, "edge", stack)
    await resumer.resume(ids[6])  # message 7: everything after it (8, 9, 10) is held
    got = await resumer.messages(3)
    assert [data for data, _ in got] == [{"n": 8}, {"n": 9}, {"n": 10}]
    assert resumer.reset_id is None


@pytest.mark.parametrize("target", TRANSPORTS)
async def test_id_rawrt_never_made_gets_reset_then_live(
    server: rawrt.Server, stack: Stack, target: str
) -> None:
    head = (await _publish(server, "odd", range(1, 3)))[-1]
    await _expect_reset_then_live(server, stack, target, "odd", "not-an-id", head)


@pytest.mark.parametrize("server", [{"max_channels": 1}], indirect=True)
@pytest.mark.parametrize("target", TRANSPORTS)
async def test_id_from_an_evicted_channel_gets_reset_then_live(
    server: rawrt.Server, stack: Stack, target: str
) -> None:
    old = await _publish(server, "evicted", range(1, 3))
    await _publish(server, "newcomer", range(1, 2))  # takes the only slot: "evicted" goes
    await server.publish("evicted", {"n": 1})  # ... and comes back, a new history
    head = await server.publish("evicted", {"n": 2})
    await _expect_reset_then_live(server, stack, target, "evicted", old[0], head)
