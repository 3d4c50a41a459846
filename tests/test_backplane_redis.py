"""The Redis backplane's own promises, and what happens when Redis or a node fails.

The contract shared with the in-process backplane is in test_backplane_contract.py. Here:

- economy: one pub/sub subscription per channel per node whatever the number of clients, and
  none for a channel without local subscribers once the linger is over; one Redis command
  (one round trip) per publish, never one per subscriber;
- Redis loses the history (FLUSHALL, or a restart without persistence): live and resuming
  clients get an explicit reset on every transport, never old ids matched to new messages;
- Redis stops: live subscribers stay connected; publishes answer 503 with a JSON error
  within a bound; a WebSocket publish gets an error frame and the socket stays open; the SSE
  route answers 200 with a `retry:` and ends (EventSource retries); /readyz says 503 and
  /healthz 200. Redis hangs (SIGSTOP): the same, within redis_timeout_s. Redis returns:
  nodes reconnect and restore their subscriptions;
- a node's pub/sub connection is killed while another node publishes: the gap is noticed by
  id and filled from history, so its subscribers get every message, in order, once;
- a node is SIGKILLed: its clients resume on another node (SSE Last-Event-ID, poll since,
  WebSocket subscribe since) and miss nothing;
- a burst of 5,000 new channels at once is served with no refusal on at most
  redis_max_connections connections (counted by CLIENT LIST throughout), and attaches past
  redis_max_pending_attaches are refused with a 503 while the node keeps serving.

Restarts from older snapshots, failovers and cut connections: test_backplane_faults.py.

Every test starts its own redis-server on a free port, with nothing saved to disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.clients import SseClient, read_response, request, ws_connect, ws_recv
from support.redis_server import RedisServer
from test_backplane_contract import Got, Publisher, Reader, publish_many, seq_of, wait_ready

import rawrt
from rawrt.errors import BackplaneUnavailable

pytestmark = pytest.mark.redis

Stack = contextlib.AsyncExitStack
StartServer = Callable[..., Awaitable[rawrt.Server]]

STEP_S = 5.0  # bound on any one expected arrival
FAIL_FAST_S = 0.5  # redis_timeout_s of the fault tests
# A publish while Redis is down must be answered within this (the issue: "a few seconds").
REFUSE_BOUND_S = FAIL_FAST_S * 2 + 1.5
# Nodes reconnect with a backoff that doubles up to 5 s: back within this after Redis is.
RECONNECT_BOUND_S = 12.0


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def admin(redis_server: RedisServer) -> Iterator[Any]:
    """The test's own connection to Redis, for PUBSUB, INFO, CLIENT KILL and FLUSHALL."""
    client = redis_server.client(decode_responses=True)
    yield client
    client.close()


MakeNode = Callable[..., Awaitable[rawrt.Server]]


@pytest.fixture
async def make_node(redis_server: RedisServer, start_server: StartServer) -> MakeNode:
    async def make(**overrides: Any) -> rawrt.Server:
        node = await start_server(redis_url=redis_server.url, **overrides)
        await wait_ready(node)
        return node

    return make


def topic(channel: str, prefix: str = "rawrt") -> str:
    return f"{prefix}:m:{channel}"


