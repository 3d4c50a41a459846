"""Small clients for integration tests, written on raw asyncio streams and sockets.

They share no code with rawrt: each speaks the protocol from its spec, so a bug on both sides
cannot cancel out.

- `request()` / `HttpClient`: HTTP/1.1 requests; `HttpClient` keeps its connection alive.
- `SseClient`: an event stream read as `EventSource` would, from a close-delimited or chunked
  body, through the WHATWG parser in `sse_parser`.
- `PollClient`: a long poller that loops with the cursor on one kept-alive connection.
- `RawWebSocket`, `RawSse`: clients on a plain socket that read only when asked, for the
  peers the libraries will not play: one that never answers pings, one that stops reading.
- `ws_connect()` and friends: well-behaved WebSocket clients, from the `websockets` library.

Every call that waits takes a bound; nothing here sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import socket
import struct
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Self

from websockets.asyncio.client import ClientConnection, connect

from .sse_parser import Event as SseEvent
from .sse_parser import SseParser

__all__ = [
    "HOST",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "HttpClient",
    "PollClient",
    "RawSocket",
    "RawSse",
    "RawWebSocket",
    "Response",
    "SseClient",
    "SseEvent",
    "client_frame",
    "event_json",
    "read_response",
    "request",
    "ws_connect",
    "ws_recv",
    "ws_recv_many",
    "ws_subscribe",
]

HOST = "127.0.0.1"
TIMEOUT_S = 5.0  # the default bound on any single wait
_HEAD_END = b"\r\n\r\n"
_MAX_HEAD_BYTES = 64 * 1024


# --- HTTP/1.1 -------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # names lower-cased; repeated fields joined with ", "
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def closes(self) -> bool:
        return "close" in self.headers.get("connection", "").lower()


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    version, status, *_ = lines[0].split(" ", 2)
    assert version == "HTTP/1.1", f"unexpected status line {lines[0]!r}"
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return int(status), headers


def _encode_request(
    method: str,
    target: str,
    body: bytes | None,
    headers: Iterable[tuple[str, str]],
    port: int,
    close: bool,
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {HOST}:{port}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(_HEAD_END)
    return _parse_head(head[: -len(_HEAD_END)])


async def _read_chunked(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """The data of a chunked body (RFC 9112 §7.1), chunk by chunk; trailers are skipped."""
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass
            return
        chunk = await reader.readexactly(size + 2)
        yield chunk[:-2]


async def read_response(reader: asyncio.StreamReader, method: str = "GET") -> Response:
    status, headers = await _read_head(reader)
    while 100 <= status < 200 and status != 101:  # interim responses (100 Continue)
        status, headers = await _read_head(reader)
    if method == "HEAD" or status in (101, 204, 304):
        return Response(status, headers, b"")
    if "chunked" in headers.get("transfer-encoding", ""):
        body = b"".join([c async for c in _read_chunked(reader)])
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:
        body = await reader.read()  # close-delimited
    return Response(status, headers, body)


async def request(
    port: int,
    method: str,
    target: str,
    body: bytes | str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    *,
    raw: bytes | None = None,
    timeout_s: float = TIMEOUT_S,
) -> Response:
    """One request on a fresh connection (`raw` sends those bytes instead), then close."""
    if isinstance(body, str):
        body = body.encode()
    data = raw if raw is not None else _encode_request(method, target, body, headers, port, True)
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            writer.write(data)
            return await read_response(reader, method)
        finally:
            writer.close()
            await _closed(writer)


async def _closed(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):  # the server may have reset it first
        await writer.wait_closed()


class HttpClient:
    """Requests over one kept-alive connection, reopened if the server closed it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connections_opened = 0
        self.written = asyncio.Event()  # set once a request's bytes are in the socket
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            await _closed(writer)

    async def send(
        self,
        method: str,
        target: str,
        body: bytes | str | None = None,
        headers: Sequence[tuple[str, str]] = (),
        *,
        timeout_s: float = TIMEOUT_S,
    ) -> Response:
        if isinstance(body, str):
            body = body.encode()
        async with asyncio.timeout(timeout_s):
            if self._writer is None:
                self._reader, self._writer = await asyncio.open_connection(HOST, self.port)
                self.connections_opened += 1
            assert self._reader is not None
            self._writer.write(_encode_request(method, target, body, headers, self.port, False))
            self.written.set()
            response = await read_response(self._reader, method)
        if response.closes:
            await self.close()
        return response

    async def post_json(self, target: str, value: object) -> Any:
        response = await self.send(
            "POST", target, json.dumps(value), [("Content-Type", "application/json")]
        )
        assert response.status == 200, (response.status, response.body)
        return response.json()


