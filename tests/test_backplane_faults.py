"""Redis fails under a cluster of nodes: restarts from old snapshots, failovers, cut connections.

Each test starts its own redis-server processes (tests/support/redis_server.py), three rawrt
nodes, and WebSocket, SSE and long-poll subscribers on them that read throughout, while two
nodes keep publishing. At the end a marker is published, and what every subscriber received
is checked against the guarantee (README, "Many nodes"):

- no id is given to two different messages: the ids publishers were answered with are all
  distinct, and every id a subscriber saw names the message its publisher was answered for;
- every subscriber gets every message after its position, in order, once, or an explicit
  reset: between two resets the ids a subscriber sees follow each other with no hole, the
  first after a reset follows the reset's id, no message comes twice, and the marker comes
  last. A publish refused with 503 may still have been published (then it comes in its place
  like any other) or not;
- live subscribers stay connected throughout: a stream that ends fails the test.

The faults: Redis with RDB or AOF persistence killed and restarted from a snapshot older than
its last writes (three times per test); a primary, a replica and three Sentinels, the replica
stopped (SIGSTOP) so that it lags, the primary killed, the replica resumed and promoted; the
pub/sub connections cut (CLIENT KILL TYPE pubsub) with the command connections up, and the
reverse (four times per test); Sentinel naming another primary without cutting anyone; and
no Sentinel answering while the primary is fine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.clients import request
from support.redis_server import RedisServer, Sentinel
from test_backplane_contract import Got, Reader, seq_of, wait_ready

import rawrt
from rawrt.errors import BackplaneUnavailable

pytestmark = pytest.mark.redis

Stack = contextlib.AsyncExitStack
StartServer = Callable[..., Any]

FAIL_FAST_S = 0.5  # redis_timeout_s of the nodes: a publish is answered within about this
STEP_S = 5.0  # bound on any one expected arrival
RECOVER_S = 30.0  # a node is ready again within this after Redis is back (or failed over)
PUBLISH_LIMIT = 4000  # publishes per test at most, whatever happens
MARKER = {"n": "marker"}
KINDS = ("ws", "sse", "poll")
NODE_OPTIONS = {"redis_timeout_s": FAIL_FAST_S, "sse_heartbeat_s": 1.0}


@pytest.fixture
def redis_servers() -> Iterator[list[RedisServer]]:
    """Servers a test starts; stopped (by pid) after the nodes, which are torn down first."""
    servers: list[RedisServer] = []
    yield servers
    for server in servers:
        server.stop()


def started(servers: list[RedisServer], server: RedisServer) -> RedisServer:
    servers.append(server)
    server.start()
    return server


async def eventually(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        await asyncio.sleep(0.02)


def _key(data: Any) -> str:
    return json.dumps(data, sort_keys=True)


class Run:
    """Publishers and followers on one channel of a few nodes, and the final check."""

    def __init__(self, nodes: list[rawrt.Server], channel: str, stack: Stack) -> None:
        self.nodes, self.channel, self.stack = nodes, channel, stack
        self.answered: dict[str, str] = {}  # id -> data (canonical JSON)
        self.ids: list[str] = []
        self.refused: set[str] = set()
        self.readers: list[Reader] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def open_readers(self) -> None:
        """Every transport on every subscribing node (the last two), one WebSocket on A."""
        for node in self.nodes[1:]:
            for kind in KINDS:
                self.readers.append(await Reader.open(kind, node, self.channel, self.stack))
        self.readers.append(await Reader.open("ws", self.nodes[0], self.channel, self.stack))
        for reader in self.readers:
            self._tasks.append(asyncio.create_task(_follow(reader)))

    def start_publishing(self) -> None:
        self._tasks.append(asyncio.create_task(self._publish(self.nodes[:2])))

    async def _publish(self, publishers: list[rawrt.Server]) -> None:
        for n in range(PUBLISH_LIMIT):
            if self._stop.is_set():
                return
            data = {"n": n}
            try:
                message_id = await publishers[n % len(publishers)].publish(self.channel, data)
            except BackplaneUnavailable:
                self.refused.add(_key(data))
                await asyncio.sleep(0.01)  # pacing while Redis is away, not ordering
                continue
            self.answered[message_id] = _key(data)
            self.ids.append(message_id)
            await asyncio.sleep(0.002)  # pacing: a few hundred publishes a second

    async def published(self, more: int) -> str:
        """Wait until `more` further publishes were answered; the last id."""
        target = len(self.ids) + more
        await eventually(lambda: len(self.ids) >= target, RECOVER_S, f"{more} more publishes")
        return self.ids[-1]

    async def resumes_with_a_reset(self, node: rawrt.Server, lost: str) -> None:
        """A client holding an id Redis lost resumes with a reset, on every transport."""
        for kind in ("ws", "sse", "poll"):
            reader = await Reader.open(kind, node, self.channel, self.stack, lost)
            if kind == "poll":
                assert reader.resets, reader.got  # its first poll answered at once
                continue
            data = {"resumed": kind}
            more = await node.publish(self.channel, data)
            self.answered[more] = _key(data)
            self.ids.append(more)
            await reader.until_data(data)
            assert reader.got[0].type == "reset" and reader.got[-1].id == more, reader.got
            assert seq_of(reader.got[0].id or "")[0] != seq_of(lost)[0]

    async def finish(self) -> None:
        """Stop publishing, publish the marker, let every follower read it, check them all."""
        self._stop.set()
        await asyncio.wait_for(self._tasks[-1], STEP_S)
        marker = await self.nodes[0].publish(self.channel, MARKER)
        self.answered[marker] = _key(MARKER)
        self.ids.append(marker)
        await asyncio.wait_for(asyncio.gather(*self._tasks[:-1]), RECOVER_S)
        assert len(set(self.ids)) == len(self.ids), "an id was given to two messages"
        seen: dict[str, str] = {}
        for reader in self.readers:
            check_reader(reader, self.answered, self.refused, seen)
            assert reader.got[-1] == Got("message", MARKER, reader.got[-1].id), reader.kind
            assert reader.got[-1].id in (None, marker)


async def _follow(reader: Reader) -> None:
    """Read until the marker, however long the quiet while Redis is away (bounded)."""
    read = getattr(reader, "_read_" + reader.kind.split("-")[0])
    async with asyncio.timeout(PUBLISH_LIMIT * 0.02 + RECOVER_S):
        while not reader.messages or reader.messages[-1].data != MARKER:
            with contextlib.suppress(TimeoutError):  # a quiet spell; a closed stream fails
                await read()


def check_reader(
    reader: Reader, answered: dict[str, str], refused: set[str], seen: dict[str, str]
) -> None:
    """The guarantee, for what one subscriber received (see the module docstring)."""
    by_data = {data: message_id for message_id, data in answered.items()}
    got_data: set[str] = set()
    epoch: str | None = None
    base: int | None = None  # the seq before the first message of this run
    count = 0  # messages since the last reset
    where = f"{reader.kind} on port {reader.port}: {reader.got}"
    for item in reader.got:
        if item.type == "reset":
            assert item.id is not None
            epoch, base = seq_of(item.id)
            count = 0
            continue
        data = _key(item.data)
        assert data not in got_data, f"{data} twice; {where}"
        got_data.add(data)
        assert data in by_data or data in refused, f"{data} was never published; {where}"
        count += 1
        message_id = item.id or by_data.get(data)
        if message_id is None:
            continue  # a refused publish that was published after all, inside a poll answer
        if item.id is not None:
            assert seen.setdefault(item.id, data) == data, f"{item.id} names two messages"
            assert answered.get(item.id, data) == data, f"{item.id} is not {data}"
        e, s = seq_of(message_id)
        if base is None:
            epoch, base = e, s - count  # where this subscriber started
        assert e == epoch and s == base + count, f"{message_id} after a hole; {where}"


async def _nodes(start_server: StartServer, count: int, **options: Any) -> list[rawrt.Server]:
    nodes = [await start_server(**NODE_OPTIONS, **options) for _ in range(count)]
    await wait_ready(*nodes)
    return nodes


# --- restarts from an older snapshot ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("persistence", ["rdb", "aof"])
async def test_restarts_from_older_snapshots_reset_readers_and_never_reuse_an_id(
    persistence: str,
    tmp_path: Path,
    redis_servers: list[RedisServer],
    start_server: StartServer,
    stack: Stack,
) -> None:
    redis = started(redis_servers, RedisServer(tmp_path / "redis", persistence=persistence))
    nodes = await _nodes(start_server, 3, redis_url=redis.url)
    run = Run(nodes, "restarted", stack)
    await run.open_readers()
    run.start_publishing()
    lost: list[str] = []
    for _ in range(3):  # three restarts, each from a snapshot some publishes old
        await run.published(15)
        await asyncio.to_thread(redis.snapshot)
        lost.append(await run.published(15))  # acknowledged, then lost
        redis.kill()
        if persistence == "aof":
            redis.restore()  # a disk that lost the log's tail
        await asyncio.to_thread(redis.start)
        await eventually(lambda: all(n.ready for n in nodes), RECOVER_S, "nodes reconnect")
    await run.published(15)
    await run.resumes_with_a_reset(nodes[2], lost[-1])
    await run.finish()
    for reader in run.readers:
        assert reader.resets, f"{reader.kind}: Redis went back in time without a reset"


async def test_after_a_restart_nodes_reset_their_readers_without_a_new_publish(
    tmp_path: Path, redis_servers: list[RedisServer], start_server: StartServer, stack: Stack
) -> None:
    redis = started(redis_servers, RedisServer(tmp_path / "redis", persistence="rdb"))
    nodes = await _nodes(start_server, 2, redis_url=redis.url)
    readers = [await Reader.open(kind, nodes[1], "quiet", stack) for kind in KINDS]
    ids = [await nodes[0].publish("quiet", {"n": n}) for n in range(5)]
    await asyncio.to_thread(redis.snapshot)
    ids += [await nodes[0].publish("quiet", {"n": n}) for n in range(5, 10)]
    for reader in readers:
        await reader.until(10)
    redis.kill()
    await asyncio.to_thread(redis.start)  # back with the first five only
    for reader in readers:
        # Nothing is published: the node re-syncs on reconnecting and sees the new epoch.
        await reader.until_reset(timeout_s=RECOVER_S)
        assert seq_of(reader.resets[0].id or "")[0] != seq_of(ids[0])[0], reader.got
    again = await nodes[0].publish("quiet", {"n": "again"})
    assert again not in ids and seq_of(again)[1] == 1
    for reader in readers:
        assert (await reader.until(11))[-1] == Got("message", {"n": "again"}, again)


# --- failover to a lagging replica ------------------------------------------------------------


def _in_sync(primary: RedisServer, replica: RedisServer) -> bool:
    with primary.client(decode_responses=True) as a, replica.client(decode_responses=True) as b:
        offset = a.info("replication")["master_repl_offset"]
        state = b.info("replication")
        return bool(state["master_link_status"] == "up" and state["slave_repl_offset"] == offset)


@pytest.mark.slow
@pytest.mark.parametrize("attempt", [1, 2])
async def test_failover_to_a_lagging_replica_resets_readers_and_nodes_follow_it(
    attempt: int,
    tmp_path: Path,
    redis_servers: list[RedisServer],
    start_server: StartServer,
    stack: Stack,
) -> None:
    primary = started(redis_servers, RedisServer(tmp_path / "primary"))
    replica = started(redis_servers, RedisServer(tmp_path / "replica", replica_of=primary.port))
    sentinels = [
        started(redis_servers, Sentinel(tmp_path / f"sentinel{i}", "main", primary.port))
        for i in range(3)
    ]
    # A first full sync forks and ships an RDB: under load that can take seconds.
    await eventually(lambda: _in_sync(primary, replica), RECOVER_S, "the replica syncs")
    await eventually(
        lambda: all(s.knows(3, 1) for s in sentinels), RECOVER_S, "Sentinels meet each other"
    )
    addresses = ",".join(s.address for s in sentinels)
    nodes = await _nodes(start_server, 3, redis_sentinel=addresses, redis_master="main")
    run = Run(nodes, "failover", stack)
    await run.open_readers()
    run.start_publishing()
    await run.published(15)
    await eventually(lambda: _in_sync(primary, replica), RECOVER_S, "the replica caught up")
    replica.pause()  # it lags from here on
    try:
        lagging = await run.published(15)
        primary.kill()
    finally:
        replica.resume()

    # During the failover: not ready, publishes refused quickly, subscribers still connected.
    await eventually(lambda: not any(n.ready for n in nodes), STEP_S, "nodes notice")
    for node in nodes:
        assert (await request(node.port, "GET", "/readyz", timeout_s=STEP_S)).status == 503
    start = time.monotonic()
    with pytest.raises(BackplaneUnavailable):
        await nodes[2].publish("failover", {"during": "failover"})
    assert time.monotonic() - start < FAIL_FAST_S * 2 + 0.5

    def promoted() -> bool:
        return all(s.primary() == ("127.0.0.1", replica.port) for s in sentinels)

    await eventually(promoted, RECOVER_S, "Sentinel promotes the replica")
    await eventually(lambda: all(n.ready for n in nodes), RECOVER_S, "nodes follow on their own")
    for node in nodes:
        assert (await request(node.port, "GET", "/readyz", timeout_s=STEP_S)).status == 200
    await run.published(15)
    await run.resumes_with_a_reset(nodes[1], lagging)
    await run.finish()
    for reader in run.readers:
        assert reader.resets, f"{reader.kind}: a lagging replica took over without a reset"
    # Both connections of every node are on the new primary, none on the old one.
    with replica.client(decode_responses=True) as admin:
        names = [c["name"] for c in admin.client_list() if c["name"] == "rawrt-node"]
        pubsubs = [c for c in admin.client_list(_type="pubsub") if c["name"] == "rawrt-node"]
    assert len(pubsubs) == 3 and len(names) >= 6, names


# --- one connection of a node cut, the other up -----------------------------------------------


@pytest.mark.parametrize("cut", ["pubsub", "normal"])
@pytest.mark.parametrize("attempt", [1, 2])
async def test_a_cut_connection_loses_nothing_and_resets_nobody(
    cut: str,
    attempt: int,
    tmp_path: Path,
    redis_servers: list[RedisServer],
    start_server: StartServer,
    stack: Stack,
) -> None:
    """`pubsub`: the pub/sub connections cut, commands up; `normal`: the reverse."""
    redis = started(redis_servers, RedisServer(tmp_path / "redis"))
    nodes = await _nodes(start_server, 3, redis_url=redis.url)
    run = Run(nodes, "cut", stack)
    await run.open_readers()
    run.start_publishing()
    with redis.client() as admin:
        for _ in range(4):
            await run.published(20)
            if cut == "pubsub":  # every node has its pub/sub back (a node's `ready` may not
                # have noticed the previous cut yet, so Redis's own list is what counts)
                await eventually(
                    lambda: len(admin.client_list(_type="pubsub")) >= 3, RECOVER_S, "resubscribed"
                )
            killed = admin.client_kill_filter(_type=cut, skipme=True)
            assert killed >= (3 if cut == "pubsub" else 1), killed
            if cut == "pubsub":
                await eventually(lambda: all(n.ready for n in nodes), RECOVER_S, "resubscribed")
    await run.published(20)
    await run.finish()
    for reader in run.readers:
        assert reader.resets == [], f"{reader.kind}: a reset though Redis lost nothing"
    # Publishes refused while a connection was cut are the only ones missing.
    assert len(run.ids) + len(run.refused) >= 4 * 20


async def test_nodes_move_to_the_primary_sentinel_names_even_when_nothing_cut_them(
    tmp_path: Path, redis_servers: list[RedisServer], start_server: StartServer, stack: Stack
) -> None:
    """Sentinel names another primary while the old one stays up, connections and all.

    No failover procedure runs (which would cut clients): the Sentinels are pointed at a new
    primary by hand. Pub/sub on the old one would still look alive, and hear nothing that is
    published on the new one: only asking Sentinel tells.
    """
    old = started(redis_servers, RedisServer(tmp_path / "old"))
    new = started(redis_servers, RedisServer(tmp_path / "new"))
    sentinels = [
        started(redis_servers, Sentinel(tmp_path / f"sentinel{i}", "main", old.port))
        for i in range(3)
    ]
    addresses = ",".join(s.address for s in sentinels)
    a, b = await _nodes(start_server, 2, redis_sentinel=addresses, redis_master="main")
    reader = await Reader.open("ws", b, "moved", stack)
    first = await a.publish("moved", {"n": 1})
    assert await reader.until(1) == [Got("message", {"n": 1}, first)]

    for sentinel in sentinels:
        with sentinel.client() as admin:
            admin.sentinel_remove("main")
            admin.sentinel_monitor("main", "127.0.0.1", new.port, 2)
    assert all(s.primary() == ("127.0.0.1", new.port) for s in sentinels)

    # B re-syncs from the new primary, whose history is not the old one's: a reset.
    await reader.until_reset(timeout_s=RECOVER_S)

    def node_connections(server: RedisServer, kind: str | None = None) -> int:
        with server.client(decode_responses=True) as admin:
            return sum(c["name"] == "rawrt-node" for c in admin.client_list(_type=kind))

    # Both nodes' pub/sub moved; moving, each dropped its idle command connections too.
    await eventually(lambda: node_connections(new, "pubsub") == 2, RECOVER_S, "pub/sub moved")
    assert a.ready and b.ready
    later = await a.publish("moved", {"n": 2})
    assert seq_of(later)[0] == seq_of(reader.resets[0].id or "")[0], "published on the old one"
    assert (await reader.until_data({"n": 2}))[-1].id == later
    await eventually(lambda: node_connections(old) == 0, STEP_S, "nothing left on the old one")


async def test_nodes_keep_their_primary_while_no_sentinel_answers(
    tmp_path: Path, redis_servers: list[RedisServer], start_server: StartServer, stack: Stack
) -> None:
    """Sentinels gone, Redis fine: the nodes keep serving on the connections they have.

    (A new connection goes to the primary the Sentinels last named.)
    """
    primary = started(redis_servers, RedisServer(tmp_path / "primary"))
    sentinels = [
        started(redis_servers, Sentinel(tmp_path / f"sentinel{i}", "main", primary.port))
        for i in range(3)
    ]
    addresses = ",".join(s.address for s in sentinels)
    a, b = await _nodes(start_server, 2, redis_sentinel=addresses, redis_master="main")
    reader = await Reader.open("sse", b, "alone", stack)
    first = await a.publish("alone", {"n": 0})  # A's publishing connection is open now
    assert await reader.until(1) == [Got("message", {"n": 0}, first)]
    for sentinel in sentinels:
        sentinel.stop()
    with primary.client() as admin:
        checks = admin.info("commandstats").get("cmdstat_ping", {}).get("calls", 0)
        # Several primary checks come and go (each second), unanswered; pings carry on.
        await eventually(
            lambda: admin.info("commandstats")["cmdstat_ping"]["calls"] >= checks + 4,
            RECOVER_S,
            "the nodes keep pinging their pub/sub connection",
        )
    assert a.ready and b.ready
    sent = await a.publish("alone", {"n": 1})
    assert (await reader.until(2))[-1] == Got("message", {"n": 1}, sent)
    # Command connections cut: new ones go to the primary the Sentinels last named. The
    # first publish may still meet its cut connection (and be refused); the next are not.
    with primary.client() as admin:
        admin.client_kill_filter(_type="normal", skipme=True)
    again = None
    for _ in range(3):
        with contextlib.suppress(BackplaneUnavailable):
            again = await a.publish("alone", {"n": 2})
            break
    assert again is not None, "no new connection to the primary without a Sentinel"
    assert (await reader.until(3))[-1] == Got("message", {"n": 2}, again)
    assert reader.resets == []
