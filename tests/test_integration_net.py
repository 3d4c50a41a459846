"""rawrt on the open network: its own TLS, the per-address cap, trusted proxies' X-Forwarded-For
and the WebSocket message budget, over real sockets from several loopback source addresses.

Certificates are made for each test in its tmp_path (support.certs); clients trust exactly
that certificate. Every test shows that the offender alone is affected: control subscribers on
WebSocket, SSE and long polling receive every message published meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from support.certs import Cert, make_cert
from support.clients import (
    HOST,
    Response,
    read_response,
    ws_connect,
    ws_recv,
    ws_subscribe,
)
from support.sse_parser import SseParser
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import rawrt

TIMEOUT_S = 5.0
StartServer = Callable[..., Awaitable[rawrt.Server]]


# --- clients from a chosen source address, plain or over TLS ------------------------------------


async def _open(
    port: int, source: str | None, tls: ssl.SSLContext | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(
        HOST, port, ssl=tls, local_addr=(source, 0) if source else None
    )


def _head(
    method: str, target: str, port: int, headers: Sequence[tuple[str, str]], body: bytes
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {HOST}:{port}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def fetch(
    port: int,
    method: str,
    target: str,
    body: bytes = b"",
    headers: Sequence[tuple[str, str]] = (),
    *,
    source: str | None = None,
    tls: ssl.SSLContext | None = None,
) -> Response:
    """One request on a new connection, then close."""
    async with asyncio.timeout(TIMEOUT_S):
        reader, writer = await _open(port, source, tls)
        try:
            writer.write(_head(method, target, port, [*headers, ("Connection", "close")], body))
            return await read_response(reader, method)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()


class Stream:
    """An SSE stream opened from `source` (its head read), or the answer that refused it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.status = 0
        self.refusal: Response | None = None
        self.parser = SseParser()
        self.events: list[Any] = []  # the data of each message event
        self._connected = False  # the stream opens with a `connected` event: not a message

    @classmethod
    async def open(
        cls,
        port: int,
        channel: str,
        *,
        source: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
        tls: ssl.SSLContext | None = None,
    ) -> Stream:
        async with asyncio.timeout(TIMEOUT_S):
            stream = cls(*await _open(port, source, tls))
            target = f"/api/sse/subscribe/{channel}"
            stream.writer.write(_head("GET", target, port, headers, b""))
            head = await stream.reader.readuntil(b"\r\n\r\n")
        stream.status = int(head.split(b" ", 2)[1])
        if stream.status != 200:
            rest = await asyncio.wait_for(stream.reader.read(), TIMEOUT_S)
            stream.refusal = await read_response(_feed(head + rest))
        return stream

    async def data(self, count: int) -> list[Any]:
        """The data of the first `count` messages."""
        async with asyncio.timeout(TIMEOUT_S):
            while len(self.events) < count:
                chunk = await self.reader.read(65536)
                assert chunk, "the stream ended"
                for event in self.parser.feed(chunk):
                    if self._connected:
                        self.events.append(json.loads(event.data))
                    else:
                        assert json.loads(event.data)["type"] == "connected", event
                        self._connected = True
        return self.events[:count]

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


async def unasked(port: int, source: str | None = None) -> Response:
    """What the server answers a /healthz on a new connection, read to the close. At the
    cap the server reads the request head before it refuses (an event stream gets a 200
    that retries instead), so the refusal is an answer to a request."""
    async with asyncio.timeout(TIMEOUT_S):
        reader, writer = await _open(port, source, None)
        writer.write(_head("GET", "/healthz", port, [("Connection", "close")], b""))
        data = await reader.read()
    writer.close()
    return await read_response(_feed(data))


def ws_from(port: int, source: str | None = None, tls: ssl.SSLContext | None = None) -> connect:
    """A `websockets` client from `source`, over TLS when `tls` is given."""
    options: dict[str, Any] = {"ping_interval": None, "open_timeout": TIMEOUT_S, "close_timeout": 2}
    if tls is not None:
        options["ssl"] = tls
    if source is not None:
        options["local_addr"] = (source, 0)
    return connect(f"{'wss' if tls else 'ws'}://{HOST}:{port}/ws", **options)


