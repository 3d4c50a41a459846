"""The publish is answered first, the fan-out it starts comes after (issue: C100K).

With Redis, a publish is answered once Redis has numbered it, and the same message comes
back over pub/sub about then: the node used to fan it out to every local subscriber before
it wrote the answer, so the publisher waited for the last of thousands of writes. The
fan-out is now written in slices (`fanout_slice_writes`) with the loop's other work between
them, the answer among it.

Proven by the order in which one client process observes events, never by timing: every
read on any of its sockets takes the next number of one counter; the publisher's answer
must take a lower number than the last subscriber's copy of the message. The kernel hands
each socket's bytes over as they are written and the client reads ready sockets in the
order they became ready, so the order it sees is the order the server wrote in.

rawrt runs as a process of its own with a redis-server of the test's; the subscribers are
raw SSE sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.clients import request
from support.redis_server import RedisServer

pytestmark = pytest.mark.redis

SUBSCRIBERS = 5000
SLICE_WRITES = 250  # twenty slices for 5,000 subscribers
OPEN_AT_ONCE = 250  # connections being opened at a time
STEP_S = 60.0  # bound on each phase: opening everyone, the publish, the deliveries
MARK = b'"mark":"first"'


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


class _Order:
    """The counter every read takes a number from."""

    def __init__(self) -> None:
        self.reads = 0

    def next(self) -> int:
        self.reads += 1
        return self.reads


class _Stream(asyncio.Protocol):
    """One SSE subscriber: when its `connected` event came, and at which read the marked
    message did (and how many copies of it)."""

    def __init__(self, order: _Order) -> None:
        self.order = order
        self.buffer = b""
        self.connected = asyncio.get_running_loop().create_future()
        self.got_at: list[int] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        at = self.order.next()
        self.buffer += data
        if not self.connected.done() and b'{"type":"connected"}' in self.buffer:
            self.connected.set_result(None)
        found = self.buffer.count(MARK)
        if found:
            self.got_at += [at] * found
            self.buffer = self.buffer[self.buffer.rindex(MARK) + len(MARK) :]
        else:
            self.buffer = self.buffer[-len(MARK) :]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.connected.done():
            self.connected.set_exception(ConnectionError("stream closed"))


class _Publisher(asyncio.Protocol):
    """One HTTP publish; the read at which its whole answer was in."""

    def __init__(self, order: _Order) -> None:
        self.order = order
        self.data = b""
        self.answered = asyncio.get_running_loop().create_future()
        self.answered_at = 0

    def data_received(self, data: bytes) -> None:
        at = self.order.next()
        self.data += data
        head, _, body = self.data.partition(b"\r\n\r\n")
        length = next(
            (int(line.split(b":")[1]) for line in head.split(b"\r\n")[1:]
             if line.lower().startswith(b"content-length:")),
            None,
        )  # fmt: skip
        if length is not None and len(body) >= length and not self.answered.done():
            self.answered_at = at
            self.answered.set_result(self.data)


async def _open(port: int, order: _Order, n: int) -> list[_Stream]:
    loop = asyncio.get_running_loop()
    head = b"GET /api/sse/subscribe/crowd HTTP/1.1\r\nHost: t\r\n\r\n"
    streams: list[_Stream] = []
    for start in range(0, n, OPEN_AT_ONCE):
        batch = []
        for _ in range(min(OPEN_AT_ONCE, n - start)):
            _, stream = await loop.create_connection(lambda: _Stream(order), "127.0.0.1", port)
            assert stream.transport is not None
            stream.transport.write(head)
            batch.append(stream)
        await asyncio.gather(*(s.connected for s in batch))
        streams += batch
    return streams


async def test_a_publish_to_thousands_is_answered_before_the_last_of_them_has_it(
    redis_server: RedisServer, spawn_rawrt: Any
) -> None:
    node = spawn_rawrt(
        "--host", "127.0.0.1", "--port", "0", "--redis", redis_server.url,
        "--fanout-slice-writes", str(SLICE_WRITES),
    )  # fmt: skip
    order = _Order()
    loop = asyncio.get_running_loop()
    streams: list[_Stream] = []
    try:
        async with asyncio.timeout(STEP_S):
            while (await request(node.port, "GET", "/readyz")).status != 200:
                await asyncio.sleep(0.05)  # connected to Redis: a subscribe attaches
            streams = await _open(node.port, order, SUBSCRIBERS)
        body = json.dumps({"mark": "first", "pad": "x" * 64}, separators=(",", ":")).encode()
        transport, publisher = await loop.create_connection(
            lambda: _Publisher(order), "127.0.0.1", node.port
        )
        transport.write(
            b"POST /api/publish/crowd HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        async with asyncio.timeout(STEP_S):
            answer = await publisher.answered
            while any(not s.got_at for s in streams):
                await asyncio.sleep(0.02)
        transport.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer
        assert [len(s.got_at) for s in streams] == [1] * SUBSCRIBERS, "each gets it once"
        last = max(s.got_at[0] for s in streams)
        first = min(s.got_at[0] for s in streams)
        assert publisher.answered_at < last, (
            f"the answer was read at {publisher.answered_at}, after the last delivery "
            f"(reads {first} to {last})"
        )
    finally:
        for stream in streams:
            if stream.transport is not None:
                with contextlib.suppress(Exception):
                    stream.transport.abort()
