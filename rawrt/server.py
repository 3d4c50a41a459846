"""The server: a listener, the hub, the registry of open connections, and the timers.

`Server` is also the embedding API:

    server = rawrt.Server(rawrt.Config(port=0))
    await server.start()
    await server.publish("news", {"title": "hello"})
    await server.stop()

It runs in whatever asyncio loop is current (stock or uvloop). Everything periodic is one
callback chain, the sweep: WebSocket pings and their deadlines, SSE heartbeats and, with
tokens on, the tokens' expiry walk the open connections a few times per interval instead of
holding a timer per connection. Parked polls' timeouts are not the sweep's (it ticks too
seldom for them): they share a timer per 50 ms (`PollDeadlines`).

Access decisions are the policy's (rawrt.access), built once here from the configuration;
the router asks it once per request or subscribe, never per message.

The HTTP driver, the router and the transports see the server only through the protocols of
rawrt.edge (`Server` implements them all), so this module is the only one that knows it.

With `tls_cert`/`tls_key` the listener serves TLS itself: the context is built once in
`start()` (rawrt.tls), and asyncio closes a peer that has not finished its handshake within
`tls_handshake_timeout_s`. The registry maps every open connection to the client address it
counts for, which is how `max_connections_per_ip` is kept (rawrt.netpolicy): a connection is
counted at accept when its peer is the client, when a request names its client when the peer
is a trusted proxy (`reclaim`), and carried over when a transport takes its socket over
(`forget`, then `register`; a long poll parking or answered and kept alive moves its entry
with `replace`, which leaves the count alone).

`drain()` is what SIGTERM does: not ready at once, then, after `drain_delay_s`, no more
accepting, and the open connections closed a slice per sweep tick, oldest first, at a pace
that spreads them evenly over `drain_s` (rawrt.drain), each slice after a hub flush, so that
a client's last messages are written before its goodbye. The sweep ticks about a hundred
times per window while a drain runs; there is no timer per connection.

Metrics (rawrt.metrics) are read from what the server keeps anyway at scrape time: the hub's
counts, `counts` (publishes, refusals), the registry's sizes, `loop_lag_s` (how late the
sweep ran). With `metrics_host` they are served by a listener of their own, whose
connections see a router that knows /metrics only.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import secrets
import time

from rawrt.access import AccessPolicy, open_warning
from rawrt.backplane import backplane_for
from rawrt.backplane.board import LocalBoard, PresenceBoard, board_for
from rawrt.config import Config
from rawrt.connection import HttpConnection
from rawrt.counts import Counts
from rawrt.drain import DrainPace
from rawrt.edge import (
    CorsHeaders,
    Expiring,
    PingedSession,
    RequestHeaders,
    Resolver,
    Session,
    StreamSession,
)
from rawrt.errors import ConfigError
from rawrt.hub import Hub
from rawrt.metrics import SYNC_S, Metrics
from rawrt.netpolicy import ConnectionsPerIp, TrustedProxies
from rawrt.presence import Presence
from rawrt.presence_events import PresenceEvents
from rawrt.routes import MetricsRouter, Router
from rawrt.tls import server_context
from rawrt.wire import envelope
from rawrt.wire.ids import to_base36

__all__ = ["Server"]

log = logging.getLogger("rawrt")

# The sweep runs this many times per shortest period it serves (ping, pong, heartbeat), so a
# deadline is met within a quarter of its length; never more often than 20 times a second.
_SWEEPS_PER_PERIOD = 4
_MIN_SWEEP_S = 0.05
# A drain closes its connections in this many slices (fewer when the window is short).
_DRAIN_SLICES = 100
# How late a parked poll may time out, in seconds: the width of a PollDeadlines bucket.
_POLL_BUCKET_S = 0.05


class Server:
    """A rawrt server bound to one address, serving in the running event loop."""

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        # Raises ConfigError for a public key rawrt cannot read or use: before serving.
        self.access = AccessPolicy(self.config, _read_public_key(self.config.jwt_public_key))
        self.hub: Hub = None  # type: ignore[assignment]  # made in start(), in the loop
        self.poll_deadlines: PollDeadlines = None  # type: ignore[assignment]  # likewise
        self.router = Router(self)
        self.stopping = False
        # Set by drain(): /readyz says 503 from then on, while the connections are still served.
        self.draining = False
        self._drain_pace: DrainPace | None = None
        self._drain_told: set[Session] = set()  # said goodbye to, during a drain, not gone yet
        self._drain_over: asyncio.Event | None = None  # the window has passed, or was cut
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: asyncio.Server | None = None
        self._port: int | None = None  # kept after stop(): the listener's sockets are gone
        self._scheme = "http"
        # Every open connection, and the client address it counts for ("" for none).
        self._connections: dict[Session, str] = {}
        # Connections past the cap, held only to read their request head (HttpHost.shed).
        self._shed: set[Session] = set()
        self.trusted_proxies = TrustedProxies.parse(self.config.trusted_proxies)
        self._per_ip = ConnectionsPerIp(
            self.config.max_connections_per_ip, max_tracked=self.config.max_connections
        )
        # The two kinds the sweep visits, keyed as the registry knows every connection, so
        # that forget() needs no test of what it is given.
        self._sockets: dict[Session, PingedSession] = {}
        self._streams: dict[Session, StreamSession] = {}
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._next_heartbeat = 0.0
        self._drained: asyncio.Event | None = None
        self.backplane = backplane_for(self.config)
        self._board: PresenceBoard = LocalBoard()  # made in start(): it needs the run id
        self.counts = Counts()
        self.loop_lag_s = 0.0  # how late the last sweep ran: the loop was busy that long
        self._sweep_due = 0.0
        self.metrics = Metrics(self) if self.config.metrics else None
        self._metrics_listener: asyncio.Server | None = None
        self._metrics_port: int | None = None
        self._metrics_sync: asyncio.TimerHandle | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and start serving; `port` and `url` are known when this returns."""
        loop = self._loop = asyncio.get_running_loop()
        c = self.config
        # Six base-36 digits, fixed width, so that epochs of different runs never collide.
        run_id = to_base36(secrets.randbits(31)).rjust(6, "0")
        self.poll_deadlines = PollDeadlines(loop)
        self.hub = Hub(
            self.config,
            run_id,
            self._schedule_flush,
            assigns_ids=self.backplane.assigns_ids_locally,
            on_evict=self.backplane.on_evict,
        )
        if c.presence_events:
            events = PresenceEvents(c, self.hub, self.clock, self.backplane.relay_event)
            self.hub.on_member = events.member
            self.backplane.listen_events(events.received)
        # Built once, here: an unreadable or mismatched file is a ConfigError before binding.
        tls = server_context(c.tls_cert, c.tls_key) if c.tls_cert else None
        await self.backplane.start(self.hub)
        self._board = board_for(c, run_id)
        await self._board.start()
        self._listener = await loop.create_server(
            lambda: HttpConnection(self),
            c.host,
            c.port,
            reuse_port=c.workers > 1 or None,
            backlog=4096,
            ssl=tls,
            # A peer that opens TCP and never finishes the handshake is closed after this.
            ssl_handshake_timeout=c.tls_handshake_timeout_s if tls else None,
        )
        self._scheme = "https" if tls else "http"
        if tls and not type(loop).__module__.startswith("uvloop"):
            log.warning(
                "serving TLS on the stock asyncio loop, whose TLS layer holds a 256 KiB read "
                "buffer per connection; uvloop's does not (pip install 'rawrt[fast]')"
            )
        self._port = int(self._listener.sockets[0].getsockname()[1])
        await self._start_metrics(loop)
        self._next_heartbeat = loop.time() + self.config.sse_heartbeat_s
        self._schedule_sweep()
        log.info("listening on %s", self.url)
        warning = open_warning(self.config)
        if warning is not None:
            log.warning("%s", warning)

    async def drain(self) -> None:
        """Leave without a reconnect storm, then stop (what SIGTERM does).

        /readyz answers 503 at once; after drain_delay_s the listener closes and the open
        connections are closed a slice per sweep tick, spread evenly over drain_s
        (rawrt.drain); then stop() says goodbye to whatever is left. `cut_drain()` (a second
        signal) skips whatever wait remains.
        """
        if self._listener is None or self.stopping or self.draining:
            return
        self.draining = True
        over = self._drain_over = asyncio.Event()
        c = self.config
        if c.drain_delay_s or c.drain_s:
            log.info(
                "draining: not ready; closing %d connections in %g s, spread over %g s",
                len(self._connections),
                c.drain_delay_s,
                c.drain_s,
            )
        await self._wait_unless_over(c.drain_delay_s)
        if not over.is_set() and c.drain_s > 0:
            self._listener.close()  # stop accepting: new clients go to other nodes
            self._drain_pace = DrainPace(self.clock(), c.drain_s)
            self._restart_sweep()  # ticks often enough to spread the closes from now
            await self._wait_unless_over(c.drain_s + 2 * _drain_tick_s(c.drain_s))
        self._drain_pace = None
        self._drain_told.clear()
        await self.stop()

    def cut_drain(self) -> None:
        """Stop waiting: the drain goes straight to stop() (a second SIGTERM or SIGINT)."""
        if self._drain_over is not None:
            self._drain_over.set()

    async def _wait_unless_over(self, seconds: float) -> None:
        assert self._drain_over is not None
        if seconds > 0 and not self._drain_over.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drain_over.wait(), seconds)

    def _close_due(self, now: float) -> None:
        """The sweep's part of a drain: say goodbye to the oldest connections now due."""
        pace, told = self._drain_pace, self._drain_told
        if pace is None:
            return
        due = pace.quota(now, len(self._connections) - len(told))
        if due:
            waiting = (conn for conn in self._connections if conn not in told)
            batch = list(itertools.islice(waiting, due))
            told.update(batch)
            self.hub.flush()  # what was published before a close reaches its client first
            for conn in batch:
                conn.shutdown()
        if pace.over(now) and self._drain_over is not None:
            self._drain_over.set()

    async def stop(self) -> None:
        """Stop accepting, say goodbye to every connection, and wait for them (bounded)."""
        if self._listener is None or self.stopping:
            return
        self.stopping = True
        self._listener.close()
        if self._metrics_listener is not None:
            self._metrics_listener.close()
        for handle in (self._sweep_handle, self._metrics_sync):
            if handle is not None:
                handle.cancel()
        self._drained = asyncio.Event()
        self.hub.flush()  # nothing published before a goodbye is lost to its client
        for conn in [*self._connections, *self._shed]:
            conn.shutdown()  # a shed one closes now, or after its at-capacity answer
        if self._connections:
            try:
                await asyncio.wait_for(self._drained.wait(), self.config.shutdown_timeout_s)
            except TimeoutError:
                log.warning(
                    "cutting %d connections after the shutdown timeout", len(self._connections)
                )
                for conn in list(self._connections):
                    conn.abort()
        self._connections.clear()
        self.poll_deadlines.close()
        await self._board.stop()
        await self.backplane.stop()

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        # Read from the listener it raised IndexError once stop() had closed it.
        assert self._port is not None, "start() the server first"
        return self._port

    @property
    def url(self) -> str:
        host = self.config.host
        if ":" in host:
            host = f"[{host}]"
        return f"{self._scheme}://{host}:{self.port}"

    @property
    def metrics_port(self) -> int | None:
        """The port of the metrics listener (with metrics_host), else None."""
        return self._metrics_port

    async def _start_metrics(self, loop: asyncio.AbstractEventLoop) -> None:
        c = self.config
        if self.metrics is None:
            return
        if self.metrics.multiprocess:
            self._metrics_sync = loop.call_later(SYNC_S, self._sync_metrics)
        if not c.metrics_host:
            return
        edge = _MetricsEdge(self)
        self._metrics_listener = await loop.create_server(
            lambda: HttpConnection(edge),
            c.metrics_host,
            c.metrics_port,
            reuse_port=c.workers > 1 or None,
        )
        self._metrics_port = int(self._metrics_listener.sockets[0].getsockname()[1])
        host = f"[{c.metrics_host}]" if ":" in c.metrics_host else c.metrics_host
        log.info("metrics on http://%s:%d/metrics", host, self._metrics_port)

    def _sync_metrics(self) -> None:
        """With workers: copy this one's figures to the node's shared files, every SYNC_S."""
        assert self.metrics is not None and self._loop is not None
        self.metrics.sync()
        self._metrics_sync = self._loop.call_later(SYNC_S, self._sync_metrics)

    def scrape(self) -> bytes | None:
        """The metrics in the Prometheus text format; None when they are off."""
        return None if self.metrics is None else self.metrics.render()

    def connection_census(self) -> tuple[int, int, int]:
        """Open connections: WebSockets, event streams, and all others (HTTP, long polls)."""
        sockets, streams = len(self._sockets), len(self._streams)
        return sockets, streams, len(self._connections) - sockets - streams

    @property
    def ready(self) -> bool:
        """Listening and not stopping (and, with a backplane, connected to it)."""
        return (
            self._listener is not None
            and not self.stopping
            and not self.draining
            and self.backplane.ready
        )

    # --- publishing ------------------------------------------------------------------------

    async def publish(self, channel: str, data: object) -> str:
        """Publish `data` (anything JSON can hold) to `channel`; returns the message id.

        Raises BackplaneUnavailable when a backplane cannot take it, HubFull when every
        channel slot is busy.
        """
        started = time.perf_counter()
        result = self.publish_json(channel, envelope.canonical_json(data))
        message_id = result if isinstance(result, str) else await result
        self.counts.publish_done("embedded", time.perf_counter() - started)
        return message_id

    def publish_json(self, channel: str, data_json: str) -> str | asyncio.Future[str]:
        """Publish data already in canonical JSON: the id, or (with Redis) a future of it."""
        return self.backplane.publish(channel, data_json, int(time.time() * 1000))

    def attach(self, channel: str, since: str | None = None) -> asyncio.Future[None] | None:
        """None when `channel` (up to `since`) is usable in the hub now, else a future."""
        return self.backplane.attach(channel, since)

    def presence(self, channel: str) -> Presence | asyncio.Future[Presence]:
        """Who is subscribed to `channel` on every node (rawrt.presence), or a future of it."""
        local = self.hub.presence(channel, self.config.presence_max_users)
        return self._board.presence(channel, local)

    # --- the registry of open connections --------------------------------------------------

    def admit(self, conn: Session) -> bool:
        """Register a new connection, unless the server is stopping, or full, or its client
        holds all it may (both caps get the same answer from the caller)."""
        if self.stopping or len(self._connections) >= self.config.max_connections:
            return False
        if not self._count(conn.client):
            return False
        self._connections[conn] = conn.client
        return True

    def shed(self, conn: Session) -> bool:
        """Hold a connection `admit` refused until its head is read, within a bound."""
        if self.stopping or len(self._shed) >= self.config.max_shed_connections:
            return False
        self._shed.add(conn)
        return True

    def reclaim(self, conn: Session, client: str) -> bool:
        """Count `conn` for `client` now (a request through a trusted proxy named it)."""
        held = self._connections.get(conn)
        if held is None or held == client:
            return True
        self._uncount(held)
        counted = self._count(client)
        self._connections[conn] = client if counted else ""
        return counted

    def register(self, conn: Session) -> None:
        """A connection the server must say goodbye to when it stops (a parked poll, ...).

        It is a socket changing hands (its last owner forgot it a moment ago), so it counts
        for its client without a check: refusing it now would cut a request already served.
        """
        self._uncount(self._connections.get(conn, ""))
        self._connections[conn] = conn.client
        if conn.client and self.config.max_connections_per_ip:
            self._per_ip.add(conn.client)
        if self.stopping:
            # A request that was still arriving when stop() said its goodbyes can hand its
            # socket to a transport afterwards (a parked poll, an event stream, a WebSocket).
            # Nobody would answer it, and stop() would wait out shutdown_timeout_s and cut it.
            # It is registered midway through its own set-up, so say goodbye once that is done.
            assert self._loop is not None
            self._loop.call_soon(conn.shutdown)

    def replace(self, old: Session, new: Session) -> None:
        """`new` has taken `old`'s socket over (a poll parked, or answered and kept alive).

        The same as `forget(old)` then `register(new)` for the HTTP side's owners, which are
        neither WebSockets nor event streams, in one move of the registry entry: a re-poll
        hands its socket over twice per delivery, and the per-IP count, already held for
        the same client, is left alone.
        """
        held = self._connections.pop(old, "")
        client = self._connections[new] = new.client
        if held != client:
            self._uncount(held)
            if client and self.config.max_connections_per_ip:
                self._per_ip.add(client)
        if self._drain_told:
            self._drain_told.discard(old)
        if self.stopping:  # as in register(): nobody would answer it
            assert self._loop is not None
            self._loop.call_soon(new.shutdown)

    def register_socket(self, ws: PingedSession) -> None:
        """An open WebSocket: the sweep pings it."""
        self._sockets[ws] = ws
        self.register(ws)

    def register_stream(self, stream: StreamSession) -> None:
        """An open event stream: the sweep writes its heartbeats."""
        self._streams[stream] = stream
        self.register(stream)

    def forget(self, conn: Session) -> None:
        self._shed.discard(conn)
        self._uncount(self._connections.pop(conn, ""))
        self._sockets.pop(conn, None)
        self._streams.pop(conn, None)
        if self._drain_told:
            self._drain_told.discard(conn)
        if self._drained is not None and not self._connections:
            self._drained.set()

    def cors_for(self, headers: RequestHeaders) -> CorsHeaders:
        return self.access.cors_headers(headers)

    def _count(self, client: str) -> bool:
        limit = self.config.max_connections_per_ip
        if not client or not limit or self._per_ip.acquire(client):
            return True
        log.info(
            "refused a connection from %s: it holds %d (max_connections_per_ip)", client, limit
        )
        return False

    def _uncount(self, client: str) -> None:
        if client and self.config.max_connections_per_ip:
            self._per_ip.release(client)

    def clock(self) -> float:
        """The loop's monotonic time, which every deadline uses."""
        assert self._loop is not None
        return self._loop.time()

    def _schedule_flush(self) -> None:
        assert self._loop is not None
        self._loop.call_soon(self.hub.flush_step)

    # --- the sweep -------------------------------------------------------------------------

    def _schedule_sweep(self) -> None:
        c = self.config
        period = min(c.ping_interval_s, c.ping_timeout_s, c.sse_heartbeat_s)
        if c.redis_url or c.redis_master:
            period = min(period, max(c.redis_linger_s, _MIN_SWEEP_S))
        delay = max(_MIN_SWEEP_S, period / _SWEEPS_PER_PERIOD)
        if c.redis_url or c.redis_master:  # presence reports: every third of their ttl
            delay = min(delay, max(_MIN_SWEEP_S, c.presence_ttl_s / 3))
        if self._drain_pace is not None:
            delay = min(delay, _drain_tick_s(c.drain_s))
        assert self._loop is not None
        self._sweep_due = self._loop.time() + delay
        self._sweep_handle = self._loop.call_later(delay, self._sweep)

    def _restart_sweep(self) -> None:
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
        self._sweep()

    def _sweep(self) -> None:
        now = self.clock()
        self.loop_lag_s = max(0.0, now - self._sweep_due)
        self._close_due(now)
        for ws in tuple(self._sockets.values()):
            ws.check_liveness(now)
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.config.sse_heartbeat_s
            for stream in tuple(self._streams.values()):
                stream.heartbeat()
        if self.access.tokens_on:
            wall_now = time.time()  # a token's exp is wall-clock time
            for ws in tuple(self._sockets.values()):
                ws.check_expiry(wall_now)
            for stream in tuple(self._streams.values()):
                stream.check_expiry(wall_now)
        self.backplane.sweep(now)
        self._board.report(now, self._presences)
        self._schedule_sweep()

    def _presences(self) -> dict[str, Presence]:
        return self.hub.presences(self.config.presence_max_users)


