"""rawrt: a lean real-time server (WebSocket, Server-Sent Events, long polling).

The public API, for running rawrt inside your own asyncio loop:

    import rawrt

    server = rawrt.Server(rawrt.Config(host="127.0.0.1", port=0))
    await server.start()
    message_id = await server.publish("news", {"title": "hello"})
    await server.stop()
"""

from __future__ import annotations

__version__ = "0.1.0"

from rawrt.config import Config
from rawrt.errors import (
    BackplaneUnavailable,
    BadMessage,
    ConfigError,
    HttpError,
    RawrtError,
    WebSocketClose,
)
from rawrt.server import Server

__all__ = [
    "BackplaneUnavailable",
    "BadMessage",
    "Config",
    "ConfigError",
    "HttpError",
    "RawrtError",
    "Server",
    "WebSocketClose",
    "__version__",
]
