"""Server-Sent Events: one open response per subscriber, written from the hub's bytes.

The response has no Content-Length and no chunked coding: its body ends when the connection
closes (RFC 9112 §6.3, item 8), which an event stream does anyway. So each event is written
as the exact bytes the hub built once for every SSE subscriber, with no per-socket framing.

Stream layout:

    HTTP/1.1 200 OK  (text/event-stream, no-cache, X-Accel-Buffering: no, Connection: close)
    retry: <ms>                              the reconnection hint
    id: <head>  data: {"type":"connected"}   (the id only on a fresh connect, see below)
    event: reset ...                         when Last-Event-ID cannot be resumed
    id: ... data: ...                        replayed, then live messages
    : hb                                     every sse_heartbeat_s

A fresh connect carries the channel's head id on its first event, so a browser that loses the
connection before any message still reconnects with a Last-Event-ID, and misses nothing.
"""

from __future__ import annotations

import asyncio

from rawrt.edge import StreamHost
from rawrt.hub import Kind, Subscription
from rawrt.wire import http, sse

__all__ = ["EventStream"]

HEARTBEAT = sse.comment("hb")
_CONNECTED = '{"type":"connected"}'


def stream_head(cors: http.Headers) -> bytes:
    """The response head; `response()` is not used because this body has no length."""
    lines = [
        "HTTP/1.1 200 OK",
        "Server: rawrt",
        "Content-Type: text/event-stream; charset=utf-8",
        "Cache-Control: no-cache",
        "X-Accel-Buffering: no",  # nginx: do not buffer this response
        "Connection: close",
        *(f"{name}: {value}" for name, value in cors),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def stream_unavailable(cors: http.Headers, reason: str) -> bytes:
    """A stream that ends at once: EventSource retries after `retry` instead of giving up."""
    return (
        stream_head(cors)
        + sse.retry(_UNAVAILABLE_RETRY_MS)
        + sse.comment(" ".join(reason.splitlines()))
    )


# How long a client waits before retrying a stream the server could not open.
_UNAVAILABLE_RETRY_MS = 2000


class EventStream(asyncio.Protocol):
    """An open text/event-stream response subscribed to one channel."""

    __slots__ = ("_expires_at", "_host", "_input_bytes", "_sub", "_transport", "_user", "client")

    def __init__(
        self,
        host: StreamHost,
        transport: asyncio.Transport,
        client: str,
        expires_at: float | None = None,
        user: str | None = None,
    ) -> None:
        self._host = host
        self._user = user  # the token's `sub`, which presence lists (None: no token)
        self.client = client  # the address it counts for (rawrt.edge.Session)
        self._transport: asyncio.Transport | None = transport
        self._sub: Subscription | None = None
        self._input_bytes = 0
        # Wall time at which the token that opened the stream runs out (None: it needed none).
        # Only this is kept of the token: the channel was decided when the stream opened.
        self._expires_at = expires_at

    def open(self, channel: str, last_event_id: str | None, cors: http.Headers = ()) -> None:
        """Write the head and first events, then join the channel (replaying if resuming)."""
        transport = self._transport
        assert transport is not None
        hub, config = self._host.hub, self._host.config
        first_id = None if last_event_id is not None else hub.head_id(channel)
        transport.set_protocol(self)
        self._host.register_stream(self)
        transport.write(
            stream_head(cors) + sse.retry(config.sse_retry_ms) + sse.event(_CONNECTED, first_id)
        )
        self._sub = hub.subscribe(
            channel, Kind.SSE, transport.write, last_event_id, start=False, user=self._user
        )
        hub.resume(self._sub)  # replay only now: a full socket can pause a known subscription

    def heartbeat(self) -> None:
        """Called by the server's sweep; skipped while the socket is backed up."""
        if self._transport is not None and self._sub is not None and not self._sub.paused:
            self._transport.write(HEARTBEAT)

    def check_expiry(self, wall_now: float) -> None:
        """Called by the server's sweep: end the stream once its token has run out.

        A clean end makes EventSource reconnect; with a fresh token it carries on from its
        Last-Event-ID, with the stale one it gets 401 and stops.
        """
        if self._expires_at is not None and wall_now > self._expires_at:
            self.shutdown()

    def data_received(self, data: bytes) -> None:
        # A client has nothing to send on an event stream; tolerate a little, then hang up.
        self._input_bytes += len(data)
        if self._input_bytes > self._host.config.max_pending_input_bytes:
            self.shutdown()

    def eof_received(self) -> bool | None:
        return None  # the client is gone: close

    def pause_writing(self) -> None:
        if self._sub is not None:
            self._host.hub.pause(self._sub)

    def resume_writing(self) -> None:
        if self._sub is not None:
            self._host.hub.resume(self._sub)

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        self._transport = None
        self._host.forget(self)

    def shutdown(self) -> None:
        """End the stream; EventSource reconnects after `retry` with its Last-Event-ID."""
        self._release()
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        self._release()
        if self._transport is not None:
            self._transport.abort()

    def _release(self) -> None:
        if self._sub is not None:
            self._host.hub.unsubscribe(self._sub)
            self._sub = None
