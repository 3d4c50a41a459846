"""What each request is answered with: the route table and its handlers.

The table is literal data: method, path pattern (`CHANNEL` matches one non-empty segment),
handler. A path that matches with another method gets 405 and an Allow header; OPTIONS on a
known path gets the CORS preflight answer; anything else is 404. Each handler returns the
response bytes, None when it has handed the connection to a transport, or, when it must
wait for the backplane (a publish numbered by Redis, a channel being synced), an awaitable
of either.

This is the one module that names the transports: it starts each of them on the socket a
handler takes over, and hands it the same host it was given (a `RouterHost`, rawrt.edge).

It is also where access is decided (rawrt.access), once per request: the publish routes ask
for the publish key or a token, the subscribe routes (and the read-only presence and history
routes) for a token that covers the channel, an upgrade for an allowed Origin; a WebSocket
decides its own subscribes and publishes with the grant it is handed here. Every answer
carries the CORS headers of its request.

`GET /metrics` (rawrt.metrics) is in the table when metrics are on and have no listener of
their own; on that listener `MetricsRouter` answers it alone. A publish is counted, with its
latency from the request to its id, when its id is known.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from rawrt.assets import Asset, load_asset
from rawrt.config import demo_enabled
from rawrt.edge import (
    AT_CAPACITY,
    AnyReply,
    CorsHeaders,
    Exchange,
    Handler,
    Reply,
    Request,
    RouterHost,
)
from rawrt.errors import (
    BackplaneUnavailable,
    BadMessage,
    HttpError,
    HubFull,
    NotAttached,
    Unauthorized,
)
from rawrt.hub import PollAnswer
from rawrt.metrics import CONTENT_TYPE
from rawrt.presence import Presence
from rawrt.tokens import Grant
from rawrt.transports.longpoll import ParkedPoll, poll_response
from rawrt.transports.sse import EventStream, stream_unavailable
from rawrt.transports.websocket import ChannelSocket, EchoSocket, WebSocketSession
from rawrt.wire import deflate, envelope, handshake, http, names
from rawrt.wire.history import history_body

__all__ = ["MetricsRouter", "Router"]

CHANNEL = "{channel}"
# Routes that also answer HEAD (RFC 9110 §9.3.2), for probes; the others stream or upgrade.
_HEAD_OK = frozenset({"healthz", "readyz"})
_METRICS_ROUTE = (b"GET", ("metrics",), "metrics")

ROUTES: tuple[tuple[bytes, tuple[str, ...], str], ...] = (
    (b"GET", ("ws",), "websocket"),
    (b"POST", ("api", "broadcast", CHANNEL), "broadcast"),
    (b"POST", ("api", "publish", CHANNEL), "publish"),
    (b"POST", ("api", "sse", "publish", CHANNEL), "publish"),
    (b"GET", ("api", "sse", "subscribe", CHANNEL), "sse"),
    (b"GET", ("api", "poll", CHANNEL), "poll"),
    (b"POST", ("api", "poll", CHANNEL), "poll"),
    (b"GET", ("api", "presence", CHANNEL), "presence"),
    (b"GET", ("api", "history", CHANNEL), "history"),
    (b"GET", ("healthz",), "healthz"),
    (b"GET", ("readyz",), "readyz"),
)


class Router:
    def __init__(self, host: RouterHost) -> None:
        self._host = host
        # The last long poll answered at once, by what decides its content (_shared_answer).
        self._last_answer: tuple[tuple[str, str | None, str, bool], PollAnswer] | None = None
        routes = list(ROUTES)
        if host.config.echo_path:
            echo = tuple(host.config.echo_path.strip("/").split("/"))
            routes.append((b"GET", echo, "echo"))
        # The browser client is always served; the demo page that uses it only when asked.
        self._client = load_asset("rawrt.js", "text/javascript; charset=utf-8")
        routes.append((b"GET", ("rawrt.js",), "client_js"))
        self._demo: Asset | None = None
        if demo_enabled(host.config):
            self._demo = load_asset("index.html", "text/html; charset=utf-8")
            routes.append((b"GET", ("",), "demo_page"))
        if host.config.metrics and not host.config.metrics_host:
            routes.append(_METRICS_ROUTE)
        self._set_routes(routes)

    def _set_routes(self, routes: list[tuple[bytes, tuple[str, ...], str]]) -> None:
        # Every pattern, as a tuple, to its (method, handler name) pairs: resolving a path is
        # two dict lookups (as it is, and with its last segment read as a channel).
        self._index: dict[tuple[str, ...], list[tuple[bytes, str]]] = {}
        for method, pattern, name in routes:
            self._index.setdefault(pattern, []).append((method, name))

    def resolve(self, request: Request) -> tuple[Handler, str]:
        """The handler for `request` and the channel named in its path ("" if none)."""
        path = tuple(request.path)
        allowed: list[bytes] = []
        for pattern, channel in ((path, ""), ((*path[:-1], CHANNEL), path[-1])):
            if pattern[-1] == CHANNEL and not channel:
                continue  # an empty segment names no channel
            for method, name in self._index.get(pattern, ()):
                if method == request.method or (request.method == b"HEAD" and name in _HEAD_OK):
                    return getattr(self, "_" + name), channel
                allowed.append(method)
        if not allowed:
            return self._not_found, ""
        if request.method == b"OPTIONS":
            return self._preflight, ""
        allow = ", ".join(sorted({m.decode() for m in allowed} | {"OPTIONS"}))
        raise HttpError(405, "method not allowed here", headers=(("Allow", allow),))

    def at_capacity(self, request: Request) -> bytes:
        """The answer when the server has no room for `request`'s connection: an event stream
        ends at once after `retry:` (any status but 200 stops EventSource for good, NOTES),
        every other route gets 503. Either way the connection closes."""
        cors = self._host.cors_for(request.headers)
        try:
            handler, _ = self.resolve(request)
        except HttpError:
            handler = self._not_found
        if handler == self._sse:
            return stream_unavailable(cors, AT_CAPACITY)
        return http.error_response(503, AT_CAPACITY, headers=cors)

    # --- handlers --------------------------------------------------------------------------

    def _websocket(self, request: Request, conn: Exchange, _: str) -> bytes | None:
        return self._upgrade(request, conn, ChannelSocket)

    def _echo(self, request: Request, conn: Exchange, _: str) -> bytes | None:
        return self._upgrade(request, conn, EchoSocket)

    def _upgrade(
        self, request: Request, conn: Exchange, kind: type[WebSocketSession]
    ) -> bytes | None:
        accept = handshake.check_upgrade(request.method, request.http_version, request.headers)
        access = self._host.access
        access.check_upgrade_origin(request.headers)  # 403: cross-site WebSocket hijacking
        grant: Grant | None = None
        refused: Unauthorized | None = None
        try:
            grant = access.connection_grant(request.headers, request.query, time.time())
        except Unauthorized as exc:
            # Upgraded all the same, then closed with 4401: a browser sees 1006 for any
            # refused handshake, and could not tell that its token needs renewing.
            refused = exc
        agreement = self._compression(request.headers)
        transport, pending = conn.take_over()
        extensions = agreement.response if agreement is not None else None
        transport.write(handshake.switching_protocols(accept, extensions))
        kind(self._host, transport, request.client, agreement).start(pending, grant, refused)
        return None

    def _compression(self, headers: list[tuple[bytes, bytes]]) -> deflate.Agreement | None:
        """permessage-deflate as the client offered it, when the server offers it at all."""
        config = self._host.config
        if not config.ws_compression:
            return None
        offers = [value for name, value in headers if name == b"sec-websocket-extensions"]
        return deflate.negotiate(offers, config.ws_compression_max_window_bits) if offers else None

    def _broadcast(self, request: Request, conn: Exchange, channel: str) -> AnyReply:
        return self._publish_reply(request, channel, "sent", "broadcast")

    def _publish(self, request: Request, conn: Exchange, channel: str) -> AnyReply:
        return self._publish_reply(request, channel, "published", "publish")

    def _publish_reply(self, request: Request, channel: str, flag: str, route: str) -> AnyReply:
        started = time.perf_counter()
        self._check_channel(channel)
        self._host.access.check_http_publish(request.headers, request.query, channel, time.time())
        if not request.body.strip():
            raise HttpError(400, "the body must be the message data, as JSON")
        try:
            data = envelope.canonical_json(envelope.parse_data(request.body))
        except BadMessage as exc:
            raise HttpError(400, exc.reason) from None
        try:
            result = self._host.publish_json(channel, data)
        except HubFull as exc:
            raise HttpError(503, str(exc)) from None
        if isinstance(result, str):
            self._host.counts.publish_done(route, time.perf_counter() - started)
            return self._json(request, {flag: True, "id": result})
        return self._published_later(result, request, flag, route, started)

    async def _published_later(
        self, result: asyncio.Future[str], request: Request, flag: str, route: str, started: float
    ) -> bytes:
        try:
            message_id = await result
        except BackplaneUnavailable as exc:
            raise HttpError(503, str(exc)) from None
        self._host.counts.publish_done(route, time.perf_counter() - started)
        return self._json(request, {flag: True, "id": message_id})

    def _sse(self, request: Request, conn: Exchange, channel: str) -> AnyReply:
        self._check_channel(channel)
        # Both answers, the stream and the short one that says "retry later", are bodies
        # without a length, which only closing the connection ends (RFC 9112 §6.3). Kept
        # alive, the short one left EventSource waiting out keepalive_timeout_s to reconnect.
        request.keep_alive = False
        access = self._host.access
        grant = access.subscriber_grant(request.headers, request.query, channel, time.time())
        cors = self._host.cors_for(request.headers)
        header = request.header(b"last-event-id")
        last_id = header.decode("latin-1") if header is not None else None
        last_id = last_id or request.query.get("lastEventId") or None
        return self._when_attached(
            channel,
            last_id,
            lambda: self._open_stream(conn, channel, last_id, cors, grant, request.client),
            # NOTES: any status but 200 stops EventSource for good. A 200 that ends at once
            # makes it reconnect after `retry`, which a client should do while we cannot serve.
            lambda exc: stream_unavailable(cors, str(exc)),
        )

    def _open_stream(
        self,
        conn: Exchange,
        channel: str,
        last_id: str | None,
        cors: CorsHeaders,
        grant: Grant | None,
        client: str,
    ) -> Reply:
        self._host.hub.head_id(channel)  # raises HubFull before the socket changes hands
        transport, _ = conn.take_over()
        if grant is None:
            stream = EventStream(self._host, transport, client)
        else:
            expires_at = self._host.access.expires_at(grant)
            stream = EventStream(self._host, transport, client, expires_at, grant.sub)
        stream.open(channel, last_id, cors)
        return None

    def _poll(self, request: Request, conn: Exchange, channel: str) -> AnyReply:
        self._check_channel(channel)
        # Checked on every poll; a parked one is answered within its timeout, so it keeps
        # nothing of its token but the user it names (for presence).
        access = self._host.access
        grant = access.subscriber_grant(request.headers, request.query, channel, time.time())
        user = None if grant is None else grant.sub
        timeout_s = self._poll_timeout(request.query.get("timeout"))
        since = request.query.get("since") or None
        return self._when_attached(
            channel,
            since,
            lambda: self._poll_now(request, conn, channel, since, timeout_s, user),
            None,
        )

    def _poll_now(
        self,
        request: Request,
        conn: Exchange,
        channel: str,
        since: str | None,
        timeout_s: float,
        user: str | None,
    ) -> Reply:
        ready = self._host.hub.poll(channel, since)
        cors = self._host.cors_for(request.headers)
        if isinstance(ready, PollAnswer):
            reply = poll_response(
                cors, self._shared_answer(channel, since, ready), request.keep_alive
            )
            if ready.messages:
                self._host.counts.poll_bytes += len(reply)
            return reply
        transport, pending = conn.hand_over()
        parked = ParkedPoll(
            self._host, transport, channel, request.keep_alive, cors, request.client, user
        )
        parked.park(conn, pending, timeout_s)
        return None

    def _shared_answer(self, channel: str, since: str | None, answer: PollAnswer) -> PollAnswer:
        """The answer given last when it is the same one, so that its bytes are built once.

        Pollers a flush woke re-poll with the same cursor; a message published before they
        do is answered at once, and every one of them is given the same messages up to the
        same new cursor: the answer (and its encoded responses) of the first one."""
        key = (channel, since, answer.cursor, answer.reset)
        last = self._last_answer
        if last is not None and last[0] == key:
            return last[1]
        self._last_answer = (key, answer)
        return answer

    def _when_attached(
        self,
        channel: str,
        since: str | None,
        then: Callable[[], Reply],
        unavailable: Callable[[Exception], bytes] | None,
    ) -> AnyReply:
        """Run `then` once `channel` is usable here: now, or after the backplane synced it."""
        pending = self._host.attach(channel, since)
        if pending is None:
            return self._guarded(then, unavailable)
        return self._after_attach(pending, channel, then, unavailable)

    async def _after_attach(
        self,
        pending: asyncio.Future[None],
        channel: str,
        then: Callable[[], Reply],
        unavailable: Callable[[Exception], bytes] | None,
    ) -> Reply:
        try:
            await pending
        except (BackplaneUnavailable, HubFull) as exc:
            if unavailable is not None:
                return unavailable(exc)
            raise HttpError(503, str(exc)) from None
        return self._guarded(then, unavailable)

    def _guarded(
        self, then: Callable[[], Reply], unavailable: Callable[[Exception], bytes] | None
    ) -> Reply:
        try:
            return then()
        except (HubFull, NotAttached) as exc:
            if unavailable is not None:
                return unavailable(exc)
            raise HttpError(503, f"channel unavailable: {exc}") from None

    def _poll_timeout(self, text: str | None) -> float:
        config = self._host.config
        if text is None or text == "":
            return config.poll_timeout_s
        try:
            value = float(text)
        except ValueError:
            raise HttpError(400, "timeout must be a number of seconds") from None
        if not 0 <= value <= config.poll_max_timeout_s:
            raise HttpError(400, f"timeout must be in 0..{config.poll_max_timeout_s} seconds")
        return value

    def _presence(self, request: Request, conn: Exchange, channel: str) -> AnyReply:
        """Who is subscribed to `channel` (rawrt.presence); the rules of subscribing."""
        self._check_channel(channel)
        self._host.access.subscriber_grant(request.headers, request.query, channel, time.time())
        presence = self._host.presence(channel)
        if isinstance(presence, Presence):
            return self._json(request, presence.as_json(channel))
        return self._presence_later(presence, request, channel)

    async def _presence_later(
        self, pending: asyncio.Future[Presence], request: Request, channel: str
    ) -> bytes:
        try:
            presence = await pending
        except BackplaneUnavailable as exc:
            raise HttpError(503, str(exc)) from None
        return self._json(request, presence.as_json(channel))

    def _history(self, request: Request, conn: Exchange, channel: str) -> AnyReply:
        """The messages the history holds after `since`, with ids and timestamps."""
        self._check_channel(channel)
        self._host.access.subscriber_grant(request.headers, request.query, channel, time.time())
        limit = self._history_limit(request.query.get("limit"))
        since = request.query.get("since") or None
        return self._when_attached(
            channel, since, lambda: self._history_now(request, channel, since, limit), None
        )

    def _history_now(self, request: Request, channel: str, since: str | None, limit: int) -> bytes:
        messages, reset = self._host.hub.history(channel, since, limit)
        body = history_body(channel, messages, self._host.hub.head_id(channel), reset)
        cors = self._host.cors_for(request.headers)
        return http.response(200, body, headers=cors, keep_alive=request.keep_alive)

    def _history_limit(self, text: str | None) -> int:
        most = self._host.config.history_max_limit
        if text is None or text == "":
            return most
        if not text.isdigit() or not 1 <= int(text) <= most:
            raise HttpError(400, f"limit must be a whole number in 1..{most}")
        return int(text)

    def _healthz(self, request: Request, conn: Exchange, _: str) -> bytes:
        return self._json(request, {"status": "ok"})

    def _readyz(self, request: Request, conn: Exchange, _: str) -> bytes:
        ready = self._host.ready
        return self._json(request, {"ready": ready}, 200 if ready else 503)

    def _client_js(self, request: Request, conn: Exchange, _: str) -> bytes:
        return self._asset(request, self._client)

    def _demo_page(self, request: Request, conn: Exchange, _: str) -> bytes:
        assert self._demo is not None  # the route exists only with the page
        return self._asset(request, self._demo)

    def _asset(self, request: Request, asset: Asset) -> bytes:
        etag = request.header(b"if-none-match")
        return asset.answer(etag, self._host.cors_for(request.headers), request.keep_alive)

    def _metrics(self, request: Request, conn: Exchange, _: str) -> bytes:
        self._host.access.check_metrics(request.headers)
        body = self._host.scrape()
        if body is None:
            raise HttpError(404, "no such route")
        return http.response(200, body, content_type=CONTENT_TYPE, keep_alive=request.keep_alive)

    def _preflight(self, request: Request, conn: Exchange, _: str) -> bytes:
        headers = self._host.access.preflight_headers(request.headers)
        return http.response(204, headers=headers, keep_alive=request.keep_alive)

    def _not_found(self, request: Request, conn: Exchange, _: str) -> bytes:
        raise HttpError(404, "no such route")

    # --- helpers ---------------------------------------------------------------------------

    def _check_channel(self, channel: str) -> None:
        # The grammar WebSocket frames are held to as well (rawrt.wire.names).
        problem = names.channel_problem(channel, self._host.config.max_channel_bytes)
        if problem is not None:
            raise HttpError(400, problem)

    def _json(self, request: Request, value: object, status: int = 200) -> bytes:
        cors = self._host.cors_for(request.headers)
        return http.json_response(status, value, headers=cors, keep_alive=request.keep_alive)


class MetricsRouter(Router):
    """The router of the metrics listener (`metrics_host`): /metrics and nothing else."""

    def __init__(self, host: RouterHost) -> None:
        self._host = host
        self._set_routes([_METRICS_ROUTE])