class PollDeadlines:
    """Parked polls' timeouts, in buckets of `_POLL_BUCKET_S` with a loop timer each: the
    pollers one flush woke park again within milliseconds and share one (more in
    rawrt.transports.longpoll). A poll times out up to a bucket late, never early."""

    __slots__ = ("_buckets", "_loop", "_timers")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # Bucket n holds the polls due by n * _POLL_BUCKET_S, and has the timer in _timers[n].
        self._buckets: dict[int, dict[Expiring, None]] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}

    def add(self, item: Expiring, timeout_s: float) -> int:
        """Expire `item` in `timeout_s` (up to a bucket later); returns its bucket."""
        key = math.ceil((self._loop.time() + timeout_s) / _POLL_BUCKET_S)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = {}
            self._timers[key] = self._loop.call_at(key * _POLL_BUCKET_S, self._expire, key)
        bucket[item] = None
        return key

    def discard(self, item: Expiring, key: int) -> None:
        """`item`, in bucket `key`, is answered or gone: it needs no timeout any more."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.pop(item, None)

    def close(self) -> None:
        """Server stop (every poll has been answered): drop the timers."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._buckets.clear()

    def _expire(self, key: int) -> None:
        del self._timers[key]
        for item in self._buckets.pop(key):
            item.expire()


