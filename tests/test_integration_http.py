"""The HTTP/1.1 side: keep-alive, pipelining (also behind a parked poll), CORS, deadlines."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from support.clients import HOST, request

import rawrt


async def _exchange(port: int, data: bytes, responses: int) -> list[tuple[int, bytes]]:
    """Write `data` at once and read `responses` responses (status, body) back."""
    reader, writer = await asyncio.open_connection(HOST, port)
    got = []
    try:
        async with asyncio.timeout(5):
            writer.write(data)
            for _ in range(responses):
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                got.append((status, await reader.readexactly(length)))
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
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
    answers = await _exchange(server.port, data, 3)
    assert [status for status, _ in answers] == [200, 200, 200]
    first, health, second = (json.loads(body) for _, body in answers)
    assert first["published"] and health == {"status": "ok"} and second["sent"]


async def test_request_pipelined_behind_a_parked_poll_is_served_after_it(
    server: rawrt.Server,
) -> None:
    head = await server.publish("behind", "old")
    data = _get(f"/api/poll/behind?since={head}&timeout=5") + _get("/healthz")
    exchange = asyncio.create_task(_exchange(server.port, data, 2))
    # The poll parks; the health check waits behind it (responses keep request order).
    assert (await request(server.port, "GET", "/healthz")).status == 200
    assert not exchange.done()
    new = await server.publish("behind", "new")
    (poll_status, poll_body), (health_status, _) = await exchange
    assert (poll_status, json.loads(poll_body)) == (200, {"messages": ["new"], "cursor": new})
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
    reader, writer = await asyncio.open_connection(HOST, server.port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: slow")  # and nothing more
        async with asyncio.timeout(3):
            response = await reader.read()
        assert response.startswith(b"HTTP/1.1 408 ")
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@pytest.mark.parametrize("server", [{"keepalive_timeout_s": 0.2}], indirect=True)
async def test_idle_keep_alive_connection_is_closed_after_its_timeout(
    server: rawrt.Server,
) -> None:
    reader, writer = await asyncio.open_connection(HOST, server.port)
    try:
        writer.write(_get("/healthz"))
        async with asyncio.timeout(3):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            await reader.readexactly(int(head.lower().split(b"content-length:")[1][:4].strip()))
            assert await reader.read() == b""  # closed by the server, with nothing more
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_http_1_0_request_is_answered_and_closed(server: rawrt.Server) -> None:
    raw = b"GET /healthz HTTP/1.0\r\n\r\n"
    reader, writer = await asyncio.open_connection(HOST, server.port)
    try:
        writer.write(raw)
        async with asyncio.timeout(3):
            response = await reader.read()
        assert response.startswith(b"HTTP/1.1 200 ")
        assert response.endswith(b'{"status":"ok"}')
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
