"""The exceptions rawrt raises, and how each reaches the peer.

    RawrtError
    ├── ConfigError          a bad setting; raised before serving
    ├── HttpError            a request we refuse: carries the HTTP status to answer with
    │   └── AccessDenied     the access policy said no (rawrt.access)
    │       ├── Unauthorized 401, no valid credential; on an open WebSocket: close 4401
    │       └── Forbidden    403, a valid credential without that channel; on an open
    │                        WebSocket: an error frame naming the channel
    ├── WebSocketClose       the peer broke a rule: carries the close code (RFC 6455 §7.4.1)
    ├── BadMessage           a client frame we cannot act on: answered with a JSON error
    │                        frame, and the connection stays open
    ├── BackplaneUnavailable publishing is impossible right now: 503
    ├── HubFull              every channel slot is busy: 503, or an error frame
    ├── NotAttached          a channel not yet synced from the backplane: 503, or an error
    │                        frame
    └── ClientError          raised by rawrt.client to the application using it
        ├── Unreachable      no connection to the server (refused, reset, timed out)
        └── Refused          the server answered no: an HTTP status, a close code or an error
                             frame, with the server's own words

Bad peer input is always one of these, classified at the point it is found; it never escapes a
connection. Any other exception is a bug in rawrt: it is logged with the connection id and
answered with 500 or close code 1011, without details.
"""

from __future__ import annotations

__all__ = [
    "AccessDenied",
    "BackplaneUnavailable",
    "BadMessage",
    "ClientError",
    "ConfigError",
    "Forbidden",
    "HttpError",
    "HubFull",
    "NotAttached",
    "RawrtError",
    "Refused",
    "Unauthorized",
    "Unreachable",
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
        # The `ref` (JSON text) of the publish frame refused, so its answer can name it.
        self.ref: str | None = None


class BackplaneUnavailable(RawrtError):
    """The backplane cannot take a publish now (e.g. Redis is down)."""


class HubFull(RawrtError):
    """Every channel slot is taken by a channel someone listens to."""


class NotAttached(RawrtError):
    """With a backplane, a channel must be synced from the shared history before use."""


# --- access control (rawrt.access decides; these say how each answer reaches the peer) -------


class AccessDenied(HttpError):
    """The access policy refused a publish, a subscribe or a connection."""


class Unauthorized(AccessDenied):
    """No valid credential: 401 with a `WWW-Authenticate` challenge (RFC 6750 §3).

    `invalid_token` says a credential was presented but is malformed, expired, not yet valid
    or badly signed (`error="invalid_token"`); without it none was presented at all, and
    RFC 6750 §3.1 says the challenge then carries no error code. An open WebSocket that holds
    an invalid token is closed with `CLOSE_CODE`, an application code a browser sees in
    `CloseEvent.code` (it sees 1006 for any refused handshake, whatever the HTTP status).
    """

    CLOSE_CODE = 4401

    def __init__(self, detail: str, *, invalid_token: bool) -> None:
        challenge = 'Bearer error="invalid_token"' if invalid_token else "Bearer"
        super().__init__(401, detail, headers=(("WWW-Authenticate", challenge),))
        self.invalid_token = invalid_token


class Forbidden(AccessDenied):
    """A valid credential that does not cover `channel` (or an origin that may not connect).

    403; RFC 6750 §3.1 calls a token without the right scope `insufficient_scope`.
    """

    def __init__(self, detail: str, *, channel: str | None = None) -> None:
        headers = (
            (("WWW-Authenticate", 'Bearer error="insufficient_scope"'),)
            if channel is not None
            else ()
        )
        super().__init__(403, detail, headers=headers)
        self.channel = channel


# --- the client's errors (rawrt.client raises them; the server never does) ----------------------


class ClientError(RawrtError):
    """Something a `rawrt.client` connection cannot get past on its own."""


class Unreachable(ClientError):
    """The server could not be reached: the connection failed, was reset or timed out."""


class Refused(ClientError):
    """The server said no; `status` is the HTTP status or the WebSocket close code, `detail`
    the server's error text, `channel` the subscription it concerns (None for all)."""

    def __init__(self, status: int, detail: str, *, channel: str | None = None) -> None:
        where = f" (channel {channel!r})" if channel is not None else ""
        super().__init__(f"{status} {detail}{where}")
        self.status = status
        self.detail = detail
        self.channel = channel
