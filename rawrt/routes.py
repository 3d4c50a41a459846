"""What each request is answered with: the route table and its handlers.

The table is literal data: method, path pattern (`CHANNEL` matches one non-empty segment),
handler. A path that matches with another method gets 405 and an Allow header; OPTIONS on a
known path gets the CORS preflight answer; anything else is 404. Each handler returns the
response bytes, or None when it has handed the connection to a transport.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from rawrt.connection import HttpConnection, Request
from rawrt.errors import BadMessage, HttpError
from rawrt.hub import HubFull, PollAnswer
from rawrt.transports.longpoll import ParkedPoll, poll_response
from rawrt.transports.sse import EventStream
from rawrt.transports.websocket import ChannelSocket, EchoSocket, WebSocketSession
from rawrt.wire import envelope, handshake, http

if TYPE_CHECKING:
    from rawrt.server import Server

__all__ = ["Router"]

CHANNEL = "{channel}"
Handler = Callable[[Request, HttpConnection, str], "bytes | None"]

ROUTES: tuple[tuple[bytes, tuple[str, ...], str], ...] = (
    (b"GET", ("ws",), "websocket"),
    (b"POST", ("api", "broadcast", CHANNEL), "broadcast"),
    (b"POST", ("api", "publish", CHANNEL), "publish"),
    (b"POST", ("api", "sse", "publish", CHANNEL), "publish"),
    (b"GET", ("api", "sse", "subscribe", CHANNEL), "sse"),
    (b"GET", ("api", "poll", CHANNEL), "poll"),
    (b"POST", ("api", "poll", CHANNEL), "poll"),
    (b"GET", ("healthz",), "healthz"),
    (b"GET", ("readyz",), "readyz"),
)


class Router:
    def __init__(self, server: Server) -> None:
        self._server = server
        self._routes = list(ROUTES)
        if server.config.echo_path:
            echo = tuple(server.config.echo_path.strip("/").split("/"))
            self._routes.append((b"GET", echo, "echo"))

    def resolve(self, request: Request) -> tuple[Handler, str]:
        """The handler for `request` and the channel named in its path ("" if none)."""
        allowed: list[bytes] = []
        for method, pattern, name in self._routes:
            channel = _match(pattern, request.path)
            if channel is None:
                continue
            if method == request.method:
                return getattr(self, "_" + name), channel
            allowed.append(method)
        if not allowed:
            return self._not_found, ""
        if request.method == b"OPTIONS":
            return self._preflight, ""
        allow = ", ".join(sorted({m.decode() for m in allowed} | {"OPTIONS"}))
        raise HttpError(405, "method not allowed here", headers=(("Allow", allow),))

    # --- handlers --------------------------------------------------------------------------

    def _websocket(self, request: Request, conn: HttpConnection, _: str) -> bytes | None:
        return self._upgrade(request, conn, ChannelSocket)

    def _echo(self, request: Request, conn: HttpConnection, _: str) -> bytes | None:
        return self._upgrade(request, conn, EchoSocket)

    def _upgrade(
        self, request: Request, conn: HttpConnection, kind: type[WebSocketSession]
    ) -> bytes | None:
        accept = handshake.check_upgrade(request.method, request.http_version, request.headers)
        transport, pending = conn.take_over()
        transport.write(handshake.switching_protocols(accept))
        kind(self._server, transport).start(pending)
        return None

    def _broadcast(self, request: Request, conn: HttpConnection, channel: str) -> bytes:
        return self._publish_reply(request, channel, "sent")

    def _publish(self, request: Request, conn: HttpConnection, channel: str) -> bytes:
        return self._publish_reply(request, channel, "published")

    def _publish_reply(self, request: Request, channel: str, flag: str) -> bytes:
        self._check_channel(channel)
        if not request.body.strip():
            raise HttpError(400, "the body must be the message data, as JSON")
        try:
            data = envelope.canonical_json(envelope.parse_data(request.body))
        except BadMessage as exc:
            raise HttpError(400, exc.reason) from None
        message_id = self._publish_json(channel, data)
        return self._json(request, {flag: True, "id": message_id})

    def _publish_json(self, channel: str, data: str) -> str:
        try:
            return self._server.publish_json(channel, data)
        except HubFull as exc:
            raise HttpError(503, str(exc)) from None

    def _sse(self, request: Request, conn: HttpConnection, channel: str) -> bytes | None:
        self._check_channel(channel)
        header = request.header(b"last-event-id")
        last_id = (
            header.decode("latin-1") if header is not None else request.query.get("lastEventId")
        )
        self._server.hub.head_id(channel)  # raises HubFull before the socket changes hands
        transport, _ = conn.take_over()
        EventStream(self._server, transport).open(channel, last_id or None)
        return None

    def _poll(self, request: Request, conn: HttpConnection, channel: str) -> bytes | None:
        self._check_channel(channel)
        timeout_s = self._poll_timeout(request.query.get("timeout"))
        try:
            ready = self._server.hub.poll(channel, request.query.get("since") or None)
        except HubFull as exc:
            raise HttpError(503, str(exc)) from None
        if isinstance(ready, PollAnswer):
            return poll_response(self._server, ready, request.keep_alive)
        transport, pending = conn.take_over()
        ParkedPoll(self._server, transport, channel, request.keep_alive).park(pending, timeout_s)
        return None

    def _poll_timeout(self, text: str | None) -> float:
        config = self._server.config
        if text is None or text == "":
            return config.poll_timeout_s
        try:
            value = float(text)
        except ValueError:
            raise HttpError(400, "timeout must be a number of seconds") from None
        if not 0 <= value <= config.poll_max_timeout_s:
            raise HttpError(400, f"timeout must be in 0..{config.poll_max_timeout_s} seconds")
        return value

    def _healthz(self, request: Request, conn: HttpConnection, _: str) -> bytes:
        return self._json(request, {"status": "ok"})

    def _readyz(self, request: Request, conn: HttpConnection, _: str) -> bytes:
        ready = self._server.ready
        return self._json(request, {"ready": ready}, 200 if ready else 503)

    def _preflight(self, request: Request, conn: HttpConnection, _: str) -> bytes:
        headers = [
            *self._server.cors_headers,
            ("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
            ("Access-Control-Allow-Headers", "Content-Type, Last-Event-ID"),
            ("Access-Control-Max-Age", "86400"),
        ]
        return http.response(204, headers=headers, keep_alive=request.keep_alive)

    def _not_found(self, request: Request, conn: HttpConnection, _: str) -> bytes:
        raise HttpError(404, "no such route")

    # --- helpers ---------------------------------------------------------------------------

    def _check_channel(self, channel: str) -> None:
        limit = self._server.config.max_channel_bytes
        if len(channel.encode("utf-8", "surrogatepass")) > limit:
            raise HttpError(400, f"channel name is longer than {limit} bytes")

    def _json(self, request: Request, value: object, status: int = 200) -> bytes:
        return http.json_response(
            status, value, headers=self._server.cors_headers, keep_alive=request.keep_alive
        )


def _match(pattern: tuple[str, ...], path: list[str]) -> str | None:
    """The channel segment if `path` fits `pattern` ("" when it has none), else None."""
    if len(pattern) != len(path):
        return None
    channel = ""
    for want, got in zip(pattern, path, strict=True):
        if want == CHANNEL:
            if not got:
                return None
            channel = got
        elif want != got:
            return None
    return channel
