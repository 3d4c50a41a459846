"""The server: a listener, the hub, the registry of open connections, and the timers.

`Server` is also the embedding API:

    server = rawrt.Server(rawrt.Config(port=0))
    await server.start()
    await server.publish("news", {"title": "hello"})
    await server.stop()

It runs in whatever asyncio loop is current (stock or uvloop). Everything periodic is one
callback chain, the sweep: WebSocket pings and their deadlines, and SSE heartbeats, walk the
open connections a few times per interval instead of holding a timer per connection.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

from rawrt.backplane import Backplane, LocalBackplane
from rawrt.config import Config
from rawrt.connection import HttpConnection
from rawrt.hub import Hub
from rawrt.routes import Router
from rawrt.transports.sse import EventStream
from rawrt.transports.websocket import WebSocketSession
from rawrt.wire import envelope
from rawrt.wire.ids import to_base36

__all__ = ["Server"]

log = logging.getLogger("rawrt")

# The sweep runs this many times per shortest period it serves (ping, pong, heartbeat), so a
# deadline is met within a quarter of its length; never more often than 20 times a second.
_SWEEPS_PER_PERIOD = 4
_MIN_SWEEP_S = 0.05


class Server:
    """A rawrt server bound to one address, serving in the running event loop."""

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self.hub: Hub = None  # type: ignore[assignment]  # made in start(), in the loop
        self.router = Router(self)
        self.stopping = False
        self.cors_headers: tuple[tuple[str, str], ...] = (
            (("Access-Control-Allow-Origin", self.config.cors_origin),)
            if self.config.cors_origin
            else ()
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: asyncio.Server | None = None
        self._port: int | None = None  # kept after stop(): the listener's sockets are gone
        self._connections: set[Any] = set()
        self._sockets: set[WebSocketSession] = set()
        self._streams: set[EventStream] = set()
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._next_heartbeat = 0.0
        self._drained: asyncio.Event | None = None
        self.backplane = _backplane_for(self.config)

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and start serving; `port` and `url` are known when this returns."""
        loop = self._loop = asyncio.get_running_loop()
        # Six base-36 digits, fixed width, so that epochs of different runs never collide.
        run_id = to_base36(secrets.randbits(31)).rjust(6, "0")
        self.hub = Hub(
            self.config,
            run_id,
            self._schedule_flush,
            assigns_ids=self.backplane.assigns_ids_locally,
            on_evict=self.backplane.on_evict,
        )
        await self.backplane.start(self.hub)
        self._listener = await loop.create_server(
            lambda: HttpConnection(self),
            self.config.host,
            self.config.port,
            reuse_port=self.config.workers > 1 or None,
            backlog=4096,
        )
        self._port = int(self._listener.sockets[0].getsockname()[1])
        self._next_heartbeat = loop.time() + self.config.sse_heartbeat_s
        self._schedule_sweep()
        log.info("listening on %s", self.url)

    async def stop(self) -> None:
        """Stop accepting, say goodbye to every connection, and wait for them (bounded)."""
        if self._listener is None or self.stopping:
            return
        self.stopping = True
        self._listener.close()
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
        self._drained = asyncio.Event()
        for conn in list(self._connections):
            conn.shutdown()
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
        return f"http://{host}:{self.port}"

    @property
    def ready(self) -> bool:
        """Listening and not stopping (and, with a backplane, connected to it)."""
        return self._listener is not None and not self.stopping and self.backplane.ready

    # --- publishing ------------------------------------------------------------------------

    async def publish(self, channel: str, data: object) -> str:
        """Publish `data` (anything JSON can hold) to `channel`; returns the message id.

        Raises BackplaneUnavailable when a backplane cannot take it, HubFull when every
        channel slot is busy.
        """
        result = self.publish_json(channel, envelope.canonical_json(data))
        return result if isinstance(result, str) else await result

    def publish_json(self, channel: str, data_json: str) -> str | asyncio.Future[str]:
        """Publish data already in canonical JSON: the id, or (with Redis) a future of it."""
        return self.backplane.publish(channel, data_json, int(time.time() * 1000))

    def attach(self, channel: str, since: str | None = None) -> asyncio.Future[None] | None:
        """None when `channel` (up to `since`) is usable in the hub now, else a future."""
        return self.backplane.attach(channel, since)

    # --- the registry of open connections --------------------------------------------------

    def admit(self, conn: HttpConnection) -> bool:
        """Register a new connection, unless the server is full or stopping."""
        if self.stopping or len(self._connections) >= self.config.max_connections:
            return False
        self._connections.add(conn)
        return True

    def register(self, conn: Any) -> None:
        self._connections.add(conn)
        if isinstance(conn, WebSocketSession):
            self._sockets.add(conn)
        elif isinstance(conn, EventStream):
            self._streams.add(conn)
        if self.stopping:
            # A request that was still arriving when stop() said its goodbyes can hand its
            # socket to a transport afterwards (a parked poll, an event stream, a WebSocket).
            # Nobody would answer it, and stop() would wait out shutdown_timeout_s and cut it.
            # It is registered midway through its own set-up, so say goodbye once that is done.
            assert self._loop is not None
            self._loop.call_soon(conn.shutdown)

    def forget(self, conn: Any) -> None:
        self._connections.discard(conn)
        self._sockets.discard(conn)
        self._streams.discard(conn)
        if self._drained is not None and not self._connections:
            self._drained.set()

    def clock(self) -> float:
        """The loop's monotonic time, which every deadline uses."""
        assert self._loop is not None
        return self._loop.time()

    def _schedule_flush(self) -> None:
        assert self._loop is not None
        self._loop.call_soon(self.hub.flush)

    # --- the sweep -------------------------------------------------------------------------

    def _schedule_sweep(self) -> None:
        c = self.config
        period = min(c.ping_interval_s, c.ping_timeout_s, c.sse_heartbeat_s)
        if c.redis_url or c.redis_master:
            period = min(period, max(c.redis_linger_s, _MIN_SWEEP_S))
        delay = max(_MIN_SWEEP_S, period / _SWEEPS_PER_PERIOD)
        assert self._loop is not None
        self._sweep_handle = self._loop.call_later(delay, self._sweep)

    def _sweep(self) -> None:
        now = self.clock()
        for ws in tuple(self._sockets):
            ws.check_liveness(now)
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.config.sse_heartbeat_s
            for stream in tuple(self._streams):
                stream.heartbeat()
        self.backplane.sweep(now)
        self._schedule_sweep()


def _backplane_for(config: Config) -> Backplane:
    if not (config.redis_url or config.redis_master):
        return LocalBackplane()
    from rawrt.backplane.redis import RedisBackplane  # redis is an optional dependency

    return RedisBackplane(config)
