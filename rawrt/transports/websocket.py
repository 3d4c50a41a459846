"""WebSocket connections after the upgrade: frames in through wsproto, frames out prebuilt.

`WebSocketSession` does what every WebSocket endpoint needs: it parses client frames with
wsproto's `Connection`, enforces the message-size limit wsproto lacks (1009), answers pings,
runs the close handshake, and keeps the peer alive-checked (the server's liveness sweep calls
`check_liveness`). Subclasses say what a complete message means:

- `ChannelSocket` speaks rawrt's JSON protocol (rawrt.wire.envelope) against the hub, each
  client message paid for from its token bucket when `--max-client-messages-per-s` is set
  (rawrt.netpolicy): over the rate it gets an error frame and is not acted on, a whole burst
  over it closes the socket with 1008;
- `EchoSocket` sends every message back, for the Autobahn|Testsuite.

What a socket refuses is counted in its host's `counts` (rawrt.counts): a close with a code
other than 1000 and 1001, and an error frame, by the HTTP status it stands for (`_REFUSED`).

Memory matters here because most sockets are idle: wsproto's parser (about 1.7 KiB) exists
only while bytes are being parsed. Between messages, when it holds no partial frame, it is
dropped, and the next byte makes a fresh one; an idle subscriber keeps a few slots and its
subscriptions.

With permessage-deflate negotiated (rawrt.wire.deflate), the session keeps an `Inflater`,
wsproto's extension for it, which outlives the parsers it is handed to (it holds the client's
compression context between messages) and makes its zlib state only on the first compressed
message. A channel socket subscribes as `Kind.WS_DEFLATE` when the frames compressed once
suit its peer, and is then written the same compressed bytes as every other such socket.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    TextMessage,
)

from rawrt.edge import SocketHost
from rawrt.errors import (
    AccessDenied,
    BackplaneUnavailable,
    BadMessage,
    HubFull,
    NotAttached,
    Unauthorized,
    WebSocketClose,
)
from rawrt.hub import Kind, Subscription
from rawrt.netpolicy import Budget, budget_verdict, take_token
from rawrt.tokens import Grant
from rawrt.wire import deflate, envelope, wsframe
from rawrt.wire.deflate import Agreement, Inflater

__all__ = ["ChannelSocket", "EchoSocket", "WebSocketSession"]

log = logging.getLogger("rawrt")

# RFC 6455 §7.4.1 close codes rawrt sends.
NORMAL = 1000
GOING_AWAY = 1001
POLICY = 1008
TOO_BIG = 1009
INTERNAL = 1011
# The `data` of the error frame a message over the client's rate gets.
RATE_LIMITED = "Rate limited"
# Sent by peers but never on the wire: "no status" and "abnormal closure".
_NOT_ON_WIRE = (1005, 1006)
# The HTTP status an error frame is counted under, by its `data` (rawrt.counts); any other
# error frame is a bad message (400).
_REFUSED = {
    "Unauthorized": 401,
    "Forbidden": 403,
    RATE_LIMITED: 429,
    "Server busy": 503,
    "Backplane unavailable": 503,
    "Publish failed": 503,
}


def _parser_is_idle(parser: Connection) -> bool:
    """True when `parser` holds no partial frame or message, so a new one is equivalent.

    This reads wsproto internals (1.2, 1.3); if they change, the answer is False and rawrt
    merely keeps the parser, which is correct and costs memory.
    """
    try:
        proto = parser._proto
        decoder = proto._frame_decoder
        return (
            parser.state is ConnectionState.OPEN
            and not parser._events
            and decoder.header is None
            and len(decoder.buffer) == 0
            and proto._message_decoder.opcode is None
        )
    except AttributeError:
        return False


class WebSocketSession(asyncio.Protocol):
    """An open WebSocket; subclasses handle complete messages."""

    __slots__ = (
        "_closing",
        "_deflate",
        "_host",
        "_parser",
        "_parts",
        "_parts_bytes",
        "_ping_due",
        "_pong_due",
        "_transport",
        "_write_paused",
        "client",
    )

    def __init__(
        self,
        host: SocketHost,
        transport: asyncio.Transport,
        client: str,
        deflate: Agreement | None = None,
    ) -> None:
        self._host = host
        self.client = client  # the address it counts for and logs name (rawrt.edge.Session)
        # permessage-deflate, when the handshake agreed on it: inflates the client's messages.
        self._deflate = (
            None if deflate is None else Inflater(deflate, host.config.max_message_bytes)
        )
        self._transport: asyncio.Transport | None = transport
        self._parser: Connection | None = None
        self._parts: list[str | bytes] | None = None  # fragments of a message in progress
        self._parts_bytes = 0
        self._ping_due = host.clock() + host.config.ping_interval_s
        self._pong_due: float | None = None
        self._closing = False
        self._write_paused = False

    def start(
        self, pending: bytes, grant: Grant | None = None, refused: Unauthorized | None = None
    ) -> None:
        """Called once the 101 response is written; `pending` came in with the upgrade.

        `grant` is what the upgrade request's token allows; `refused` says its token was
        invalid, and the socket is closed with 4401 before anything it sent is read.
        """
        assert self._transport is not None
        self._transport.set_protocol(self)
        self._host.register_socket(self)
        if refused is not None:
            self.close(Unauthorized.CLOSE_CODE, refused.detail)
            return
        self.authorize(grant)
        if pending:
            self.data_received(pending)

    def authorize(self, grant: Grant | None) -> None:
        """Keep what a token allows; a session that serves no channels needs nothing of it."""

    def check_expiry(self, wall_now: float) -> None:
        """Called by the server's sweep (with tokens on); only a channel socket holds one."""

    # --- incoming --------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return  # after our close frame, RFC 6455 §5.5.1 lets us ignore everything
        parser = self._parser or Connection(
            ConnectionType.SERVER, None if self._deflate is None else [self._deflate]
        )
        self._parser = parser
        parser.receive_data(data)
        try:
            for event in parser.events():
                self._on_event(event)
                if self._closing:
                    return
        except WebSocketClose as exc:
            self.close(exc.code, exc.reason)
            return
        except Exception:
            log.exception("bug in a WebSocket session of %s (%x)", self.client, id(self))
            self.close(INTERNAL)
            return
        if _parser_is_idle(parser):
            self._parser = None

    def _on_event(self, event: Event) -> None:
        if isinstance(event, (TextMessage, BytesMessage)):
            self._on_fragment(
                bytes(event.data) if isinstance(event.data, bytearray) else event.data,
                event.message_finished,
            )
        elif isinstance(event, Ping):
            self.send_frame(wsframe.frame(event.payload, wsframe.OP_PONG))
        elif isinstance(event, Pong):
            self._pong_due = None
        elif isinstance(event, CloseConnection):
            self._on_close(event)

    def _on_fragment(self, data: str | bytes, finished: bool) -> None:
        size = self._parts_bytes + _wire_size(data)
        if size > self._host.config.max_message_bytes:
            raise WebSocketClose(TOO_BIG, "message too big")
        if finished and self._parts is None:
            self.on_message(data)
            return
        if self._parts is None:
            self._parts = []
        self._parts.append(data)
        self._parts_bytes = size
        if finished:
            parts, self._parts, self._parts_bytes = self._parts, None, 0
            self.on_message("".join(parts) if isinstance(data, str) else b"".join(parts))  # type: ignore[arg-type]

    def _on_close(self, event: CloseConnection) -> None:
        parser = self._parser
        if parser is not None and parser.state is ConnectionState.REMOTE_CLOSING:
            # The peer closed: echo its code (§5.5.1) and close the TCP connection first.
            self.close(event.code, echo=True)
        else:
            # wsproto found a protocol error (1002, 1007, ...) and stays OPEN: we close.
            self.close(event.code, event.reason or "")

    def on_message(self, data: str | bytes) -> None:
        raise NotImplementedError

    # --- outgoing --------------------------------------------------------------------------

    def send_frame(self, frame: bytes) -> None:
        if self._transport is not None and not self._closing:
            self._transport.write(frame)

    def send_text(self, text: str) -> None:
        self.send_frame(wsframe.frame(text.encode()))

    def send_error(
        self,
        reason: str,
        data: str = envelope.INVALID_FORMAT,
        channel: str | None = None,
        ref: str | None = None,
    ) -> None:
        """An error frame (rawrt.wire.envelope), counted as a refusal."""
        self._host.counts.refuse("websocket", _REFUSED.get(data, 400))
        self.send_text(envelope.error(reason, data=data, channel=channel, ref=ref))

    def close(self, code: int, reason: str = "", *, echo: bool = False) -> None:
        """Send a close frame and close the TCP connection once it is written."""
        if self._closing or self._transport is None:
            return
        self._closing = True
        if not echo and code not in (NORMAL, GOING_AWAY, *_NOT_ON_WIRE):
            self._host.counts.refuse("websocket", code)
        self.release()
        if code in _NOT_ON_WIRE:
            frame = wsframe.frame(b"", wsframe.OP_CLOSE) if echo else wsframe.close_frame(NORMAL)
        else:
            frame = wsframe.close_frame(code, reason)
        self._transport.write(frame)
        self._parser = None
        if not self._transport.can_write_eof():  # TLS: no half-close, the alert ends it
            self._transport.close()
            return
        # Half-close and read on until the peer closes too (RFC 6455 §7.1.1: the client closes
        # after the server). Closing a socket that still holds unread input sends a RST, which
        # can destroy our close frame in flight: a browser then sees 1006, not our code. A
        # peer that never closes is cut by the sweep; `_pong_due` is its deadline from here.
        self._transport.write_eof()
        self._transport.resume_reading()
        self._pong_due = self._host.clock() + self._host.config.ping_timeout_s

    def terminate(self) -> None:
        """Drop a dead peer without a closing handshake."""
        self.release()
        if self._transport is not None:
            self._transport.abort()

    abort = terminate

    def release(self) -> None:
        """Give up whatever the session holds in the hub; subclasses extend."""

    # --- liveness and flow control ---------------------------------------------------------

    def check_liveness(self, now: float) -> None:
        """Called by the server's sweep: ping when due, terminate if the pong is late."""
        if self._closing:
            if self._pong_due is not None and now >= self._pong_due:
                self.terminate()  # our close frame went out; the peer never closed its side
            return
        if self._pong_due is not None and now >= self._pong_due:
            log.info("terminating a WebSocket peer (%s) that did not answer a ping", self.client)
            self.terminate()
        elif now >= self._ping_due:
            config = self._host.config
            self._ping_due = now + config.ping_interval_s
            if self._pong_due is None:
                self._pong_due = now + config.ping_timeout_s
            self.send_frame(_PING)

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._transport is not None:
            self._transport.pause_reading()  # a client that does not read may not send

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._transport is not None and not self._closing:
            self._transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.release()
        self._transport = None
        self._parser = None
        self._host.forget(self)

    def shutdown(self) -> None:
        self.close(GOING_AWAY, "server shutting down")


