"""Benchmark peer: aiohttp's web server, written the way aiohttp is usually used.

* WebSocket: web.WebSocketResponse; a publish encodes the envelope once and
  awaits ws.send_str() for each subscriber in turn.
* SSE: web.StreamResponse; each client has an asyncio.Queue drained by its
  own handler, so a publish only enqueues one pre-built event per client.
* Long poll: each parked request waits on an asyncio future; a publish
  resolves every parked future of the channel (every waiter gets the
  message; messages published while a client is not parked are not kept).

Compression is off (compress=False) so every peer sends the same bytes.
Wrong methods on known paths answer 405, as aiohttp's router does.

Usage: python aiohttp_peer.py [--host 127.0.0.1] [--port 8080]
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import peerkit
from aiohttp import WSCloseCode, WSMsgType, web

Poll = tuple[list[Any], str]  # (messages, cursor)


class Hub:
    def __init__(self) -> None:
        self.ids = peerkit.Counters()
        self.ws: dict[str, set[web.WebSocketResponse]] = {}
        self.sse: dict[str, set[asyncio.Queue[bytes | None]]] = {}
        self.poll: dict[str, set[asyncio.Future[Poll]]] = {}

    async def publish(self, channel: str, data: object) -> str:
        msg_id = self.ids.next(channel)
        envelope = peerkit.dumps(
            {
                "type": "message",
                "channel": channel,
                "data": data,
                "timestamp": peerkit.now_ms(),
                "id": msg_id,
            }
        )
        # SSE and poll first: they never wait, while send_str() may.
        event = f"id: {msg_id}\ndata: {peerkit.dumps(data)}\n\n".encode()
        for queue in self.sse.get(channel, ()):
            queue.put_nowait(event)
        for fut in self.poll.pop(channel, ()):
            if not fut.done():
                fut.set_result(([data], msg_id))
        # Copy: subscribers may leave while we await.
        for ws in list(self.ws.get(channel, ())):
            with contextlib.suppress(ConnectionError):  # its handler cleans up
                await ws.send_str(envelope)
        return msg_id


HUB = web.AppKey("hub", Hub)


# ---- HTTP routes ------------------------------------------------------------


def make_publish_handler(kind: str) -> Any:
    ack_key = peerkit.ACK_KEY[kind]

    async def handle(request: web.Request) -> web.Response:
        try:
            data = await request.json()
        except ValueError:
            return web.json_response({"error": "Invalid JSON"}, status=400)
        msg_id = await request.app[HUB].publish(request.match_info["channel"], data)
        return web.json_response({ack_key: True, "id": msg_id})

    return handle


async def sse(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB]
    channel = request.match_info["channel"]
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    await resp.write(peerkit.SSE_CONNECTED)
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    clients = hub.sse.setdefault(channel, set())
    clients.add(queue)
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), peerkit.SSE_HEARTBEAT_S)
            except TimeoutError:
                item = peerkit.SSE_HEARTBEAT
            if item is None:  # shutdown
                break
            await resp.write(item)
    except ConnectionError:
        pass  # client went away
    finally:
        clients.discard(queue)
    return resp


async def poll(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    channel = request.match_info["channel"]
    fut: asyncio.Future[Poll] = asyncio.get_running_loop().create_future()
    waiters = hub.poll.setdefault(channel, set())
    waiters.add(fut)
    try:
        messages, cursor = await asyncio.wait_for(fut, peerkit.POLL_TIMEOUT_S)
    except TimeoutError:
        messages, cursor = [], hub.ids.last(channel)
    finally:
        waiters.discard(fut)
    return web.json_response({"messages": messages, "cursor": cursor})


# ---- WebSocket --------------------------------------------------------------


async def on_message(hub: Hub, ws: web.WebSocketResponse, channels: set[str], raw: str) -> None:
    try:
        msg: Any = json.loads(raw)
        kind = msg.get("type")
    except (ValueError, AttributeError):
        await ws.send_str(peerkit.INVALID_FORMAT)
        return
    channel = msg.get("channel")
    if kind == "subscribe" and isinstance(channel, str):
        hub.ws.setdefault(channel, set()).add(ws)
        channels.add(channel)
        reply = {"type": "subscribed", "channel": channel, "id": hub.ids.last(channel)}
        await ws.send_str(peerkit.dumps(reply))
    elif kind == "unsubscribe" and isinstance(channel, str):
        hub.ws.get(channel, set()).discard(ws)
        channels.discard(channel)
    elif kind == "publish" and isinstance(channel, str):
        await hub.publish(channel, msg.get("data"))
    elif kind == "ping":
        await ws.send_str(peerkit.dumps({"type": "pong", "timestamp": peerkit.now_ms()}))
    else:
        await ws.send_str(peerkit.INVALID_FORMAT)


async def websocket(request: web.Request) -> web.WebSocketResponse:
    hub = request.app[HUB]
    ws = web.WebSocketResponse(compress=False)
    await ws.prepare(request)
    channels: set[str] = set()
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await on_message(hub, ws, channels, msg.data)
    finally:
        for channel in channels:
            hub.ws.get(channel, set()).discard(ws)
    return ws


# ---- app --------------------------------------------------------------------


async def on_shutdown(app: web.Application) -> None:
    """Release long-lived handlers so the runner can stop promptly."""
    hub = app[HUB]
    for clients in hub.sse.values():
        for queue in clients:
            queue.put_nowait(None)
    for channel, waiters in hub.poll.items():
        for fut in waiters:
            if not fut.done():
                fut.set_result(([], hub.ids.last(channel)))
    sockets = [ws for subs in hub.ws.values() for ws in subs]
    for ws in sockets:
        await ws.close(code=WSCloseCode.GOING_AWAY)


def make_app() -> web.Application:
    app = web.Application()
    app[HUB] = Hub()
    app.router.add_get("/ws", websocket)
    app.router.add_post("/api/broadcast/{channel}", make_publish_handler("broadcast"))
    app.router.add_post("/api/publish/{channel}", make_publish_handler("publish"))
    app.router.add_post("/api/sse/publish/{channel}", make_publish_handler("publish"))
    app.router.add_get("/api/sse/subscribe/{channel}", sse)
    app.router.add_get("/api/poll/{channel}", poll)
    app.router.add_post("/api/poll/{channel}", poll)
    app.on_shutdown.append(on_shutdown)
    return app


async def main() -> None:
    args = peerkit.parse_args("rawrt bench peer: aiohttp web server")
    stop = peerkit.stop_event()
    runner = web.AppRunner(make_app(), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    host, port = runner.addresses[0][:2]
    peerkit.announce(host, port)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    peerkit.run(main)
