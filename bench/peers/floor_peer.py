"""Benchmark peer: the practical floor for a Python real-time server.

A bare asyncio.Protocol on uvloop with hand-rolled, minimal HTTP and
WebSocket handling. Every publish builds its output ONCE (one unmasked
WebSocket frame, one SSE event, one long-poll response) and hands the same
bytes object to transport.write() for every subscriber. There is no other
protocol work, which is what makes it a floor rather than a server:

* HTTP: Content-Length request bodies only, no chunked requests, no limits,
  no validation beyond what the routes need (clients are assumed to behave).
* WebSocket: no extensions, no fragmented client messages (frames with
  FIN=0 and continuation frames are dropped), no UTF-8 validation, no
  backpressure; ping is answered, close is echoed.
* SSE: the stream is delimited by connection close (no chunked encoding).

Usage: python floor_peer.py [--host 127.0.0.1] [--port 8080]
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from typing import cast

import peerkit
from peerkit import Request

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\n"
    b"Connection: close\r\n\r\n"
)


# ---- WebSocket framing ----------------------------------------------------


def ws_accept(key: str) -> str:
    digest = hashlib.sha1(key.encode("latin-1") + WS_GUID).digest()
    return base64.b64encode(digest).decode("ascii")


def ws_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """One unmasked, unfragmented server frame."""
    n = len(payload)
    first = 0x80 | opcode
    if n < 126:
        header = bytes((first, n))
    elif n < 1 << 16:
        header = bytes((first, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((first, 127)) + n.to_bytes(8, "big")
    return header + payload


def unmask(payload: bytes, mask: bytes) -> bytes:
    # XOR as one big integer: much faster in CPython than a per-byte loop.
    n = len(payload)
    key = (mask * (n // 4 + 1))[:n]
    value = int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")
    return value.to_bytes(n, "big")


def next_frame(buf: bytearray) -> tuple[int, bool, bytes] | None:
    """Pop one masked client frame off buf: (opcode, fin, payload), or None
    while the frame is incomplete."""
    if len(buf) < 2:
        return None
    n = buf[1] & 0x7F
    pos = 2
    if n == 126:
        if len(buf) < 4:
            return None
        n, pos = int.from_bytes(buf[2:4], "big"), 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n, pos = int.from_bytes(buf[2:10], "big"), 10
    if len(buf) < pos + 4 + n:
        return None
    fin, opcode = bool(buf[0] & 0x80), buf[0] & 0x0F
    mask = bytes(buf[pos : pos + 4])
    payload = unmask(bytes(buf[pos + 4 : pos + 4 + n]), mask)
    del buf[: pos + 4 + n]
    return opcode, fin, payload


# ---- channel state ----------------------------------------------------------


class Hub:
    """Subscribers per channel, per transport, and the publish fan-out."""

    def __init__(self) -> None:
        self.ids = peerkit.Counters()
        self.ws: dict[str, set[asyncio.Transport]] = {}
        self.sse: dict[str, set[asyncio.Transport]] = {}
        self.poll: dict[str, set[Connection]] = {}

    def publish(self, channel: str, data: object) -> str:
        msg_id = self.ids.next(channel)
        subs = self.ws.get(channel)
        if subs:
            envelope = {
                "type": "message",
                "channel": channel,
                "data": data,
                "timestamp": peerkit.now_ms(),
                "id": msg_id,
            }
            frame = ws_frame(peerkit.dumps(envelope).encode())
            for transport in subs:
                transport.write(frame)
        clients = self.sse.get(channel)
        if clients:
            event = f"id: {msg_id}\ndata: {peerkit.dumps(data)}\n\n".encode()
            for transport in clients:
                transport.write(event)
        waiters = self.poll.pop(channel, None)
        if waiters:
            body = peerkit.dumps({"messages": [data], "cursor": msg_id}).encode()
            response = peerkit.http_response(200, body)
            for conn in waiters:
                conn.answer_poll(response)
        return msg_id

    def heartbeat(self) -> None:
        """Comment line to every SSE stream; re-arms itself."""
        for clients in self.sse.values():
            for transport in clients:
                transport.write(peerkit.SSE_HEARTBEAT)
        asyncio.get_running_loop().call_later(peerkit.SSE_HEARTBEAT_S, self.heartbeat)


# ---- one TCP connection -----------------------------------------------------


class Connection(asyncio.Protocol):
    """Starts as HTTP; may turn into a WebSocket, an SSE stream, or park on a
    long poll (further pipelined requests then wait in the buffer)."""

    def __init__(self, hub: Hub, live: set[Connection]) -> None:
        self.hub = hub
        self.live = live
        self.buf = bytearray()
        self.mode = "http"  # "http" | "ws" | "sse" | "parked"
        self.channels: set[str] = set()  # WS subscriptions
        self.sse_channel = ""
        self.poll_channel = ""
        self.poll_keep_alive = True
        self.poll_timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport: cast, not assert.
        self.transport = cast(asyncio.Transport, transport)
        self.live.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.live.discard(self)
        for channel in self.channels:
            self.hub.ws.get(channel, set()).discard(self.transport)
        if self.sse_channel:
            self.hub.sse.get(self.sse_channel, set()).discard(self.transport)
        if self.mode == "parked":
            self.hub.poll.get(self.poll_channel, set()).discard(self)
            if self.poll_timer:
                self.poll_timer.cancel()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.mode == "http":
            self.handle_requests()
        elif self.mode == "ws":
            self.handle_frames()
        elif self.mode == "sse":
            self.buf.clear()  # nothing to read from an SSE client
        # "parked": keep buffering; handled once the poll is answered.

    # -- HTTP --

    def handle_requests(self) -> None:
        while self.mode == "http" and not self.transport.is_closing():
            parsed = peerkit.parse_request(self.buf)
            if parsed is None:
                return
            request, used = parsed
            del self.buf[:used]
            self.dispatch(request)

    def dispatch(self, request: Request) -> None:
        kind, channel = peerkit.match_route(request.method, request.path)
        if kind == "ws" and request.headers.get("upgrade", "").lower() == "websocket":
            self.upgrade(request)
        elif kind in ("broadcast", "publish"):
            self.publish(request, kind, channel)
        elif kind == "sse":
            self.start_sse(channel)
        elif kind == "poll":
            self.park(channel, request.keep_alive)
        else:
            self.reply(peerkit.NOT_FOUND, request.keep_alive)

    def reply(self, response: bytes, keep_alive: bool) -> None:
        self.transport.write(response)
        if not keep_alive:
            self.transport.close()

    def publish(self, request: Request, kind: str, channel: str) -> None:
        try:
            data = json.loads(request.body)
        except ValueError:
            self.reply(peerkit.BAD_JSON, request.keep_alive)
            return
        msg_id = self.hub.publish(channel, data)
        self.reply(peerkit.publish_ack(kind, msg_id), request.keep_alive)

    # -- SSE --

    def start_sse(self, channel: str) -> None:
        self.mode = "sse"
        self.sse_channel = channel
        self.transport.write(SSE_HEAD + peerkit.SSE_CONNECTED)
        self.hub.sse.setdefault(channel, set()).add(self.transport)

    # -- long poll --

    def park(self, channel: str, keep_alive: bool) -> None:
        self.mode = "parked"
        self.poll_channel = channel
        self.poll_keep_alive = keep_alive
        self.hub.poll.setdefault(channel, set()).add(self)
        loop = asyncio.get_running_loop()
        self.poll_timer = loop.call_later(peerkit.POLL_TIMEOUT_S, self.poll_timeout)

    def poll_timeout(self) -> None:
        self.poll_timer = None
        self.hub.poll.get(self.poll_channel, set()).discard(self)
        cursor = self.hub.ids.last(self.poll_channel)
        body = peerkit.dumps({"messages": [], "cursor": cursor}).encode()
        self.answer_poll(peerkit.http_response(200, body))

    def answer_poll(self, response: bytes) -> None:
        if self.poll_timer:
            self.poll_timer.cancel()
            self.poll_timer = None
        self.mode = "http"
        self.reply(response, self.poll_keep_alive)
        self.handle_requests()  # pipelined requests that waited behind the poll

    # -- WebSocket --

    def upgrade(self, request: Request) -> None:
        accept = ws_accept(request.headers.get("sec-websocket-key", ""))
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\n"
            b"Upgrade: websocket\r\n"
            b"Connection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept.encode("ascii") + b"\r\n\r\n"
        )
        self.mode = "ws"
        self.handle_frames()  # frames may have arrived with the handshake

    def handle_frames(self) -> None:
        while self.mode == "ws" and not self.transport.is_closing():
            frame = next_frame(self.buf)
            if frame is None:
                return
            opcode, fin, payload = frame
            if opcode == OP_TEXT and fin:
                self.on_text(payload)
            elif opcode == OP_PING:
                self.transport.write(ws_frame(payload, OP_PONG))
            elif opcode == OP_CLOSE:
                self.transport.write(ws_frame(payload[:2], OP_CLOSE))
                self.transport.close()

    def send_json(self, obj: object) -> None:
        self.transport.write(ws_frame(peerkit.dumps(obj).encode()))

    def on_text(self, payload: bytes) -> None:
        try:
            msg = json.loads(payload)
            kind = msg.get("type")
        except (ValueError, AttributeError):
            self.transport.write(ws_frame(peerkit.INVALID_FORMAT.encode()))
            return
        channel = msg.get("channel")
        if kind == "subscribe" and isinstance(channel, str):
            self.hub.ws.setdefault(channel, set()).add(self.transport)
            self.channels.add(channel)
            last = self.hub.ids.last(channel)
            self.send_json({"type": "subscribed", "channel": channel, "id": last})
        elif kind == "unsubscribe" and isinstance(channel, str):
            self.hub.ws.get(channel, set()).discard(self.transport)
            self.channels.discard(channel)
        elif kind == "publish" and isinstance(channel, str):
            self.hub.publish(channel, msg.get("data"))
        elif kind == "ping":
            self.send_json({"type": "pong", "timestamp": peerkit.now_ms()})
        else:
            self.transport.write(ws_frame(peerkit.INVALID_FORMAT.encode()))


# ---- main -------------------------------------------------------------------


async def main() -> None:
    args = peerkit.parse_args("rawrt bench peer: bare asyncio.Protocol floor")
    stop = peerkit.stop_event()
    loop = asyncio.get_running_loop()
    hub = Hub()
    live: set[Connection] = set()
    server = await loop.create_server(lambda: Connection(hub, live), args.host, args.port)
    host, port = server.sockets[0].getsockname()[:2]
    loop.call_later(peerkit.SSE_HEARTBEAT_S, hub.heartbeat)
    peerkit.announce(host, port)
    await stop.wait()
    server.close()
    for conn in list(live):
        conn.transport.abort()
    await server.wait_closed()


if __name__ == "__main__":
    peerkit.run(main)