def _drain_tick_s(drain_s: float) -> float:
    """How often the sweep runs during a drain: a hundred slices, at most 20 a second."""
    return max(_MIN_SWEEP_S, drain_s / _DRAIN_SLICES)


class _MetricsEdge:
    """The host that connections to the metrics listener see: the server's registry and
    limits, with a router that answers /metrics only (rawrt.routes.MetricsRouter)."""

    __slots__ = ("_server", "router")

    def __init__(self, server: Server) -> None:
        self._server = server
        self.router: Resolver = MetricsRouter(server)

    @property
    def config(self) -> Config:
        return self._server.config

    @property
    def stopping(self) -> bool:
        return self._server.stopping

    @property
    def trusted_proxies(self) -> TrustedProxies:
        return self._server.trusted_proxies

    @property
    def counts(self) -> Counts:
        return self._server.counts

    def cors_for(self, headers: RequestHeaders) -> CorsHeaders:
        return ()  # no browser page reads metrics

    # The server's registry, so that its caps count these and stop() closes them too.
    def admit(self, conn: Session) -> bool:
        return self._server.admit(conn)

    def shed(self, conn: Session) -> bool:
        return False  # no event stream here to spare a 503: a scraper gets it at accept

    def reclaim(self, conn: Session, client: str) -> bool:
        return self._server.reclaim(conn, client)

    def register(self, conn: Session) -> None:
        self._server.register(conn)

    def replace(self, old: Session, new: Session) -> None:
        self._server.replace(old, new)

    def forget(self, conn: Session) -> None:
        self._server.forget(conn)


def _read_public_key(path: str) -> str | None:
    """The PEM text of `--jwt-public-key`, read once at start; None when it is not set."""
    if not path:
        return None
    try:
        with open(path, encoding="ascii") as pem:
            return pem.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"jwt_public_key {path!r} cannot be read: {exc}") from None