async def eventually(check: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll `check` until it holds; returns the seconds it took. Fails after `timeout_s`."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def status_of(port: int, path: str) -> int:
    return (await request(port, "GET", path, timeout_s=STEP_S)).status


async def post_json(port: int, path: str, value: Any) -> tuple[int, Any, float]:
    """POST a JSON body; (status, decoded body, seconds the answer took)."""
    start = time.monotonic()
    response = await request(
        port, "POST", path, json.dumps(value), [("Content-Type", "application/json")]
    )
    return response.status, response.json(), time.monotonic() - start


# --- economy --------------------------------------------------------------------------------


async def test_one_subscription_per_channel_per_node_whatever_the_client_count(
    make_node: MakeNode, admin: Any
) -> None:
    # The sweep (which ends a linger) runs every sse_heartbeat_s / 4.
    options = {"redis_linger_s": 0.6, "sse_heartbeat_s": 0.2}
    a, b = await make_node(**options), await make_node(**options)
    async with contextlib.AsyncExitStack() as clients:
        for node in (a, b):
            for kind in ("ws", "sse", "poll") * 4:
                await Reader.open(kind, node, "crowd", clients)
        await Reader.open("ws", a, "solo", clients)
        await a.publish("published-only", {"n": 1})
        await b.publish("crowd", {"n": 1})

        counts = dict(admin.pubsub_numsub(topic("crowd"), topic("solo"), topic("published-only")))
        assert counts == {topic("crowd"): 2, topic("solo"): 1, topic("published-only"): 0}
        # One pub/sub connection per node, however many channels it follows.
        assert len(admin.client_list(_type="pubsub")) == 2

    # The clients are gone; the subscriptions outlive them by the linger, then end.
    assert admin.pubsub_numsub(topic("crowd"))[0][1] == 2
    took = await eventually(
        lambda: not any(n for _, n in admin.pubsub_numsub(topic("crowd"), topic("solo"))),
        timeout_s=5.0,
        what="unsubscribed from channels without local subscribers",
    )
    assert took >= 0.3, f"unsubscribed after {took:.2f} s, before the linger was over"
    # A client coming back subscribes the node again.
    async with contextlib.AsyncExitStack() as clients:
        reader = await Reader.open("sse", b, "crowd", clients)
        assert admin.pubsub_numsub(topic("crowd"))[0][1] == 1
        live = await a.publish("crowd", {"n": 2})
        assert await reader.until(1) == [Got("message", {"n": 2}, live)]


def _command_calls(admin: Any) -> dict[str, int]:
    return {name: stats["calls"] for name, stats in admin.info("commandstats").items()}


async def test_one_redis_command_per_publish_never_one_per_subscriber(
    make_node: MakeNode, admin: Any
) -> None:
    a, b = await make_node(), await make_node()
    async with contextlib.AsyncExitStack() as clients:
        readers = [
            await Reader.open(kind, node, "economy", clients)
            for node in (a, b)
            for kind in ("ws", "sse", "poll") * 3
        ]
        await a.publish("economy", {"warm": "up"})  # the script is cached from here on
        for reader in readers:
            await reader.until(1)

        admin.config_resetstat()
        publisher = Publisher(a, "economy", clients)
        one_by_one = [await publisher.publish("publish", {"n": n}) for n in range(20)]
        one_by_one += [await b.publish("economy", {"n": n}) for n in range(20, 30)]
        calls = _command_calls(admin)
        # Publishes arriving together share pipelines; each is still one script call.
        at_once = await asyncio.gather(*(b.publish("economy", {"n": n}) for n in range(30, 90)))
        calls_at_once = _command_calls(admin)
        for reader in readers:
            assert len(await reader.until(91)) == 91
            assert reader.resets == []

    assert len(set(one_by_one + at_once)) == 90
    # Each publish is one EVALSHA (its PUBLISH runs inside the script), whatever the number
    # of subscribers; nothing else is sent per publish: no SCRIPT EXISTS, no EVAL, no PING
    # per message (the readers' PINGs come at most once a second while pub/sub is quiet).
    # A batch of publishes is one pipeline: SCRIPT LOAD (so that the script is there even
    # after a restart) and one EVALSHA per publish, sent and answered in one round trip.
    assert calls.get("cmdstat_evalsha") == 30, calls
    assert calls.get("cmdstat_publish") == 30, calls
    assert calls.get("cmdstat_script|load", 0) <= 30, calls
    per_publish = {k: v for k, v in calls.items() if k not in _SCRIPT_AND_ADMIN}
    assert per_publish == {"cmdstat_evalsha": 30}, calls
    assert calls_at_once["cmdstat_evalsha"] == 90, calls_at_once
    assert calls_at_once["cmdstat_publish"] == 90, calls_at_once
    # The 60 publishes that came together shared pipelines: fewer loads than publishes.
    loads_at_once = calls_at_once["cmdstat_script|load"] - calls["cmdstat_script|load"]
    assert loads_at_once < 60, calls_at_once
    # Redis forgetting its scripts (SCRIPT FLUSH, or a restart) costs no publish.
    admin.script_flush()
    assert seq_of(await b.publish("economy", {"n": "flushed"}))[1] == 92


# Commands run inside the publish script, and this test's own.
_SCRIPT_AND_ADMIN = {
    "cmdstat_hget",
    "cmdstat_hmget",
    "cmdstat_hset",
    "cmdstat_del",
    "cmdstat_hincrby",
    "cmdstat_xadd",
    "cmdstat_publish",
    "cmdstat_expire",
    "cmdstat_ping",
    "cmdstat_info",
    "cmdstat_config|resetstat",
    "cmdstat_script|load",
}


# --- Redis loses the history ----------------------------------------------------------------


async def test_flushall_gives_live_and_resuming_clients_a_reset_on_every_transport(
    make_node: MakeNode, admin: Any, stack: Stack
) -> None:
    a, b = await make_node(), await make_node()
    live = [await Reader.open(kind, b, "lost", stack) for kind in ("ws", "sse", "poll")]
    old = await publish_many(a, "lost", range(1, 6))
    for reader in live:
        await reader.until(5)

    admin.flushall()
    # Before anyone publishes again: a node that never followed the channel takes a fresh
    # snapshot, which starts a new epoch; the old ids must not match it.
    quiet = [await Reader.open(kind, a, "lost", stack, old[2]) for kind in ("ws", "sse", "poll")]

    new = await publish_many(a, "lost", range(101, 104))
    new_epoch, first_seq = seq_of(new[0])
    assert new_epoch != seq_of(old[0])[0] and first_seq == 1, (old, new)
    for reader in live + quiet:
        await reader.until_reset()
    marker = await a.publish("lost", {"n": "marker"})
    for reader in live + quiet:
        await reader.until_data({"n": "marker"})
        after = _after_the_one_reset(reader, seq_of(old[0])[0], new_epoch)
        _expect_new_lifetime(reader, after, [{"n": n} for n in (101, 102, 103, "marker")])
        assert after[-1].id == marker

    # Resuming from an old id, on either node, over every transport: a reset to the head.
    for node in (a, b):
        for kind in ("ws", "sse", "sse-query", "poll"):
            reader = await Reader.open(kind, node, "lost", stack, old[3])
            more = await node.publish("lost", {"n": kind})
            got = await reader.until(1)
            assert reader.got[0] == Got("reset", None, reader.got[0].id), reader.got
            assert seq_of(reader.got[0].id or "")[0] == new_epoch
            assert got == [Got("message", {"n": kind}, more)]


def _after_the_one_reset(reader: Reader, old_epoch: str, new_epoch: str) -> list[Got]:
    """What `reader` got after its one reset: before it only old ids, after it only new."""
    assert len(reader.resets) == 1, (reader.kind, reader.got)
    at = reader.got.index(reader.resets[0])
    assert all(g.id is None or seq_of(g.id)[0] == old_epoch for g in reader.got[:at])
    assert seq_of(reader.got[at].id or "")[0] == new_epoch, reader.got
    after = reader.got[at + 1 :]
    assert all(g.id is None or seq_of(g.id)[0] == new_epoch for g in after), reader.got
    return after


def _expect_new_lifetime(reader: Reader, after: list[Got], new: list[Any]) -> None:
    """A subscriber connected throughout gets every message of the new lifetime.

    A long poller is connected only while a poll is parked. One that comes back between two
    polls resumes from an id of the old lifetime, and a resumer's reset is to the head: it
    gets the messages after that head (a suffix of the new ones), which is no gap passed off
    as whole, since the reset says where it stands.
    """
    data = [g.data for g in after]
    if reader.kind == "poll":
        assert data == new[len(new) - len(data) :], (reader.kind, reader.got)
    else:
        assert data == new, (reader.kind, reader.got)


# --- Redis stops, hangs, returns ------------------------------------------------------------


async def _expect_refused_quickly(node: rawrt.Server, channel: str) -> None:
    """Every publish route answers 503 with a JSON error, within REFUSE_BOUND_S."""
    for path in ("/api/broadcast/", "/api/publish/", "/api/sse/publish/"):
        status, body, took = await post_json(node.port, path + channel, {"n": "refused"})
        assert status == 503 and body["status"] == 503 and body["error"], body
        assert took < REFUSE_BOUND_S, f"{path}: 503 after {took:.2f} s"
    start = time.monotonic()
    with pytest.raises(BackplaneUnavailable):
        await node.publish(channel, {"n": "refused"})
    assert time.monotonic() - start < REFUSE_BOUND_S


async def _expect_sse_retry_and_end(node: rawrt.Server, channel: str) -> None:
    """An unattachable SSE stream: 200 event-stream with a retry, then the end of the body."""
    async with SseClient(node.port, f"/api/sse/subscribe/{channel}") as sse:
        assert sse.status == 200
        assert sse.headers["content-type"].startswith("text/event-stream")
        assert await sse.read_to_end(STEP_S) == []
        assert sse.parser.reconnection_time_ms is not None and sse.parser.reconnection_time_ms > 0


async def test_redis_stops_then_returns_and_nodes_recover(
    make_node: MakeNode, redis_server: RedisServer, stack: Stack
) -> None:
    a = await make_node(redis_timeout_s=FAIL_FAST_S)
    b = await make_node(redis_timeout_s=FAIL_FAST_S)
    readers = [await Reader.open(kind, b, "news", stack) for kind in ("ws", "sse", "poll")]
    readers.append(await Reader.open("ws", a, "news", stack))
    before = await publish_many(a, "news", range(1, 4))
    for reader in readers:
        await reader.until(3)
    publisher_ws = await stack.enter_async_context(ws_connect(a.port))

    await asyncio.to_thread(redis_server.stop)
    for node in (a, b):
        await eventually(lambda n=node: not n.ready, STEP_S, "the node notices Redis is gone")
        assert await status_of(node.port, "/readyz") == 503
        assert await status_of(node.port, "/healthz") == 200

    await _expect_refused_quickly(a, "news")
    # A WebSocket publish gets an error frame, and the socket stays open.
    await publisher_ws.send(json.dumps({"type": "publish", "channel": "news", "data": 1}))
    error = await ws_recv(publisher_ws, STEP_S)
    assert error["type"] == "error" and error["data"] == "Publish failed", error
    await publisher_ws.send(json.dumps({"type": "ping"}))
    assert (await ws_recv(publisher_ws, STEP_S))["type"] == "pong"
    # A channel this node does not follow cannot be attached: SSE retries, a poll gets 503.
    await _expect_sse_retry_and_end(a, "elsewhere")
    poll = await request(a.port, "GET", "/api/poll/elsewhere?timeout=1", timeout_s=STEP_S)
    assert poll.status == 503 and poll.json()["status"] == 503
    # A WebSocket subscribe to it gets an error frame; the socket stays open.
    await publisher_ws.send(json.dumps({"type": "subscribe", "channel": "elsewhere"}))
    error = await ws_recv(publisher_ws, STEP_S)
    assert error["type"] == "error", error
    # B still follows "news": a client resuming there is served from B's copy of the history.
    resumer = await Reader.open("sse", b, "news", stack, before[0])
    assert [g.data for g in await resumer.until(2)] == [{"n": 2}, {"n": 3}]
    # An id newer than B has heard of needs the shared history: unavailable, within a bound.
    epoch, head = seq_of(before[-1])
    ahead = f"{epoch}-{head + 2}"
    start = time.monotonic()
    poll = await request(b.port, "GET", f"/api/poll/news?since={ahead}&timeout=30")
    assert poll.status == 503 and time.monotonic() - start < REFUSE_BOUND_S
    async with SseClient(b.port, "/api/sse/subscribe/news", [("Last-Event-ID", ahead)]) as sse:
        assert sse.status == 200 and await sse.read_to_end(REFUSE_BOUND_S) == []
        assert sse.parser.reconnection_time_ms
    # Live subscribers are still connected: they read on, and are told nothing false.
    for reader in readers:
        assert reader.resets == [] and len(reader.messages) == 3

    await asyncio.to_thread(redis_server.start)  # same port, empty: the history is gone
    for node in (a, b):
        await eventually(lambda n=node: n.ready, RECONNECT_BOUND_S, "the node reconnects")
        assert await status_of(node.port, "/readyz") == 200

    after = await publish_many(a, "news", range(4, 7))
    old_epoch, new_epoch = seq_of(before[0])[0], seq_of(after[0])[0]
    assert old_epoch != new_epoch and seq_of(after[0])[1] == 1, (before, after)
    for reader in readers:
        await reader.until_reset()
    marker = await b.publish("news", {"n": "marker"})
    for reader in readers:
        got = await reader.until_data({"n": "marker"})
        assert [g.data for g in got[:3]] == [{"n": n} for n in range(1, 4)], reader.kind
        # Redis came back empty: the old ids are void, and every reader is told so, then
        # gets the messages published since (none of the refused ones).
        after_reset = _after_the_one_reset(reader, old_epoch, new_epoch)
        _expect_new_lifetime(reader, after_reset, [{"n": n} for n in (4, 5, 6, "marker")])
        assert got[-1].id == marker
    # The subscriptions were restored: one per node.
    with redis_server.client() as admin:
        assert admin.pubsub_numsub(topic("news"))[0][1] == 2
    # And everything works again, SSE to a new channel included.
    sse = await Reader.open("sse", a, "elsewhere", stack)
    live = await b.publish("elsewhere", {"n": 1})
    assert await sse.until(1) == [Got("message", {"n": 1}, live)]


async def test_a_hung_redis_gives_503_within_the_timeout_not_a_hang(
    make_node: MakeNode, redis_server: RedisServer, stack: Stack
) -> None:
    a = await make_node(redis_timeout_s=FAIL_FAST_S)
    reader = await Reader.open("ws", a, "frozen", stack)
    await a.publish("frozen", {"n": 1})
    assert redis_server.proc is not None
    os.kill(redis_server.proc.pid, signal.SIGSTOP)  # our own redis-server, by its pid
    try:
        await _expect_refused_quickly(a, "frozen")
        await eventually(lambda: not a.ready, STEP_S, "the node notices Redis hangs")
        assert await status_of(a.port, "/readyz") == 503
        assert await status_of(a.port, "/healthz") == 200
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
    await eventually(lambda: a.ready, RECONNECT_BOUND_S, "the node reconnects")
    live = await a.publish("frozen", {"n": 2})
    got = await reader.until_data({"n": 2})
    # A publish that timed out had reached Redis, which ran it once it could: its 503 means
    # "not known to be published", and it may still come, in order and once, with its id.
    data = [g.data for g in got]
    assert data[0] == {"n": 1} and data[-1] == {"n": 2} and got[-1].id == live
    assert all(d == {"n": "refused"} for d in data[1:-1]), data
    seqs = [seq_of(g.id or "")[1] for g in got]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), got
    assert reader.resets == []


