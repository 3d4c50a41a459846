"""One contract, two backplanes: what a cluster of nodes promises its clients.

Each test gets two nodes, A and B, and runs against both backplanes:

- "local": the in-process default. One `rawrt.Server`; A and B are the same server.
- "redis": two `rawrt.Server`s sharing one redis-server (ids and history live in Redis).
  Messages are published on A and read on B (and on A), so every promise below is one that
  crosses nodes.

The promises: ids strictly increase per channel, whoever publishes; every subscriber on every
node and transport gets every message, published by any route, in one order, once; an id got
on one node over one transport resumes on the other node over any transport; an id from
another history lifetime, or one the bounded history no longer holds, gets an explicit reset
and then live messages, never a silent gap.

Every wait is bounded; nothing sleeps to order events. Each test uses its own key prefix in
the shared redis-server, so tests cannot see each other's channels.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
from support.clients import (
    PollClient,
    SseClient,
    event_json,
    request,
    ws_connect,
    ws_recv,
    ws_subscribe,
)
from support.redis_server import RedisServer
from websockets.asyncio.client import ClientConnection

import rawrt
from rawrt.wire.ids import parse_id

Stack = contextlib.AsyncExitStack
StartServer = Callable[..., Awaitable[rawrt.Server]]

STEP_S = 5.0  # bound on any one expected arrival
READY_BOUND_S = 10.0  # a node must be connected to its backplane within this

TRANSPORTS = ["ws", "sse", "sse-query", "poll"]
ROUTES = ["broadcast", "publish", "sse-publish", "ws", "server"]
_ROUTE_PATHS = {
    "broadcast": ("/api/broadcast/", "sent"),
    "publish": ("/api/publish/", "published"),
    "sse-publish": ("/api/sse/publish/", "published"),
}


# --- what a client sees ---------------------------------------------------------------------


@dataclass(frozen=True)
class Got:
    """One thing a subscriber was told: a message (data, id) or a reset (to an id).

    `id` is None for a long-poll message that is not the last of its answer: a poll answer
    carries data, and its cursor is the id of its last message.
    """

    type: str  # "message" or "reset"
    data: Any
    id: str | None


class HasPort(Protocol):
    """A node as a client sees it: an in-process `rawrt.Server`, or a rawrt process."""

    @property
    def port(self) -> int: ...


class Reader:
    """A subscriber on one transport of one node, reading as a client application would."""

    def __init__(self, kind: str, port: int, channel: str) -> None:
        self.kind, self.port, self.channel = kind, port, channel
        self.got: list[Got] = []
        self._ws: ClientConnection | None = None
        self._sse: SseClient | None = None
        self._poller: PollClient | None = None

    @classmethod
    async def open(
        cls, kind: str, node: HasPort, channel: str, stack: Stack, since: str | None = None
    ) -> Reader:
        """Subscribe (from `since`, or at the head); live once this returns."""
        reader = cls(kind, node.port, channel)
        await getattr(reader, "_open_" + kind.split("-")[0])(stack, since)
        return reader

    async def _open_ws(self, stack: Stack, since: str | None) -> None:
        self._ws = await stack.enter_async_context(ws_connect(self.port))
        await ws_subscribe(self._ws, self.channel, since)

    async def _open_sse(self, stack: Stack, since: str | None) -> None:
        target, headers = f"/api/sse/subscribe/{self.channel}", []
        if since is not None and self.kind == "sse-query":
            target += f"?lastEventId={since}"
        elif since is not None:
            headers.append(("Last-Event-ID", since))
        self._sse = await stack.enter_async_context(SseClient(self.port, target, headers))
        assert self._sse.status == 200, self._sse.status
        connected = await self._sse.next_event(STEP_S)
        assert connected is not None and event_json(connected) == {"type": "connected"}
        # A fresh connect carries the head id; a resumed one does not (its position is known).
        assert (connected.last_event_id != "") == (since is None), connected

    async def _open_poll(self, stack: Stack, since: str | None) -> None:
        self._poller = await stack.enter_async_context(PollClient(self.port, self.channel))
        if since is None:
            await self._poller.start_at_head()
        else:
            # The first poll goes out now, as the other transports resume now.
            self._take_poll(await self._poller.poll(since, timeout=0, bound_s=STEP_S))

    @property
    def messages(self) -> list[Got]:
        return [g for g in self.got if g.type == "message"]

    @property
    def resets(self) -> list[Got]:
        return [g for g in self.got if g.type == "reset"]

    async def until(self, count: int, timeout_s: float = STEP_S) -> list[Got]:
        """Read until `count` messages have come in all; returns every message so far."""
        try:
            async with asyncio.timeout(timeout_s):
                while len(self.messages) < count:
                    await getattr(self, "_read_" + self.kind.split("-")[0])()
        except TimeoutError:
            raise AssertionError(
                f"{self.kind} reader on port {self.port}: {len(self.messages)} of {count} "
                f"messages within {timeout_s} s; got {self.got}"
            ) from None
        return self.messages

    async def until_data(self, data: Any, timeout_s: float = STEP_S) -> list[Got]:
        """Read until a message carrying `data` has come; returns every message so far."""
        await self._read_until(lambda: any(g.data == data for g in self.messages), timeout_s)
        return self.messages

    async def until_reset(self, timeout_s: float = STEP_S) -> None:
        """Read until a reset has come."""
        await self._read_until(lambda: bool(self.resets), timeout_s)

    async def _read_until(self, done: Callable[[], bool], timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                while not done():
                    await getattr(self, "_read_" + self.kind.split("-")[0])()
        except TimeoutError:
            raise AssertionError(
                f"{self.kind} reader on port {self.port}: not done within {timeout_s} s; "
                f"got {self.got}"
            ) from None

    async def _read_ws(self) -> None:
        assert self._ws is not None
        frame = await ws_recv(self._ws, STEP_S)
        assert frame.get("channel") == self.channel, frame
        if frame["type"] == "reset":
            self.got.append(Got("reset", None, frame["id"]))
        else:
            assert frame["type"] == "message", frame
            self.got.append(Got("message", frame["data"], frame["id"]))

    async def _read_sse(self) -> None:
        assert self._sse is not None
        event = await self._sse.next_event(STEP_S)
        assert event is not None, "the stream ended"
        if event.type == "reset":
            reset = event_json(event)
            assert reset == {"type": "reset", "channel": self.channel, "id": event.last_event_id}
            self.got.append(Got("reset", None, event.last_event_id))
        else:
            assert event.type == "message", event
            self.got.append(Got("message", event_json(event), event.last_event_id))

    async def _read_poll(self) -> None:
        assert self._poller is not None
        self._take_poll(await self._poller.poll(timeout=STEP_S, bound_s=STEP_S + 2))

    def _take_poll(self, body: dict[str, Any]) -> None:
        if body.get("reset"):
            assert body["messages"] == [], body
            self.got.append(Got("reset", None, body["cursor"]))
            return
        items = [Got("message", data, None) for data in body["messages"]]
        if items:
            items[-1] = Got("message", items[-1].data, body["cursor"])
        self.got += items

    @property
    def position(self) -> str:
        """The id this reader would resume from now."""
        if self._poller is not None:
            assert self._poller.cursor is not None
            return self._poller.cursor
        known = [g.id for g in self.got if g.id is not None]
        assert known, "no id seen yet"
        return known[-1]


# --- publishing, by every route -------------------------------------------------------------


class Publisher:
    """Publishes to one channel of one node by any route, one message at a time, in order.

    HTTP routes and `server.publish()` answer with the id. A WebSocket publish frame has no
    answer, so the publishing socket also subscribes and waits for its own message to come
    back: then the next publish is numbered after it, whatever the route.
    """

    def __init__(self, node: rawrt.Server, channel: str, stack: Stack) -> None:
        self.node, self.channel, self.stack = node, channel, stack
        self._ws: ClientConnection | None = None

    async def publish(self, route: str, data: Any) -> str:
        if route == "server":
            return await self.node.publish(self.channel, data)
        if route == "ws":
            return await self._publish_ws(data)
        path, flag = _ROUTE_PATHS[route]
        response = await request(
            self.node.port,
            "POST",
            path + self.channel,
            json.dumps(data),
            [("Content-Type", "application/json")],
        )
        assert response.status == 200, (response.status, response.body)
        body = response.json()
        assert body[flag] is True, body
        message_id: str = body["id"]
        return message_id

    async def _publish_ws(self, data: Any) -> str:
        if self._ws is None:
            self._ws = await self.stack.enter_async_context(ws_connect(self.node.port))
            await ws_subscribe(self._ws, self.channel)
        await self._ws.send(json.dumps({"type": "publish", "channel": self.channel, "data": data}))
        async with asyncio.timeout(STEP_S):
            while True:
                frame = await ws_recv(self._ws)
                assert frame["type"] == "message", frame
                if frame["data"] == data:
                    message_id: str = frame["id"]
                    return message_id


async def publish_many(node: rawrt.Server, channel: str, values: range) -> list[str]:
    return [await node.publish(channel, {"n": n}) for n in values]


def seq_of(message_id: str) -> tuple[str, int]:
    parsed = parse_id(message_id)
    assert parsed is not None, message_id
    return parsed


# --- two nodes, on either backplane ---------------------------------------------------------


@dataclass
class Nodes:
    a: rawrt.Server
    b: rawrt.Server
    backplane: str


async def wait_ready(*nodes: rawrt.Server, timeout_s: float = READY_BOUND_S) -> None:
    """Until every node says it is ready (listening and, with Redis, connected): polled."""
    async with asyncio.timeout(timeout_s):
        while not all(node.ready for node in nodes):
            await asyncio.sleep(0.01)


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the module's "redis" runs; tests keep apart by key prefix."""
    server = RedisServer(Path(tmp_path_factory.mktemp("redis")))
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.redis)])
def backplane(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def redis_url(request: pytest.FixtureRequest, backplane: str) -> str | None:
    if backplane == "local":
        return None
    server: RedisServer = request.getfixturevalue("shared_redis")
    return server.url


MakeNodes = Callable[..., Awaitable[Nodes]]


@pytest.fixture
async def make_nodes(
    backplane: str, redis_url: str | None, start_server: StartServer
) -> AsyncIterator[MakeNodes]:
    prefix = "t" + secrets.token_hex(4)

    async def make(**overrides: Any) -> Nodes:
        if redis_url is None:
            node = await start_server(**overrides)
            return Nodes(node, node, backplane)
        options = {"redis_url": redis_url, "redis_prefix": prefix, **overrides}
        a = await start_server(**options)
        b = await start_server(**options)
        await wait_ready(a, b)
        return Nodes(a, b, backplane)

    yield make


@pytest.fixture
async def nodes(make_nodes: MakeNodes) -> Nodes:
    return await make_nodes()


# --- ids ------------------------------------------------------------------------------------


async def test_ids_strictly_increase_per_channel_whichever_node_publishes(
    nodes: Nodes, stack: Stack
) -> None:
    one_by_one = []
    for n in range(10):
        one_by_one.append(await (nodes.a if n % 2 else nodes.b).publish("ids", {"n": n}))
    parsed = [seq_of(i) for i in one_by_one]
    assert len({epoch for epoch, _ in parsed}) == 1, one_by_one
    seqs = [seq for _, seq in parsed]
    assert seqs == list(range(seqs[0], seqs[0] + 10)), one_by_one

    # Concurrent publishes on both nodes: every seq once, none skipped.
    at_once = await asyncio.gather(
        *(node.publish("ids", {"n": n}) for n in range(40) for node in (nodes.a, nodes.b))
    )
    seqs = sorted(seq_of(i)[1] for i in at_once)
    assert seqs == list(range(parsed[-1][1] + 1, parsed[-1][1] + 81))
    assert {seq_of(i)[0] for i in at_once} == {parsed[0][0]}

    # Another channel counts on its own.
    other = seq_of(await nodes.b.publish("ids-other", {"n": 0}))
    assert other[1] == 1


# --- fan-out across nodes -------------------------------------------------------------------


async def test_every_transport_on_both_nodes_gets_every_route_in_order_once(
    nodes: Nodes, stack: Stack
) -> None:
    channel = "fanout"
    readers = [
        await Reader.open(kind, node, channel, stack)
        for node in (nodes.b, nodes.a)
        for kind in ("ws", "sse", "poll")
    ]
    publisher = Publisher(nodes.a, channel, stack)
    sent, ids = [], []
    for n, route in enumerate(itertools.islice(itertools.cycle(ROUTES), 15)):
        data = {"n": n, "route": route}
        sent.append(data)
        ids.append(await publisher.publish(route, data))

    seqs = [seq_of(i)[1] for i in ids]
    assert seqs == sorted(set(seqs)), ids
    for reader in readers:
        got = await reader.until(len(sent))
        assert reader.resets == [], (reader.kind, reader.got)
        assert [g.data for g in got] == sent, reader.kind
        if reader.kind != "poll":
            assert [g.id for g in got] == ids, reader.kind
        assert reader.position == ids[-1], reader.kind

    # Nothing more came (no duplicates): a marker published now is the very next message.
    marker = await nodes.a.publish(channel, {"n": "end"})
    for reader in readers:
        got = await reader.until(len(sent) + 1)
        assert len(got) == len(sent) + 1 and got[-1].data == {"n": "end"}, reader.kind
        assert got[-1].id == marker


async def test_concurrent_publishes_on_both_nodes_reach_everyone_in_one_order(
    nodes: Nodes, stack: Stack
) -> None:
    channel = "one-order"
    readers = [
        await Reader.open(kind, node, channel, stack)
        for node in (nodes.a, nodes.b)
        for kind in ("ws", "sse", "poll")
    ]
    ids = await asyncio.gather(
        *(
            (nodes.a if n % 2 else nodes.b).publish(channel, {"n": n})
            for n in range(60)  # interleaved: the order is whatever Redis (or the hub) made
        )
    )
    by_seq = [n for _, n in sorted((seq_of(i)[1], n) for n, i in enumerate(ids))]
    for reader in readers:
        got = await reader.until(60)
        assert reader.resets == []
        assert [g.data["n"] for g in got] == by_seq, reader.kind
        if reader.kind != "poll":
            assert [g.id for g in got] == sorted(ids, key=lambda i: seq_of(i)[1])


# --- resuming on the other node -------------------------------------------------------------


async def _learn_position(source: str, node: rawrt.Server, channel: str, stack: Stack) -> str:
    """Publish messages 1..3 on `node`; return the id of message 3 as `source` learnt it."""
    if source == "publish":
        return (await publish_many(node, channel, range(1, 4)))[-1]
    reader = await Reader.open(source, node, channel, stack)
    await publish_many(node, channel, range(1, 4))
    await reader.until(3)
    return reader.position


@pytest.mark.parametrize(
    ("source", "target"),
    [("sse", "ws"), ("poll", "sse"), ("ws", "sse-query"), ("publish", "poll"), ("ws", "poll")],
)
async def test_id_got_on_one_node_resumes_on_the_other_over_another_transport(
    nodes: Nodes, stack: Stack, source: str, target: str
) -> None:
    channel = f"resume-{source}-{target}"
    since = await _learn_position(source, nodes.a, channel, stack)
    later = await publish_many(nodes.a, channel, range(4, 7))

    reader = await Reader.open(target, nodes.b, channel, stack, since)
    got = await reader.until(3)
    assert [g.data for g in got] == [{"n": 4}, {"n": 5}, {"n": 6}]
    assert got[-1].id == later[-1]

    live = await nodes.a.publish(channel, {"n": 7})
    got = await reader.until(4)
    assert got[-1] == Got("message", {"n": 7}, live)
    assert reader.resets == []


@pytest.mark.parametrize("target", ["ws", "sse", "poll"])
async def test_an_id_fresher_than_the_node_has_heard_of_still_resumes(
    nodes: Nodes, stack: Stack, target: str
) -> None:
    # B already follows the channel; a client got an id from A the instant A published it,
    # and brings it to B, which may not have heard of that message yet.
    channel = f"fresh-{target}"
    await Reader.open("ws", nodes.b, channel, stack)
    fresh = await nodes.a.publish(channel, {"n": 1})
    reader = await Reader.open(target, nodes.b, channel, stack, fresh)
    live = await nodes.a.publish(channel, {"n": 2})
    got = await reader.until(1)
    assert reader.got == [Got("message", {"n": 2}, live)]
    assert got[-1].id == live


# --- resets ---------------------------------------------------------------------------------


async def _expect_reset_then_live(
    nodes: Nodes, stack: Stack, target: str, channel: str, since: str, head: str
) -> None:
    reader = await Reader.open(target, nodes.b, channel, stack, since)
    live = await publish_many(nodes.a, channel, range(100, 102))
    got = await reader.until(2)
    assert reader.got[0] == Got("reset", None, head), reader.got
    assert reader.resets == [reader.got[0]]
    assert [g.data for g in got] == [{"n": 100}, {"n": 101}]
    assert got[-1].id == live[-1]


@pytest.mark.parametrize("target", TRANSPORTS)
async def test_id_of_another_history_lifetime_gets_reset_then_live(
    nodes: Nodes, stack: Stack, target: str
) -> None:
    channel = f"stale-{target}"
    donor = seq_of(await nodes.b.publish(f"donor-{target}", {"n": 0}))[0]
    head = (await publish_many(nodes.a, channel, range(1, 6)))[-1]
    assert seq_of(head)[0] != donor
    # Message 2 exists in this channel too: only the epoch says the id is not of it.
    await _expect_reset_then_live(nodes, stack, target, channel, f"{donor}-2", head)


@pytest.mark.parametrize("target", TRANSPORTS)
async def test_id_that_fell_off_the_bounded_history_gets_reset_then_live(
    make_nodes: MakeNodes, stack: Stack, target: str
) -> None:
    nodes = await make_nodes(history_size=3)
    channel = f"short-{target}"
    ids = await publish_many(nodes.a, channel, range(1, 9))  # the history holds 6, 7, 8
    await _expect_reset_then_live(nodes, stack, target, channel, ids[3], ids[-1])


@pytest.mark.parametrize("target", TRANSPORTS)
async def test_id_at_the_history_tail_resumes_without_reset(
    make_nodes: MakeNodes, stack: Stack, target: str
) -> None:
    nodes = await make_nodes(history_size=3)
    channel = f"tail-{target}"
    ids = await publish_many(nodes.a, channel, range(1, 9))
    reader = await Reader.open(target, nodes.b, channel, stack, ids[4])  # after message 5
    got = await reader.until(3)
    assert [g.data for g in got] == [{"n": 6}, {"n": 7}, {"n": 8}]
    assert reader.resets == []
    assert reader.position == ids[-1]
