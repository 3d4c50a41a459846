"""The HTTP/1.1 side: keep-alive, pipelining (also behind a parked poll), CORS, deadlines."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import pytest
from support.clients import HOST, read_response, request

import rawrt


@contextlib.asynccontextmanager
async def _connection(
    port: int,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _responses(reader: asyncio.StreamReader, count: int) -> list[tuple[int, bytes]]:
    """Read `count` responses (status, body)."""
    got = []
    async with asyncio.timeout(5):
        for _ in range(count):
            response = await read_response(reader)
            got.append((response.status, response.body))
    return got


def _get(target: str) -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()


def _post(target: str, body: object) -> bytes:
    data = json.dumps(body).encode()
    return (
        f"POST {target} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode() + data


async def test_pipelined_requests_are_answered_in_order(server: rawrt.Server) -> None:
    data = _post("/api/publish/pipe", 1) + _get("/healthz") + _post("/api/broadcast/pipe", 2)
    async with _connection(server.port) as (reader, writer):
        writer.write(data)
        answers = await _responses(reader, 3)
    assert [status for status, _ in answers] == [200, 200, 200]
    first, health, second = (json.loads(body) for _, body in answers)
    assert first["published"] and health == {"status": "ok"} and second["sent"]


async def test_request_pipelined_behind_a_parked_poll_is_served_after_it(
    server: rawrt.Server,
) -> None:
    head = await server.publish("behind", "old")
    data = _get(f"/api/poll/behind?since={head}&timeout=5") + _get("/healthz")
    async with _connection(server.port) as (reader, writer):
        writer.write(data)
        # The poll parks; the health check waits behind it (responses keep request order).
        assert (await request(server.port, "GET", "/healthz")).status == 200
        new = await server.publish("behind", "new")
        (poll_status, poll_body), (health_status, _) = await _responses(reader, 2)
    expected = {"messages": ["new"], "ids": [new], "cursor": new}
    assert (poll_status, json.loads(poll_body)) == (200, expected)
    assert health_status == 200


async def test_preflight_gets_cors_headers(server: rawrt.Server) -> None:
    response = await request(
        server.port,
        "OPTIONS",
        "/api/publish/any",
        headers=[("Origin", "http://example.test"), ("Access-Control-Request-Method", "POST")],
    )
    assert response.status == 204
    assert response.headers["access-control-allow-origin"] == "*"
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "last-event-id" in response.headers["access-control-allow-headers"].lower()


@pytest.mark.parametrize("server", [{"request_timeout_s": 0.2}], indirect=True)
async def test_request_that_never_finishes_arriving_gets_408(server: rawrt.Server) -> None:
    async with _connection(server.port) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: slow")  # and nothing more
        async with asyncio.timeout(3):
            response = await read_response(reader)
            assert response.status == 408
            assert await reader.read() == b""


@pytest.mark.parametrize("server", [{"keepalive_timeout_s": 0.2}], indirect=True)
async def test_idle_keep_alive_connection_is_closed_after_its_timeout(
    server: rawrt.Server,
) -> None:
    async with _connection(server.port) as (reader, writer):
        writer.write(_get("/healthz"))
        async with asyncio.timeout(3):
            assert (await read_response(reader)).status == 200
            assert await reader.read() == b""  # closed by the server, with nothing more


@pytest.mark.parametrize(
    "server", [{"keepalive_timeout_s": 1.5, "request_timeout_s": 0.3}], indirect=True
)
async def test_idle_time_past_the_request_deadline_is_kept_alive_and_a_late_request_gets_its_own(
    server: rawrt.Server,
) -> None:
    # One timer serves both deadlines and fires early at the request deadline: it must
    # find the idle deadline not passed, and a request begun later must get a full one.
    loop = asyncio.get_running_loop()
    async with _connection(server.port) as (reader, writer):
        writer.write(_get("/healthz"))
        async with asyncio.timeout(3):
            assert (await read_response(reader)).status == 200
        await asyncio.sleep(0.5)  # idle: past the request deadline, within keep-alive
        writer.write(_get("/healthz"))
        async with asyncio.timeout(3):
            assert (await read_response(reader)).status == 200
        await asyncio.sleep(0.2)
        begun = loop.time()
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: slow")  # and nothing more
        async with asyncio.timeout(3):
            assert (await read_response(reader)).status == 408
        assert loop.time() - begun >= 0.25  # the request's own deadline, not the idle one's


async def test_http_1_0_request_is_answered_and_closed(server: rawrt.Server) -> None:
    async with _connection(server.port) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.0\r\n\r\n")
        async with asyncio.timeout(3):
            response = await read_response(reader)
            assert (response.status, response.json()) == (200, {"status": "ok"})
            assert await reader.read() == b""