async def test_a_node_started_before_redis_is_unready_until_redis_comes(
    tmp_path: Path, start_server: StartServer, stack: Stack
) -> None:
    redis_server = RedisServer(tmp_path / "late")  # not started yet
    node = await start_server(redis_url=redis_server.url, redis_timeout_s=FAIL_FAST_S)
    assert await status_of(node.port, "/healthz") == 200
    assert await status_of(node.port, "/readyz") == 503
    await _expect_refused_quickly(node, "early")
    await _expect_sse_retry_and_end(node, "early")
    try:
        await asyncio.to_thread(redis_server.start)
        await eventually(lambda: node.ready, RECONNECT_BOUND_S, "the node connects")
        assert await status_of(node.port, "/readyz") == 200
        reader = await Reader.open("sse", node, "early", stack)
        live = await node.publish("early", {"n": 1})
        assert await reader.until(1) == [Got("message", {"n": 1}, live)]
    finally:
        await stack.aclose()  # the clients, while Redis is still there
        redis_server.stop()


async def test_a_full_node_answers_new_channels_at_once_instead_of_hanging(
    make_node: MakeNode, stack: Stack
) -> None:
    """With every channel slot busy, attaching one more is refused, not left waiting."""
    node = await make_node(max_channels=1)
    holder = await stack.enter_async_context(ws_connect(node.port))
    await holder.send(json.dumps({"type": "subscribe", "channel": "busy"}))
    assert (await ws_recv(holder))["type"] == "subscribed"
    poll = await request(node.port, "GET", "/api/poll/other?timeout=5", timeout_s=STEP_S)
    assert poll.status == 503
    ws = await stack.enter_async_context(ws_connect(node.port))
    await ws.send(json.dumps({"type": "subscribe", "channel": "other"}))
    refused = await ws_recv(ws, timeout_s=STEP_S)
    assert refused["type"] == "error" and refused["data"] == "Server busy"
    await ws.send(json.dumps({"type": "ping"}))
    assert (await ws_recv(ws))["type"] == "pong"  # the socket is still served


