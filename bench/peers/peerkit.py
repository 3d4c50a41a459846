"""Small helpers shared by the Python benchmark peers.

Only the boring parts live here (command line, start-up line, signal
handling, per-channel id counters, and the tiny HTTP/1.1 request parser
used by the floor peer and by the websockets peer's publish shim), so that
each peer file shows just the library it is there to measure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

POLL_TIMEOUT_S = 30.0
SSE_HEARTBEAT_S = 15.0
SSE_CONNECTED = b'data: {"type":"connected"}\n\n'
SSE_HEARTBEAT = b": hb\n\n"
INVALID_FORMAT = '{"type":"error","data":"Invalid message format"}'


# ---- process plumbing -----------------------------------------------------


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    return parser.parse_args()


def announce(host: str, port: int) -> None:
    """The one line the bench (and check_peers.py) waits for."""
    print(f"listening on http://{host}:{port}", flush=True)


def stop_event() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT, so peers can shut down in order."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, event.set)
    return event


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run main() on uvloop when it is installed, else on stock asyncio."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


# ---- messages ------------------------------------------------------------


def now_ms() -> int:
    return int(time.time() * 1000)


def dumps(obj: object) -> str:
    # Compact separators: the same bytes JSON.stringify would produce.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class Counters:
    """Per-channel message ids ("1", "2", ...)."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def next(self, channel: str) -> str:
        n = self._last.get(channel, 0) + 1
        self._last[channel] = n
        return str(n)

    def last(self, channel: str) -> str:
        return str(self._last.get(channel, 0))


# ---- routes --------------------------------------------------------------

# (method, path prefix) -> route kind; the channel is the rest of the path.
_PREFIX_ROUTES = (
    ("POST", "/api/broadcast/", "broadcast"),
    ("POST", "/api/publish/", "publish"),
    ("POST", "/api/sse/publish/", "publish"),
    ("GET", "/api/sse/subscribe/", "sse"),
    ("GET", "/api/poll/", "poll"),
    ("POST", "/api/poll/", "poll"),
)

ACK_KEY = {"broadcast": "sent", "publish": "published"}


def match_route(method: str, path: str) -> tuple[str | None, str]:
    """Return (kind, channel); kind is None for an unknown route."""
    if path == "/ws" and method == "GET":
        return "ws", ""
    for want_method, prefix, kind in _PREFIX_ROUTES:
        if method == want_method and path.startswith(prefix) and len(path) > len(prefix):
            channel = path[len(prefix) :]
            if "/" not in channel:
                return kind, unquote(channel)
    return None, ""


# ---- minimal HTTP/1.1 ----------------------------------------------------
# Enough for well-behaved clients: Content-Length bodies only (no chunked
# requests), keep-alive by default, pipelining handled by the caller looping.


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    keep_alive: bool


def parse_request(buf: bytearray) -> tuple[Request, int] | None:
    """Parse one request from the front of buf: (request, bytes used), or None
    when buf does not yet hold a complete request."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    total = end + 4 + int(headers.get("content-length", "0"))
    if len(buf) < total:
        return None
    connection = headers.get("connection", "").lower()
    # HTTP/1.1 keeps the connection unless told otherwise; 1.0 the reverse.
    keep_alive = "close" not in connection if version != "HTTP/1.0" else "keep-alive" in connection
    path = target.split("?", 1)[0]
    body = bytes(buf[end + 4 : total])
    return Request(method, path, headers, body, keep_alive), total


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found"}


def http_response(status: int, body: bytes, content_type: str = "application/json") -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


NOT_FOUND = http_response(404, b'{"error":"Not Found"}')
BAD_JSON = http_response(400, b'{"error":"Invalid JSON"}')


def publish_ack(kind: str, msg_id: str) -> bytes:
    return http_response(200, dumps({ACK_KEY[kind]: True, "id": msg_id}).encode())