# --- long polling -----------------------------------------------------------------------------


class PollClient(HttpClient):
    """A long poller on one channel: each poll resumes from the cursor the last one returned."""

    def __init__(
        self,
        port: int,
        channel: str,
        *,
        method: str = "GET",
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(port)
        self.channel = channel
        self.method = method
        self.headers = list(headers)  # sent with every poll (a token, an Origin)
        self.cursor: str | None = None
        self.resets = 0

    async def poll(
        self, since: str | None = None, timeout: float | None = None, *, bound_s: float = 10.0
    ) -> dict[str, Any]:
        """One poll; `since` defaults to the cursor so far. Returns the decoded body."""
        params = []
        since = since if since is not None else self.cursor
        if since is not None:
            params.append(f"since={since}")
        if timeout is not None:
            params.append(f"timeout={timeout}")
        target = f"/api/poll/{self.channel}" + ("?" + "&".join(params) if params else "")
        response = await self.send(self.method, target, headers=self.headers, timeout_s=bound_s)
        assert response.status == 200, (response.status, response.body)
        body: dict[str, Any] = response.json()
        self.cursor = body["cursor"]
        if body.get("reset"):
            self.resets += 1
        return body

    async def poll_sent(self, **options: Any) -> asyncio.Task[dict[str, Any]]:
        """Start a poll in the background; returns once its request has been written.

        A request written before a later round trip on another connection has been read by
        the server when that round trip ends (the server reads every ready socket each turn
        of its loop), so that round trip is the signal that this poll is parked.
        """
        self.written.clear()
        task = asyncio.create_task(self.poll(**options))
        async with asyncio.timeout(TIMEOUT_S):
            await self.written.wait()
        return task

    async def start_at_head(self) -> str:
        """Learn the channel's head cursor (a poll that times out at once)."""
        body = await self.poll(timeout=0)
        assert body["messages"] == []
        assert self.cursor is not None
        return self.cursor

    async def collect(self, count: int, *, timeout_s: float = TIMEOUT_S) -> list[Any]:
        """Poll from the cursor until `count` messages have come; returns their data."""
        got: list[Any] = []
        async with asyncio.timeout(timeout_s):
            while len(got) < count:
                got += (await self.poll(timeout=timeout_s))["messages"]
        return got


# --- Server-Sent Events -----------------------------------------------------------------------


def event_json(event: SseEvent) -> Any:
    """An event's data, decoded: rawrt's events carry one JSON document each."""
    return json.loads(event.data)


class _KeepingComments(SseParser):
    """The WHATWG parser the core tests use, also keeping comment lines (heartbeats)."""

    def __init__(self) -> None:
        super().__init__()
        self.comments: list[str] = []

    def _process_line(self, line: str) -> SseEvent | None:
        if line.startswith(":"):
            self.comments.append(line[1:].removeprefix(" "))
        return super()._process_line(line)


class SseClient:
    """GET an event stream and read its events; the body may be close-delimited or chunked."""

    def __init__(self, port: int, target: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        self.port = port
        self.target = target
        self.extra_headers = list(headers)
        self.status = 0
        self.headers: dict[str, str] = {}
        self.parser = _KeepingComments()
        self.ended = False  # the body ended (the server closed the stream)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._chunks: AsyncIterator[bytes] | None = None
        self._queue: list[SseEvent] = []

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def connect(self, timeout_s: float = TIMEOUT_S) -> None:
        async with asyncio.timeout(timeout_s):
            self._reader, self._writer = await asyncio.open_connection(HOST, self.port)
            headers = [("Accept", "text/event-stream"), *self.extra_headers]
            self._writer.write(_encode_request("GET", self.target, None, headers, self.port, False))
            self.status, self.headers = await _read_head(self._reader)
        if "chunked" in self.headers.get("transfer-encoding", ""):
            self._chunks = _read_chunked(self._reader)

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            await _closed(writer)

    async def _read(self) -> bytes:
        assert self._reader is not None
        if self._chunks is not None:
            return await anext(self._chunks, b"")
        return await self._reader.read(65536)

    async def next_event(self, timeout_s: float = TIMEOUT_S) -> SseEvent | None:
        """The next event, or None once the stream has ended."""
        async with asyncio.timeout(timeout_s):
            while not self._queue:
                if self.ended:
                    return None
                data = await self._read()
                if not data:
                    self.ended = True
                else:
                    self._queue += self.parser.feed(data)
        return self._queue.pop(0)

    async def events(self, count: int, timeout_s: float = TIMEOUT_S) -> list[SseEvent]:
        """The next `count` events (fewer only if the stream ends)."""
        got: list[SseEvent] = []
        async with asyncio.timeout(timeout_s):
            while len(got) < count:
                event = await self.next_event(timeout_s)
                if event is None:
                    break
                got.append(event)
        return got

    async def wait_for_comments(self, count: int, timeout_s: float = TIMEOUT_S) -> list[str]:
        """Read until the stream has carried `count` comment lines (heartbeats)."""
        async with asyncio.timeout(timeout_s):
            while len(self.parser.comments) < count:
                data = await self._read()
                assert data, "the stream ended"
                self._queue += self.parser.feed(data)
        return self.parser.comments

    async def read_to_end(self, timeout_s: float = TIMEOUT_S) -> list[SseEvent]:
        """Every event until the server ends the stream."""
        got: list[SseEvent] = []
        async with asyncio.timeout(timeout_s):
            while (event := await self.next_event(timeout_s)) is not None:
                got.append(event)
        return got


# --- WebSocket on a plain socket --------------------------------------------------------------

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _mask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def client_frame(payload: bytes, opcode: int = OP_TEXT, fin: bool = True) -> bytes:
    """A masked client frame (RFC 6455 §5.2, §5.3)."""
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", first, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, n)
    key = os.urandom(4)
    return head + key + _mask(payload, key)


class RawSocket:
    """A non-blocking socket that is read only when asked.

    Reading goes through `loop.sock_recv`, so while the test does not call it nothing is
    read: the kernel buffers fill and TCP's window closes, as with a stalled browser tab.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray()
        self.eof = False

    @staticmethod
    async def open_socket(port: int, rcvbuf: int | None = None) -> socket.socket:
        """A connected non-blocking socket; `rcvbuf` sets SO_RCVBUF first."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if rcvbuf is not None:
            # Before connect, so the window scale the handshake agrees on stays small.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        try:
            async with asyncio.timeout(TIMEOUT_S):
                await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
        except BaseException:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        self.sock.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    async def send_raw(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def _fill(self) -> None:
        try:
            data = await asyncio.get_running_loop().sock_recv(self.sock, 65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            raise EOFError("the server closed the connection")
        self._buffer += data

    async def _take(self, n: int) -> bytes:
        while len(self._buffer) < n:
            await self._fill()
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out

    async def _read_head(self) -> tuple[int, dict[str, str]]:
        while _HEAD_END not in self._buffer:
            await self._fill()
            assert len(self._buffer) < _MAX_HEAD_BYTES
        head, _, rest = bytes(self._buffer).partition(_HEAD_END)
        self._buffer = bytearray(rest)
        return _parse_head(head)


class RawSse(RawSocket):
    """An event-stream subscriber on a raw socket (a close-delimited body, as rawrt sends)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self.parser = SseParser()
        self._events: list[SseEvent] = []

    @classmethod
    async def connect(cls, port: int, target: str, *, rcvbuf: int | None = None) -> RawSse:
        """Send the GET and read the response head (but no event)."""
        stream = cls(await cls.open_socket(port, rcvbuf))
        try:
            await stream.send_raw(_encode_request("GET", target, None, [], port, False))
            async with asyncio.timeout(TIMEOUT_S):
                status, headers = await stream._read_head()
            assert status == 200 and headers["content-type"].startswith("text/event-stream")
        except BaseException:
            stream.close()
            raise
        return stream

    async def next_event(self, timeout_s: float = TIMEOUT_S) -> SseEvent:
        async with asyncio.timeout(timeout_s):
            while not self._events:
                if not self._buffer:
                    await self._fill()
                self._events += self.parser.feed(bytes(self._buffer))
                self._buffer.clear()
        return self._events.pop(0)


class RawWebSocket(RawSocket):
    """A hand-made WebSocket client (RFC 6455), for peers the `websockets` library will not
    play: one that never answers pings, one that stops reading."""

    @classmethod
    async def connect(
        cls,
        port: int,
        target: str = "/ws",
        *,
        rcvbuf: int | None = None,
        timeout_s: float = TIMEOUT_S,
    ) -> RawWebSocket:
        """Connect and complete the opening handshake (RFC 6455 §4.1)."""
        ws = cls(await cls.open_socket(port, rcvbuf))
        try:
            async with asyncio.timeout(timeout_s):
                key = base64.b64encode(os.urandom(16))
                await ws.send_raw(
                    (
                        f"GET {target} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
                        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                        f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key.decode()}\r\n\r\n"
                    ).encode()
                )
                await ws.read_handshake(key)
        except BaseException:
            ws.close()
            raise
        return ws

    async def read_handshake(self, key: bytes) -> None:
        """Read the server's 101 and check its Sec-WebSocket-Accept against `key`."""
        status, headers = await self._read_head()
        assert status == 101, (status, headers)
        expected = base64.b64encode(hashlib.sha1(key + _GUID).digest()).decode()
        assert headers.get("sec-websocket-accept") == expected, headers
        assert headers.get("upgrade", "").lower() == "websocket", headers

    async def send_text(self, text: str) -> None:
        await self.send_raw(client_frame(text.encode()))

    async def send_json(self, value: object) -> None:
        await self.send_text(json.dumps(value))

    async def recv_frame(self, timeout_s: float = TIMEOUT_S) -> tuple[int, bytes]:
        """The next frame as (opcode, payload); raises EOFError at the end of the stream."""
        async with asyncio.timeout(timeout_s):
            first, second = await self._take(2)
            assert second & 0x80 == 0, "a server must not mask its frames (§5.1)"
            n = second & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self._take(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self._take(8))
            assert first & 0x80, "rawrt sends every message as a single frame"
            return first & 0x0F, await self._take(n)

    async def recv_json(self, timeout_s: float = TIMEOUT_S, *, answer_pings: bool = True) -> Any:
        """The next text message, decoded; pings are answered (or ignored) on the way."""
        async with asyncio.timeout(timeout_s):
            while True:
                opcode, payload = await self.recv_frame(timeout_s)
                if opcode == OP_TEXT:
                    return json.loads(payload)
                if opcode == OP_PING and answer_pings:
                    await self.send_raw(client_frame(payload, OP_PONG))
                elif opcode == OP_CLOSE:
                    raise EOFError(f"close frame {payload[:2].hex()}")

    async def frames_until_eof(self, timeout_s: float = TIMEOUT_S) -> list[tuple[int, bytes]]:
        """Every frame until the server ends the TCP stream, answering nothing."""
        frames: list[tuple[int, bytes]] = []
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    frames.append(await self.recv_frame(timeout_s))
                except EOFError:
                    return frames


# --- WebSocket with the `websockets` library --------------------------------------------------


def ws_connect(port: int, target: str = "/ws", **options: Any) -> connect:
    """`async with ws_connect(port) as ws:`; the client sends no pings of its own."""
    options = {"ping_interval": None, "open_timeout": TIMEOUT_S, "close_timeout": 2, **options}
    return connect(f"ws://{HOST}:{port}{target}", **options)


async def ws_recv(ws: ClientConnection, timeout_s: float = TIMEOUT_S) -> Any:
    """The next message, decoded."""
    async with asyncio.timeout(timeout_s):
        return json.loads(await ws.recv())


async def ws_recv_many(ws: ClientConnection, count: int, timeout_s: float = TIMEOUT_S) -> list[Any]:
    async with asyncio.timeout(timeout_s):
        return [json.loads(await ws.recv()) for _ in range(count)]


async def ws_subscribe(
    ws: ClientConnection, channel: str, since: str | None = None, timeout_s: float = TIMEOUT_S
) -> Any:
    """Subscribe and return the `subscribed` frame; the subscription is live once it came."""
    command: dict[str, Any] = {"type": "subscribe", "channel": channel}
    if since is not None:
        command["since"] = since
    await ws.send(json.dumps(command))
    reply = await ws_recv(ws, timeout_s)
    assert reply["type"] == "subscribed" and reply["channel"] == channel, reply
    return reply
