"""Metrics with Redis: its figures on one node, and one scrape of a node of two workers.

A node with a Redis backplane exports whether Redis is up (and says so when it goes away),
each publish pipeline's round trip, and the pub/sub lag. With `--workers 2` (real processes
sharing a port through SO_REUSEPORT) every scrape, whichever worker answers it, shows the
whole node, and the supervisor's private metrics directory is gone after it exits.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from conftest import RawrtProcess, SpawnRawrt, StartServer
from support.clients import request, ws_connect, ws_recv_many, ws_subscribe
from support.redis_server import RedisServer
from support.scrape import Figures, scrape
from test_backplane_contract import wait_ready

pytestmark = pytest.mark.redis

BOUND_S = 10.0
SOCKETS = 16  # spread over two workers by the kernel: all on one has odds 2 in 65,536


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


async def test_redis_figures_are_exported(
    redis_server: RedisServer, start_server: StartServer
) -> None:
    node = await start_server(redis_url=redis_server.url)
    await wait_ready(node)
    async with ws_connect(node.port) as ws:
        await ws_subscribe(ws, "r")
        response = await request(node.port, "POST", "/api/publish/r", "1")
        assert response.status == 200
        assert (await ws_recv_many(ws, 1))[0]["data"] == 1
    figures = await scrape(node.port)
    assert figures.get_value("rawrt_redis_up") == 1
    assert figures.get_value("rawrt_redis_round_trip_seconds_count") >= 1
    assert figures.get_value("rawrt_publish_latency_seconds_count", route="publish") == 1
    assert figures.get_value("rawrt_messages_published_total", route="publish") == 1
    assert 0 <= figures.get_value("rawrt_redis_pubsub_lag_seconds", -1.0) < BOUND_S
    redis_server.stop()
    async with asyncio.timeout(BOUND_S):
        while (await scrape(node.port)).get_value("rawrt_redis_up") != 0:
            await asyncio.sleep(0.05)


def _metrics_dirs(supervisor: RawrtProcess) -> set[str]:
    """The PROMETHEUS_MULTIPROC_DIR of each of the supervisor's children (from /proc)."""
    pid = supervisor.proc.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    found = set()
    for child in children:
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        for entry in environ:
            if entry.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
                found.add(entry.split(b"=", 1)[1].decode())
    return found


async def _until(port: int, done: Callable[[Figures], bool], bound_s: float = BOUND_S) -> Figures:
    """Scrape until `done(figures)` holds (the workers copy their figures every second)."""
    async with asyncio.timeout(bound_s):
        while True:
            figures = await scrape(port)
            if done(figures):
                return figures
            await asyncio.sleep(0.1)


def _listening(supervisor: RawrtProcess) -> int:
    return sum("listening on" in line for line in list(supervisor.lines))


@pytest.mark.slow
async def test_one_scrape_shows_every_worker(
    redis_server: RedisServer, spawn_rawrt: SpawnRawrt
) -> None:
    node = spawn_rawrt(
        "--host", "127.0.0.1", "--port", "0", "--workers", "2", "--redis", redis_server.url
    )
    async with asyncio.timeout(BOUND_S):
        while _listening(node) < 2:
            await asyncio.sleep(0.05)
    dirs = _metrics_dirs(node)
    assert len(dirs) == 1, dirs
    (metrics_dir,) = dirs
    assert os.path.isdir(metrics_dir)
    async with AsyncExitStack() as stack:
        sockets = [await stack.enter_async_context(ws_connect(node.port)) for _ in range(SOCKETS)]
        for ws in sockets:
            await ws_subscribe(ws, "node")
        for i in range(2):
            response = await request(node.port, "POST", "/api/publish/node", json.dumps(i))
            assert response.status == 200
        for ws in sockets:
            assert [m["data"] for m in await ws_recv_many(ws, 2)] == [0, 1]

        def whole(figures: Figures) -> bool:
            return (
                figures.get_value("rawrt_subscriptions", transport="websocket") == SOCKETS
                and figures.get_value("rawrt_deliveries_total", transport="websocket")
                == 2 * SOCKETS
                and figures.get_value("rawrt_messages_published_total", route="publish") == 2
            )

        await _until(node.port, whole)
        # Each worker holds the channel for its own subscribers: summed, both are there.
        for _ in range(6):  # on new connections: the kernel picks either worker each time
            figures = await scrape(node.port)
            assert whole(figures), sorted(figures.items())
            assert figures.get_value("rawrt_channels") == 2
            assert figures.get_value("rawrt_redis_up") == 1
    assert await node.stopped() == 0
    assert not os.path.exists(metrics_dir)