class ChannelSocket(WebSocketSession):
    """A WebSocket speaking rawrt's JSON protocol: subscribe, unsubscribe, publish, ping."""

    __slots__ = ("_grant", "_held", "_subs", "_tokens", "_tokens_at")

    def __init__(
        self,
        host: SocketHost,
        transport: asyncio.Transport,
        client: str,
        deflate: Agreement | None = None,
    ) -> None:
        super().__init__(host, transport, client, deflate)
        self._subs: dict[str, Subscription] = {}
        # What the socket's token allows (rawrt.access): each subscribe and publish is checked
        # against it; the fan-out never looks at it. None: no token (yet).
        self._grant: Grant | None = None
        # The message budget (rawrt.netpolicy): a token bucket of two floats, refilled when a
        # message comes, from the time since the last one. No timer, no task.
        self._tokens = self._tokens_at = 0.0
        if host.config.max_client_messages_per_s:
            self._tokens = float(host.config.max_client_message_burst)
            self._tokens_at = host.clock()
        # Messages that arrived while a subscribe waits for the backplane to attach its
        # channel; they are handled after it, in order. Reading is paused meanwhile, so this
        # holds at most what one read brought.
        self._held: list[str | bytes] | None = None

    def on_message(self, data: str | bytes) -> None:
        if self._host.config.max_client_messages_per_s and not self._within_budget():
            return
        if self._held is not None:
            self._held.append(data)
        else:
            self._dispatch(data)

    def _within_budget(self) -> bool:
        """Spend a token on this message: True to handle it; an error frame when over the
        rate; far over it (a whole burst below zero), close with 1008 (policy)."""
        config = self._host.config
        rate, burst = config.max_client_messages_per_s, config.max_client_message_burst
        now = self._host.clock()
        self._tokens = take_token(self._tokens, now - self._tokens_at, rate, burst)
        self._tokens_at = now
        verdict = budget_verdict(self._tokens, burst)
        if verdict is Budget.WITHIN:
            return True
        if verdict is Budget.OVER:
            reason = f"more than {rate:g} messages per second (burst {burst})"
            self.send_error(reason, data=RATE_LIMITED)
            return False
        log.info("closing the WebSocket of %s: far over its message rate", self.client)
        raise WebSocketClose(POLICY, "message rate exceeded")

    def _dispatch(self, data: str | bytes) -> None:
        try:
            if not isinstance(data, str):
                raise BadMessage("binary frames are not part of the protocol; send JSON text")
            command = envelope.parse_client_message(data, self._host.config.max_channel_bytes)
            self._handle(command)
        except BadMessage as exc:
            self.send_error(exc.reason, ref=exc.ref)
        except (HubFull, NotAttached) as exc:
            self.send_error(str(exc), data="Server busy")

    def _handle(self, command: envelope.ClientMessage) -> None:
        access = self._host.access
        if isinstance(command, envelope.Subscribe):
            if self._allowed(access.check_subscribe, command.channel):
                self._subscribe(command.channel, command.since)
        elif isinstance(command, envelope.Unsubscribe):
            self._unsubscribe(command.channel)
        elif isinstance(command, envelope.Publish):
            self._publish(command)
        elif isinstance(command, envelope.Auth):
            self._authenticate(command.token)
        else:
            self.send_text(envelope.pong(int(time.time() * 1000)))

    def _allowed(
        self, check: Callable[[Grant | None, str], None], channel: str, ref: str | None = None
    ) -> bool:
        """Ask the policy; a refusal is an error frame naming the channel, and no more."""
        try:
            check(self._grant, channel)
        except AccessDenied as exc:
            kind = "Unauthorized" if exc.status == 401 else "Forbidden"
            self.send_error(exc.detail, data=kind, channel=channel, ref=ref)
            return False
        return True

    def _publish(self, command: envelope.Publish) -> None:
        """Publish; a `ref` is answered with `published` and the id, or an error carrying it."""
        channel, ref = command.channel, command.ref
        if not self._allowed(self._host.access.check_publish, channel, ref):
            return
        started = time.perf_counter()
        try:
            result = self._host.publish_json(channel, command.data)
        except (HubFull, NotAttached) as exc:
            self.send_error(str(exc), data="Server busy", channel=channel, ref=ref)
            return
        if not isinstance(result, str):
            result.add_done_callback(functools.partial(self._published, channel, ref, started))
            return
        self._host.counts.publish_done("websocket", time.perf_counter() - started)
        if ref is not None:
            self.send_text(envelope.published(channel, result, ref))

    # --- tokens ----------------------------------------------------------------------------

    def authorize(self, grant: Grant | None) -> None:
        self._grant = grant

    def _authenticate(self, token: str | None) -> None:
        """An `auth` frame: a valid token replaces the socket's grant; an invalid one closes."""
        access = self._host.access
        if not access.tokens_on:
            raise BadMessage("this server takes no tokens")
        try:
            if token is None:
                raise Unauthorized("an auth frame needs a token string", invalid_token=True)
            grant = access.verify(token, time.time())
        except Unauthorized as exc:
            self.close(Unauthorized.CLOSE_CODE, exc.detail)
            return
        self._grant = grant
        for channel in list(self._subs):  # a narrower refresh drops what it no longer covers
            try:
                access.check_subscribe(grant, channel)
            except AccessDenied:
                self._unsubscribe(channel)
        self.send_text(envelope.authenticated(grant.sub, grant.exp))

    def check_expiry(self, wall_now: float) -> None:
        """Called by the server's sweep: a token that ran out without a refresh closes 4401."""
        grant = self._grant
        if grant is not None and self._host.access.expired(grant, wall_now):
            self.close(Unauthorized.CLOSE_CODE, "the token has expired")

    def _subscribe(self, channel: str, since: str | None) -> None:
        hub = self._host.hub
        if channel in self._subs:
            hub.unsubscribe(self._subs.pop(channel))  # a new `since` restarts the replay
        elif len(self._subs) >= self._host.config.max_subscriptions:
            raise BadMessage(f"at most {self._host.config.max_subscriptions} subscriptions")
        pending = self._host.attach(channel, since)
        if pending is None:
            self._join(channel, since)
        else:
            self._hold_until(pending, channel, since)

    def _join(self, channel: str, since: str | None) -> None:
        hub = self._host.hub
        self.send_text(envelope.subscribed(channel, hub.head_id(channel)))
        assert self._transport is not None
        user = self._grant.sub if self._grant is not None else None
        inflater = self._deflate
        kind = Kind.WS_DEFLATE if inflater and inflater.agreement.shared_frames else Kind.WS
        sub = hub.subscribe(channel, kind, self._transport.write, since, start=False, user=user)
        self._subs[channel] = sub  # known before the replay, so a full socket can pause it
        if not self._write_paused:
            hub.resume(sub)

    def _hold_until(self, pending: asyncio.Future[None], channel: str, since: str | None) -> None:
        """Wait for the backplane to attach `channel`, holding later messages meanwhile."""
        self._held = []
        if self._transport is not None:
            self._transport.pause_reading()
        pending.add_done_callback(lambda future: self._attached(future, channel, since))

    def _attached(self, future: asyncio.Future[None], channel: str, since: str | None) -> None:
        if self._transport is None or self._closing:
            return
        try:
            future.result()
            self._join(channel, since)
        except (BackplaneUnavailable, asyncio.CancelledError) as exc:
            self.send_error(str(exc), data="Backplane unavailable")
        except (HubFull, NotAttached) as exc:
            self.send_error(str(exc), data="Server busy")
        held, self._held = self._held or [], None
        while held and self._held is None:
            self._dispatch(held.pop(0))
        if self._held is not None:
            self._held[:0] = held  # another subscribe is waiting now: keep the order
        elif not self._write_paused and self._transport is not None:
            self._transport.resume_reading()

    def _published(
        self, channel: str, ref: str | None, started: float, result: asyncio.Future[str]
    ) -> None:
        """The backplane's answer: an error frame if it could not take the publish, else the
        `published` answer a `ref` asked for (answers keep the order of the publishes); a
        publish that got its id is counted."""
        if result.cancelled():
            return
        failure = result.exception()
        if failure is not None:
            self.send_error(str(failure), data="Publish failed", ref=ref)
            return
        self._host.counts.publish_done("websocket", time.perf_counter() - started)
        if ref is not None:
            self.send_text(envelope.published(channel, result.result(), ref))

    def _unsubscribe(self, channel: str) -> None:
        sub = self._subs.pop(channel, None)
        if sub is not None:
            self._host.hub.unsubscribe(sub)
        self.send_text(envelope.unsubscribed(channel))

    def release(self) -> None:
        subs, self._subs = self._subs, {}
        for sub in subs.values():
            self._host.hub.unsubscribe(sub)

    def pause_writing(self) -> None:
        super().pause_writing()
        for sub in self._subs.values():
            self._host.hub.pause(sub)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._held is not None and self._transport is not None:
            self._transport.pause_reading()  # still waiting for a channel to attach
        for sub in list(self._subs.values()):
            if self._write_paused:
                break  # a catch-up write filled the socket again
            self._host.hub.resume(sub)


class EchoSocket(WebSocketSession):
    """Sends every message back as it came (text or binary): the Autobahn fuzzing target."""

    __slots__ = ()

    def on_message(self, data: str | bytes) -> None:
        if isinstance(data, str):
            payload, opcode = data.encode(), wsframe.OP_TEXT
        else:
            payload, opcode = data, wsframe.OP_BINARY
        inflater = self._deflate
        if inflater is not None and len(payload) >= self._host.config.ws_compression_min_bytes:
            # Compressed per message with this peer's window: an echo is not a fan-out.
            bits = inflater.agreement.server_window_bits
            if bits >= deflate.MIN_DEFLATE_BITS:
                compressed = deflate.deflate(payload, bits)
                self.send_frame(wsframe.frame(compressed, opcode | wsframe.RSV1))
                return
        self.send_frame(wsframe.frame(payload, opcode))


_PING = wsframe.frame(b"", wsframe.OP_PING)


def _wire_size(data: str | bytes) -> int:
    """Bytes `data` took on the wire (wsproto hands text over decoded)."""
    return len(data) if isinstance(data, bytes) else len(data.encode())
