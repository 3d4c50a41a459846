"""Who may publish and subscribe, and from which pages: rawrt's access policy, sans I/O.

Theory of operation. Access control is opt-in. With no access option set every route is open,
as a development server is (and the server says so at start on a non-loopback address). Each
option closes one door:

    --publish-key K1,K2        HTTP publish needs `Authorization: Bearer K` or `X-API-Key: K`
    --jwt-secret / --jwt-public-key
                               subscribing needs a token (rawrt.tokens) whose `channels` cover
                               the channel, unless it is one of --public-channels; publishing
                               needs the key or a token whose `publish` covers the channel
    --allowed-origins LIST     which web pages may open a WebSocket and read CORS answers

A request is decided once, where it enters (a publish route, a subscribe on any transport, a
WebSocket upgrade), never per message: the decision's only residue is a `Grant`, one small
frozen object a connection keeps so that it can be told when its token expires.

Where a token travels, in this order: `Authorization: Bearer T`; the `rawrt_token` cookie (all
a browser's EventSource can carry); the `token` query parameter (a fallback: URLs land in proxy
logs, so rawrt never logs a query string); and on a WebSocket, an `auth` frame. A browser
sends a cookie whichever page opened the request, so the cookie is believed only when the
request has no `Origin` (not a browser) or an allowed one: that is what stops cross-site
WebSocket hijacking and cross-site publishing with a signed-in user's cookie. For the same
reason tokens need an origin allow-list: tokens with `--allowed-origins '*'` do not start.

Answers (rawrt.errors): no credential, or a bad one: `Unauthorized` (401 with
`WWW-Authenticate: Bearer`, `error="invalid_token"` when one was presented; close code 4401 on
an open WebSocket); a valid one that does not cover the channel, or a foreign origin:
`Forbidden` (403).

Nothing here reads a clock, a file or a socket: `now` comes in as an argument, and the server
reads the public key's PEM file once at start and hands its text in.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from rawrt.errors import ConfigError, Forbidden, Unauthorized
from rawrt.tokens import MIN_SECRET_BYTES, Grant, Patterns, TokenVerifier

if TYPE_CHECKING:
    from rawrt.config import Config

__all__ = [
    "TOKEN_COOKIE",
    "AccessPolicy",
    "Origins",
    "config_problems",
    "open_warning",
    "split_list",
    "tokens_configured",
]

Headers = Sequence[tuple[bytes, bytes]]  # (lower-cased name, value), as h11 gives them

TOKEN_COOKIE = b"rawrt_token"
TOKEN_PARAMETER = "token"
# A publish key is a password that never changes hands interactively: make guessing hopeless.
MIN_PUBLISH_KEY_CHARS = 16
# What a preflight may ask for: the methods rawrt serves and the request headers it reads.
ALLOW_METHODS = "GET, POST, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type, Last-Event-ID, X-API-Key"
_PREFLIGHT_MAX_AGE_S = "86400"
_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-.")


def split_list(text: str) -> tuple[str, ...]:
    """The items of a comma-separated option, stripped; empty items are dropped."""
    return tuple(item for item in (part.strip() for part in text.split(",")) if item)


# --- origins ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Origins:
    """Which web origins may connect: anyone (`*`), none (empty), or a list.

    A list holds exact origins (`https://app.example.com`) and subdomain wildcards
    (`https://*.example.com` covers `https://a.example.com` and `https://a.b.example.com`, not
    `https://example.com`; a port, if given, must match too).
    """

    anyone: bool = False
    exact: frozenset[str] = frozenset()
    wildcards: tuple[tuple[str, str], ...] = ()  # ("https://", ".example.com:8443")

    @classmethod
    def parse(cls, text: str) -> Origins:
        entries = split_list(text)
        if entries == ("*",):
            return cls(anyone=True)
        exact: set[str] = set()
        wildcards: list[tuple[str, str]] = []
        for entry in entries:
            scheme, host = _origin_parts(entry)
            if host.startswith("*."):
                wildcards.append((scheme + "://", host[1:]))
            else:
                exact.add(f"{scheme}://{host}")
        return cls(False, frozenset(exact), tuple(wildcards))

    @property
    def listed(self) -> bool:
        return bool(self.exact or self.wildcards)

    def allows(self, origin: str) -> bool:
        if self.anyone:
            return True
        origin = origin.lower()
        if origin in self.exact:
            return True
        for scheme, suffix in self.wildcards:
            if origin.startswith(scheme) and origin.endswith(suffix):
                label = origin[len(scheme) : len(origin) - len(suffix)]
                if label and set(label) <= _LABEL_CHARS and label[0] != "." != label[-1]:
                    return True
        return False


def _origin_parts(entry: str) -> tuple[str, str]:
    """(scheme, host[:port]) of an allow-list entry, lower-cased; ValueError if it is none."""
    if entry == "*":
        raise ValueError("'*' allows every origin and cannot be combined with others")
    if entry.lower() == "null":
        raise ValueError("'null' is the origin of every sandboxed page and file: never allow it")
    parts = urlsplit(entry.lower())
    host = parts.netloc
    if (
        not parts.scheme
        or not host
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or "@" in host
        or "*" in host.removeprefix("*.")
        or not host.isascii()
        or not host.isprintable()
    ):
        raise ValueError(f"not an origin (scheme://host[:port], e.g. https://a.example): {entry!r}")
    # A browser leaves the default port out of the origin it sends (RFC 6454 §6.1).
    default = _DEFAULT_PORTS.get(parts.scheme)
    if default is not None:
        host = host.removesuffix(default)
    return parts.scheme, host


_DEFAULT_PORTS = {"https": ":443", "http": ":80", "wss": ":443", "ws": ":80"}


# --- the policy ------------------------------------------------------------------------------


class AccessPolicy:
    """The decisions of one server's configuration. Build it once, at start."""

    __slots__ = ("_metrics_key", "_origins", "_public", "_publish_keys", "_tokens")

    def __init__(self, config: Config, public_key_pem: str | None = None) -> None:
        """`public_key_pem`: the text of the file `config.jwt_public_key` names."""
        if bool(config.jwt_public_key) != (public_key_pem is not None):
            raise ConfigError("jwt_public_key: the PEM text must be read and handed in")
        self._publish_keys = tuple(key.encode() for key in split_list(config.publish_key))
        self._metrics_key = config.metrics_key.encode()
        self._tokens = TokenVerifier(
            config.jwt_secret,
            public_key_pem,
            audience=config.jwt_audience,
            issuer=config.jwt_issuer,
            leeway_s=config.jwt_leeway_s,
            memo_size=config.jwt_patterns_memo,
        )
        self._public = Patterns.parse(split_list(config.public_channels))
        self._origins = Origins.parse(config.allowed_origins)

    @property
    def tokens_on(self) -> bool:
        return self._tokens.on

    # --- origins and CORS ----------------------------------------------------------------

    def origin_allowed(self, headers: Headers) -> bool:
        """A request without `Origin` is not from a browser page, and is allowed."""
        origin = _header(headers, b"origin")
        return origin is None or self._origins.allows(origin.decode("latin-1"))

    def check_upgrade_origin(self, headers: Headers) -> None:
        """A WebSocket handshake from a page not allowed: 403 (cross-site hijacking)."""
        if not self.origin_allowed(headers):
            raise Forbidden("this origin may not open a WebSocket here")

    def cors_headers(self, headers: Headers) -> tuple[tuple[str, str], ...]:
        """The CORS headers of a response to this request (Fetch standard, §3.2)."""
        if self._origins.anyone:
            return _ANYONE  # no credentials with "*": browsers refuse that combination
        if not self._origins.listed:
            return ()
        raw = _header(headers, b"origin")
        if raw is None or not self._origins.allows(origin := raw.decode("latin-1")):
            return _VARY  # no CORS headers for a foreign page; caches must still key on it
        # Echoed as sent: it matched the allow-list, whose characters are all safe.
        return (
            ("Access-Control-Allow-Origin", origin),
            ("Access-Control-Allow-Credentials", "true"),
            *_VARY,
        )

    def preflight_headers(self, headers: Headers) -> tuple[tuple[str, str], ...]:
        """The answer to an OPTIONS preflight: none of it for a foreign origin."""
        cors = self.cors_headers(headers)
        if not any(name == "Access-Control-Allow-Origin" for name, _ in cors):
            return cors
        return (
            *cors,
            ("Access-Control-Allow-Methods", ALLOW_METHODS),
            ("Access-Control-Allow-Headers", ALLOW_HEADERS),
            ("Access-Control-Max-Age", _PREFLIGHT_MAX_AGE_S),
        )

    # --- decisions -----------------------------------------------------------------------

    def check_http_publish(
        self, headers: Headers, query: Mapping[str, str], channel: str, now: float
    ) -> None:
        """An HTTP publish: the publish key, or a token whose `publish` covers `channel`."""
        if not self._publish_keys and not self.tokens_on:
            return
        presented = _bearer(headers) or _header(headers, b"x-api-key")
        if presented is not None and self._is_publish_key(presented):
            return
        token = self.request_token(headers, query) if self.tokens_on else None
        if token is not None:
            self.check_publish(self.verify(token, now), channel)
        elif presented is not None:
            raise Unauthorized("the publish key is wrong", invalid_token=True)
        else:
            raise Unauthorized(
                "publishing here needs a publish key or a token", invalid_token=False
            )

    def check_metrics(self, headers: Headers) -> None:
        """A scrape: the metrics key, when one is configured (never a publish key or token)."""
        if not self._metrics_key:
            return
        presented = _bearer(headers) or _header(headers, b"x-api-key")
        if presented is None:
            raise Unauthorized("reading the metrics needs the metrics key", invalid_token=False)
        if not hmac.compare_digest(presented, self._metrics_key):
            raise Unauthorized("the metrics key is wrong", invalid_token=True)

    def subscriber_grant(
        self, headers: Headers, query: Mapping[str, str], channel: str, now: float
    ) -> Grant | None:
        """An HTTP subscribe (SSE, long poll): the grant to keep, None if none is needed."""
        if not self.tokens_on or self._public.matches(channel):
            return None
        grant = self.connection_grant(headers, query, now)
        self.check_subscribe(grant, channel)
        return grant

    def connection_grant(
        self, headers: Headers, query: Mapping[str, str], now: float
    ) -> Grant | None:
        """The grant of the token a request carries; None without one; 401 if invalid."""
        token = self.request_token(headers, query) if self.tokens_on else None
        return None if token is None else self.verify(token, now)

    def check_subscribe(self, grant: Grant | None, channel: str) -> None:
        if not self.tokens_on or self._public.matches(channel):
            return
        if grant is None:
            raise Unauthorized(f"subscribing to {channel!r} needs a token", invalid_token=False)
        if not grant.channels.matches(channel):
            raise Forbidden(f"the token does not allow subscribing to {channel!r}", channel=channel)

    def check_publish(self, grant: Grant | None, channel: str) -> None:
        """A publish with a token (the WebSocket's, or an HTTP request's)."""
        if not self._publish_keys and not self.tokens_on:
            return
        if grant is None:
            raise Unauthorized(f"publishing to {channel!r} needs a token", invalid_token=False)
        if not grant.publish.matches(channel):
            raise Forbidden(f"the token does not allow publishing to {channel!r}", channel=channel)

    def expires_at(self, grant: Grant) -> float:
        """The wall time after which `grant` no longer counts (its exp, plus the leeway)."""
        return self._tokens.expires_at(grant)

    def expired(self, grant: Grant, now: float) -> bool:
        """True once `grant`'s token is past its `exp` (and the leeway) at wall time `now`."""
        return self._tokens.expired(grant, now)

    def verify(self, token: str, now: float) -> Grant:
        """The grant of a valid token (a WebSocket `auth` frame's), or Unauthorized."""
        return self._tokens.verify(token, now)

    # --- tokens --------------------------------------------------------------------------

    def request_token(self, headers: Headers, query: Mapping[str, str]) -> str | None:
        """The token a request carries: Authorization, then the cookie, then the query."""
        bearer = _bearer(headers)
        if bearer is not None:
            return bearer.decode("latin-1")
        if self.origin_allowed(headers):  # a foreign page's request carries the cookie too
            cookie = _cookie(headers, TOKEN_COOKIE)
            if cookie:
                return cookie
        return query.get(TOKEN_PARAMETER) or None

    def _is_publish_key(self, presented: bytes) -> bool:
        # Every key is compared, each in constant time, so timing tells nothing either way.
        found = False
        for key in self._publish_keys:
            found |= hmac.compare_digest(presented, key)
        return found


