"""Long polling: a request parked until the channel's next flush or its timeout.

The reference design hands each message to one waiter and queues it when none waits, so
two pollers split a channel between them and a message published between polls goes to
whoever asks next. Here a poll carries a cursor (`since`, an id from any transport) and the
hub answers from the log: every poller gets every message, once, and nothing falls between
two polls. All pollers one flush wakes share a `PollAnswer` and its response bytes.

While parked, the socket belongs to a `ParkedPoll`, which keeps no HTTP parser; once it has
answered, a kept-alive connection goes back to a fresh `HttpConnection`.

A poll's timeout is kept by the server's `poll_deadlines` (rawrt.server), in buckets of
50 ms with one loop timer per bucket: the pollers one flush woke park again within a few
milliseconds of each other and share a timer, where a timer each (armed and cancelled once
per delivery) cost about as much as reading the request. A poll so times out up to 50 ms
after its timeout, never before. The server's sweep does not keep them: it ticks every few
seconds and walks every open WebSocket when it does.
"""

from __future__ import annotations

import asyncio

from rawrt.connection import HttpConnection
from rawrt.edge import CorsHeaders, PollHost, Session
from rawrt.hub import PollAnswer
from rawrt.wire import http

__all__ = ["ParkedPoll", "poll_response"]


def poll_response(cors: CorsHeaders, answer: PollAnswer, keep_alive: bool) -> bytes:
    """The response to a poll, built once per answer, connection kind and CORS answer.

    With an origin allow-list the CORS headers echo each poller's origin, so pollers from
    different pages of one flush get different bytes; those from one page still share them.
    """
    key = (keep_alive, cors)
    reply = answer.encoded.get(key)
    if reply is None:
        reply = http.response(200, answer.body(), headers=cors, keep_alive=keep_alive)
        answer.encoded[key] = reply
    return reply


class ParkedPoll(asyncio.Protocol):
    """A long-poll request waiting for its channel."""

    __slots__ = (
        "_channel",
        "_cors",
        "_deadline",
        "_host",
        "_keep_alive",
        "_pending",
        "_transport",
        "_user",
        "client",
    )

    def __init__(
        self,
        host: PollHost,
        transport: asyncio.Transport,
        channel: str,
        keep_alive: bool,
        cors: CorsHeaders,
        client: str,
        user: str | None = None,
    ) -> None:
        self._host = host
        self._user = user  # the token's `sub`, which presence lists (None: no token)
        self._cors = cors  # the CORS answer to this request, shared when it is constant
        self.client = client  # the address it counts for (rawrt.edge.Session)
        self._transport: asyncio.Transport | None = transport
        self._channel = channel
        self._keep_alive = keep_alive
        self._pending = b""  # bytes of a pipelined next request
        self._deadline: int | None = None  # its bucket in the host's poll_deadlines

    def park(self, previous: Session, pending: bytes, timeout_s: float) -> None:
        """Take the socket over from `previous` (its `HttpConnection`, which handed it over
        still registered) and wait."""
        assert self._transport is not None
        self._pending = pending
        self._transport.set_protocol(self)
        self._host.replace(previous, self)
        self._host.hub.park(self._channel, self, self._user)
        self._deadline = self._host.poll_deadlines.add(self, timeout_s)

    def wake(self, answer: PollAnswer) -> None:
        """The hub has messages: answer with them."""
        self._answer(answer)

    def expire(self) -> None:
        """Its timeout has passed (the host's poll_deadlines): answer with nothing new."""
        self._deadline = None
        # Unparked, it is where it was parked: a flush since would have woken it.
        self._answer(PollAnswer([], self._host.hub.unpark(self._channel, self)))

    def _answer(self, answer: PollAnswer) -> None:
        transport, self._transport = self._transport, None
        if transport is None:
            return
        self._forget_deadline()
        reply = poll_response(self._cors, answer, self._keep_alive)
        if answer.messages:
            self._host.counts.poll_bytes += len(reply)
        transport.write(reply)
        if self._keep_alive and not self._host.stopping:
            HttpConnection(self._host).adopt(transport, self._pending, self)
        else:
            self._host.forget(self)
            transport.close()

    def data_received(self, data: bytes) -> None:
        self._pending += data
        if len(self._pending) > self._host.config.max_pending_input_bytes:
            self._drop()

    def eof_received(self) -> bool | None:
        return None  # the client gave up on this request: close

    def connection_lost(self, exc: Exception | None) -> None:
        self._drop()

    def shutdown(self) -> None:
        """Server stop: answer now, with nothing new, and close."""
        self._keep_alive = False
        self._answer(PollAnswer([], self._host.hub.unpark(self._channel, self)))

    def abort(self) -> None:
        transport = self._transport
        self._drop()
        if transport is not None:
            transport.abort()

    def _drop(self) -> None:
        self._forget_deadline()
        self._host.hub.unpark(self._channel, self)
        if self._transport is not None:
            self._transport.close()
            self._transport = None
            self._host.forget(self)

    def _forget_deadline(self) -> None:
        if self._deadline is not None:
            self._host.poll_deadlines.discard(self, self._deadline)
            self._deadline = None
