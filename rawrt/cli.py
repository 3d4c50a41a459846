"""`rawrt` on the command line: argparse -> Config -> run. Nothing else lives here.

Every Config field is an option (`history_size` -> `--history-size`) and may also come from
the environment (`RAWRT_HISTORY_SIZE`) and from a TOML file named by `--config FILE` (or
`RAWRT_CONFIG`; rawrt.configfile). Precedence, lowest first: the file, the environment, the
command line. Every field has a HELP line, which says what it does and in which unit; the
default and the variable are added to it.

`rawrt config check FILE` checks a file alone (exit 0, or a message naming the key and 2);
`rawrt config show [OPTIONS]` prints the effective configuration as TOML, secrets masked.

`rawrt token --sub USER --channels PATTERNS --publish PATTERNS --ttl SECONDS` prints an HS256
token signed with the configured secret, for development and tests.
`rawrt serve ...` is the same as `rawrt ...`; `rawrt sub` and `rawrt pub` are the client's
commands (rawrt.cli_client).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from rawrt import __version__, configfile, logs
from rawrt.access import split_list
from rawrt.config import Config
from rawrt.errors import ConfigError
from rawrt.server import Server
from rawrt.tokens import issue_token
from rawrt.workers import WORKER_ENV, supervise

__all__ = ["HELP", "config_command", "main", "parse_config", "token_command"]

HELP = {
    "host": "address to listen on",
    "port": "TCP port; 0 picks a free one (the log line names it)",
    "history_size": "messages kept per channel for resume",
    "sse_heartbeat_s": "seconds between SSE heartbeat comments",
    "ping_interval_s": "seconds between server pings on each WebSocket",
    "ping_timeout_s": "seconds a WebSocket peer has to answer a ping",
    "poll_timeout_s": "default long-poll timeout in seconds",
    "max_message_bytes": "largest WebSocket message from a client, in bytes; larger ones "
    "close with 1009",
    "ws_compression": "offer permessage-deflate (RFC 7692) to WebSocket clients that ask: "
    "each message is compressed once for all of them; off by default",
    "ws_compression_min_bytes": "WebSocket messages shorter than this many bytes go "
    "uncompressed (default 256)",
    "ws_compression_max_window_bits": "largest deflate window a client may compress with, "
    "in bits (9..15, default 15); each compressing client's inflater holds that window",
    "max_body_bytes": "largest HTTP request body, in bytes; larger ones get 413",
    "echo_path": "serve a WebSocket echo endpoint here (for Autobahn); off by default",
    "redis_url": "redis://HOST:PORT/DB: share channels with other nodes through Redis; "
    "several URLs, comma separated, spread the channels over several Redis (shards)",
    "redis_sentinel": "HOST:PORT[,HOST:PORT...] of Redis Sentinels that find the primary "
    "(with --redis-master; instead of --redis); follows failovers",
    "redis_master": "the master name the Sentinels watch (with --redis-sentinel); several "
    "names, comma separated, spread the channels over several Sentinel groups (shards)",
    "redis_max_connections": "connections a node opens to Redis at most (3 or more): "
    "pub/sub, publishes, and the rest take snapshots",
    "redis_max_pending_attaches": "channels waiting to attach through Redis at once; "
    "more are refused with 503 / an error frame",
    "workers": "processes sharing the port (needs --redis)",
    "publish_key": "keys that may publish over HTTP (Authorization: Bearer KEY or X-API-Key: "
    "KEY), comma-separated for rotation, 16 characters or more; off when empty",
    "jwt_secret": "HS256 secret (32 bytes or more) verifying tokens: subscribing then needs a "
    "token whose channels match, publishing a token or the publish key; prefer the env var",
    "jwt_public_key": "PEM file of an RSA (RS256) or P-256 (ES256) public key verifying tokens",
    "jwt_audience": "a token's aud must name this audience; not checked when empty",
    "jwt_issuer": "a token's iss must be this issuer; not checked when empty",
    "jwt_leeway_s": "seconds of clock skew allowed on a token's exp, nbf and iat",
    "jwt_patterns_memo": "distinct channel-pattern lists of tokens kept parsed and shared "
    "between connections",
    "public_channels": "comma-separated channel patterns (news, public:*) anyone may "
    "subscribe to without a token",
    "allowed_origins": "web origins whose pages may open a WebSocket and get CORS answers: * "
    "for any page (without credentials), a comma-separated list (https://*.example.com for "
    "subdomains), or empty for none; tokens need a list",
    "trusted_proxies": "addresses and CIDRs (comma-separated) of proxies whose X-Forwarded-For "
    "and X-Real-IP are believed; empty trusts none",
    "max_connections_per_ip": "connections one client address may hold open; past it 503 "
    "(0 = no limit)",
    "tls_cert": "PEM certificate chain file: serve https and wss (with --tls-key)",
    "tls_key": "PEM private key file of --tls-cert (unencrypted)",
    "tls_handshake_timeout_s": "seconds a peer has to complete the TLS handshake",
    "max_client_messages_per_s": "messages per second a WebSocket client may send; over it an "
    "error frame, a whole burst over closes with 1008 (0 = no limit)",
    "max_client_message_burst": "messages a WebSocket client may send at once above "
    "--max-client-messages-per-s",
    "demo": "serve the demo page at / (--demo, --no-demo); by default on unless keys or "
    "tokens are configured",
    "presence_max_users": "distinct users (token sub) one presence answer lists; past it the "
    "list is cut and says so",
    "history_max_limit": "most messages one history answer holds (the largest limit=, and "
    "the default)",
    "max_connections": "open connections at once; past it a new one gets 503 and is closed",
    "history_max_bytes": "bytes of messages kept per channel for resume",
    "history_total_bytes": "bytes of history of all channels together; idle channels go first",
    "max_channels": "channels in memory at once; idle ones are forgotten oldest first",
    "max_channel_bytes": "longest channel name, in bytes of UTF-8; longer gets 400",
    "max_subscriptions": "channels one WebSocket may subscribe to",
    "max_head_bytes": "bytes of request line and headers; more gets 431",
    "max_header_count": "header lines per request; more gets 431",
    "max_target_bytes": "bytes of the request target (path and query); longer gets 414",
    "max_pending_input_bytes": "bytes a client may send while its request is parked or its "
    "stream open; more closes the connection",
    "sse_retry_ms": "milliseconds an SSE client waits before reconnecting (the retry: field)",
    "poll_max_timeout_s": "largest timeout= a long poll may ask for, in seconds",
    "request_timeout_s": "seconds a client has to send a whole request once it has begun; then 408",
    "keepalive_timeout_s": "seconds an idle kept-alive HTTP connection stays open",
    "shutdown_timeout_s": "seconds connections get to finish on stop before they are cut",
    "write_high_water": "bytes queued in a socket above which rawrt stops writing to it and "
    "keeps a cursor",
    "write_low_water": "bytes queued below which a paused socket catches up from the history",
    "catch_up_chunk_bytes": "largest single write when a subscriber catches up, in bytes",
    "fanout_slice_writes": "socket writes per slice of a fan-out (a long-poll answer counts as "
    "five); requests are answered between slices; 0 writes a fan-out in one go",
    "redis_prefix": "prefix of every Redis key and pub/sub channel rawrt uses",
    "redis_timeout_s": "seconds a Redis command may take; a publish then answers 503",
    "redis_linger_s": "seconds a node stays subscribed to a channel after its last local "
    "subscriber left",
    "redis_history_ttl_s": "seconds the shared history of a channel nobody publishes to is "
    "kept (0 = forever)",
    "max_pending_publishes": "publishes waiting for Redis at once; more get 503",
    "log_level": "least severe log lines written: debug, info, warning, error or critical",
    "log_format": "how log lines look: text, or json (one object per line)",
    "access_log": "log one line per answered request: method, path without its query, "
    "status, bytes, duration, client address (true or false)",
    "presence_ttl_s": "with Redis, seconds a node's reported presence counts last; it "
    "reports every third of it, so a dead node's counts vanish within this",
    "presence_events": "send join and leave events of a channel's WebSocket and SSE "
    "subscribers to its other subscribers, at most once (true or false)",
    "presence_events_max_subscribers": "subscribers of a channel on a node above which it "
    "sends and gets no join/leave events there",
    "presence_events_per_s": "join/leave events per channel per second on a node; more are dropped",
    "presence_events_max_pending": "with Redis, join/leave events waiting to go to the other "
    "nodes; more are dropped",
    "drain_delay_s": "seconds /readyz answers 503 after SIGTERM before any connection closes",
    "drain_s": "seconds over which a drain closes the open connections, evenly (0 = all at "
    "once); a second SIGTERM or SIGINT cuts it short",
    "metrics": "serve Prometheus metrics at GET /metrics (true or false)",
    "metrics_key": "key a scraper must send to read /metrics (Authorization: Bearer KEY or "
    "X-API-Key: KEY), 16 characters or more; anyone may read when empty; prefer the env var",
    "metrics_host": "address of a listener of its own for /metrics, which then is served "
    "only there; empty serves it on the main listener",
    "metrics_port": "TCP port of --metrics-host; 0 picks a free one (the log line names it)",
    "max_shed_connections": "connections past the connection cap kept until their request "
    "head is read, so an event stream gets 200 and retry: instead of 503; more get 503 at once",
}
# Short option names users expect; the long forms stay valid.
ALIASES = {
    "ping_interval_s": "--ping-interval",
    "ping_timeout_s": "--ping-timeout",
    "sse_heartbeat_s": "--sse-heartbeat",
    "poll_timeout_s": "--poll-timeout",
    "redis_url": "--redis",
    "redis_sentinel": "--redis-sentinel",
    "redis_master": "--redis-master",
}
# Former names still accepted, as a flag and as RAWRT_<NAME>: a field's old name.
FORMER = {"allowed_origins": "cors_origin"}


def _is_switch(field: dataclasses.Field[Any]) -> bool:
    """A `bool | None` field (None: decided automatically) is a --name / --no-name pair."""
    return field.type == "bool | None"


def _option_type(default: Any) -> Callable[[str], Any]:
    if isinstance(default, bool):
        return _parse_bool
    if isinstance(default, (int, float)):
        return type(default)
    return str


def _parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not true or false: {text!r}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rawrt",
        description="A lean real-time server: WebSocket, SSE and long polling.",
        epilog="Other commands: `rawrt serve` (the same as `rawrt`), `rawrt sub CHANNEL...`, "
        "`rawrt pub CHANNEL [JSON]`, `rawrt token`, `rawrt config check FILE | show`; each "
        "takes --help.",
    )
    parser.add_argument("--version", action="version", version=f"rawrt {__version__}")
    parser.add_argument(
        "--config",
        dest="config_file",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="TOML file of options (the names below, e.g. history_size = 5000); the "
        "environment overrides it and the command line both (env RAWRT_CONFIG)",
    )
    for field in dataclasses.fields(Config):
        flags = [ALIASES[field.name]] if field.name in ALIASES else []
        if "--" + field.name.replace("_", "-") not in flags:  # an alias may be the long form
            flags.append("--" + field.name.replace("_", "-"))
        if field.name in FORMER:
            flags.append("--" + FORMER[field.name].replace("_", "-"))
        if _is_switch(field):
            parser.add_argument(
                *flags,
                dest=field.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=f"{HELP[field.name]} (default automatic; env RAWRT_{field.name.upper()})",
            )
            continue
        # A yes/no option named alone means yes (`--ws-compression`); `--metrics off` says no.
        alone: dict[str, Any] = (
            {"nargs": "?", "const": True} if isinstance(field.default, bool) else {}
        )
        parser.add_argument(
            *flags,
            **alone,
            dest=field.name,
            type=_option_type(field.default),
            default=argparse.SUPPRESS,
            metavar=field.name.upper().removesuffix("_S").removesuffix("_URL"),
            help=f"{HELP[field.name]} (default {_shown_default(field)}; "
            f"env RAWRT_{field.name.upper()})",
        )
    return parser


def _shown_default(field: dataclasses.Field[Any]) -> str:
    if field.default is None or field.default == "":
        return "none"
    return repr(field.default)


def parse_config(argv: Sequence[str], environ: dict[str, str] | None = None) -> Config:
    """The Config the file, the environment and the command line ask for, each overriding
    the one before; raises ConfigError."""
    env = os.environ if environ is None else environ
    flags = vars(_parser().parse_args(argv))
    path = flags.pop("config_file", None) or env.get("RAWRT_CONFIG")
    values: dict[str, Any] = configfile.load(path) if path else {}
    for field in dataclasses.fields(Config):
        text = env.get(f"RAWRT_{field.name.upper()}")
        if text is None and field.name in FORMER:
            text = env.get(f"RAWRT_{FORMER[field.name].upper()}")
        if text is not None:
            try:
                parse = _parse_bool if _is_switch(field) else _option_type(field.default)
                values[field.name] = parse(text)
            except ValueError:
                raise ConfigError(f"RAWRT_{field.name.upper()}={text!r} is not valid") from None
    values.update(flags)
    return Config(**values)


def config_command(argv: Sequence[str], environ: dict[str, str] | None = None) -> int:
    """`rawrt config check FILE` and `rawrt config show [OPTIONS]`: 0, or a message and 2."""
    if argv[:1] == ["check"] and len(argv) == 2:
        try:
            Config(**configfile.load(argv[1]))
        except ConfigError as exc:
            print(f"rawrt config check: {exc}", file=sys.stderr)
            return 2
        print(f"{argv[1]}: ok")
        return 0
    if argv[:1] == ["show"]:
        try:
            config = parse_config(argv[1:], environ)
        except ConfigError as exc:
            print(f"rawrt config show: {exc}", file=sys.stderr)
            return 2
        print(configfile.show(config), end="")
        return 0
    asked = argv[:1] in (["--help"], ["-h"])
    print(
        "usage: rawrt config check FILE | rawrt config show [OPTIONS]\n"
        "  check: is FILE a valid configuration on its own?\n"
        "  show: the effective configuration (file < env < flags), secrets masked",
        file=sys.stdout if asked else sys.stderr,
    )
    return 0 if asked else 2


async def _serve(config: Config) -> None:
    server = Server(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            server.cut_drain()  # a second signal: stop waiting
        stop.set()

    # Before start(): a SIGTERM sent as soon as the "listening" line appears must stop the
    # server gracefully, not kill the process.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    await server.start()
    await stop.wait()
    logging.getLogger("rawrt").info("stopping")
    await server.drain()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)
        signal.signal(sig, signal.SIG_IGN)  # one more while exiting must not kill it


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _token_parser(env: dict[str, str] | os._Environ[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rawrt token",
        description="Print an HS256 token signed with the configured secret (for development "
        "and tests). Patterns: an exact channel, a prefix ending in * (chat:*), or *.",
    )
    parser.add_argument("--sub", required=True, help="the user id the token names")
    parser.add_argument(
        "--channels", default="", help="comma-separated patterns the holder may subscribe to"
    )
    parser.add_argument(
        "--publish", default="", help="comma-separated patterns the holder may publish to"
    )
    parser.add_argument(
        "--ttl", type=float, default=3600.0, help="seconds until it expires (default 3600)"
    )
    for name in ("jwt_secret", "jwt_audience", "jwt_issuer"):
        variable = f"RAWRT_{name.upper()}"
        parser.add_argument(
            "--" + name.replace("_", "-"),
            default=env.get(variable, ""),
            help=f"{HELP[name]} (env {variable})",
        )
    return parser


def token_command(argv: Sequence[str], environ: dict[str, str] | None = None) -> int:
    """`rawrt token ...`: print a token, or a message and 2."""
    args = _token_parser(os.environ if environ is None else environ).parse_args(argv)
    if not args.jwt_secret:
        print("rawrt token: needs --jwt-secret or RAWRT_JWT_SECRET", file=sys.stderr)
        return 2
    try:
        token = issue_token(
            args.jwt_secret,
            sub=args.sub,
            channels=split_list(args.channels),
            publish=split_list(args.publish),
            now=time.time(),
            ttl_s=args.ttl,
            audience=args.jwt_audience,
            issuer=args.jwt_issuer,
        )
    except ConfigError as exc:
        print(f"rawrt token: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["token"]:
        return token_command(args[1:])
    if args[:1] == ["config"]:
        return config_command(args[1:])
    if args[:1] in (["sub"], ["pub"]):  # the client commands; the server never imports them
        from rawrt.cli_client import main as client_main

        return client_main(args)
    if args[:1] == ["serve"]:  # `rawrt serve ...` is `rawrt ...`
        args = args[1:]
    try:
        config = parse_config(args)
    except ConfigError as exc:
        print(f"rawrt: {exc}", file=sys.stderr)
        return 2
    logs.configure(config.log_level, config.log_format)
    if config.workers > 1 and WORKER_ENV not in os.environ:
        return supervise(config, args)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(_serve(config))
    except ConfigError as exc:  # found at start: a key, certificate or TLS file unusable
        print(f"rawrt: {exc}", file=sys.stderr)
        return 2
    return 0
