"""The client and `rawrt sub` across a real server restart: every message exactly once.

Two rawrt processes share a private redis-server, so the history outlives either of them.
The client follows node A; A is stopped (SIGTERM, a drain with 1001) or killed (SIGKILL, no
goodbye at all), messages are published through node B into the gap, and A comes back on
the same port. The client must reconnect on its own and resume from its last id: the
messages before, in and after the gap arrive once each, in order, with no reset.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.clients import HttpClient
from support.redis_server import RedisServer, free_port

import rawrt.client
from rawrt.client import ClientConfig, Message

pytestmark = [pytest.mark.redis, pytest.mark.slow]

STEP_S = 20.0  # bound on one expected arrival, a restart included
FAST = ClientConfig(backoff_min_s=0.05, backoff_max_s=0.5)


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server.url
    server.stop()


async def publish(port: int, data: object) -> str:
    async with HttpClient(port) as http:
        reply = await http.post_json("/api/broadcast/news", data)
    return str(reply["id"])


class Nodes:
    """Node A on a fixed port (so it can come back there) and node B, sharing Redis."""

    def __init__(self, spawn: Any, redis_url: str) -> None:
        self.spawn, self.redis_url = spawn, redis_url
        self.port = free_port()
        self.a: Any = None
        self.b: Any = None

    async def start(self) -> None:
        self.a = await self._spawn(self.port)
        self.b = await self._spawn(0)

    async def _spawn(self, port: int) -> Any:
        # In a thread: it waits for the child's "listening" line, and the loop must serve
        # the client meanwhile.
        return await asyncio.to_thread(self.spawn, "--port", str(port), "--redis", self.redis_url)

    async def take_a_down(self, how: str) -> None:
        if how == "stop":
            assert await self.a.stopped() == 0
        else:
            self.a.proc.kill()
            assert await self.a.stopped() == -9  # reaped, and its stderr pipe closed

    async def bring_a_back(self) -> None:
        self.a = await self._spawn(self.port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_client_resumes_exactly_once_across_a_server_restart(
    spawn_rawrt: Any, redis_url: str, how: str
) -> None:
    nodes = Nodes(spawn_rawrt, redis_url)
    await nodes.start()
    async with asyncio.timeout(4 * STEP_S), rawrt.client.connect(nodes.url, config=FAST) as client:
        sub = client.subscribe("news")
        await sub.ready()
        sent = [await publish(nodes.port, n) for n in range(5)]
        got = [await anext(sub) for _ in range(5)]
        await nodes.take_a_down(how)
        sent += [await publish(nodes.b.port, n) for n in range(5, 10)]  # into the gap
        await nodes.bring_a_back()
        sent += [await publish(nodes.port, n) for n in range(10, 15)]
        got += [await asyncio.wait_for(anext(sub), STEP_S) for _ in range(10)]
        assert client.connections >= 2
    assert all(isinstance(event, Message) for event in got), got
    assert [event.id for event in got] == sent
    assert [event.data for event in got if isinstance(event, Message)] == list(range(15))


async def test_sub_command_resumes_exactly_once_across_a_server_restart(
    spawn_rawrt: Any, redis_url: str
) -> None:
    nodes = Nodes(spawn_rawrt, redis_url)
    await nodes.start()
    sent = [await publish(nodes.port, 0)]
    epoch = sent[0].rpartition("-")[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAWRT_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rawrt", "sub", "news", "--url", nodes.url,
        "--since", f"{epoch}-0", "--count", "15",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(4 * STEP_S):
            first = json.loads(await proc.stdout.readline())  # it is subscribed now
            sent += [await publish(nodes.port, n) for n in range(1, 5)]
            await nodes.take_a_down("stop")
            sent += [await publish(nodes.b.port, n) for n in range(5, 10)]
            await nodes.bring_a_back()
            sent += [await publish(nodes.port, n) for n in range(10, 15)]
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    got = [first, *map(json.loads, out.decode().splitlines())]
    assert [line["id"] for line in got] == sent
    assert [line["data"] for line in got] == list(range(15))
