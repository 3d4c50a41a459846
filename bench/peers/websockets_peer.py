"""Benchmark peer: the `websockets` library (asyncio server).

WebSocket traffic goes through websockets.asyncio.server.serve() and the
fan-out through websockets.asyncio.server.broadcast(). Plain HTTP routes go
through the process_request hook, which can only answer a GET without a
body and then closes the connection. That has three consequences:

* SSE and parked long-poll cannot be built on `websockets` (a Response from
  process_request is written in one piece and the connection is closed), so
  /api/sse/subscribe/{c} and /api/poll/{c} answer 404 and the bench reports
  them as "n/a".
* The publish routes are POSTs with a JSON body, and websockets' request
  parser refuses any request body: the connection is dropped before
  process_request runs. The bench publishes over HTTP, so this peer diverts
  connections whose first request is not a GET into a small publish-only
  shim (PublishShim, using the same minimal HTTP parser as the floor peer).
  The shim is not part of `websockets`; it only parses the POST and calls
  the same publish() that WebSocket "publish" frames use, so the measured
  fan-out is still broadcast().
* Because a diverted connection never finishes the WebSocket opening
  handshake, the server runs with open_timeout=None (otherwise websockets
  would abort keep-alive publish connections after 10 s).

Compression is off (compression=None) so every peer sends the same bytes, unless the
environment says PEER_COMPRESSION=deflate (bench/compression.py): then websockets offers
permessage-deflate with its default settings, and broadcast() compresses each message once
per connection (it keeps each connection's compression context).

Usage: python websockets_peer.py [--host 127.0.0.1] [--port 8080]
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import peerkit
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request as WsRequest
from websockets.http11 import Response as WsResponse

ids = peerkit.Counters()
subscribers: dict[str, set[ServerConnection]] = {}


def publish(channel: str, data: object) -> str:
    """One JSON encoding, then broadcast() to every subscriber."""
    msg_id = ids.next(channel)
    subs = subscribers.get(channel)
    if subs:
        envelope = {
            "type": "message",
            "channel": channel,
            "data": data,
            "timestamp": peerkit.now_ms(),
            "id": msg_id,
        }
        broadcast(subs, peerkit.dumps(envelope))
    return msg_id


# ---- WebSocket handler ------------------------------------------------------


async def on_message(ws: ServerConnection, channels: set[str], raw: str | bytes) -> None:
    try:
        msg: Any = json.loads(raw)
        kind = msg.get("type")
    except (ValueError, AttributeError):
        await ws.send(peerkit.INVALID_FORMAT)
        return
    channel = msg.get("channel")
    if kind == "subscribe" and isinstance(channel, str):
        subscribers.setdefault(channel, set()).add(ws)
        channels.add(channel)
        reply = {"type": "subscribed", "channel": channel, "id": ids.last(channel)}
        await ws.send(peerkit.dumps(reply))
    elif kind == "unsubscribe" and isinstance(channel, str):
        subscribers.get(channel, set()).discard(ws)
        channels.discard(channel)
    elif kind == "publish" and isinstance(channel, str):
        publish(channel, msg.get("data"))
    elif kind == "ping":
        await ws.send(peerkit.dumps({"type": "pong", "timestamp": peerkit.now_ms()}))
    else:
        await ws.send(peerkit.INVALID_FORMAT)


async def handler(ws: ServerConnection) -> None:
    channels: set[str] = set()
    try:
        async for raw in ws:
            await on_message(ws, channels, raw)
    except ConnectionClosed:
        pass
    finally:
        for channel in channels:
            subscribers.get(channel, set()).discard(ws)


def process_request(conn: ServerConnection, request: WsRequest) -> WsResponse | None:
    """Let /ws through to the handshake; everything else is a 404.

    SSE and long-poll land here too: websockets can only send a complete
    response and close, so those transports are not available (n/a)."""
    path = request.path.split("?", 1)[0]
    if path == "/ws":
        return None
    return conn.respond(404, "Not Found\n")


# ---- publish shim (not websockets; see module docstring) -------------------


class PublishShim:
    """Answers POST publish routes on a connection websockets cannot parse.
    Keep-alive and pipelining work; any other request gets a 404."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.buf = bytearray()

    def feed(self, data: bytes) -> None:
        self.buf += data
        while not self.transport.is_closing():
            parsed = peerkit.parse_request(self.buf)
            if parsed is None:
                return
            request, used = parsed
            del self.buf[:used]
            self.transport.write(self.answer(request))
            if not request.keep_alive:
                self.transport.close()

    def answer(self, request: peerkit.Request) -> bytes:
        kind, channel = peerkit.match_route(request.method, request.path)
        if kind not in ("broadcast", "publish"):
            return peerkit.NOT_FOUND
        try:
            data = json.loads(request.body)
        except ValueError:
            return peerkit.BAD_JSON
        return peerkit.publish_ack(kind, publish(channel, data))


diverted: set[PeerConnection] = set()


class PeerConnection(ServerConnection):
    """A ServerConnection that hands non-GET connections to PublishShim
    before websockets' parser sees (and rejects) their request bodies."""

    shim: PublishShim | None = None
    routed = False

    def data_received(self, data: bytes) -> None:
        if not self.routed:
            self.routed = True
            if not data.startswith(b"GET "):
                self.shim = PublishShim(self.transport)
                diverted.add(self)
        if self.shim is not None:
            self.shim.feed(data)
        else:
            super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        diverted.discard(self)
        super().connection_lost(exc)


# ---- main -------------------------------------------------------------------


async def main() -> None:
    args = peerkit.parse_args("rawrt bench peer: websockets asyncio server")
    stop = peerkit.stop_event()
    server = await serve(
        handler,
        args.host,
        args.port,
        process_request=process_request,
        create_connection=PeerConnection,
        compression="deflate" if os.environ.get("PEER_COMPRESSION") == "deflate" else None,
        open_timeout=None,
    )
    host, port = server.sockets[0].getsockname()[:2]
    peerkit.announce(host, port)
    await stop.wait()
    server.close()  # closes WebSocket connections with 1001
    for conn in list(diverted):
        conn.transport.close()  # their handshake only ends when they do
    await server.wait_closed()


if __name__ == "__main__":
    peerkit.run(main)