# --- a node loses its pub/sub connection ----------------------------------------------------


async def test_killed_pubsub_connections_lose_no_message_while_another_node_publishes(
    make_node: MakeNode, admin: Any, stack: Stack
) -> None:
    a, b = await make_node(), await make_node()
    readers = [await Reader.open(kind, b, "gap", stack) for kind in ("ws", "sse", "poll")]
    readers.append(await Reader.open("sse", a, "gap", stack))
    published: list[str] = []
    kills = 4
    done = asyncio.Event()

    async def keep_publishing() -> None:
        # Until the kills are over, and then 20 more; bounded in count either way.
        n, last = 0, 5000
        while n < last:
            published.append(await a.publish("gap", {"n": n}))
            n += 1
            if done.is_set():
                last = min(last, n + 20)

    def both_subscribed() -> bool:
        return admin.pubsub_numsub(topic("gap"))[0][1] == 2

    publishing = asyncio.create_task(keep_publishing())
    try:
        for _ in range(kills):
            # Each time both nodes follow the channel again, and messages keep coming.
            await eventually(both_subscribed, STEP_S, "both nodes subscribed")
            at = len(published)
            await eventually(lambda at=at: len(published) >= at + 30, STEP_S, "publishing")
            assert admin.client_kill_filter(_type="pubsub") == 2
        done.set()
        await asyncio.wait_for(publishing, STEP_S * 4)
    finally:
        publishing.cancel()
    total = len(published)
    assert 4 * 30 < total < 5000

    for reader in readers:
        got = await reader.until(total, timeout_s=STEP_S * 2)
        assert [g.data["n"] for g in got] == list(range(total)), reader.kind
        assert reader.resets == [], reader.kind
        if reader.kind != "poll":
            assert [g.id for g in got] == published, reader.kind
    # Both nodes follow the channel again.
    await eventually(lambda: admin.pubsub_numsub(topic("gap"))[0][1] == 2, STEP_S, "resubscribed")
    live = await a.publish("gap", {"n": "after"})
    for reader in readers:
        assert (await reader.until(total + 1))[-1] == Got("message", {"n": "after"}, live)


