"""Every limit, timeout and buffer bound of a rawrt server, each with its reason.

A `Config` is frozen: the server reads it once at start. Nothing in rawrt grows without a
bound that is named here, so an operator can read this file and know the worst case.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from rawrt.errors import ConfigError

__all__ = ["Config", "ConfigError"]

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True, slots=True)
class Config:
    # --- listening ---------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    # The process may hold a limited number of files (20,000 on small hosts); past this bound a
    # new connection gets 503 at once rather than starving the ones already served.
    max_connections: int = 16_000
    # Optional WebSocket echo endpoint for the Autobahn|Testsuite; off unless a path is given.
    echo_path: str | None = None
    # Access-Control-Allow-Origin for the HTTP routes; empty string sends no CORS headers.
    cors_origin: str = "*"

    # --- channels and history ----------------------------------------------------------------
    # Messages kept per channel for resume (SSE Last-Event-ID, poll cursors, WS "since").
    history_size: int = 1000
    # ... and the bytes they may take, so a channel of 1 MiB messages cannot hold 1 GiB.
    history_max_bytes: int = 8 * MIB
    # All channels' history together; past it idle channels are forgotten first.
    history_total_bytes: int = 512 * MIB
    # Channels in memory at once; idle ones (no subscriber) are evicted oldest first.
    max_channels: int = 10_000
    # A channel name is a URL path segment or a JSON string; long names are a memory lever.
    max_channel_bytes: int = 256
    # Channels one WebSocket may subscribe to.
    max_subscriptions: int = 256

    # --- input limits ------------------------------------------------------------------------
    # WebSocket message from a client; larger ones close with 1009 (RFC 6455 §7.4.1).
    max_message_bytes: int = 1 * MIB
    # HTTP request body (publish); larger ones get 413.
    max_body_bytes: int = 1 * MIB
    # Request line plus headers. 16 KiB is h11's default and above nginx's 8 KiB buffers; h11
    # only checks it while a head is incomplete, so rawrt checks whole heads too (431).
    max_head_bytes: int = 16 * KIB
    # Header lines per request (h11 has no cap of its own); more get 431.
    max_header_count: int = 100
    # Request target length; longer gets 414.
    max_target_bytes: int = 8 * KIB
    # Bytes a client may send while its request is parked or its stream is open (pipelining);
    # more and the connection is closed: nothing legitimate needs more.
    max_pending_input_bytes: int = 64 * KIB

    # --- timing ------------------------------------------------------------------------------
    # Server pings every WebSocket this often ...
    ping_interval_s: float = 30.0
    # ... and terminates one whose pong has not come back within this.
    ping_timeout_s: float = 20.0
    # SSE comment heartbeat; must beat proxies' read timeouts (nginx: 60 s).
    sse_heartbeat_s: float = 15.0
    # The SSE `retry:` hint, in milliseconds, sent when a stream opens.
    sse_retry_ms: int = 3000
    # Default and largest `timeout=` of a long poll.
    poll_timeout_s: float = 30.0
    poll_max_timeout_s: float = 120.0
    # Time to receive a whole request (head and body) once it has started: slowloris bound.
    request_timeout_s: float = 10.0
    # An idle keep-alive HTTP connection is closed after this.
    keepalive_timeout_s: float = 75.0
    # On shutdown, connections get this long to finish before they are cut.
    shutdown_timeout_s: float = 5.0

    # --- output flow control -----------------------------------------------------------------
    # Above this many bytes queued in a socket, rawrt stops writing to it and keeps only a
    # cursor; it catches up from the log when the socket drains below the low-water mark.
    write_high_water: int = 64 * KIB
    write_low_water: int = 16 * KIB
    # A catch-up write is cut into pieces of at most this many bytes.
    catch_up_chunk_bytes: int = 64 * KIB

    # --- scale-out ---------------------------------------------------------------------------
    # redis://host:port/db for the shared backplane; None keeps everything in this process.
    redis_url: str | None = None
    # Or find the primary through Sentinel (redis-py's master_for), following its failovers:
    # the Sentinels as HOST:PORT[,HOST:PORT...] ...
    redis_sentinel: str | None = None
    # ... and the name of the master they watch. Both, or neither (then redis_url, if any).
    redis_master: str | None = None
    # Connections a node holds to Redis at most: one for pub/sub, one for publishes, the rest
    # take snapshots (attaches, re-syncs) in parallel. A burst of attaches queues for these
    # (pipelined) instead of opening a connection each; at least 3.
    redis_max_connections: int = 4
    # Channels waiting to attach at once (subscribe and snapshot); past this one more is
    # refused at once (503, an error frame, SSE's retry), like any overload. Above
    # max_channels, so that a node restarting under load takes all its clients back.
    redis_max_pending_attaches: int = 12_000
    # Processes sharing the port with SO_REUSEPORT; more than one requires redis_url.
    workers: int = 1
    # Prefix of every Redis key and pub/sub channel rawrt uses.
    redis_prefix: str = "rawrt"
    # A Redis command (publish, history fetch) that takes longer fails: publishes answer 503
    # within this rather than hang.
    redis_timeout_s: float = 2.0
    # A node keeps its subscription to a channel this long after its last local subscriber
    # left, so long pollers between two polls do not resubscribe every time.
    redis_linger_s: float = 10.0
    # Shared history of a channel nobody publishes to expires after this (0: never); a
    # later resume from it gets a reset.
    redis_history_ttl_s: int = 86_400
    # Publishes queued for Redis at once; past this they are refused with 503.
    max_pending_publishes: int = 10_000

    log_level: str = "info"

    def __post_init__(self) -> None:
        for problem in _problems(self):
            raise ConfigError(problem)

    def replace(self, **changes: object) -> Config:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def _problems(c: Config) -> list[str]:
    """Every inconsistency in `c`, as sentences; empty when it is sound."""
    found: list[str] = []
    positive = (
        "max_connections",
        "history_size",
        "history_max_bytes",
        "history_total_bytes",
        "max_channels",
        "max_channel_bytes",
        "max_subscriptions",
        "max_message_bytes",
        "max_body_bytes",
        "max_head_bytes",
        "max_header_count",
        "max_target_bytes",
        "max_pending_input_bytes",
        "ping_interval_s",
        "ping_timeout_s",
        "sse_heartbeat_s",
        "poll_timeout_s",
        "poll_max_timeout_s",
        "request_timeout_s",
        "keepalive_timeout_s",
        "write_high_water",
        "catch_up_chunk_bytes",
        "workers",
        "redis_timeout_s",
        "max_pending_publishes",
        "redis_max_pending_attaches",
    )
    for name in positive:
        value = getattr(c, name)
        if not value > 0:  # written so that NaN fails too
            found.append(f"{name} must be positive, not {getattr(c, name)!r}")
    if not 0 <= c.port <= 65535:
        found.append(f"port must be in 0..65535, not {c.port}")
    if not 0 <= c.write_low_water < c.write_high_water:
        found.append("write_low_water must be at least 0 and below write_high_water")
    if c.poll_timeout_s > c.poll_max_timeout_s:
        found.append("poll_timeout_s must not exceed poll_max_timeout_s")
    for name in ("redis_linger_s", "redis_history_ttl_s", "shutdown_timeout_s", "sse_retry_ms"):
        if not getattr(c, name) >= 0:  # NaN fails too
            found.append(f"{name} must not be negative, not {getattr(c, name)!r}")
    if c.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        found.append(f"log_level must be debug, info, warning, error or critical: {c.log_level!r}")
    if any(ch in c.cors_origin for ch in "\r\n\0"):
        found.append("cors_origin must be a single header value")
    if c.echo_path is not None and not c.echo_path.startswith("/"):
        found.append("echo_path must start with '/'")
    if c.workers > 1 and not (c.redis_url or c.redis_master):
        found.append("workers > 1 needs redis_url or redis_master: processes share channels")
    found += _redis_problems(c)
    return found


def _redis_problems(c: Config) -> list[str]:
    found: list[str] = []
    if (c.redis_sentinel is None) != (c.redis_master is None):
        found.append("redis_sentinel and redis_master go together: Sentinels and a master name")
    if c.redis_sentinel is not None and c.redis_url:
        found.append("redis_url and redis_sentinel both name a Redis: give one")
    for item in (c.redis_sentinel or "").split(",") if c.redis_sentinel is not None else []:
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) <= 65535:
            found.append(f"redis_sentinel must be HOST:PORT[,HOST:PORT...], not {item!r}")
    if c.redis_max_connections < 3:
        found.append("redis_max_connections must be at least 3 (pub/sub, publish, snapshot)")
    return found
