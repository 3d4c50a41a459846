"""The exceptions rawrt raises, and how each reaches the peer.

    RawrtError
    ├── ConfigError          a bad setting; raised before serving
    ├── HttpError            a request we refuse: carries the HTTP status to answer with
    ├── WebSocketClose       the peer broke a rule: carries the close code (RFC 6455 §7.4.1)
    ├── BadMessage           a client frame we cannot act on: answered with a JSON error
    │                        frame, and the connection stays open
    ├── BackplaneUnavailable publishing is impossible right now: 503
    ├── HubFull              every channel slot is busy: 503, or an error frame
    └── NotAttached          a channel not yet synced from the backplane: 503, or an error
                             frame

Bad peer input is always one of these, classified at the point it is found; it never escapes a
connection. Any other exception is a bug in rawrt: it is logged with the connection id and
answered with 500 or close code 1011, without details.
"""

from __future__ import annotations

__all__ = [
    "BackplaneUnavailable",
    "BadMessage",
    "ConfigError",
    "HttpError",
    "HubFull",
    "NotAttached",
    "RawrtError",
    "WebSocketClose",
]


class RawrtError(Exception):
    """Base of every error rawrt raises on purpose."""


class ConfigError(RawrtError, ValueError):
    """A configuration value is out of range or inconsistent with another."""


class HttpError(RawrtError):
    """Refuse an HTTP request with `status`; `detail` goes into the JSON body."""

    def __init__(self, status: int, detail: str, *, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(f"{status} {detail}")
        self.status = status
        self.detail = detail
        self.headers = headers


class WebSocketClose(RawrtError):
    """Close a WebSocket with `code` (1002 protocol, 1007 bad UTF-8, 1008 policy, 1009 size)."""

    def __init__(self, code: int, reason: str = ""):
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


class BadMessage(RawrtError):
    """A client message is not valid JSON or not a known shape; `reason` says which."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class BackplaneUnavailable(RawrtError):
    """The backplane cannot take a publish now (e.g. Redis is down)."""


class HubFull(RawrtError):
    """Every channel slot is taken by a channel someone listens to."""


class NotAttached(RawrtError):
    """With a backplane, a channel must be synced from the shared history before use."""