async def test_a_message_lost_by_pubsub_is_noticed_by_id_and_fetched_from_history(
    make_node: MakeNode, admin: Any, stack: Stack
) -> None:
    # Pub/sub is at most once. Make it drop one message, and only that: append it to the
    # shared history as the publish script would (the key layout of the module docstring)
    # but without its PUBLISH. The next message's id shows every node the hole.
    a, b = await make_node(), await make_node()
    readers = [await Reader.open(kind, b, "hole", stack) for kind in ("ws", "sse", "poll")]
    readers.append(await Reader.open("ws", a, "hole", stack))
    first = await a.publish("hole", {"n": 1})
    for reader in readers:
        await reader.until(1)

    seq = admin.hincrby("rawrt:{hole}:h", "s", 1)
    admin.xadd("rawrt:{hole}:x", {"d": '{"n":2}', "t": int(time.time() * 1000)}, id=f"{seq}-0")
    third = await a.publish("hole", {"n": 3})
    assert seq_of(third) == (seq_of(first)[0], seq + 1)
    for reader in readers:
        got = await reader.until(3)
        assert [g.data for g in got] == [{"n": 1}, {"n": 2}, {"n": 3}], reader.kind
        assert reader.resets == [] and got[-1].id == third
        if reader.kind != "poll":
            assert got[1].id == f"{seq_of(first)[0]}-{seq}"


