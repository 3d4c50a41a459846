"""`Client` and `Subscription`: the asyncio face of rawrt.client (see its docstring).

The client owns one WebSocket at a time and a task that runs it: every subscription's
subscribe goes out on it (after an auth frame when there is a token), its frames are handed
to the subscriptions' feeds (rawrt.client.core), and when it ends the task waits a
full-jitter backoff and opens the next one, forever, until the server refuses for good or
the application closes the client. Publishing is a separate HTTP POST, whose answer carries
the message's id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import time
from collections import deque
from typing import Any, Self

from rawrt.client.auth import Token, TokenSource, refresh_delay
from rawrt.client.core import Endpoint, Event, Feed, Message, Reset, State, backoff_delay
from rawrt.client.subscription import Subscription
from rawrt.client.transport import HttpPublisher, WsConnection, error_text
from rawrt.config import ClientConfig
from rawrt.errors import BadMessage, ClientError, Refused, Unreachable
from rawrt.wire.envelope import canonical_json

__all__ = ["Client", "connect"]

log = logging.getLogger("rawrt.client")

# Error frames that mean "not now": the server cannot serve this subscription yet (every
# channel slot is busy, the backplane is down). That subscription alone is retried with
# backoff on the same socket: reconnecting would make the working ones attach again too.
_BUSY = frozenset({"Server busy", "Backplane unavailable"})
# Close codes that will not change by retrying: the server's policy said no (RFC 6455 §7.4.1).
_FATAL_CLOSE = frozenset({1008})
UNAUTHORIZED_CLOSE = 4401
# Handshake statuses worth retrying: the server is overloaded, restarting or timed out.
_RETRY_STATUS = frozenset({408, 425, 429})
# Stands for the auth frame among the subscribes awaiting an answer (channels are never "").
_AUTH = ""


def connect(
    url: str,
    *,
    token: Token | None = None,
    key: str | None = None,
    config: ClientConfig | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Client:
    """A client of the rawrt server at `url` (http, https, ws or wss; a path is a prefix
    before rawrt's routes). Use it as `async with connect(...) as client:`.

    `token` (a string, or a function returning one, called again on every connect) is sent
    as the WebSocket's first frame and as `Authorization: Bearer` on publishes; `key` is a
    publish key sent as `X-API-Key` instead.
    """
    return Client(url, token=token, key=key, config=config, ssl_context=ssl_context)


class Client:
    def __init__(
        self,
        url: str,
        *,
        token: Token | None = None,
        key: str | None = None,
        config: ClientConfig | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.config = config or ClientConfig()
        self._endpoint = Endpoint.parse(url)
        if ssl_context is None and self._endpoint.secure:
            ssl_context = ssl.create_default_context()
        self._ssl = ssl_context
        self._token = TokenSource(token)
        self._key = key
        self._subs: dict[str, Subscription] = {}
        self._conn: WsConnection | None = None
        # Channels whose subscribe awaits its answer on this connection, in sending order:
        # the server answers in order, and an error frame without a channel is the oldest's.
        self._awaiting: deque[str] = deque()
        self._task: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._refresh: asyncio.TimerHandle | None = None  # the next in-band token refresh
        self._refreshing: asyncio.Task[None] | None = None
        self._failure: ClientError | None = None  # why the server refused us for good
        self._rng = random.Random()
        self._publisher = HttpPublisher(self._endpoint, self._ssl, self.config)
        self.connections = 0  # WebSockets opened so far (a reconnect adds one)

    # --- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Open the first connection: Unreachable or Refused if it fails. Later ones are
        retried forever."""
        self._check_usable()
        if self._task is not None:
            return
        conn = await self._open()
        self._task = asyncio.create_task(self._run(conn))

    async def close(self) -> None:
        """Close the WebSocket and the publish connection; every subscription ends."""
        self._closed.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._conn is not None:
            await self._conn.aclose()
            self._conn = None
        await self._publisher.aclose()
        for sub in list(self._subs.values()):
            sub._end()
        self._subs.clear()

    @property
    def connected(self) -> bool:
        return self._conn is not None

    # --- subscribing and publishing --------------------------------------------------------

    def subscribe(self, channel: str, since: str | None = None) -> Subscription:
        """Follow `channel` from the message after `since` (from now when None): iterate the
        result for `Message` and `Reset` events. One subscription per channel per client."""
        self._check_usable()
        if not isinstance(channel, str) or not channel:
            raise ValueError("a channel is a non-empty string")
        if channel in self._subs:
            raise ValueError(f"already subscribed to {channel!r} on this client")
        feed = Feed(channel, since, self.config.queue_size, self.config.queue_max_bytes)
        sub = Subscription(self, feed)
        self._subs[channel] = sub
        self._send_subscribe(feed)
        return sub

    async def publish(self, channel: str, data: Any) -> str:
        """Publish `data` (anything JSON holds) to `channel` over HTTP; its message id.
        Refused with the server's status and error, or Unreachable."""
        if self._closed.is_set():
            raise ClientError("the client is closed")
        try:
            body = canonical_json(data).encode()
        except (ValueError, TypeError, BadMessage) as exc:
            raise ValueError(f"data is not JSON: {exc}") from None
        headers = []
        if self._key is not None:
            headers.append(("X-API-Key", self._key))
        elif self._token.present:
            headers.append(("Authorization", f"Bearer {await self._token.get()}"))
        target = self._endpoint.publish_target(channel)
        status, answer = await self._publisher.post(target, body, headers)
        if status != 200:
            raise Refused(status, error_text(answer), channel=channel)
        try:
            return str(json.loads(answer)["id"])
        except (ValueError, KeyError, TypeError):
            raise Refused(status, f"not a publish answer: {answer[:200]!r}") from None

    # --- the connection task ---------------------------------------------------------------

    async def _open(self) -> WsConnection:
        conn = await WsConnection.open(self._endpoint, self._ssl, self.config)
        self.connections += 1
        if self._token.present:
            try:
                token = await self._token.get()
            except Exception as exc:  # the application's getter: retried like the network
                await conn.aclose()
                raise Unreachable(f"the token getter failed: {exc!r}") from exc
            conn.send_text(json.dumps({"type": "auth", "token": token}))
        return conn

    async def _run(self, conn: WsConnection) -> None:
        try:
            await self._keep_connected(conn)
        except Exception as exc:  # a bug: say so to every subscription rather than hang
            log.exception("the client's connection task failed")
            self._fail_all(ClientError(f"internal error: {exc!r}"))

    async def _keep_connected(self, conn: WsConnection) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            opened_at = loop.time()
            failure = await self._serve(conn)
            if failure is not None:
                self._fail_all(failure)
                return
            if loop.time() - opened_at >= self.config.backoff_reset_s:
                attempt = 0
            next_conn = await self._reconnect(attempt)
            if next_conn is None:
                return
            conn, attempt = next_conn

    async def _reconnect(self, attempt: int) -> tuple[WsConnection, int] | None:
        """The next connection, after backoff; None once closed or refused for good."""
        c = self.config
        while True:
            delay = backoff_delay(attempt, c.backoff_min_s, c.backoff_max_s, self._rng)
            attempt += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), delay)
            if self._closed.is_set():
                return None
            try:
                return await self._open(), attempt
            except Unreachable as exc:
                log.info("reconnect failed (%s); retrying", exc)
            except Refused as exc:
                if not self._retryable(exc.status):
                    self._fail_all(exc)
                    return None
                log.info("reconnect refused (%s); retrying", exc)

    def _retryable(self, status: int) -> bool:
        if status == 401 or status == UNAUTHORIZED_CLOSE:
            return self._token.refreshable  # a getter may have a fresh token next time
        return status >= 500 or status in _RETRY_STATUS

    async def _serve(self, conn: WsConnection) -> ClientError | None:
        """Run `conn` until it ends; the error that ends the client, or None to reconnect."""
        self._conn = conn
        self._awaiting.clear()
        if self._token.present:
            self._awaiting.append(_AUTH)  # _open sent it first: its answer comes first
        for sub in self._subs.values():
            if sub._feed.state in (State.IDLE, State.WAITING):
                self._send_subscribe(sub._feed)
        try:
            async with contextlib.aclosing(conn.messages()) as frames:
                async for text, size in frames:
                    verdict = self._on_frame(text, size)
                    if verdict is not None:
                        await conn.aclose()
                        return verdict if isinstance(verdict, ClientError) else None
        except ClientError as exc:
            return exc
        except asyncio.CancelledError:
            await conn.aclose()  # the application closed the client: say goodbye
            raise
        finally:
            self._conn = None
            self._stop_refresh()
            for sub in self._subs.values():
                sub._feed.disconnected()
        code = conn.close_code
        log.info("connection closed (%s %s); reconnecting", code, conn.close_reason)
        if code == UNAUTHORIZED_CLOSE and not self._token.refreshable:
            return Refused(code, conn.close_reason or "token refused")
        if code in _FATAL_CLOSE:
            return Refused(code, conn.close_reason or "refused by the server's policy")
        return None

    def _check_usable(self) -> None:
        if self._closed.is_set():
            raise ClientError("the client is closed")
        if self._failure is not None:
            raise self._failure

    def _fail_all(self, error: ClientError) -> None:
        log.warning("giving up: %s", error)
        self._failure = error
        for sub in list(self._subs.values()):
            sub._feed.fail(error)
            sub._wake()

    # --- frames from the server ------------------------------------------------------------

    def _on_frame(self, text: str, size: int) -> ClientError | bool | None:
        """Handle one server frame; not None to close the connection (an error: for good)."""
        try:
            frame = json.loads(text)
            kind = frame["type"]
            if kind == "message":
                self._on_event(Message(frame["channel"], frame["id"], frame["data"],
                                       int(frame["timestamp"])), size)  # fmt: skip
            elif kind == "reset":
                self._on_event(Reset(frame["channel"], frame["id"]), size)
            elif kind == "subscribed":
                self._on_subscribed(frame["channel"], frame["id"])
            elif kind == "error":
                return self._on_error(frame)
            elif kind == "authenticated":
                self._on_authenticated(float(frame["exp"]))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring a frame the client cannot read (%s): %.200s", exc, text)
        return None  # pong, unsubscribed, authenticated: nothing to do

    def _on_event(self, event: Event, size: int) -> None:
        sub = self._subs.get(event.channel)
        if sub is None:
            return
        if isinstance(event, Message):
            frame = sub._feed.on_message(event, size)
        else:
            frame = sub._feed.on_reset(event, size)
        if frame is not None and self._conn is not None:
            self._conn.send_text(frame)  # the queue is full: unsubscribe until it drains
        sub._wake()

    def _on_subscribed(self, channel: str, head_id: str) -> None:
        with contextlib.suppress(ValueError):
            self._awaiting.remove(channel)
        sub = self._subs.get(channel)
        if sub is not None and sub._feed.state is State.WAITING:
            sub._feed.on_subscribed(head_id)
            sub._confirmed = True
            sub._busy_attempts = 0
            sub._wake()

    def _on_error(self, frame: dict[str, Any]) -> ClientError | bool | None:
        data, reason = frame.get("data"), str(frame.get("reason") or frame.get("data"))
        channel = frame.get("channel")
        if not isinstance(channel, str):
            channel = self._awaiting.popleft() if self._awaiting else None
        else:
            with contextlib.suppress(ValueError):
                self._awaiting.remove(channel)
        log.warning("the server says %s: %s (channel %r)", data, reason, channel)
        if channel == _AUTH:
            return None  # a server without tokens refuses the auth frame: it needs none
        if data == "Unauthorized" and self._token.refreshable:
            return True  # reconnect after backoff, with a fresh token
        sub = self._subs.get(channel) if channel is not None else None
        if sub is not None and data in _BUSY:
            sub._feed.disconnected()  # not subscribed: a reconnect would subscribe it too
            sub._retry_later(self.config, self._rng)
            return None
        sub = self._subs.pop(channel, None) if channel is not None else None
        if sub is not None:
            status = {"Unauthorized": 401, "Forbidden": 403}.get(str(data), 400)
            sub._feed.refused(status, reason)
            sub._wake()
        return None

    # --- in-band token refresh ------------------------------------------------------------

    def _on_authenticated(self, exp_s: float) -> None:
        if self._awaiting and self._awaiting[0] == _AUTH:
            self._awaiting.popleft()
        if self._token.refreshable and self._conn is not None:
            self._stop_refresh()
            delay = refresh_delay(exp_s, time.time(), self.config.token_refresh_s)
            loop = asyncio.get_running_loop()
            self._refresh = loop.call_later(delay, self._start_refresh, self._conn)

    def _start_refresh(self, conn: WsConnection) -> None:
        self._refreshing = asyncio.create_task(self._send_fresh_token(conn))

    async def _send_fresh_token(self, conn: WsConnection) -> None:
        try:
            token = await self._token.get()
        except Exception as exc:  # the server closes at expiry; the reconnect asks again
            log.warning("the token getter failed (%r); the token will expire", exc)
            return
        if self._conn is conn:
            self._awaiting.append(_AUTH)
            conn.send_text(json.dumps({"type": "auth", "token": token}))

    def _stop_refresh(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
            self._refresh = None
        if self._refreshing is not None and self._refreshing is not asyncio.current_task():
            self._refreshing.cancel()
        self._refreshing = None

    # --- helpers for subscriptions ---------------------------------------------------------

    def _resubscribe(self, sub: Subscription) -> None:
        """A busy subscription's retry is due (if the socket it failed on is gone, the next
        one has subscribed it already)."""
        if self._subs.get(sub.channel) is sub and sub._feed.state is State.IDLE:
            self._send_subscribe(sub._feed)

    def _send_subscribe(self, feed: Feed) -> None:
        frame = feed.subscribe()  # WAITING now; sent on the next connection if none is open
        if self._conn is not None:
            self._awaiting.append(feed.channel)
            self._conn.send_text(frame)

    def _forget(self, sub: Subscription) -> None:
        if self._subs.get(sub.channel) is sub:
            del self._subs[sub.channel]
            if self._conn is not None:
                self._conn.send_text(sub._feed.unsubscribe())
