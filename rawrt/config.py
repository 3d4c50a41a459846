"""Every limit, timeout and buffer bound of a rawrt server, each with its reason.

A `Config` is frozen: the server reads it once at start. Nothing in rawrt grows without a
bound that is named here, so an operator can read this file and know the worst case.
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from dataclasses import dataclass, field

from rawrt import access
from rawrt.errors import ConfigError
from rawrt.netpolicy import TrustedProxies

__all__ = ["ClientConfig", "Config", "ConfigError", "demo_enabled", "redis_address", "redis_urls"]

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
    # The demo page at `/` (rawrt.js is served at /rawrt.js either way). None: on for an open
    # server, off once keys or tokens are configured (`demo_enabled`), since a page that
    # publishes is an invitation an open development server can afford and a production one
    # should not make by default.
    demo: bool | None = None
    # Prometheus metrics at GET /metrics (rawrt.metrics). Counting happens either way (plain
    # ints, per flush); this says whether they are served.
    metrics: bool = True
    # A key a scraper must present (`Authorization: Bearer K` or `X-API-Key: K`; Prometheus's
    # `authorization` setting sends the first); empty: anyone who reaches /metrics may read.
    # Not the publish key: a scraper's credential must not be able to publish.
    metrics_key: str = field(default="", repr=False)
    # An address of its own for /metrics (an internal interface, say), then served there only
    # and no longer on the main listener; empty: on the main listener.
    metrics_host: str = ""
    # ... and its port (0 picks a free one, named in the log; with workers give one: they
    # share it as they share the main port).
    metrics_port: int = 0

    # --- access control (rawrt.access; all off by default: an open development server) ------
    # Keys that may publish over HTTP (`Authorization: Bearer K` or `X-API-Key: K`), comma-
    # separated so that a key can be rotated without downtime: add the new, then drop the old.
    # Credentials stay out of repr(), so no log line or traceback shows them.
    publish_key: str = field(default="", repr=False)
    # HS256 secret that signs subscriber and publisher tokens (JWT); at least 32 bytes.
    jwt_secret: str = field(default="", repr=False)
    # Path of a PEM public key (RSA: RS256, P-256: ES256) that verifies tokens; read at start.
    jwt_public_key: str = ""
    # When set, a token's `aud` must name this audience and its `iss` this issuer.
    jwt_audience: str = ""
    jwt_issuer: str = ""
    # Seconds of clock skew allowed on a token's exp, nbf and iat.
    jwt_leeway_s: float = 30.0
    # Distinct `channels`/`publish` lists of tokens whose parsed form is shared by every
    # connection that presents them (tokens of one role repeat them), so that an idle
    # subscriber's grant holds no copy; past this many the memo starts again.
    jwt_patterns_memo: int = 1024
    # Channel patterns (`news`, `public:*`) anyone may subscribe to without a token.
    public_channels: str = ""
    # Web origins whose pages may open a WebSocket and read CORS answers: `*` for any page
    # (no credentials), a comma-separated list (`https://*.example.com` for subdomains), or
    # empty for none. Tokens need a list: a browser sends the token cookie from any page.
    allowed_origins: str = "*"
    # --- listening, behind a proxy or not -----------------------------------------------
    # Peers whose X-Forwarded-For / X-Real-IP are believed: addresses and CIDRs separated by
    # commas (a front proxy, a load balancer's subnet). Empty: every TCP peer is the client.
    # The client address that results is the one logs and the per-address limit use.
    trusted_proxies: str = ""
    # Connections one client address may hold open at once (0: no limit), so one host cannot
    # take every slot of max_connections; the next one gets the answer of the global cap.
    max_connections_per_ip: int = 0
    # PEM files for serving https and wss directly (both or neither): the certificate chain,
    # leaf first, and its unencrypted private key. Empty: plain HTTP (TLS ends at a proxy).
    tls_cert: str = ""
    tls_key: str = ""
    # Seconds a peer has to complete the TLS handshake; one that opens TCP and stalls holds a
    # socket and a file until then (asyncio's own default is 60 s).
    tls_handshake_timeout_s: float = 10.0

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
    # --- WebSocket compression (permessage-deflate, RFC 7692; rawrt.wire.deflate) ----------
    # Off by default: when on, a client that offers it gets it, each published message is
    # compressed once for every such subscriber, and client messages are inflated within
    # max_message_bytes (more closes 1009 before it is inflated further).
    ws_compression: bool = False
    # Messages whose WebSocket payload is shorter go uncompressed (RSV1 clear, which RFC 7692
    # allows per message): below a few hundred bytes deflate saves little and costs the
    # receiver an inflate.
    ws_compression_min_bytes: int = 256
    # Largest LZ77 window (in bits, 9..15: 512 B to 32 KiB) a client may compress with: its
    # inflater here holds a window that large per connection (plus about 7 KiB), so a
    # smaller bound trades ratio for memory. A client that cannot limit its window is
    # refused compression when this is below 15.
    ws_compression_max_window_bits: int = 15
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
    # Messages per second each WebSocket client may send, sustained (a token bucket; 0: no
    # limit). A message over it gets an error frame; a client a whole burst over is closed
    # with 1008. Every message costs parsing and maybe a publish to every subscriber.
    max_client_messages_per_s: float = 0.0
    # ... and how many it may send at once above that rate (the bucket's size), enough for a
    # client that subscribes to all its channels on connect (max_subscriptions is 256).
    max_client_message_burst: int = 300
    # Connections past max_connections (or a client's allowance) held just long enough to read
    # their request head (request_timeout_s, max_head_bytes), so an event stream gets a 200
    # with `retry:` it reconnects after instead of a 503 that stops EventSource for good;
    # past this many at once, a new one gets the 503 at accept. Each costs a file descriptor.
    max_shed_connections: int = 1000

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
    # On SIGTERM, /readyz answers 503 for this many seconds before anything closes, so that
    # load balancers stop sending new clients here first (they probe every few seconds).
    drain_delay_s: float = 0.0
    # ... then the listener closes and the open connections are closed spread evenly over
    # this many seconds (rawrt.drain), so their clients reconnect elsewhere at a steady rate
    # instead of all at once. 0 closes them all at once.
    drain_s: float = 0.0

    # --- output flow control -----------------------------------------------------------------
    # Above this many bytes queued in a socket, rawrt stops writing to it and keeps only a
    # cursor; it catches up from the log when the socket drains below the low-water mark.
    write_high_water: int = 64 * KIB
    write_low_water: int = 16 * KIB
    # A catch-up write is cut into pieces of at most this many bytes.
    catch_up_chunk_bytes: int = 64 * KIB
    # A fan-out is written in slices of at most this many socket writes (a long poll's answer
    # counts as five), each next slice after whatever else the loop has ready: a channel
    # with 17,000 subscribers here takes a few hundred ms to write, and the request that
    # published its message (answered once Redis numbered it, which takes the loop about five
    # turns) must not wait for the last write. About 3 ms of writes per slice, which costs a
    # loop turn (microseconds); 0 writes every fan-out in one go.
    fanout_slice_writes: int = 500

    # --- operations --------------------------------------------------------------------------
    # Distinct users (tokens' `sub`) one presence answer lists; past it the list is cut and
    # says so, so a channel with many viewers cannot make an answer of unbounded size.
    presence_max_users: int = 1000
    # Messages one history answer may hold (`limit=`, and its default): a page, not the log.
    history_max_limit: int = 1000
    # With Redis, each node reports its presence counts every third of this many seconds and
    # they count for this long: a node that died drops out of every answer within it. (The
    # reports and answers use two connections per Redis, beside redis_max_connections.)
    presence_ttl_s: float = 15.0
    # Join and leave events of a channel's WebSocket and SSE subscribers, to its others
    # (rawrt.presence_events); off by default: each one is a write to every other subscriber.
    presence_events: bool = False
    # Subscribers of a channel on a node past which its events are neither sent nor written
    # there: events are for rooms, not audiences (a crowd joining would cost its square).
    presence_events_max_subscribers: int = 100
    # Join/leave events per channel per second on a node (its own and other nodes' together);
    # more are dropped. With the above: at most 5,000 event frames per channel per second.
    presence_events_per_s: int = 50
    # With Redis, events waiting to be published to the other nodes; past this they are
    # dropped (events are at most once), so a slow Redis cannot grow the queue.
    presence_events_max_pending: int = 10_000
    # How log lines look: `text` for people, `json` (one object per line) for collectors.
    log_format: str = "text"
    # One line per answered request (method, path without its query, status, bytes,
    # duration, client address); off by default, since a busy node answers many.
    access_log: bool = False

    # --- scale-out ---------------------------------------------------------------------------
    # redis://host:port/db for the shared backplane; None keeps everything in this process.
    # Several URLs, comma separated, are independent Redis servers, each a shard holding its
    # share of the channels (rawrt.backplane.sharded); every node must list the same servers.
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


def demo_enabled(c: Config) -> bool:
    """Whether `/` serves the demo page: `c.demo` when set, else whether the server is open."""
    if c.demo is not None:
        return c.demo
    return not _credentials_configured(c)


def _credentials_configured(c: Config) -> bool:
    """True once publish keys or tokens guard the server (rawrt.access)."""
    return bool(c.publish_key) or access.tokens_configured(c)


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
        "max_shed_connections",
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
        "tls_handshake_timeout_s",
        "max_client_message_burst",
        "redis_max_pending_attaches",
        "presence_max_users",
        "history_max_limit",
        "presence_ttl_s",
        "presence_events_max_subscribers",
        "presence_events_per_s",
        "presence_events_max_pending",
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
    for name in (
        "redis_linger_s",
        "redis_history_ttl_s",
        "shutdown_timeout_s",
        "drain_delay_s",
        "drain_s",
        "sse_retry_ms",
        "max_connections_per_ip",
        "max_client_messages_per_s",
        "fanout_slice_writes",
    ):
        if not getattr(c, name) >= 0:  # NaN fails too
            found.append(f"{name} must not be negative, not {getattr(c, name)!r}")
    if c.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        found.append(f"log_level must be debug, info, warning, error or critical: {c.log_level!r}")
    if c.log_format not in ("text", "json"):
        found.append(f"log_format must be text or json, not {c.log_format!r}")
    if c.ws_compression_min_bytes < 0:
        found.append("ws_compression_min_bytes must not be negative")
    if not 9 <= c.ws_compression_max_window_bits <= 15:
        found.append("ws_compression_max_window_bits must be in 9..15")
    if c.echo_path is not None and not c.echo_path.startswith("/"):
        found.append("echo_path must start with '/'")
    found.extend(_network_problems(c))
    found.extend(_metrics_problems(c))
    if c.workers > 1 and not (c.redis_url or c.redis_master):
        found.append("workers > 1 needs redis_url or redis_master: processes share channels")
    found += _redis_problems(c)
    if c.redis_url:  # "" (an empty environment variable) means no Redis, as None does
        found += _redis_url_problems(c.redis_url)
    found.extend(access.config_problems(c))
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
    masters = [name.strip() for name in (c.redis_master or "").split(",")]
    if c.redis_master is not None and (not all(masters) or len(set(masters)) < len(masters)):
        found.append("redis_master must be one or more distinct names, comma separated")
    if c.redis_max_connections < 3:
        found.append("redis_max_connections must be at least 3 (pub/sub, publish, snapshot)")
    return found


def redis_urls(text: str) -> list[str]:
    """The URLs of a comma-separated redis_url, in the order given."""
    return [url.strip() for url in text.split(",")]


def redis_address(url: str) -> str:
    """The Redis server a URL names, `host:port/db` (a socket path for unix://).

    Credentials, TLS and options are left out: changing a password or turning TLS on does
    not make it another server, so it must not move channels between shards (the address
    is what their hash is computed from). Raises ValueError on a URL that names no server.
    """
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parts.query)
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError("a unix:// URL needs a socket path")
        return f"unix:{parts.path}/{_db(query.get('db', ['0'])[0])}"
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("the scheme must be redis://, rediss:// or unix://")
    if not parts.hostname:
        raise ValueError("no host")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    db = parts.path.strip("/") or query.get("db", ["0"])[0]
    return f"{host}:{parts.port or 6379}/{_db(db)}"


def _db(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"the database must be a number, not {text!r}")
    return int(text)


def _redis_url_problems(text: str) -> list[str]:
    found: list[str] = []
    addresses: set[str] = set()
    for url in redis_urls(text):
        try:
            address = redis_address(url)
        except ValueError as exc:  # also a port out of range or a db that is not a number
            found.append(f"redis_url {url!r} is not a Redis URL: {exc}")
            continue
        if address in addresses:
            found.append(f"redis_url lists the Redis at {address} twice")
        addresses.add(address)
    return found


def _metrics_problems(c: Config) -> list[str]:
    found: list[str] = []
    if not 0 <= c.metrics_port <= 65535:
        found.append(f"metrics_port must be in 0..65535, not {c.metrics_port}")
    if c.metrics_port and not c.metrics_host:
        found.append("metrics_port needs metrics_host: the address /metrics is served on")
    if c.metrics_host and c.workers > 1 and not c.metrics_port:
        found.append("metrics_host with workers > 1 needs a metrics_port all workers share")
    key = c.metrics_key
    if key and (len(key) < access.MIN_PUBLISH_KEY_CHARS or not all("!" <= ch <= "~" for ch in key)):
        found.append(
            f"metrics_key must be at least {access.MIN_PUBLISH_KEY_CHARS} visible ASCII "
            "characters (no spaces)"
        )
    if key and key in access.split_list(c.publish_key):
        found.append("metrics_key must differ from every publish_key")
    return found


def _network_problems(c: Config) -> list[str]:
    """Trusted proxies that do not parse; TLS files given one without the other."""
    found: list[str] = []
    try:
        TrustedProxies.parse(c.trusted_proxies)
    except ConfigError as exc:
        found.append(str(exc))
    if bool(c.tls_cert) != bool(c.tls_key):
        found.append("tls_cert and tls_key go together: give both files, or neither")
    return found


# --- the Python client (rawrt.client) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Every bound and timing of a `rawrt.client` connection, each with its reason.

    Separate from `Config`: these are a client's choices, not a server's options.
    """

    # Reconnect delays: full jitter between backoff_min_s and min(backoff_max_s,
    # backoff_min_s * 2**attempt), so a restarted server is not met by one synchronized storm.
    backoff_min_s: float = 0.5
    backoff_max_s: float = 20.0
    # A connection that stayed open this long was stable: the next delay starts small again.
    backoff_reset_s: float = 10.0
    # TCP connect, TLS and the WebSocket handshake together; a server that takes longer is
    # treated as down (and retried).
    connect_timeout_s: float = 10.0
    # Silence this long makes the client ping the server (RFC 6455 §5.5.2) ...
    ping_interval_s: float = 20.0
    # ... and a server that still says nothing this long after the ping is dead: reconnect.
    ping_timeout_s: float = 10.0
    # A whole HTTP publish (connect, request, answer); longer and it fails as unreachable.
    request_timeout_s: float = 10.0
    # Largest server message the client takes; a server's messages carry data of at most its
    # max_body_bytes (1 MiB by default), so 16 MiB leaves room for servers configured larger.
    # A larger message closes the connection with 1009 and fails the client.
    max_message_bytes: int = 16 * MIB
    # Largest HTTP answer read (a publish answer or a refused handshake's error body).
    max_response_bytes: int = 64 * KIB
    # Events of one subscription waiting for the application, in count and bytes. Past either
    # bound the client stops taking that channel (it unsubscribes) and resubscribes from its
    # last queued id once the application has caught up halfway: the server's history fills
    # the gap, or says `Reset` if it no longer can. A slow reader costs this much, no more.
    queue_size: int = 1000
    queue_max_bytes: int = 8 * MIB
    # A token from a getter is replaced this long before its exp (an auth frame on the open
    # socket), so the server never closes the socket for it; a token that lives less than
    # twice this is replaced halfway through its life.
    token_refresh_s: float = 10.0

    def __post_init__(self) -> None:
        for problem in _client_problems(self):
            raise ConfigError(problem)


def _client_problems(c: ClientConfig) -> list[str]:
    """Every inconsistency in `c`, as sentences; empty when it is sound."""
    found = [
        f"{field.name} must be positive, not {getattr(c, field.name)!r}"
        for field in dataclasses.fields(c)
        if not getattr(c, field.name) > 0  # written so that NaN fails too
    ]
    if c.backoff_min_s > c.backoff_max_s:
        found.append("backoff_min_s must not exceed backoff_max_s")
    return found