@pytest.mark.parametrize("target", ["ws", "sse", "poll"])
async def test_an_id_the_node_has_not_heard_of_is_fetched_from_history_not_reset(
    make_node: MakeNode, admin: Any, stack: Stack, target: str
) -> None:
    # A client saw message 2 through another node; this node's pub/sub never brought it
    # (dropped, as above). The client's id is ahead of the node: the node must fetch the
    # history, not call the position lost.
    a, b = await make_node(), await make_node()
    follower = await Reader.open("ws", b, "behind", stack)
    first = await a.publish("behind", {"n": 1})
    await follower.until(1)
    seq = admin.hincrby("rawrt:{behind}:h", "s", 1)
    admin.xadd("rawrt:{behind}:x", {"d": '{"n":2}', "t": int(time.time() * 1000)}, id=f"{seq}-0")
    unheard = f"{seq_of(first)[0]}-{seq}"

    reader = await Reader.open(target, b, "behind", stack, unheard)
    live = await a.publish("behind", {"n": 3})
    assert await reader.until(1) == [Got("message", {"n": 3}, live)]
    assert reader.resets == []
    # The node's own follower got the fetched message too, in its place.
    got = await follower.until(3)
    assert [g.data for g in got] == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert [g.id for g in got] == [first, unheard, live] and follower.resets == []


