"""`rawrt` on the command line: argparse -> Config -> run. Nothing else lives here.

Every Config field is an option (`history_size` -> `--history-size`) and may also come from
the environment (`RAWRT_HISTORY_SIZE`); the command line wins over the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from rawrt import __version__
from rawrt.config import Config
from rawrt.errors import ConfigError
from rawrt.server import Server
from rawrt.workers import WORKER_ENV, supervise

__all__ = ["main", "parse_config"]

HELP = {
    "host": "address to listen on",
    "port": "TCP port; 0 picks a free one (the log line names it)",
    "history_size": "messages kept per channel for resume",
    "sse_heartbeat_s": "seconds between SSE heartbeat comments",
    "ping_interval_s": "seconds between server pings on each WebSocket",
    "ping_timeout_s": "seconds a WebSocket peer has to answer a ping",
    "poll_timeout_s": "default long-poll timeout in seconds",
    "max_message_bytes": "largest WebSocket message; larger ones close with 1009",
    "max_body_bytes": "largest HTTP request body; larger ones get 413",
    "echo_path": "serve a WebSocket echo endpoint here (for Autobahn); off by default",
    "redis_url": "redis://HOST:PORT/DB: share channels with other nodes through Redis",
    "redis_sentinel": "HOST:PORT[,HOST:PORT...] of Redis Sentinels that find the primary "
    "(with --redis-master; instead of --redis); follows failovers",
    "redis_master": "the master name the Sentinels watch (with --redis-sentinel)",
    "redis_max_connections": "connections a node opens to Redis at most (3 or more): "
    "pub/sub, publishes, and the rest take snapshots",
    "redis_max_pending_attaches": "channels waiting to attach through Redis at once; "
    "more are refused with 503 / an error frame",
    "workers": "processes sharing the port (needs --redis)",
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


def _option_type(default: Any) -> Callable[[str], Any]:
    if isinstance(default, bool):
        return lambda text: text.lower() in ("1", "true", "yes", "on")
    if isinstance(default, (int, float)):
        return type(default)
    return str


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rawrt", description="A lean real-time server: WebSocket, SSE and long polling."
    )
    parser.add_argument("--version", action="version", version=f"rawrt {__version__}")
    for field in dataclasses.fields(Config):
        flags = [ALIASES[field.name]] if field.name in ALIASES else []
        flags.append("--" + field.name.replace("_", "-"))
        parser.add_argument(
            *flags,
            dest=field.name,
            type=_option_type(field.default),
            default=argparse.SUPPRESS,
            metavar=field.name.upper().removesuffix("_S").removesuffix("_URL"),
            help=f"{HELP.get(field.name, 'see rawrt.config')} (default {field.default!r}; "
            f"env RAWRT_{field.name.upper()})",
        )
    return parser


def parse_config(argv: Sequence[str], environ: dict[str, str] | None = None) -> Config:
    """The Config the command line and environment ask for; raises ConfigError."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for field in dataclasses.fields(Config):
        text = env.get(f"RAWRT_{field.name.upper()}")
        if text is not None:
            try:
                values[field.name] = _option_type(field.default)(text)
            except ValueError:
                raise ConfigError(f"RAWRT_{field.name.upper()}={text!r} is not valid") from None
    values.update(vars(_parser().parse_args(argv)))
    return Config(**values)


async def _serve(config: Config) -> None:
    server = Server(config)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logging.getLogger("rawrt").info("stopping")
    await server.stop()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        config = parse_config(args)
    except ConfigError as exc:
        print(f"rawrt: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s rawrt %(levelname)s %(message)s"
    )
    if config.workers > 1 and WORKER_ENV not in os.environ:
        return supervise(config, args)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_serve(config))
    return 0