_ANYONE = (("Access-Control-Allow-Origin", "*"),)
_VARY = (("Vary", "Origin"),)


# --- request fields --------------------------------------------------------------------------


def _header(headers: Headers, name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def _bearer(headers: Headers) -> bytes | None:
    """The credential of `Authorization: Bearer X` (RFC 6750 §2.1), if that is the scheme."""
    value = _header(headers, b"authorization")
    if value is None:
        return None
    scheme, _, credential = value.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    return credential.strip() or None


def _cookie(headers: Headers, name: bytes) -> str | None:
    """A cookie's value from the `Cookie` header(s) (RFC 6265 §5.4: `a=1; b=2`)."""
    for key, value in headers:
        if key != b"cookie":
            continue
        for pair in value.split(b";"):
            cookie_name, eq, cookie_value = pair.strip().partition(b"=")
            if eq and cookie_name == name:
                return cookie_value.strip().strip(b'"').decode("latin-1")
    return None


# --- configuration ---------------------------------------------------------------------------


def tokens_configured(config: Config) -> bool:
    return bool(config.jwt_secret or config.jwt_public_key)


def config_problems(c: Config) -> list[str]:
    """What is wrong with the access-control fields of `c`, as sentences."""
    found: list[str] = []
    for key in split_list(c.publish_key):
        if len(key) < MIN_PUBLISH_KEY_CHARS or not all("!" <= ch <= "~" for ch in key):
            found.append(
                f"each publish_key must be at least {MIN_PUBLISH_KEY_CHARS} visible ASCII "
                "characters (no spaces); separate several with commas"
            )
            break
    secret = c.jwt_secret.encode()
    if secret and len(secret) < MIN_SECRET_BYTES:
        found.append(f"jwt_secret must be at least {MIN_SECRET_BYTES} bytes (RFC 7518 §3.2)")
    if b"-----BEGIN" in secret:
        found.append("jwt_secret is a PEM key: give the public key file as jwt_public_key")
    if not c.jwt_leeway_s >= 0 or not math.isfinite(c.jwt_leeway_s):
        found.append(f"jwt_leeway_s must be a non-negative number, not {c.jwt_leeway_s!r}")
    if not c.jwt_patterns_memo > 0:
        found.append(f"jwt_patterns_memo must be positive, not {c.jwt_patterns_memo!r}")
    tokens = tokens_configured(c)
    for name in ("jwt_audience", "jwt_issuer", "public_channels"):
        if getattr(c, name) and not tokens:
            found.append(f"{name} needs tokens: set jwt_secret or jwt_public_key")
    try:
        Patterns.parse(split_list(c.public_channels))
    except ValueError as exc:
        found.append(f"public_channels: {exc}")
    try:
        origins = Origins.parse(c.allowed_origins)
    except ValueError as exc:
        found.append(f"allowed_origins: {exc}")
    else:
        if tokens and origins.anyone:
            found.append(_COOKIE_NEEDS_ORIGINS)
    return found


_COOKIE_NEEDS_ORIGINS = (
    "tokens are also read from the rawrt_token cookie, which a browser sends with a "
    "WebSocket or request opened by any web page; with allowed_origins '*' a foreign page "
    "could act as your signed-in users. Set --allowed-origins to the pages that may connect "
    "(e.g. https://app.example.com,http://localhost:3000), or to '' for no browser page"
)


def open_warning(c: Config) -> str | None:
    """The start-up warning of a server anyone may use, on an address others can reach."""
    if c.publish_key or tokens_configured(c) or _is_loopback(c.host):
        return None
    return (
        f"access control is off: anyone who can reach {c.host} may publish to and subscribe "
        "to every channel; set --publish-key and --jwt-secret or --jwt-public-key to lock it"
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name or "" (every interface): it may be reachable