async def test_a_gap_at_the_very_end_is_filled_without_a_further_publish(
    make_node: MakeNode, admin: Any, stack: Stack
) -> None:
    # The nodes' pub/sub connections die, and the last messages are published while they are
    # down: no later message will reveal the hole by its id, so the reconnect must re-sync.
    a, b = await make_node(), await make_node()
    reader = await Reader.open("ws", b, "tail", stack)
    first = await a.publish("tail", {"n": 1})
    assert await reader.until(1) == [Got("message", {"n": 1}, first)]
    assert len(admin.client_list(_type="pubsub")) == 2
    # Kill every pub/sub connection and publish at once, before anyone resubscribed.
    assert admin.client_kill_filter(_type="pubsub") == 2
    # Nodes wait out a backoff before they reconnect: nobody follows the channel now.
    assert admin.pubsub_numsub(topic("tail"))[0][1] == 0
    missed = [await a.publish("tail", {"n": n}) for n in range(2, 6)]
    got = await reader.until(5)
    assert [g.data["n"] for g in got] == [1, 2, 3, 4, 5]
    assert got[-1].id == missed[-1] and reader.resets == []


# --- a node is killed -----------------------------------------------------------------------


async def _ready_process(port: int) -> None:
    async with asyncio.timeout(RECONNECT_BOUND_S):
        while await status_of(port, "/readyz") != 200:
            await asyncio.sleep(0.05)


async def test_clients_of_a_killed_node_resume_on_another_with_no_loss(
    redis_server: RedisServer, spawn_rawrt: Any, stack: Stack
) -> None:
    args = ("--host", "127.0.0.1", "--port", "0", "--redis", redis_server.url)
    doomed, survivor, spare = spawn_rawrt(*args), spawn_rawrt(*args), spawn_rawrt(*args)
    for child in (doomed, survivor, spare):
        await _ready_process(child.port)

    kinds = ("ws", "sse", "sse-query", "poll")
    readers = [await Reader.open(k, doomed, "fail", stack) for k in kinds]
    await Reader.open("sse", survivor, "fail", stack)  # the survivor follows the channel too
    first = [await _publish_http(survivor.port, "fail", n) for n in range(1, 6)]
    positions = []
    for reader in readers:
        got = await reader.until(5)
        assert [g.data["n"] for g in got] == [1, 2, 3, 4, 5] and reader.position == first[-1]
        positions.append(reader.position)

    doomed.proc.kill()  # SIGKILL to that child's own pid
    doomed.stop()  # reaps it (status -9) and closes its pipe
    assert doomed.proc.returncode == -signal.SIGKILL
    missed = [await _publish_http(survivor.port, "fail", n) for n in range(6, 11)]

    # Each client reconnects to another node from its position: the survivor, which follows
    # the channel, or the spare, which never did and attaches it from the shared history.
    resumed = [
        await Reader.open(kind, node, "fail", stack, since)
        for kind, since, node in zip(kinds, positions, [spare, survivor] * 2, strict=True)
    ]
    for reader in resumed:
        got = await reader.until(5)
        assert [g.data["n"] for g in got] == [6, 7, 8, 9, 10], reader.kind
        assert reader.resets == [] and reader.position == missed[-1], reader.kind
    live = await _publish_http(spare.port, "fail", 11)
    for reader in resumed:
        got = await reader.until(6)
        assert got[-1] == Got("message", {"n": 11}, live), reader.kind


