"""Channels sharded over several Redis servers: where each channel lives, and what one shard's
failure or a new shard does to clients.

- the hash: fixed picks (a change of hash or of shard ids fails here, as it would move
  channels in every deployment), independent of the list's order, an even spread, and a new
  shard takes about 1/4 of the channels from three, and only those;
- three shards, two nodes: every WebSocket, SSE and long-poll subscriber on either node gets
  every message once, in order, and each channel's keys are in its own shard's Redis only;
- a fourth shard: the channels it takes start a new epoch there, so their resuming clients
  get a reset, and every other channel resumes with no reset;
- one shard's redis-server stops: its channels' publishes answer 503 and their new
  subscribers are told to retry, on every node; every other channel keeps working on every
  node; /readyz stays 200 until no shard is left; the shard returns and its channels work.

Every test starts its own redis-servers on free ports, with nothing saved to disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.clients import SseClient, request, ws_connect, ws_recv, ws_subscribe
from support.redis_server import RedisServer
from test_backplane_contract import Got, Reader, seq_of, wait_ready

import rawrt
from rawrt.backplane import LocalBackplane, backplane_for
from rawrt.backplane.redis import RedisBackplane
from rawrt.backplane.sharded import ShardedBackplane, pick_shard
from rawrt.cli import parse_config
from rawrt.config import Config, ConfigError, redis_address

Stack = contextlib.AsyncExitStack
StartServer = Callable[..., Awaitable[rawrt.Server]]

STEP_S = 5.0  # bound on any one expected arrival
FAIL_FAST_S = 0.5  # redis_timeout_s of the fault tests
REFUSE_BOUND_S = FAIL_FAST_S * 2 + 1.5  # a publish to a shard that is down is answered within
RECONNECT_BOUND_S = 12.0  # nodes reconnect with a backoff that doubles up to 5 s

THREE = ["10.0.0.1:6379/0", "10.0.0.2:6379/0", "10.0.0.3:6379/0"]


# --- the hash -------------------------------------------------------------------------------


def test_the_hash_picks_fixed_shards_so_a_change_of_hash_fails_here() -> None:
    # Every node of every deployment computes these: changing them moves channels.
    expected = {
        "news": "10.0.0.3:6379/0",
        "chat": "10.0.0.1:6379/0",
        "orders": "10.0.0.2:6379/0",
        "user:42": "10.0.0.3:6379/0",
        "": "10.0.0.2:6379/0",
        "é": "10.0.0.1:6379/0",
    }
    assert {channel: pick_shard(THREE, channel) for channel in expected} == expected


def test_the_pick_does_not_depend_on_the_order_shards_are_listed_in() -> None:
    rng = random.Random(7)
    channels = [f"c{n}" for n in range(500)]
    picks = [pick_shard(THREE, c) for c in channels]
    for _ in range(5):
        shuffled = rng.sample(THREE, len(THREE))
        assert [pick_shard(shuffled, c) for c in channels] == picks


def test_channels_spread_evenly_over_the_shards() -> None:
    channels = [f"user:{n}" for n in range(30_000)]
    counts = {shard: 0 for shard in THREE}
    for channel in channels:
        counts[pick_shard(THREE, channel)] += 1
    for shard, count in counts.items():
        assert abs(count / len(channels) - 1 / 3) < 0.02, (shard, counts)


def test_a_fourth_shard_takes_about_a_quarter_of_the_channels_and_only_those_move() -> None:
    four = [*THREE, "10.0.0.4:6379/0"]
    channels = [f"room-{n}" for n in range(30_000)]
    moved = 0
    for channel in channels:
        before, after = pick_shard(THREE, channel), pick_shard(four, channel)
        if before != after:
            assert after == four[-1], channel  # nothing moves between the old shards
            moved += 1
    assert abs(moved / len(channels) - 1 / 4) < 0.02, moved


def test_the_backplane_routes_a_channel_where_pick_shard_says() -> None:
    config = Config(redis_url=",".join(f"redis://{a.replace('/0', '')}" for a in THREE))
    backplane = backplane_for(config)
    assert isinstance(backplane, ShardedBackplane)
    assert set(backplane.shard_states()) == set(THREE)
    assert all(backplane.shard_for(c) == pick_shard(THREE, c) for c in ("news", "chat", "x"))


# --- configuration --------------------------------------------------------------------------


def test_backplane_for_picks_local_one_redis_or_shards() -> None:
    assert isinstance(backplane_for(Config()), LocalBackplane)
    assert isinstance(backplane_for(Config(redis_url="")), LocalBackplane)
    assert isinstance(backplane_for(Config(redis_url="redis://r:1/0")), RedisBackplane)
    sharded = backplane_for(Config(redis_url="redis://a:1/0, redis://b:1/0"))
    assert isinstance(sharded, ShardedBackplane)
    assert sharded.shard_states() == {"a:1/0": False, "b:1/0": False}


def test_several_sentinel_masters_are_shards_named_by_master() -> None:
    sentinels = "127.0.0.1:1,127.0.0.1:2"
    one = backplane_for(Config(redis_sentinel=sentinels, redis_master="m"))
    assert isinstance(one, RedisBackplane)
    groups = backplane_for(Config(redis_sentinel=sentinels, redis_master="m2, m1"))
    assert isinstance(groups, ShardedBackplane)
    assert groups.shard_states() == {"m1": False, "m2": False}
    assert groups.shard_for("news") == pick_shard(["m1", "m2"], "news")
    for bad in ("m,m", "m,", ""):
        with pytest.raises(ConfigError, match="redis_master"):
            Config(redis_sentinel=sentinels, redis_master=bad)


def test_a_shard_id_is_the_address_without_credentials_or_options() -> None:
    assert redis_address("redis://:secret@Cache.example:6380/2") == "cache.example:6380/2"
    assert redis_address("rediss://user:pw@h/1?socket_timeout=3") == "h:6379/1"
    assert redis_address("redis://h") == redis_address("redis://h:6379/0") == "h:6379/0"
    assert redis_address("redis://h?db=3") == "h:6379/3"
    assert redis_address("redis://[::1]:7000") == "[::1]:7000/0"
    assert redis_address("unix:///run/redis.sock?db=1") == "unix:/run/redis.sock/1"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("redis://a:1/0,", "'' is not a Redis URL"),
        ("redis://a:1/0,http://b", "scheme must be"),
        ("redis://a:1/0,redis://b:99999", "Port out of range"),
        ("redis://a:1/zero", "database must be a number"),
        ("redis://:6379", "no host"),
        ("redis://a:1/0,redis://:pw@A:1", "lists the Redis at a:1/0 twice"),
        ("redis://a,redis://a:6379/0", "twice"),
    ],
)
def test_a_bad_redis_url_list_is_refused_with_the_reason(value: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        Config(redis_url=value)


def test_several_urls_are_one_setting_from_the_command_line_or_the_environment() -> None:
    urls = "redis://a:1/0,redis://b:1/0,rediss://c:2/0"
    assert parse_config(["--redis", urls, "--workers", "2"]).redis_url == urls
    assert parse_config([], {"RAWRT_REDIS_URL": urls}).redis_url == urls
    with pytest.raises(ConfigError, match="twice"):
        parse_config(["--redis", "redis://a:1/0,redis://a:1"])


# --- several real redis-servers -------------------------------------------------------------


@pytest.fixture
def shard_servers(tmp_path: Path) -> Iterator[list[RedisServer]]:
    """Four redis-servers; the first three are started, the fourth is for adding."""
    servers = [RedisServer(tmp_path / f"shard{n}") for n in range(4)]
    try:
        for server in servers[:3]:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


def urls_of(servers: list[RedisServer]) -> str:
    return ",".join(server.url for server in servers)


def channels_per_shard(servers: list[RedisServer], per_shard: int, stem: str) -> list[str]:
    """Channel names, `per_shard` on each of `servers` (found by the hash; bounded)."""
    ids = [redis_address(server.url) for server in servers]
    found: dict[str, list[str]] = {shard: [] for shard in ids}
    for n in range(10_000):
        name = f"{stem}{n}"
        bucket = found[pick_shard(ids, name)]
        if len(bucket) < per_shard:
            bucket.append(name)
        if all(len(b) == per_shard for b in found.values()):
            return [name for bucket in found.values() for name in bucket]
    raise AssertionError("the hash put no channel on some shard in 10,000 names")


def on_shard(servers: list[RedisServer], shard_id: str, stem: str) -> str:
    """A channel name that the hash puts on `shard_id`."""
    ids = [redis_address(server.url) for server in servers]
    return next(f"{stem}{n}" for n in range(10_000) if pick_shard(ids, f"{stem}{n}") == shard_id)


async def eventually(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.02)


async def publish_http(port: int, channel: str, value: Any) -> tuple[int, Any, float]:
    """POST /api/publish/CHANNEL; (status, decoded body, seconds the answer took)."""
    start = time.monotonic()
    response = await request(
        port, "POST", f"/api/publish/{channel}", json.dumps(value),
        [("Content-Type", "application/json")], timeout_s=STEP_S,
    )  # fmt: skip
    return response.status, response.json(), time.monotonic() - start


async def status_of(port: int, path: str) -> int:
    return (await request(port, "GET", path, timeout_s=STEP_S)).status


def sharded(node: rawrt.Server) -> ShardedBackplane:
    assert isinstance(node.backplane, ShardedBackplane)
    return node.backplane


@pytest.mark.redis
async def test_three_shards_two_nodes_every_transport_gets_every_message_once_in_order(
    shard_servers: list[RedisServer], start_server: StartServer, stack: Stack
) -> None:
    three = shard_servers[:3]
    options = {"redis_url": urls_of(three), "redis_prefix": "t" + secrets.token_hex(3)}
    a, b = await start_server(**options), await start_server(**options)
    await wait_ready(a, b)
    channels = channels_per_shard(three, 2, "room")
    readers = {
        channel: [
            await Reader.open(kind, node, channel, stack)
            for node in (a, b)
            for kind in ("ws", "sse", "poll")
        ]
        for channel in channels
    }

    async def publish(channel: str) -> list[str]:
        # Alternate the nodes, so that every channel is published to by both.
        return [await (a, b)[n % 2].publish(channel, {"n": n}) for n in range(12)]

    ids = dict(zip(channels, await asyncio.gather(*map(publish, channels)), strict=True))
    for channel, channel_readers in readers.items():
        epoch = seq_of(ids[channel][0])[0]
        assert [seq_of(i) for i in ids[channel]] == [(epoch, s) for s in range(1, 13)]
        for reader in channel_readers:
            got = await reader.until(12)
            assert [g.data for g in got] == [{"n": n} for n in range(12)], (channel, reader.kind)
            assert reader.resets == [] and len(got) == 12
            assert [g.id for g in got if g.id is not None][-1] == ids[channel][-1]
    # Each channel's history is in its own shard's Redis, and in no other.
    for server in three:
        with server.client(decode_responses=True) as admin:
            here = {c for c in channels if admin.exists(f"{options['redis_prefix']}:{{{c}}}:x")}
        assert here == {c for c in channels if sharded(a).shard_for(c) == redis_address(server.url)}
        assert len(here) == 2


@pytest.mark.redis
async def test_a_fourth_shard_resets_the_resumers_of_the_channels_it_takes_and_no_others(
    shard_servers: list[RedisServer], start_server: StartServer, stack: Stack
) -> None:
    three, prefix = shard_servers[:3], "t" + secrets.token_hex(3)
    old = [await start_server(redis_url=urls_of(three), redis_prefix=prefix) for _ in range(2)]
    await wait_ready(*old)
    channels = [f"topic-{n}" for n in range(40)]
    positions: dict[str, str] = {}
    for n, channel in enumerate(channels):
        first = await old[n % 2].publish(channel, {"n": 1})
        await old[(n + 1) % 2].publish(channel, {"n": 2})
        positions[channel] = first
    for node in old:
        await node.stop()

    shard_servers[3].start()
    four = [shard_servers[n] for n in (3, 1, 0, 2)]  # listed in another order, on purpose
    new = [await start_server(redis_url=urls_of(four), redis_prefix=prefix) for _ in range(2)]
    await wait_ready(*new)
    new_shard = redis_address(shard_servers[3].url)
    moved = {c for c in channels if sharded(new[0]).shard_for(c) == new_shard}
    assert 4 <= len(moved) <= 18, moved  # about a quarter of 40
    ids = [redis_address(s.url) for s in three]
    assert all(
        sharded(new[0]).shard_for(c) == pick_shard(ids, c) for c in channels if c not in moved
    )

    for n, channel in enumerate(channels):
        kind = ("poll", "ws", "sse", "sse-query")[n % 4]
        reader = await Reader.open(kind, new[n % 2], channel, stack, positions[channel])
        if channel in moved:
            # Its new shard holds no history: a new epoch, and the resumer is told so.
            await reader.until_reset()
            assert reader.messages == [] and len(reader.resets) == 1, (kind, reader.got)
            assert seq_of(reader.resets[0].id or "")[0] != seq_of(positions[channel])[0]
        else:
            # The same shard as before: resumed where it was, nothing missed, no reset.
            assert [g.data for g in await reader.until(1)] == [{"n": 2}], (kind, reader.got)
        live = await new[(n + 1) % 2].publish(channel, {"n": 3})
        got = await reader.until_data({"n": 3})
        assert got[-1] == Got("message", {"n": 3}, live) and len(reader.resets) <= 1
        assert (seq_of(live)[1] == 1) == (channel in moved), (channel, live)
        assert (reader.resets != []) == (channel in moved), (channel, kind, reader.got)


@pytest.mark.redis
async def test_one_shard_down_stops_only_its_channels_and_they_work_again_when_it_returns(
    shard_servers: list[RedisServer], start_server: StartServer, stack: Stack
) -> None:
    three = shard_servers[:3]
    options = {"redis_url": urls_of(three), "redis_timeout_s": FAIL_FAST_S}
    a, b = await start_server(**options), await start_server(**options)
    await wait_ready(a, b)
    down, down_id = three[1], redis_address(three[1].url)
    channels = channels_per_shard(three, 1, "feed")
    (lost,) = [c for c in channels if sharded(a).shard_for(c) == down_id]
    kept = [c for c in channels if c != lost]
    readers = {c: [await Reader.open("ws", a, c, stack), await Reader.open("sse", b, c, stack)]
               for c in channels}  # fmt: skip
    # One WebSocket subscribed to a channel on every shard.
    multi = await stack.enter_async_context(ws_connect(a.port))
    for channel in channels:
        await ws_subscribe(multi, channel)
    for channel in channels:
        await a.publish(channel, {"n": 1})
        for reader in readers[channel]:
            await reader.until(1)
        assert (await ws_recv(multi, STEP_S))["channel"] == channel

    await asyncio.to_thread(down.stop)
    for node in (a, b):
        await eventually(lambda n=node: not sharded(n).shard_states()[down_id], STEP_S, "down")
        assert sum(sharded(node).shard_states().values()) == 2
        # The node serves the other shards' channels: it stays in the load balancer.
        assert node.ready and await status_of(node.port, "/readyz") == 200
        status, body, took = await publish_http(node.port, lost, {"n": "refused"})
        assert status == 503 and body["status"] == 503 and body["error"], body
        assert took < REFUSE_BOUND_S, f"503 after {took:.2f} s"
        # A new subscriber to another channel of that shard is told to come back later.
        fresh = on_shard(three, down_id, f"never-{node.port}-")
        poll = await request(node.port, "GET", f"/api/poll/{fresh}?timeout=1", timeout_s=STEP_S)
        assert poll.status == 503 and poll.json()["status"] == 503, poll.status
        async with SseClient(node.port, f"/api/sse/subscribe/{fresh}") as sse:
            assert sse.status == 200 and await sse.read_to_end(STEP_S) == []
            assert sse.parser.reconnection_time_ms
    # The socket following all three: a publish to the lost shard gets an error frame, and
    # the socket goes on, with its other channels.
    await multi.send(json.dumps({"type": "publish", "channel": lost, "data": "refused"}))
    error = await ws_recv(multi, REFUSE_BOUND_S + 1)
    assert error["type"] == "error" and error["data"] == "Publish failed", error
    await multi.send(json.dumps({"type": "publish", "channel": kept[0], "data": "via ws"}))
    echoed = await ws_recv(multi, STEP_S)
    assert (echoed["type"], echoed["channel"], echoed["data"]) == ("message", kept[0], "via ws")
    for reader in readers[kept[0]]:
        assert (await reader.until(2))[-1].data == "via ws"
    # Every other channel keeps working, published on either node, read on both.
    for n, channel in enumerate(kept):
        for node in (a, b):
            status, body, _ = await publish_http(node.port, channel, {"n": f"kept-{node.port}"})
            assert status == 200 and body["published"], body
        for reader in readers[channel]:
            got = await reader.until(len(reader.messages) + 2)
            assert [g.data for g in got][-2:] == [{"n": f"kept-{a.port}"}, {"n": f"kept-{b.port}"}]
        # And a new subscriber on that shard is served at once.
        extra = on_shard(three, sharded(a).shard_for(channel), f"extra-{n}-")
        reader = await Reader.open(("poll", "sse")[n % 2], (a, b)[n % 2], extra, stack)
        live = await (b, a)[n % 2].publish(extra, {"n": 1})
        assert await reader.until(1) == [Got("message", {"n": 1}, live)]
    # The live subscribers of the lost shard's channel are still connected, told nothing false.
    for reader in readers[lost]:
        assert reader.resets == [] and [g.data for g in reader.messages] == [{"n": 1}]

    await asyncio.to_thread(down.start)  # the same port, empty: its history is gone
    for node in (a, b):
        await eventually(lambda n=node: sharded(n).shard_states()[down_id], RECONNECT_BOUND_S, "up")
    after = await b.publish(lost, {"n": 2})
    assert seq_of(after)[1] == 1  # a new epoch: Redis came back without the history
    for reader in readers[lost]:
        got = await reader.until_data({"n": 2})
        assert len(reader.resets) == 1 and got[-1] == Got("message", {"n": 2}, after), reader.got
    for channel in kept:
        assert all(reader.resets == [] for reader in readers[channel])


@pytest.mark.redis
async def test_readyz_waits_for_every_shard_at_start_then_fails_only_without_any(
    shard_servers: list[RedisServer], start_server: StartServer
) -> None:
    late = shard_servers[3]  # not started: its node cannot reach it
    urls = urls_of([*shard_servers[:2], late])
    start = time.monotonic()
    node = await start_server(redis_url=urls, redis_timeout_s=FAIL_FAST_S)
    assert await status_of(node.port, "/readyz") == 503  # still reaching its shards
    await wait_ready(node)
    # Two shards up, one never reached: ready once the start-up grace (2 x timeout) is over.
    assert time.monotonic() - start >= 2 * FAIL_FAST_S - 0.1
    assert sharded(node).shard_states() == {
        redis_address(shard_servers[0].url): True,
        redis_address(shard_servers[1].url): True,
        redis_address(late.url): False,
    }
    assert await status_of(node.port, "/readyz") == 200
    for server in shard_servers[:2]:
        await asyncio.to_thread(server.stop)
    await eventually(lambda: not node.ready, STEP_S, "no shard left")
    assert await status_of(node.port, "/readyz") == 503
    await asyncio.to_thread(late.start)
    await eventually(lambda: node.ready, RECONNECT_BOUND_S, "a shard is back")
    assert await status_of(node.port, "/readyz") == 200
    # A node whose shards all answer is ready as soon as they do, without the grace.
    for server in shard_servers[:2]:
        await asyncio.to_thread(server.start)
    quick = await start_server(redis_url=urls, redis_timeout_s=5.0)
    began = time.monotonic()
    await wait_ready(quick)
    assert time.monotonic() - began < 5.0
    assert all(sharded(quick).shard_states().values())


@pytest.mark.redis
async def test_a_channel_the_hub_evicts_is_unsubscribed_on_its_own_shard(
    shard_servers: list[RedisServer], start_server: StartServer
) -> None:
    three = shard_servers[:3]
    # Three channel slots and a long linger: only eviction can end a subscription here.
    node = await start_server(redis_url=urls_of(three), max_channels=3, redis_linger_s=600)
    await wait_ready(node)
    admins = {redis_address(s.url): s.client(decode_responses=True) for s in three}

    def subscribers(channel: str) -> dict[str, int]:
        topic = f"rawrt:m:{channel}"
        return {shard: dict(admin.pubsub_numsub(topic))[topic] for shard, admin in admins.items()}

    try:
        names = channels_per_shard(three, 2, "evict")  # two on each shard, shard by shard
        first, new = names[0::2], names[1::2]
        for channel in first:  # attached, then idle: each holds a slot
            assert (await request(node.port, "GET", f"/api/poll/{channel}?timeout=0")).status == 200
        for channel in first:
            shard = sharded(node).shard_for(channel)
            assert subscribers(channel) == {s: int(s == shard) for s in admins}, channel
        for channel in new:  # each takes the slot of the oldest idle channel
            assert (await request(node.port, "GET", f"/api/poll/{channel}?timeout=0")).status == 200
        for channel in first:
            await eventually(
                lambda c=channel: not any(subscribers(c).values()), STEP_S, f"{channel} dropped"
            )
        for channel in new:
            shard = sharded(node).shard_for(channel)
            assert subscribers(channel) == {s: int(s == shard) for s in admins}, channel
    finally:
        for admin in admins.values():
            admin.close()
