"""What the I/O edge needs from its host, named as `typing.Protocol`s.

Theory of operation
-------------------
The HTTP driver (rawrt.connection), the router (rawrt.routes) and the transports
(rawrt.transports) never see `Server`. Each depends on the protocol here that names exactly
the members it uses, so an import never runs upward from the edge to the server, a transport
cannot reach what it was not given, and a test can drive any of them with a fake host of a
few lines. `Server` implements every protocol; mypy checks that where the server hands itself
to the router and to each `HttpConnection`.

    HttpHost      the HTTP driver: config, stopping, CORS headers, the router, the registry,
                  the trusted proxies, and `reclaim` to count a proxied request for its client
    SocketHost    a WebSocket: config, clock, hub, the access policy, attach, publish, the
                  registry
    StreamHost    an event stream: config, hub, the registry
    PollHost      a parked long poll: the hub, and an HttpHost to hand a kept-alive socket back
    RouterHost    the router: all of the above (it starts every transport), readiness and
                  the metrics' text

The HTTP driver and a WebSocket count what they refuse, and the router what is published, in
the host's `counts` (rawrt.counts).

The registry side is `Session` (what shutdown needs of any open connection, and the client
address it counts for), with `PingedSession` and `StreamSession` for the two kinds the
server's sweep visits (for pings and heartbeats, and, with tokens on, to end those whose token
has expired).

A protocol is only typing: reading `host.hub` costs what reading `server.hub` did.

The module also holds the few types the driver and the router exchange (`Request`, `Reply`,
`Exchange`, `Handler`), so that neither imports the other's module to name them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from rawrt.access import AccessPolicy
from rawrt.config import Config
from rawrt.counts import Counts
from rawrt.hub import Hub
from rawrt.netpolicy import TrustedProxies
from rawrt.presence import Presence

__all__ = [
    "AT_CAPACITY",
    "AnyReply",
    "CorsHeaders",
    "Deadlines",
    "Exchange",
    "Expiring",
    "Handler",
    "HttpHost",
    "PingedSession",
    "PollHost",
    "Reply",
    "Request",
    "RequestHeaders",
    "Resolver",
    "RouterHost",
    "Session",
    "SocketHost",
    "StreamHost",
    "StreamSession",
]

# The answer at the connection cap, global or per client address.
AT_CAPACITY = "server is at its connection limit"

RequestHeaders = list[tuple[bytes, bytes]]  # (lower-cased name, value), as h11 gives them
CorsHeaders = tuple[tuple[str, str], ...]  # the CORS headers of one answer (rawrt.access)

# What a route handler gives back: response bytes, or None once it has taken the socket over;
# a handler that must wait for a backplane returns an awaitable of either.
Reply = bytes | None
AnyReply = Reply | Awaitable[Reply]


@dataclass(slots=True)
class Request:
    """A complete request, as routes see it."""

    method: bytes
    target: bytes
    http_version: bytes
    headers: RequestHeaders
    path: list[str]  # decoded segments, e.g. ["api", "poll", "news"]
    query: dict[str, str]
    body: bytes
    keep_alive: bool
    # The client's address: the TCP peer, or what a trusted proxy forwarded (rawrt.netpolicy).
    client: str = ""

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class Session(Protocol):
    """An open connection as the registry holds it: what stopping the server needs, and
    whom it serves (the address it counts against with --max-connections-per-ip; "" for
    nobody yet: a trusted proxy's connection between two requests)."""

    @property
    def client(self) -> str: ...

    def shutdown(self) -> None:
        """Say goodbye (close when idle, after the answer when busy)."""
        ...

    def abort(self) -> None:
        """Cut the connection now: the shutdown timeout has passed."""
        ...


class Exchange(Session, Protocol):
    """The HTTP connection a request came on, as a route handler sees it."""

    def take_over(self) -> tuple[asyncio.Transport, bytes]:
        """Hand the socket to another protocol: returns it and the bytes already read."""
        ...

    def hand_over(self) -> tuple[asyncio.Transport, bytes]:
        """Like `take_over`, but this connection stays registered for its successor, which
        must take its place with the host's `replace` before the loop runs again."""
        ...


Handler = Callable[[Request, Exchange, str], AnyReply]


class Resolver(Protocol):
    def resolve(self, request: Request) -> tuple[Handler, str]:
        """The handler for `request` and the channel named in its path ("" if none)."""
        ...

    def at_capacity(self, request: Request) -> bytes:
        """The answer to a request the server has no room for (a whole response)."""
        ...


# --- the registry of open connections ---------------------------------------------------------


class PingedSession(Session, Protocol):
    """A WebSocket: the sweep pings it and drops it when its pong is late."""

    def check_liveness(self, now: float) -> None: ...
    def check_expiry(self, wall_now: float) -> None:
        """With tokens on, the sweep also asks: has the token it holds run out?"""
        ...


class StreamSession(Session, Protocol):
    """An event stream: the sweep writes its heartbeats, and ends it when its token expires."""

    def heartbeat(self) -> None: ...
    def check_expiry(self, wall_now: float) -> None: ...


# --- hosts -------------------------------------------------------------------------------------


class HttpHost(Protocol):
    @property
    def config(self) -> Config: ...
    @property
    def stopping(self) -> bool: ...
    def cors_for(self, headers: RequestHeaders) -> CorsHeaders:
        """The CORS headers of an answer to a request with these headers."""
        ...

    @property
    def router(self) -> Resolver: ...
    @property
    def trusted_proxies(self) -> TrustedProxies: ...
    @property
    def counts(self) -> Counts:
        """Where refusals, publishes and long-poll bytes are counted (rawrt.counts)."""
        ...

    def admit(self, conn: Session) -> bool:
        """Register a new connection, unless the server (or its client's allowance) is
        full, or the server is stopping."""
        ...

    def shed(self, conn: Session) -> bool:
        """Hold a connection `admit` refused just long enough to read its request head,
        unless `max_shed_connections` are held already; `forget` releases it."""
        ...

    def reclaim(self, conn: Session, client: str) -> bool:
        """Count `conn` for `client` from now on (a request through a trusted proxy names
        its client); False, and counted for nobody, when that client is at its limit."""
        ...

    def register(self, conn: Session) -> None: ...
    def replace(self, old: Session, new: Session) -> None:
        """`new` has taken `old`'s socket over: `forget(old)` then `register(new)`, in one
        step that leaves the client's count alone when both count for the same client."""
        ...

    def forget(self, conn: Session) -> None: ...


class SocketHost(Protocol):
    @property
    def config(self) -> Config: ...
    @property
    def hub(self) -> Hub: ...
    @property
    def access(self) -> AccessPolicy: ...
    def clock(self) -> float:
        """The loop's monotonic time, which every deadline uses."""
        ...

    def attach(self, channel: str, since: str | None = None) -> asyncio.Future[None] | None:
        """None when `channel` (up to `since`) is usable in the hub now, else a future."""
        ...

    def publish_json(self, channel: str, data_json: str) -> str | asyncio.Future[str]: ...
    @property
    def counts(self) -> Counts: ...
    def register_socket(self, ws: PingedSession) -> None: ...
    def forget(self, conn: Session) -> None: ...


class StreamHost(Protocol):
    @property
    def config(self) -> Config: ...
    @property
    def hub(self) -> Hub: ...
    def register_stream(self, stream: StreamSession) -> None: ...
    def forget(self, conn: Session) -> None: ...


class PollHost(HttpHost, Protocol):
    @property
    def hub(self) -> Hub: ...
    @property
    def poll_deadlines(self) -> Deadlines:
        """Where parked polls keep their timeouts (rawrt.server.PollDeadlines)."""
        ...


class Expiring(Protocol):
    def expire(self) -> None:
        """Its timeout has passed."""
        ...


class Deadlines(Protocol):
    def add(self, item: Expiring, timeout_s: float) -> int:
        """Call `item.expire()` in `timeout_s` or a little later; returns where it is kept."""
        ...

    def discard(self, item: Expiring, key: int) -> None:
        """`item`, kept at `key`, needs no timeout any more."""
        ...


class RouterHost(SocketHost, StreamHost, PollHost, Protocol):
    @property
    def ready(self) -> bool:
        """Listening and not stopping (and, with a backplane, connected to it)."""
        ...

    def presence(self, channel: str) -> Presence | asyncio.Future[Presence]:
        """Who is subscribed to `channel` on every node, or a future of it."""
        ...

    def scrape(self) -> bytes | None:
        """The metrics in the Prometheus text format; None when they are off."""
        ...