async def _publish_http(port: int, channel: str, n: int) -> str:
    status, body, _ = await post_json(port, f"/api/publish/{channel}", {"n": n})
    assert status == 200, body
    message_id: str = body["id"]
    return message_id


# --- bursts of attaches ---------------------------------------------------------------------

BURST = 5000  # new channels at once, as when a restarted node's clients come back


async def _polls_at_once(port: int, channels: list[str]) -> list[tuple[int, Any]]:
    """A poll per channel (answered once attached), all sent at once, each on its own connection."""
    streams = []
    for at in range(0, len(channels), 500):  # connect in waves: the listen backlog is finite
        streams += await asyncio.gather(
            *(asyncio.open_connection("127.0.0.1", port) for _ in channels[at : at + 500])
        )
    try:
        for (_, writer), channel in zip(streams, channels, strict=True):
            target = f"/api/poll/{channel}?timeout=0"
            writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())

        async def answer(reader: asyncio.StreamReader) -> tuple[int, Any]:
            response = await read_response(reader)
            return response.status, response.json()

        async with asyncio.timeout(60):
            return await asyncio.gather(*(answer(reader) for reader, _ in streams))
    finally:
        for _, writer in streams:
            writer.close()
        async with asyncio.timeout(STEP_S * 2):  # closed before the node is stopped
            await asyncio.gather(*(w.wait_closed() for _, w in streams), return_exceptions=True)


class _ConnectionCounter:
    """Samples how many connections rawrt holds to Redis (CLIENT LIST), from a thread."""

    def __init__(self, redis_server: RedisServer) -> None:
        self.most = 0
        self.samples = 0
        self._client = redis_server.client(decode_responses=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> int:
        return sum(1 for c in self._client.client_list() if c["name"] == "rawrt-node")

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.most = max(self.most, self.now())
            self.samples += 1

    def __enter__(self) -> _ConnectionCounter:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(STEP_S)
        self._client.close()


async def test_a_burst_of_new_channels_is_served_on_a_bounded_number_of_connections(
    redis_server: RedisServer, spawn_rawrt: Any, admin: Any
) -> None:
    bound = 4
    node = spawn_rawrt(
        "--host", "127.0.0.1", "--port", "0", "--redis", redis_server.url,
        "--redis-max-connections", str(bound),
    )  # fmt: skip
    await _ready_process(node.port)
    channels = [f"burst-{n}" for n in range(BURST)]
    with _ConnectionCounter(redis_server) as counter:
        answers = await _polls_at_once(node.port, channels)
        during = counter.most
    refused = [body for status, body in answers if status != 200]
    assert refused == [], f"{len(refused)} of {BURST} refused: {refused[:3]}"
    assert all(body["messages"] == [] and body["cursor"] for _, body in answers)
    assert counter.samples > 10 and 2 <= during <= bound, (during, counter.samples)
    # The node follows every one of them (one subscription each) and holds no more
    # connections than the bound once the burst is over.
    counts = dict(admin.pubsub_numsub(*(topic(c) for c in channels[:: BURST // 50])))
    assert set(counts.values()) == {1}, counts
    with _ConnectionCounter(redis_server) as after:
        assert after.now() <= bound


async def test_attaches_past_the_queue_bound_are_refused_like_any_overload(
    make_node: MakeNode,
) -> None:
    node = await make_node(redis_max_pending_attaches=20)
    answers = await _polls_at_once(node.port, [f"over-{n}" for n in range(400)])
    statuses = [status for status, _ in answers]
    assert set(statuses) == {200, 503} and statuses.count(200) >= 20, statuses
    for status, body in answers:
        assert status == 200 or (body["status"] == 503 and "attaching" in body["error"]), body
    # Nothing is left behind: the node serves the next ones.
    again = await _polls_at_once(node.port, [f"over-{n}" for n in range(400, 420)])
    assert [status for status, _ in again] == [200] * 20
