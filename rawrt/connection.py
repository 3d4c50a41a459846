"""The HTTP/1.1 side of a TCP connection: h11 parses, rawrt routes and answers.

Every accepted socket starts here. `HttpConnection` reads requests with a
rawrt.wire.reader: the common simple request (a keep-alive re-poll) by its checked fast
path, anything else by h11 behind rawrt.wire.strict (which refuses, before h11 sees them, the
requests h11 is too lenient with: bare CR or LF, obs-fold, ambiguous framing headers, an
invalid Host, loose chunked framing). It enforces the limits h11 leaves to its user
(whole-head size, header count, target length, a deadline on every request, and on a
connection that sends nothing), and routes each complete request through its host's router.
Plain requests are answered here and the connection waits for the next one (keep-alive,
pipelining). A handler may instead hand the socket over to a transport (a WebSocket, an event
stream, a parked long poll: rawrt.routes says which) with `take_over()`, and this object is
dropped, so an open WebSocket or event stream keeps no HTTP parser. Between requests the
reader holds only the bytes that have arrived; an h11 parser is made for a request that needs
one and dropped at its end, which keeps this object's state to one request at a time.

At the connection cap (global, or the client's allowance) a new connection is not refused
blind: the route is not known at accept, and a 503 stops a browser's EventSource for good
(WHATWG HTML §9.2), so up to `max_shed_connections` of them are kept just long enough to read
their request head (bounded by `max_head_bytes` and `request_timeout_s`) and answered by the
router's `at_capacity`: 200 with `retry:` and an immediate end for an event stream, 503 for
everything else. Past that bound they get the 503 at once.

All it uses of the server is an `HttpHost` (rawrt.edge): it knows no transport and no
`Server`, and runs with a fake host in a test.

Who the client is: the TCP peer, unless the peer is a trusted proxy. Then the client is known
only once a request head arrives (rawrt.netpolicy reads its X-Forwarded-For), so such a
connection counts for nobody at accept, for the request's client from its head until its
response is written (or, when a transport takes the socket over, until it closes), and for
nobody again between requests: a proxy's pooled idle connections hold no one's allowance.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import cast

from rawrt.config import Config
from rawrt.edge import AT_CAPACITY, HttpHost, Reply, Request, Session
from rawrt.edge import RequestHeaders as Headers
from rawrt.errors import HttpError
from rawrt.logs import access as log_access
from rawrt.wire import http
from rawrt.wire.reader import Head, RequestReader, Signal

__all__ = ["HttpConnection", "Reply", "Request"]

log = logging.getLogger("rawrt")


class HttpConnection(asyncio.Protocol):
    """One TCP connection while it speaks plain HTTP/1.1."""

    __slots__ = (
        "_began",
        "_body",
        "_body_bytes",
        "_deadline",
        "_host",
        "_on_deadline",
        "_peer",
        "_proxied",
        "_reader",
        "_receiving",
        "_request",
        "_shedding",
        "_timer",
        "_transport",
        "_waiting",
        "client",
    )

    def __init__(self, host: HttpHost) -> None:
        self._host = host
        self._transport: asyncio.Transport | None = None
        self._reader = RequestReader(host.config.max_head_bytes)
        self._request: Head | None = None  # the one being read
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0  # loop time at which _on_deadline is due (see _start_timer)
        # A function, not a bound method: that would make this object a reference cycle,
        # freed only by the garbage collector instead of when the last reference goes.
        self._on_deadline: Callable[[HttpConnection], None] = HttpConnection._idle_timed_out
        self._receiving = False  # a request has begun to arrive: its deadline runs
        self._waiting: asyncio.Future[Reply] | None = None  # an answer being worked out
        self._peer = ""  # the TCP peer's address
        self._proxied = False  # the peer is a trusted proxy: each request names its client
        self.client = ""  # the address this connection counts for (see the docstring)
        self._began = 0.0  # when the request being served began to arrive (the access log)
        self._shedding = False  # over the cap: read the head only, then answer at_capacity

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but provide its methods.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        config = self._host.config
        transport.set_write_buffer_limits(config.write_high_water, config.write_low_water)
        self._identify(transport)
        if not self._host.admit(self):
            if not self._host.shed(self):
                self._host.counts.refuse("http", 503)
                transport.write(http.error_response(503, AT_CAPACITY))
                transport.close()
                self._transport = None
                return
            self._shedding = True
        # A connection that has sent nothing gets the same deadline as a request: an idle
        # socket costs a file, and without this one was held for keepalive_timeout_s.
        self._start_timer(config.request_timeout_s, HttpConnection._idle_timed_out)

    def adopt(self, transport: asyncio.Transport, pending: bytes, previous: Session) -> None:
        """Take over a kept-alive connection from `previous`, a finished long poll."""
        self._transport = transport
        transport.set_protocol(self)
        self._identify(transport)
        self._host.replace(previous, self)
        self._wait_for_request()
        if pending:
            self._reader.receive_data(pending)
            self._begin_receiving()
            asyncio.get_running_loop().call_soon(self._process)

    def _identify(self, transport: asyncio.Transport) -> None:
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if peer else ""
        proxies = self._host.trusted_proxies
        # Without trusted proxies nothing need be parsed: this runs on every re-poll.
        self._proxied = bool(proxies) and proxies.trusts_peer(self._peer)
        self.client = "" if self._proxied else self._peer

    def data_received(self, data: bytes) -> None:
        if self._transport is None:
            return
        self._begin_receiving()
        self._reader.receive_data(data)
        if self._waiting is not None and len(self._reader.pending) > (
            self._host.config.max_pending_input_bytes
        ):
            self._refuse(HttpError(400, "too much pipelined input"))
            return
        self._process()

    def eof_received(self) -> bool | None:
        self._reader.receive_data(b"")
        self._process()
        return None  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._transport = None
        self._host.forget(self)

    def shutdown(self) -> None:
        """Server stop: an idle connection closes now, a busy one after its response."""
        if self._transport is not None and not self._receiving and self._waiting is None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # --- the request cycle -----------------------------------------------------------------

    def _process(self) -> None:
        reader = self._reader
        while self._transport is not None:
            try:
                event = reader.next_event()
            except HttpError as exc:  # h11's refusals, and rawrt.wire.strict's
                self._refuse(exc)
                return
            if event is Signal.NEED_DATA or event is Signal.PAUSED:
                return
            try:
                self._on_event(event)
            except HttpError as exc:
                self._refuse(exc)
                return
            except Exception:
                log.exception("bug while serving a request from %s (%x)", self.client, id(self))
                self._refuse(HttpError(500, "internal error"))
                return

    def _on_event(self, event: Head | bytes | Signal) -> None:
        if isinstance(event, Head):
            self._start_request(event)
        elif isinstance(event, bytes):
            self._add_body(event)
        elif event is Signal.END:
            self._finish_request()
        elif event is Signal.CLOSED and self._transport is not None:
            self._transport.close()  # the client is done with this connection
            self._transport = None

    def _start_request(self, head: Head) -> None:
        self._begin_receiving()
        if self._host.config.access_log:
            self._began = time.monotonic()
        headers = head.headers
        self._request = head
        self._body = []
        self._body_bytes = 0
        _check_head(head.target, headers, self._host.config)
        if self._shedding or (self._proxied and not self._forwarded(headers)):
            self._at_capacity(head)
            return
        length = _content_length(headers)
        if length is not None and length > self._host.config.max_body_bytes:
            raise self._too_large()
        if self._reader.they_are_waiting_for_100_continue and self._transport is not None:
            self._transport.write(http.CONTINUE)

    def _forwarded(self, headers: Headers) -> bool:
        """A request through a trusted proxy: count it for the client the proxy names;
        False when that client is at its allowance."""
        forwarded = [value for name, value in headers if name == b"x-forwarded-for"]
        real_ip = next((value for name, value in headers if name == b"x-real-ip"), None)
        client = self._host.trusted_proxies.client_address(self._peer, forwarded, real_ip)
        if not self._host.reclaim(self, client):
            self.client = ""
            return False
        self.client = client
        return True

    def _at_capacity(self, head: Head) -> None:
        """Answer a request the server has no room for (see the module docstring), unread
        body and all, and close."""
        # Counted as the cap's 503 even when an event stream is told to retry with a 200.
        self._host.counts.refuse("http", 503)
        self._request = None
        request = _request_of(head, b"", self.client)
        request.keep_alive = False
        self.send(_for_method(self._host.router.at_capacity(request), request), False)

    def _add_body(self, data: bytes) -> None:
        self._body.append(data)
        self._body_bytes += len(data)
        if self._body_bytes > self._host.config.max_body_bytes:
            raise self._too_large()

    def _too_large(self) -> HttpError:
        return HttpError(413, f"body is larger than {self._host.config.max_body_bytes} bytes")

    def _finish_request(self) -> None:
        started, self._request = self._request, None
        assert started is not None
        self._receiving = False
        self._cancel_timer()
        request = _request_of(started, b"".join(self._body), self.client)
        self._body = []
        if self._host.stopping:
            # This connection closes after its answer (send() sees to that); RFC 9112 §9.6:
            # say so in the answer, so a client knows not to send anything more on it.
            request.keep_alive = False
        try:
            handler, channel = self._host.router.resolve(request)
            reply = handler(request, self, channel)
        except HttpError as exc:
            reply = self._error_reply(exc, request)
        if isinstance(reply, bytes):
            self._log_access(request, reply)
            self.send(_for_method(reply, request), request.keep_alive)
        elif reply is not None:
            self._await_reply(reply, request)
        else:  # the handler took the connection over
            self._log_access(request, None)

    def _error_reply(self, exc: HttpError, request: Request) -> bytes:
        # The whole request has been read, so the connection can go on after this.
        self._host.counts.refuse("http", exc.status)
        headers = (*exc.headers, *self._host.cors_for(request.headers))
        return http.error_response(
            exc.status, exc.detail, headers=headers, keep_alive=request.keep_alive
        )

    def _await_reply(self, reply: Awaitable[Reply], request: Request) -> None:
        """A handler that must wait (for Redis): answer when it is done, in order."""
        waiting = self._waiting = asyncio.ensure_future(reply)
        waiting.add_done_callback(lambda _: self._reply_ready(waiting, request))

    def _reply_ready(self, waiting: asyncio.Future[Reply], request: Request) -> None:
        self._waiting = None
        if waiting.cancelled():
            return  # the server is stopping
        try:
            reply = waiting.result()
        except HttpError as exc:
            reply = self._error_reply(exc, request)
        except Exception:
            log.exception("bug while serving a request from %s (%x)", self.client, id(self))
            reply = self._error_reply(HttpError(500, "internal error"), request)
        self._log_access(request, reply)
        if reply is not None:
            self.send(_for_method(reply, request), request.keep_alive)
            self._process()  # requests pipelined behind this one

    def _log_access(self, request: Request, reply: bytes | None) -> None:
        """With --access-log, one line for this answer (rawrt.logs: never its query)."""
        if not self._host.config.access_log:
            return
        if reply is None:  # handed to a transport: it starts with a 101 or a 200
            status, size = (101 if request.header(b"upgrade") else 200), 0
        else:
            status, size = int(reply[9:12]), len(reply)
        duration = time.monotonic() - self._began
        log_access(request.method, request.target, status, size, duration, request.client)

    def send(self, reply: bytes, keep_alive: bool) -> None:
        """Write a complete response, then wait for the next request or close."""
        transport = self._transport
        if transport is None:
            return
        transport.write(reply)
        if not keep_alive or self._host.stopping:
            transport.close()
            self._transport = None
            return
        if self._proxied and self.client:
            self.client = ""  # the proxy's next request may be anyone's
            self._host.reclaim(self, "")
        self._reader.start_next_cycle()
        if self._reader.pending:
            self._begin_receiving()  # the next request has begun (pipelining)
        else:
            self._wait_for_request()

    def take_over(self) -> tuple[asyncio.Transport, bytes]:
        """Hand the socket to another protocol: returns it and the bytes already read."""
        handed = self.hand_over()
        self._host.forget(self)
        return handed

    def hand_over(self) -> tuple[asyncio.Transport, bytes]:
        """`take_over`, leaving this connection registered until its successor `replace`s it."""
        transport, self._transport = self._transport, None
        assert transport is not None
        self._cancel_timer()
        return transport, self._reader.pending

    def _refuse(self, exc: HttpError) -> None:
        """Answer a bad request and close: after one, the byte stream cannot be trusted."""
        if self._transport is None:
            return
        # Only a 500 is ours: h11 classifies some peer input as 5xx too (501 for a
        # Transfer-Encoding other than chunked), and logging those as bugs lets any client
        # write error lines at will.
        if exc.status == 500:
            log.error("bug answering request: %s", exc)
        if self._host.config.access_log:
            self._log_refusal(exc.status)
        self._host.counts.refuse("http", exc.status)
        self._request = None
        self._transport.write(http.error_response(exc.status, exc.detail, headers=exc.headers))
        self._transport.close()
        self._transport = None
        self._cancel_timer()

    def _log_refusal(self, status: int) -> None:
        if self._request is None:  # refused before its head was read: nothing to name
            log_access(b"-", b"-", status, 0, 0.0, self.client or self._peer)
            return
        head = self._request
        duration = time.monotonic() - self._began
        log_access(head.method, head.target, status, 0, duration, self.client)

    # --- timers ----------------------------------------------------------------------------

    def _wait_for_request(self) -> None:
        self._receiving = False
        self._start_timer(self._host.config.keepalive_timeout_s, HttpConnection._idle_timed_out)

    def _begin_receiving(self) -> None:
        if not self._receiving:
            self._receiving = True
            timeout_s = self._host.config.request_timeout_s
            self._start_timer(timeout_s, HttpConnection._request_timed_out)

    def _start_timer(self, delay_s: float, callback: Callable[[HttpConnection], None]) -> None:
        """Call `callback` in `delay_s` unless the deadline moves first.

        One timer serves both deadlines (the idle one and the request's), and it is armed
        no further ahead than the request deadline: when a request begins, the timer
        already due sooner stays, and only fires early to find its deadline moved. A
        re-poll's connection so arms one timer instead of two (call_later and cancel cost
        about as much as reading the request).
        """
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + delay_s
        self._on_deadline = callback
        timer = self._timer
        if timer is not None and timer.when() <= self._deadline:
            return
        self._cancel_timer()
        delay_s = min(delay_s, self._host.config.request_timeout_s)
        self._timer = loop.call_later(delay_s, self._deadline_passed)

    def _deadline_passed(self) -> None:
        self._timer = None
        left_s = self._deadline - asyncio.get_running_loop().time()
        if left_s > 0:
            self._start_timer(left_s, self._on_deadline)
        else:
            self._on_deadline(self)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _idle_timed_out(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def _request_timed_out(self) -> None:
        self._refuse(HttpError(408, "request took too long to arrive"))


def _check_head(target: bytes, headers: Headers, config: Config) -> None:
    """The limits h11 does not enforce on a head that arrived whole (h11 issue #182); its
    framing was checked by rawrt.wire.strict before h11 saw it."""
    if len(target) > config.max_target_bytes:
        raise HttpError(414, f"request target is longer than {config.max_target_bytes} bytes")
    if len(headers) > config.max_header_count:
        raise HttpError(431, f"more than {config.max_header_count} header fields")
    size = len(target) + sum(len(k) + len(v) + 4 for k, v in headers)
    if size > config.max_head_bytes:
        raise HttpError(431, f"request head is larger than {config.max_head_bytes} bytes")


def _content_length(headers: Headers) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            return int(value)  # h11 has checked it is digits
    return None


def _request_of(head: Head, body: bytes, client: str) -> Request:
    method, target, http_version, headers = head
    path, query = http.split_target(target)
    connection = {
        t.strip().lower() for k, v in headers if k == b"connection" for t in v.split(b",")
    }
    keep_alive = http_version == b"1.1" and b"close" not in connection
    return Request(
        method,
        target,
        http_version,
        headers,
        path,
        query,
        body,
        keep_alive,
        client,
    )


def _for_method(reply: bytes, request: Request) -> bytes:
    """RFC 9110 §9.3.2: a response to HEAD is the GET response's head, with no content."""
    if request.method != b"HEAD":
        return reply
    return reply[: reply.index(b"\r\n\r\n") + 4]