def _feed(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


@contextlib.asynccontextmanager
async def streams(*opened: Stream) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for stream in opened:
            await stream.close()


class Controls:
    """A subscriber on each transport, each from its own address: they must lose nothing."""

    def __init__(self, port: int, channel: str, stack: contextlib.AsyncExitStack) -> None:
        self.port, self.channel, self.stack = port, channel, stack
        self.cursor = ""

    async def start(self, tls: ssl.SSLContext | None = None) -> Controls:
        self.tls = tls
        self.ws = await self.stack.enter_async_context(ws_from(self.port, "127.0.0.9", tls))
        await ws_subscribe(self.ws, self.channel)
        self.sse = await Stream.open(self.port, self.channel, source="127.0.0.10", tls=tls)
        assert self.sse.status == 200
        self.stack.push_async_callback(self.sse.close)
        self.cursor = (await self._poll(0))["cursor"]
        return self

    async def _poll(self, timeout_s: float) -> Any:
        target = f"/api/poll/{self.channel}?since={self.cursor}&timeout={timeout_s}"
        reply = await fetch(self.port, "GET", target, source="127.0.0.11", tls=self.tls)
        assert reply.status == 200, reply.body
        return reply.json()

    async def received(self, expected: list[Any]) -> None:
        got = []
        async with asyncio.timeout(TIMEOUT_S):
            while len(got) < len(expected):
                frame = await ws_recv(self.ws)
                if frame.get("type") == "message":
                    got.append(frame["data"])
        assert got == expected
        assert await self.sse.data(len(expected)) == expected
        polled: list[Any] = []
        async with asyncio.timeout(TIMEOUT_S):
            while len(polled) < len(expected):
                answer = await self._poll(TIMEOUT_S / 2)
                polled += answer["messages"]
                self.cursor = answer["cursor"]
        assert polled == expected


async def publish(port: int, channel: str, data: object, tls: ssl.SSLContext | None = None) -> str:
    """Publish over HTTP(S); returns the message id."""
    body = json.dumps(data).encode()
    reply = await fetch(port, "POST", f"/api/publish/{channel}", body, source="127.0.0.20", tls=tls)
    assert reply.status == 200, reply.body
    return str(reply.json()["id"])


# --- rawrt's own TLS ------------------------------------------------------------------------


@pytest.fixture
def cert(tmp_path: Path) -> Cert:
    return make_cert(tmp_path)


async def tls_server(start_server: StartServer, cert: Cert, **overrides: Any) -> rawrt.Server:
    return await start_server(tls_cert=str(cert.cert), tls_key=str(cert.key), **overrides)


async def test_https_and_wss_with_rawrts_own_certificate(
    start_server: StartServer,
    cert: Cert,
    stack: contextlib.AsyncExitStack,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = await tls_server(start_server, cert)
    # On the stock loop, the start warns of asyncio's 256 KiB TLS buffer per connection.
    stock = not type(asyncio.get_running_loop()).__module__.startswith("uvloop")
    assert any("256 KiB" in r.getMessage() for r in caplog.records) == stock
    tls = cert.client_context()
    assert server.url == f"https://{HOST}:{server.port}"
    async with asyncio.timeout(TIMEOUT_S):
        reader, writer = await _open(server.port, None, tls)
    ssl_object = writer.get_extra_info("ssl_object")
    assert ssl_object.selected_alpn_protocol() == "http/1.1"
    assert ssl_object.version() in ("TLSv1.2", "TLSv1.3")
    writer.write(_head("GET", "/healthz", server.port, [("Connection", "close")], b""))
    assert (await asyncio.wait_for(read_response(reader), TIMEOUT_S)).json() == {"status": "ok"}
    writer.close()

    controls = await Controls(server.port, "secure", stack).start(tls)
    await publish(server.port, "secure", {"n": 1}, tls)
    await controls.ws.send(json.dumps({"type": "publish", "channel": "secure", "data": 2}))
    await controls.received([{"n": 1}, 2])


async def test_sse_over_tls_on_a_raw_ssl_socket(start_server: StartServer, cert: Cert) -> None:
    server = await tls_server(start_server, cert)
    tls = cert.client_context()

    def read_events(ready: asyncio.Event, loop: asyncio.AbstractEventLoop) -> list[str]:
        raw = socket.create_connection((HOST, server.port), timeout=TIMEOUT_S)
        with raw, tls.wrap_socket(raw, server_hostname=HOST) as sock:
            sock.sendall(_head("GET", "/api/sse/subscribe/tls", server.port, [], b""))
            data, parser, events = b"", SseParser(), []
            for _ in range(100):  # bounded, and each recv waits at most TIMEOUT_S
                if b"\r\n\r\n" in data:
                    break
                data += sock.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head
            events += parser.feed(body)
            loop.call_soon_threadsafe(ready.set)
            for _ in range(100):
                if len(events) >= 3:  # `connected`, then the two messages
                    break
                chunk = sock.recv(65536)
                assert chunk, "the stream ended"
                events += parser.feed(chunk)
            return [e.data for e in events[1:]]

    ready = asyncio.Event()
    reader = asyncio.create_task(asyncio.to_thread(read_events, ready, asyncio.get_running_loop()))
    await asyncio.wait_for(ready.wait(), TIMEOUT_S)
    first = await publish(server.port, "tls", 0, tls)
    await publish(server.port, "tls", 1, tls)
    assert await asyncio.wait_for(reader, TIMEOUT_S) == ["0", "1"]
    poll = await fetch(server.port, "GET", f"/api/poll/tls?since={first}", tls=tls)
    assert poll.status == 200 and poll.json()["messages"] == [1]


async def test_a_peer_that_never_completes_the_handshake_is_closed(
    start_server: StartServer, cert: Cert, stack: contextlib.AsyncExitStack
) -> None:
    server = await tls_server(start_server, cert, tls_handshake_timeout_s=0.5)
    tls = cert.client_context()
    controls = await Controls(server.port, "steady", stack).start(tls)
    loop = asyncio.get_running_loop()
    stalled = []
    for first_bytes in (
        b"",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ):  # a ClientHello cut short
        reader, writer = await _open(server.port, None, None)
        writer.write(first_bytes)
        stalled.append((reader, writer))
    started = loop.time()
    for reader, writer in stalled:
        assert await asyncio.wait_for(reader.read(), 0.5 + 3.0) == b""
        writer.close()
    assert loop.time() - started < 3.5
    await publish(server.port, "steady", "still here", tls)
    await controls.received(["still here"])


async def test_plain_http_on_the_tls_port_gets_nothing_and_tls_clients_go_on(
    start_server: StartServer, cert: Cert
) -> None:
    server = await tls_server(start_server, cert)
    async with asyncio.timeout(TIMEOUT_S):
        reader, writer = await _open(server.port, None, None)
        writer.write(_head("GET", "/healthz", server.port, [], b""))
        answer = await reader.read()
    writer.close()
    assert b"HTTP/1.1" not in answer  # at most a TLS alert, never an HTTP answer in clear
    reply = await fetch(server.port, "GET", "/healthz", tls=cert.client_context())
    assert reply.status == 200


# --- connections per client address ------------------------------------------------------------


async def cap_answer(start_server: StartServer) -> Response:
    """What the global connection cap answers, to compare the per-address cap with."""
    full = await start_server(max_connections=1)
    async with asyncio.timeout(TIMEOUT_S):
        holder = await _open(full.port, None, None)
    refused = await unasked(full.port)
    holder[1].close()
    return refused


async def test_per_address_cap_refuses_the_next_connection_like_the_global_cap(
    start_server: StartServer, stack: contextlib.AsyncExitStack
) -> None:
    expected = await cap_answer(start_server)
    server = await start_server(max_connections_per_ip=2)
    controls = await Controls(server.port, "cap", stack).start()
    held = [await Stream.open(server.port, "cap", source="127.0.0.2") for _ in range(2)]
    async with streams(*held):
        assert [s.status for s in held] == [200, 200]
        refused = await unasked(server.port, "127.0.0.2")
        assert refused.status == expected.status == 503
        assert refused.json()["status"] == expected.json()["status"]
        assert refused.headers["content-type"] == expected.headers["content-type"]
        assert refused.closes and expected.closes
        # Another address is not affected, and neither is anyone subscribed.
        other = await fetch(server.port, "GET", "/healthz", source="127.0.0.3")
        assert other.status == 200
        await publish(server.port, "cap", "m1")
        await controls.received(["m1"])
        assert await held[0].data(1) == ["m1"]
    # Once its streams are gone, the address may connect again (the count follows the close).
    for _ in range(100):  # bounded: the server sees the close a moment after the client
        if (await unasked_or_served(server.port, "127.0.0.2")) == 200:
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the address stayed refused after closing its connections")


async def test_a_websocket_counts_as_a_connection_of_its_address(
    start_server: StartServer, stack: contextlib.AsyncExitStack
) -> None:
    server = await start_server(max_connections_per_ip=1)
    first = await stack.enter_async_context(ws_from(server.port, "127.0.0.4"))
    await ws_subscribe(first, "ws-cap")
    refused = await unasked(server.port, "127.0.0.4")
    assert refused.status == 503
    await publish(server.port, "ws-cap", 1)
    assert (await ws_recv(first))["data"] == 1


async def unasked_or_served(port: int, source: str) -> int:
    """The status of a /healthz on a new connection: 503 when it is over the cap."""
    return (await unasked(port, source)).status


async def test_a_parked_poll_counts_as_a_connection_of_its_address(
    start_server: StartServer,
) -> None:
    server = await start_server(max_connections_per_ip=1)
    async with asyncio.timeout(TIMEOUT_S):
        reader, writer = await _open(server.port, "127.0.0.6", None)
        # Admitted (it is answered), then the same connection parks a poll.
        writer.write(_head("GET", "/healthz", server.port, [], b""))
        assert (await read_response(reader)).status == 200
        writer.write(_head("GET", "/api/poll/poll-cap?timeout=5", server.port, [], b""))
    # Held as an HTTP connection or as a parked poll, it is the address's one connection;
    # probes spread over a quarter second see both states.
    for _ in range(5):
        assert (await unasked(server.port, "127.0.0.6")).status == 503
        await asyncio.sleep(0.05)
    await publish(server.port, "poll-cap", "woken")
    answer = await asyncio.wait_for(read_response(reader), TIMEOUT_S)
    assert answer.status == 200 and answer.json()["messages"] == ["woken"]
    writer.close()


async def test_a_kept_alive_poller_stays_one_connection_of_its_address_across_polls(
    start_server: StartServer,
) -> None:
    server = await start_server(max_connections_per_ip=1)
    async with asyncio.timeout(TIMEOUT_S):
        reader, writer = await _open(server.port, "127.0.0.7", None)
        since = ""
        for n in range(3):  # parked, answered and kept alive, parked again: one connection
            writer.write(
                _head("GET", f"/api/poll/poll-keep?timeout=5{since}", server.port, [], b"")
            )
            assert (await unasked(server.port, "127.0.0.7")).status == 503
            await publish(server.port, "poll-keep", n)
            answer = await read_response(reader)
            assert answer.status == 200 and answer.json()["messages"] == [n]
            since = f"&since={answer.json()['cursor']}"
        assert (await unasked(server.port, "127.0.0.7")).status == 503
    writer.close()
    for _ in range(100):  # bounded: the server sees the close a moment after the client
        if (await unasked_or_served(server.port, "127.0.0.7")) == 200:
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the address stayed refused after its poller left")


async def test_a_poll_through_a_proxy_counts_for_its_client_only_while_parked(
    start_server: StartServer,
) -> None:
    server = await start_server(trusted_proxies="127.0.0.1", max_connections_per_ip=1)
    client = xff("198.51.100.8")
    async with asyncio.timeout(TIMEOUT_S):
        reader, writer = await _open(server.port, "127.0.0.1", None)
        writer.write(_head("GET", "/api/poll/poll-fwd?timeout=5", server.port, client, b""))
        for _ in range(100):  # bounded: until the poll is parked, counted for its client
            held = await fetch(server.port, "GET", "/healthz", source="127.0.0.1", headers=client)
            if held.status == 503:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("a parked poll through the proxy did not count for its client")
        await publish(server.port, "poll-fwd", "woken")
        answer = await read_response(reader)
        assert answer.status == 200 and answer.json()["messages"] == ["woken"]
        # Answered and kept alive, the proxy's connection counts for nobody again.
        again = await fetch(server.port, "GET", "/healthz", source="127.0.0.1", headers=client)
        assert again.status == 200
        writer.write(_head("GET", "/healthz", server.port, client, b""))
        assert (await read_response(reader)).status == 200
    writer.close()


# --- X-Forwarded-For from trusted proxies only -------------------------------------------------


def xff(address: str) -> list[tuple[str, str]]:
    return [("X-Forwarded-For", f"203.0.113.77, {address}")]  # the left one is forged


async def test_forwarded_for_is_believed_only_from_a_trusted_peer(
    start_server: StartServer, stack: contextlib.AsyncExitStack, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server(trusted_proxies="127.0.0.1", max_connections_per_ip=1)
    controls = await Controls(server.port, "fwd", stack).start()
    # From the trusted proxy (127.0.0.1), each forwarded client has its own allowance.
    a = await Stream.open(server.port, "fwd", source="127.0.0.1", headers=xff("198.51.100.1"))
    b = await Stream.open(server.port, "fwd", source="127.0.0.1", headers=xff("198.51.100.2"))
    # From an untrusted peer the header is ignored: the peer itself is counted.
    c = await Stream.open(server.port, "fwd", source="127.0.0.2", headers=xff("198.51.100.3"))
    async with streams(a, b, c):
        assert [a.status, b.status, c.status] == [200, 200, 200]
        with caplog.at_level(logging.INFO, logger="rawrt"):
            again_a = await fetch(
                server.port, "GET", "/healthz", source="127.0.0.1", headers=xff("198.51.100.1")
            )
        assert again_a.status == 503
        assert any("198.51.100.1" in r.getMessage() for r in caplog.records)
        assert not any("203.0.113.77" in r.getMessage() for r in caplog.records)
        forged = await fetch(
            server.port, "GET", "/healthz", source="127.0.0.2", headers=xff("198.51.100.4")
        )
        assert forged.status == 503  # still 127.0.0.2, whatever it claims
        # A kept-alive proxy connection counts each request for its own client, and only
        # while it lasts: one connection, two clients in turn, neither refused.
        async with asyncio.timeout(TIMEOUT_S):
            reader, writer = await _open(server.port, "127.0.0.1", None)
            for client in ("198.51.100.5", "198.51.100.6", "198.51.100.5"):
                writer.write(_head("GET", "/healthz", server.port, xff(client), b""))
                assert (await read_response(reader)).status == 200
        writer.close()
        await publish(server.port, "fwd", "after")
        await controls.received(["after"])
        assert await a.data(1) == ["after"]


# --- the WebSocket message budget --------------------------------------------------------------

BURST = 5


@pytest.mark.parametrize(
    "server",
    [{"max_client_messages_per_s": 0.01, "max_client_message_burst": BURST}],
    indirect=True,
)
async def test_a_websocket_over_its_message_rate_is_refused_then_closed_with_1008(
    server: rawrt.Server, stack: contextlib.AsyncExitStack
) -> None:
    controls = await Controls(server.port, "rated", stack).start()
    offender = await stack.enter_async_context(ws_from(server.port, "127.0.0.5"))
    for n in range(BURST):  # the burst: all published
        await offender.send(json.dumps({"type": "publish", "channel": "rated", "data": n}))
    await offender.send(json.dumps({"type": "publish", "channel": "rated", "data": "over"}))
    refused = await ws_recv(offender)
    assert refused["type"] == "error" and refused["data"] == "Rate limited", refused
    # It keeps sending after being told: each gets an error frame, until it is a whole burst
    # over its budget and is closed with 1008. Pings count like any message.
    errors, code = 1, None
    for _ in range(3 * BURST):
        try:
            await offender.send(json.dumps({"type": "ping"}))
            reply = await ws_recv(offender)
            assert reply["type"] == "error" and reply["data"] == "Rate limited", reply
            errors += 1
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            break
    assert code == 1008
    assert BURST - 1 <= errors <= BURST + 1
    # A bystander has its own budget, and the controls got exactly what was within.
    bystander = await stack.enter_async_context(ws_connect(server.port))
    await bystander.send(json.dumps({"type": "publish", "channel": "rated", "data": "next"}))
    await controls.received([*range(BURST), "next"])


async def test_without_a_rate_limit_a_fast_client_is_served(
    server: rawrt.Server, stack: contextlib.AsyncExitStack
) -> None:
    ws = await stack.enter_async_context(ws_connect(server.port))
    await ws_subscribe(ws, "fast")
    for n in range(500):
        await ws.send(json.dumps({"type": "publish", "channel": "fast", "data": n}))
    got = [(await ws_recv(ws))["data"] for _ in range(500)]
    assert got == list(range(500))
