"""The local cluster of deploy/: Redis, three rawrt nodes and nginx in front, end to end.

Each cluster is brought up by `deploy/local-cluster.sh up` in a temporary folder, used only
through its nginx front (and the state files the script writes), and torn down by `down`,
whose test checks that every process it recorded is gone.

All clients are on loopback, so the sticky upstream (`hash $remote_addr consistent`) would
send them all to one node; tests that need several nodes give their clients different source
addresses (127.0.0.2, 127.0.0.3, ... are all loopback on Linux) and learn which node serves
an address from the upstream= field of nginx's access log.

The cross-node tests rely on the Redis backplane (`--redis`, which the script passes); the
others would hold without it: nginx's proxying, upgrade, unbuffered SSE, poll timeouts, health.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect as ws_connect

pytestmark = [pytest.mark.nginx, pytest.mark.redis]

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "deploy" / "local-cluster.sh"
UP_BOUND_S = 60.0  # `up` starts five programs and waits for each (bounded in the script)
DOWN_BOUND_S = 40.0  # `down` waits 15 s after SIGTERM before SIGKILL
STEP_S = 5.0  # bound on any single expected arrival through the cluster
SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def _program(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for folder in SBIN:
        candidate = Path(folder) / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _need(name: str, env: str) -> None:
    if _program(name) is None:
        message = (
            f"{name} is not installed (apt-get install {name.replace('nginx', 'nginx-light')})"
        )
        if os.environ.get(env) == "1":
            pytest.fail(f"{message}, and {env}=1")
        pytest.skip(message)


# --- the cluster --------------------------------------------------------------------------


@dataclass
class Cluster:
    state: Path
    url: str
    host: str
    port: int
    nodes: list[str]  # host:port of each node, as nginx's upstream= names it
    pids: dict[str, int]
    env: dict[str, str] = field(repr=False)

    def access_log(self) -> list[str]:
        path = self.state / "logs" / "access.log"
        return path.read_text().splitlines() if path.exists() else []

    def down(self) -> subprocess.CompletedProcess[str]:
        return _run_script("down", str(self.state), env=self.env, bound=DOWN_BOUND_S)


def _run_script(*args: str, env: dict[str, str], bound: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=bound,
        check=False,
    )


def _up(state: Path, round_robin: bool) -> Cluster:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAWRT_")}
    env["PYTHON"] = sys.executable
    for name in ("nginx", "redis-server"):
        program = _program(name)
        assert program is not None
        env["NGINX" if name == "nginx" else "REDIS_SERVER"] = program
    args = ["up", str(state), *(["--round-robin"] if round_robin else [])]
    done = _run_script(*args, env=env, bound=UP_BOUND_S)
    assert done.returncode == 0, f"up failed:\n{done.stdout}\n{done.stderr}"
    last = done.stdout.rstrip("\n").splitlines()[-1]
    match = re.fullmatch(r"http://127\.0\.0\.1:(\d+)", last)
    assert match, f"the last line of up is not the front address: {last!r}"
    assert (state / "front-url").read_text().strip() == last
    nodes = [u.removeprefix("http://") for u in (state / "nodes").read_text().split()]
    pids: dict[str, int] = {}
    for line in (state / "pids").read_text().splitlines():
        name, pid, _ = line.split()
        pids[name] = int(pid)  # a retried start keeps the last pid of a name
    return Cluster(state, last, "127.0.0.1", int(match.group(1)), nodes, pids, env)


def _alive(pid: int) -> bool:
    """PID runs (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


@contextlib.contextmanager
def _cluster(tmp: Path, round_robin: bool) -> Iterator[Cluster]:
    _need("redis-server", "RAWRT_REQUIRE_REDIS")
    _need("nginx", "RAWRT_REQUIRE_NGINX")
    cluster = _up(tmp / "cluster", round_robin)
    try:
        yield cluster
    finally:
        if cluster.state.exists():  # the down test did not run, or failed
            cluster.down()


@pytest.fixture(scope="module")
def sticky(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with _cluster(tmp_path_factory.mktemp("sticky"), round_robin=False) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def round_robin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with _cluster(tmp_path_factory.mktemp("round-robin"), round_robin=True) as cluster:
        yield cluster


# --- a small HTTP/1.1 client: raw sockets, so nothing buffers or retries behind our back ---


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    reader: asyncio.StreamReader = field(repr=False)
    writer: asyncio.StreamWriter = field(repr=False)
    _chunk_left: int = 0
    _done: bool = False

    @property
    def chunked(self) -> bool:
        return "chunked" in self.headers.get("transfer-encoding", "").lower()

    async def read_some(self) -> bytes:
        """The next piece of the body as it arrives; b"" at its end."""
        if self._done:
            return b""
        if not self.chunked:
            data = await self.reader.read(65536)
            self._done = not data
            return data
        if self._chunk_left == 0:
            size_line = await self.reader.readline()
            if not size_line:
                self._done = True
                return b""
            self._chunk_left = int(size_line.split(b";")[0].strip(), 16)
            if self._chunk_left == 0:
                self._done = True
                return b""
        data = await self.reader.read(self._chunk_left)
        if not data:
            self._done = True
            return b""
        self._chunk_left -= len(data)
        if self._chunk_left == 0:
            await self.reader.readexactly(2)  # the CRLF after a chunk
        return data

    async def read_all(self) -> bytes:
        length = self.headers.get("content-length")
        if length is not None and not self.chunked:
            return await self.reader.readexactly(int(length))
        parts = []
        for _ in range(100_000):
            part = await self.read_some()
            if not part:
                break
            parts.append(part)
        return b"".join(parts)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def request(
    cluster: Cluster,
    method: str,
    target: str,
    *,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    source: str = "127.0.0.1",
) -> Response:
    """Send one request on a new connection (Connection: close) and read the response head."""
    reader, writer = await asyncio.open_connection(
        cluster.host, cluster.port, local_addr=(source, 0)
    )
    lines = [f"{method} {target} HTTP/1.1", f"Host: {cluster.host}:{cluster.port}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body or method == "POST":
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines.append("Connection: close")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except BaseException:
        writer.close()
        raise
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    found: dict[str, str] = {}
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            found[name.strip().lower()] = value.strip()
    return Response(int(status_line.split()[1]), found, reader, writer)


async def fetch(cluster: Cluster, method: str, target: str, **kwargs: Any) -> tuple[int, Any]:
    """Status and JSON body of one request."""
    response = await request(cluster, method, target, **kwargs)
    try:
        body = await response.read_all()
    finally:
        await response.close()
    if response.headers.get("content-type", "").startswith("application/json"):
        return response.status, json.loads(body)
    return response.status, body.decode("utf-8", "replace")  # nginx's own error pages


async def publish(cluster: Cluster, channel: str, data: object, source: str) -> str:
    status, reply = await fetch(
        cluster, "POST", f"/api/broadcast/{channel}", body=json.dumps(data).encode(), source=source
    )
    assert status == 200 and reply["sent"] is True, (status, reply)
    return str(reply["id"])


async def poll(
    cluster: Cluster, channel: str, since: str | None, timeout_s: float, source: str
) -> dict[str, Any]:
    query = f"timeout={timeout_s:g}" + (f"&since={since}" if since is not None else "")
    status, reply = await fetch(cluster, "GET", f"/api/poll/{channel}?{query}", source=source)
    assert status == 200, (status, reply)
    return dict(reply)


# --- Server-Sent Events over that client -------------------------------------------------------


@dataclass
class Event:
    type: str
    id: str | None
    data: str


class EventStream:
    """One text/event-stream response, parsed as the WHATWG parser does (enough of it)."""

    def __init__(self, response: Response) -> None:
        self.response = response
        self._buffer = ""

    @classmethod
    async def open(
        cls, cluster: Cluster, channel: str, last_event_id: str | None, source: str
    ) -> EventStream:
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        response = await request(
            cluster, "GET", f"/api/sse/subscribe/{channel}", headers=headers, source=source
        )
        if response.status != 200:
            await response.close()
            raise AssertionError(f"SSE answered {response.status}")
        assert response.headers["content-type"].startswith("text/event-stream")
        assert "content-length" not in response.headers
        return cls(response)

    async def next_event(self, timeout_s: float = STEP_S) -> Event:
        """The next event that has data (comments and retry-only blocks are skipped)."""
        async with asyncio.timeout(timeout_s):
            for _ in range(10_000):
                block, sep, rest = self._buffer.partition("\n\n")
                if not sep:
                    data = await self.response.read_some()
                    if not data:
                        raise EOFError("the event stream ended")
                    self._buffer += data.decode().replace("\r\n", "\n")
                    continue
                self._buffer = rest
                kind, event_id, data_lines = "message", None, []
                for line in block.split("\n"):
                    name, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if name == "event":
                        kind = value
                    elif name == "id":
                        event_id = value
                    elif name == "data":
                        data_lines.append(value)
                if data_lines:
                    return Event(kind, event_id, "\n".join(data_lines))
        raise AssertionError("too many blocks without data")

    async def close(self) -> None:
        await self.response.close()


@contextlib.asynccontextmanager
async def event_stream(
    cluster: Cluster, channel: str, last_event_id: str | None = None, source: str = "127.0.0.1"
) -> AsyncIterator[EventStream]:
    stream = await EventStream.open(cluster, channel, last_event_id, source)
    try:
        yield stream
    finally:
        await stream.close()


# --- which node serves whom: nginx's access log --------------------------------------------------

_LOG_LINE = re.compile(
    r'^(\S+) \[[^\]]*\] "\S+ (\S+) [^"]*" (\d{3}) \d+ upstream=(.*?) upstream_status='
)


async def log_upstreams(cluster: Cluster, marker: str, count: int) -> list[tuple[str, str]]:
    """(request target, upstream) of the `count` logged requests whose target has `marker`.

    nginx logs a request once it has ended, which may be a moment after the client has its
    answer: this waits (bounded) for the lines to appear.
    """
    deadline = time.monotonic() + STEP_S
    for _ in range(1000):
        found = []
        for line in cluster.access_log():
            match = _LOG_LINE.match(line)
            if match and marker in match.group(2):
                found.append((match.group(2), match.group(4)))
        if len(found) >= count or time.monotonic() > deadline:
            assert len(found) >= count, f"{len(found)} of {count} log lines for {marker}"
            return found
        await asyncio.sleep(0.02)
    raise AssertionError("unreachable")


async def nodes_by_source(
    cluster: Cluster, sources: list[str], rounds: int
) -> dict[str, list[str]]:
    """For each source address, the node that served each of `rounds` requests from it."""
    marker = "probe-" + secrets.token_hex(4)
    for r in range(rounds):
        for i, source in enumerate(sources):
            status, _ = await fetch(cluster, "GET", f"/healthz?{marker}={r}-{i}", source=source)
            assert status == 200
    served: dict[str, list[str]] = {source: [] for source in sources}
    for target, upstream in await log_upstreams(cluster, marker, rounds * len(sources)):
        index = int(target.rpartition("-")[2])
        served[sources[index]].append(upstream)
    return served


SOURCES = [f"127.0.0.{i}" for i in range(2, 26)]


def channel_name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


# --- the sticky cluster -------------------------------------------------------------------------


async def test_front_answers_health_and_every_node_is_ready(sticky: Cluster) -> None:
    assert len(sticky.nodes) == 3 and set(sticky.pids) == {
        "redis",
        "node-1",
        "node-2",
        "node-3",
        "nginx",
    }
    assert all(_alive(pid) for pid in sticky.pids.values())
    assert await fetch(sticky, "GET", "/healthz") == (200, {"status": "ok"})
    response = await request(sticky, "GET", "/readyz")
    body = await response.read_all()
    await response.close()
    assert response.status == 200 and json.loads(body) == {"ready": True}
    assert response.headers.get("server") == "nginx"  # it did come through the front
    for node in sticky.nodes:
        host, port = node.split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await reader.readline()).startswith(b"HTTP/1.1 200 ")
        writer.close()
        await writer.wait_closed()


async def test_sticky_hash_keeps_each_client_on_one_node_and_spreads_clients(
    sticky: Cluster,
) -> None:
    served = await nodes_by_source(sticky, SOURCES, rounds=3)
    for source, upstreams in served.items():
        assert len(set(upstreams)) == 1, f"{source} moved between nodes: {upstreams}"
    used = {upstreams[0] for upstreams in served.values()}
    assert used <= set(sticky.nodes)
    # 24 addresses on a consistent-hash ring of 3 nodes: all on one would mean ip_hash-like
    # keying (ip_hash puts all of 127.0.0.0/24 on one node).
    assert len(used) >= 2, f"every address went to {used}"


async def test_websocket_upgrades_through_nginx(sticky: Cluster) -> None:
    channel = channel_name("ws")
    async with (
        asyncio.timeout(20),
        ws_connect(
            f"ws://{sticky.host}:{sticky.port}/ws", open_timeout=STEP_S, ping_interval=None
        ) as ws,
    ):
        await ws.send(json.dumps({"type": "ping"}))
        assert json.loads(await ws.recv())["type"] == "pong"
        await ws.send(json.dumps({"type": "subscribe", "channel": channel}))
        assert json.loads(await ws.recv())["type"] == "subscribed"
        # The same source address, so the same node: this holds without a backplane.
        sent_id = await publish(sticky, channel, {"via": "http"}, source="127.0.0.1")
        frame = json.loads(await ws.recv())
        assert frame["type"] == "message" and frame["data"] == {"via": "http"}
        assert frame["id"] == sent_id
        await ws.send(json.dumps({"type": "publish", "channel": channel, "data": {"via": "ws"}}))
        for _ in range(5):  # a publish may be acknowledged before its message comes back
            frame = json.loads(await ws.recv())
            if frame["type"] == "message":
                break
        assert frame["data"] == {"via": "ws"}


async def test_sse_is_relayed_unbuffered(sticky: Cluster) -> None:
    channel = channel_name("sse")
    async with asyncio.timeout(30), event_stream(sticky, channel) as stream:
        assert "x-accel-buffering" not in stream.response.headers  # nginx keeps it to itself
        connected = await stream.next_event()
        assert json.loads(connected.data) == {"type": "connected"}
        # Each event must arrive before the next publish: a buffering proxy would hold the
        # first ones back until its buffer fills or the heartbeat pushes them (15 s).
        for n in range(3):
            sent_id = await publish(sticky, channel, {"n": n}, source="127.0.0.1")
            event = await stream.next_event(timeout_s=2.0)
            assert (event.id, json.loads(event.data)) == (sent_id, {"n": n})


async def test_long_poll_times_out_with_an_answer_and_wakes_on_publish(sticky: Cluster) -> None:
    channel = channel_name("poll")
    async with asyncio.timeout(20):
        started = time.monotonic()
        reply = await poll(sticky, channel, None, 1.5, source="127.0.0.1")
        assert reply["messages"] == [] and reply["cursor"]
        assert time.monotonic() - started >= 1.4  # nginx waited for rawrt's answer
        parked = asyncio.create_task(poll(sticky, channel, reply["cursor"], 10, "127.0.0.1"))
        sent_id = await publish(sticky, channel, {"n": 1}, source="127.0.0.1")
        woken = await parked
        assert woken["messages"] == [{"n": 1}] and woken["cursor"] == sent_id


async def test_subscribers_on_every_node_get_every_message_once_in_order(sticky: Cluster) -> None:
    """A WebSocket, an SSE and a long-poll subscriber, and publishers, spread over the nodes."""
    served = await nodes_by_source(sticky, SOURCES, rounds=1)
    by_node: dict[str, list[str]] = {}
    for source, upstreams in served.items():
        by_node.setdefault(upstreams[0], []).append(source)
    nodes = sorted(by_node)
    assert len(nodes) >= 2, "the probe found one node only"
    # Subscriber k on node k (mod the nodes found); publishers take turns on every node.
    ws_source, sse_source, poll_source = (by_node[nodes[k % len(nodes)]][0] for k in range(3))
    publishers = [by_node[node][-1] for node in nodes]
    channel = channel_name("fanout")
    count = 30
    expected = list(range(count + 1))  # the last one, n == count, ends each subscriber

    async with asyncio.timeout(40), contextlib.AsyncExitStack() as stack:
        ws = await stack.enter_async_context(
            ws_connect(
                f"ws://{sticky.host}:{sticky.port}/ws",
                open_timeout=STEP_S,
                ping_interval=None,
                local_addr=(ws_source, 0),
            )
        )
        await ws.send(json.dumps({"type": "subscribe", "channel": channel}))
        assert json.loads(await ws.recv())["type"] == "subscribed"
        stream = await stack.enter_async_context(event_stream(sticky, channel, source=sse_source))
        assert json.loads((await stream.next_event()).data) == {"type": "connected"}
        cursor = (await poll(sticky, channel, None, 0, poll_source))["cursor"]

        received: dict[str, list[Any]] = {"websocket": [], "sse": [], "long poll": []}

        async def websocket_subscriber() -> None:
            got = received["websocket"]
            for _ in range(10 * count):
                frame = json.loads(await asyncio.wait_for(ws.recv(), STEP_S))
                assert frame["type"] == "message", frame  # a reset here is a lost position
                got.append(frame["data"]["n"])
                if got[-1] == count:
                    break

        async def sse_subscriber() -> None:
            got = received["sse"]
            for _ in range(10 * count):
                event = await stream.next_event()
                assert event.type == "message", event
                got.append(json.loads(event.data)["n"])
                if got[-1] == count:
                    break

        async def poll_subscriber() -> None:
            got = received["long poll"]
            since = cursor
            for _ in range(10 * count):
                reply = await poll(sticky, channel, since, STEP_S, poll_source)
                assert not reply.get("reset"), reply
                assert reply["messages"], "a poll timed out while messages were published"
                got += [m["n"] for m in reply["messages"]]
                since = reply["cursor"]
                if got[-1] == count:
                    break

        subscribers = [
            asyncio.create_task(websocket_subscriber()),
            asyncio.create_task(sse_subscriber()),
            asyncio.create_task(poll_subscriber()),
        ]
        ids = [
            await publish(sticky, channel, {"n": n}, publishers[n % len(publishers)])
            for n in expected
        ]
        assert len(set(ids)) == len(ids)
        errors = await asyncio.gather(*subscribers, return_exceptions=True)

    # Every node sees every message, once, in the order of publishing.
    where = dict(zip(received, (ws_source, sse_source, poll_source), strict=True))
    for (name, got), error in zip(received.items(), errors, strict=True):
        assert got == expected, (
            f"{name} subscriber on {served[where[name]][0]} got {got}"
            f" ({error!r}); publishers on {nodes}"
        )


async def test_down_stops_everything_up_started(sticky: Cluster) -> None:
    _check_down(sticky)


def _check_down(cluster: Cluster) -> None:
    pids = dict(cluster.pids)
    done = cluster.down()
    assert done.returncode == 0, done.stderr
    for name, pid in pids.items():
        assert not _alive(pid), f"{name} (pid {pid}) still runs after down"
    assert not cluster.state.exists()
    again = cluster.down()  # nothing left to stop: still fine
    assert again.returncode == 0, again.stderr


# --- the round-robin cluster (no stickiness) ------------------------------------------------------


async def test_round_robin_moves_one_client_between_nodes(round_robin: Cluster) -> None:
    served = await nodes_by_source(round_robin, ["127.0.0.1"], rounds=6)
    assert len(set(served["127.0.0.1"])) >= 2, served


async def test_reconnecting_clients_lose_nothing_without_stickiness(round_robin: Cluster) -> None:
    """SSE clients that reconnect with Last-Event-ID, pollers that carry `since`: nothing lost.

    Every reconnect and every poll is a new connection, and round robin hands it to another
    node than the last one: the position each client carries must mean the same on all nodes.
    """
    channel = channel_name("rr")
    count = 20
    expected = list(range(count + 1))
    progress = asyncio.Event()  # set by the clients, paces the publisher (order is not needed)

    async with asyncio.timeout(40):
        async with event_stream(round_robin, channel) as first:
            connected = await first.next_event()
        assert connected.id, "a fresh SSE connect carries the channel's position"
        cursor = (await poll(round_robin, channel, None, 0, "127.0.0.1"))["cursor"]

        async def sse_client() -> tuple[list[Any], int]:
            got: list[Any] = []
            last_id = connected.id
            connections = 0
            for _ in range(10 * count):
                connections += 1
                async with event_stream(round_robin, channel, last_id) as stream:
                    progress.set()
                    event = await stream.next_event()
                    if json.loads(event.data) == {"type": "connected"}:
                        event = await stream.next_event()
                    assert event.type == "message", f"{event} after Last-Event-ID {last_id}"
                    got.append(json.loads(event.data)["n"])
                    last_id = event.id
                if got[-1] == count:
                    break
            return got, connections

        async def poll_client() -> list[Any]:
            got: list[Any] = []
            since = cursor
            for _ in range(10 * count):
                reply = await poll(round_robin, channel, since, STEP_S, "127.0.0.1")
                progress.set()
                assert not reply.get("reset"), f"{reply} after since={since}"
                got += [m["n"] for m in reply["messages"]]
                since = reply["cursor"]
                if got and got[-1] == count:
                    break
            return got

        clients = [asyncio.create_task(sse_client()), asyncio.create_task(poll_client())]
        for n in expected:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(progress.wait(), 0.5)
            progress.clear()
            await publish(round_robin, channel, {"n": n}, "127.0.0.1")
        (sse_got, connections), poll_got = await asyncio.gather(*clients)

    # Ids and history live in Redis, so any node resumes any client.
    assert sse_got == expected, f"SSE client (over {connections} connections) got {sse_got}"
    assert poll_got == expected, f"long-poll client got {poll_got}"
    # And the reconnects really did go to several nodes.
    lines = await log_upstreams(round_robin, f"/api/sse/subscribe/{channel}", connections + 1)
    assert len({upstream for _, upstream in lines}) >= 2, lines


async def test_down_stops_the_round_robin_cluster(round_robin: Cluster) -> None:
    _check_down(round_robin)
