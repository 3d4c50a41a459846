"""Tokens (JWT): what a holder may subscribe and publish to, verified with PyJWT, sans I/O.

A token's claims: `sub` (who), `exp` (required), `nbf`, `iat`, `channels` (patterns it may
subscribe to) and `publish` (patterns it may publish to). A pattern is an exact channel name,
a prefix ending in `*` (`chat:*`: `:` is the namespace separator of channel names), or `*`.
A verified token becomes a `Grant`, the small frozen object a connection keeps.

PyJWT checks a token's structure, signature, audience and issuer. The algorithm is chosen by
the configuration, never by the token: each configured key is bound to exactly one algorithm
(HS256 for the secret; RS256 or ES256 for the public key, from the key's own type), and a token
whose header names any other (`none`, or HS256 against a public key: algorithm confusion,
RFC 8725 §2.1) is refused before PyJWT sees a key. The public key goes to PyJWT as a parsed
`cryptography` key object, which its HMAC code would refuse to use as a secret anyway.

PyJWT reads the wall clock itself, so its time checks are off and the three time claims are
checked here against the `now` the caller passes in, with the configured leeway; the same
arithmetic (`expired`) tells an open connection that its token has run out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from rawrt.errors import ConfigError, Unauthorized

__all__ = [
    "MIN_SECRET_BYTES",
    "NOBODY",
    "Grant",
    "Patterns",
    "TokenVerifier",
    "issue_token",
]

# RFC 7518 §3.2: an HS256 key "of the same size as the hash output ... or larger MUST be used".
MIN_SECRET_BYTES = 32
# RFC 7518 §3.3: "A key of size 2048 bits or larger MUST be used" with RS256.
MIN_RSA_BITS = 2048


@dataclass(frozen=True, slots=True)
class Patterns:
    """Channel patterns: exact names, prefixes (`chat:*` covers `chat:room1`), or `*`."""

    exact: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()
    everything: bool = False

    @classmethod
    def parse(cls, patterns: Iterable[object]) -> Patterns:
        """Patterns from strings; ValueError names the first one that is not a pattern."""
        exact: set[str] = set()
        prefixes: list[str] = []
        for pattern in patterns:
            if not isinstance(pattern, str) or not pattern:
                raise ValueError(f"a channel pattern must be a non-empty string: {pattern!r}")
            if "*" in pattern[:-1]:
                raise ValueError(f"'*' may only end a channel pattern: {pattern!r}")
            if pattern.endswith("*"):
                prefixes.append(pattern[:-1])
            else:
                exact.add(pattern)
        if "" in prefixes:  # "*" itself: every channel
            return cls(everything=True)
        return cls(frozenset(exact), tuple(prefixes))

    def matches(self, channel: str) -> bool:
        return self.everything or channel in self.exact or channel.startswith(self.prefixes)


NOBODY = Patterns()


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified token allows: the one thing a connection keeps of its credential."""

    sub: str
    exp: float  # seconds since the epoch, as in the token
    channels: Patterns
    publish: Patterns


class TokenVerifier:
    """Verifies tokens against the configured keys; build it once, at start."""

    __slots__ = ("_audience", "_issuer", "_keys", "_leeway_s", "_memo", "_memo_size")

    def __init__(
        self,
        secret: str,
        public_key_pem: str | None,
        *,
        audience: str = "",
        issuer: str = "",
        leeway_s: float = 30.0,
        memo_size: int = 1024,
    ) -> None:
        self._keys = _signing_keys(secret, public_key_pem)
        self._audience = audience or None
        self._issuer = issuer or None
        self._leeway_s = leeway_s
        # Parsed pattern lists by their text: every token of one role repeats the same lists,
        # and sharing one Patterns keeps an idle connection's grant to a few dozen bytes.
        self._memo: dict[tuple[str, ...], Patterns] = {}
        self._memo_size = memo_size

    @property
    def on(self) -> bool:
        """True when some key is configured: tokens are then required where they apply."""
        return bool(self._keys)

    def verify(self, token: str, now: float) -> Grant:
        """The grant of a valid token, or Unauthorized saying what is wrong with it."""
        try:
            alg = str(jwt.get_unverified_header(token).get("alg"))
            key = self._keys.get(alg)
            if key is None:
                raise jwt.InvalidAlgorithmError(f"tokens signed with {alg!r} are not accepted")
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],  # bound to the key by configuration, never the token's choice
                audience=self._audience,
                issuer=self._issuer,
                options=_DECODE_OPTIONS,
            )
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid token: {exc}", invalid_token=True) from None
        _check_times(claims, now, self._leeway_s)
        sub = claims.get("sub", "")
        if not isinstance(sub, str):
            raise Unauthorized("invalid token: sub must be a string", invalid_token=True)
        channels = self._patterns(claims, "channels")
        return Grant(sub, float(claims["exp"]), channels, self._patterns(claims, "publish"))

    def _patterns(self, claims: Mapping[str, Any], name: str) -> Patterns:
        value = claims.get(name)
        if value is None:
            return NOBODY
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise Unauthorized(
                f"invalid token: {name} must be a list of patterns", invalid_token=True
            )
        key = tuple(value)
        patterns = self._memo.get(key)
        if patterns is None:
            try:
                patterns = Patterns.parse(key)
            except ValueError as exc:
                raise Unauthorized(f"invalid token: {name}: {exc}", invalid_token=True) from None
            if len(self._memo) >= self._memo_size:
                self._memo.clear()  # bounded: the next tokens fill it again
            self._memo[key] = patterns
        return patterns

    def expires_at(self, grant: Grant) -> float:
        """The wall time after which `grant` no longer counts (its exp, plus the leeway)."""
        return grant.exp + self._leeway_s

    def expired(self, grant: Grant, now: float) -> bool:
        """True once `grant`'s token is past its `exp` (and the leeway) at wall time `now`."""
        return now > self.expires_at(grant)


_Key = bytes | rsa.RSAPublicKey | ec.EllipticCurvePublicKey
# PyJWT: require exp; its own clock-reading time checks are off (they are _check_times').
_DECODE_OPTIONS: Any = {
    "require": ["exp"],
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
}


def _signing_keys(secret: str, public_key_pem: str | None) -> dict[str, _Key]:
    """Each configured key under the one algorithm it may verify."""
    keys: dict[str, _Key] = {}
    if secret:
        keys["HS256"] = secret.encode()
    if public_key_pem is None:
        return keys
    try:
        key = serialization.load_pem_public_key(public_key_pem.encode())
    except ValueError as exc:
        raise ConfigError(f"jwt_public_key is not a PEM public key: {exc}") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ConfigError(f"jwt_public_key: an RSA key needs {MIN_RSA_BITS} bits or more")
        keys["RS256"] = key
    elif isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        keys["ES256"] = key
    else:
        raise ConfigError("jwt_public_key must be an RSA (RS256) or P-256 (ES256) public key")
    return keys


def _check_times(claims: Mapping[str, Any], now: float, leeway_s: float) -> None:
    """RFC 7519 §4.1.4-6: exp, nbf and iat, each allowing `leeway_s` of clock skew."""
    exp = _time_claim(claims, "exp")
    nbf = _time_claim(claims, "nbf")
    iat = _time_claim(claims, "iat")
    if exp is not None and now > exp + leeway_s:
        raise Unauthorized("invalid token: it has expired", invalid_token=True)
    if nbf is not None and now + leeway_s < nbf:
        raise Unauthorized("invalid token: it is not valid yet (nbf)", invalid_token=True)
    if iat is not None and now + leeway_s < iat:
        raise Unauthorized("invalid token: it was issued in the future (iat)", invalid_token=True)


def _time_claim(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise Unauthorized(f"invalid token: {name} must be a number of seconds", invalid_token=True)
    return float(value)


def issue_token(
    secret: str,
    *,
    sub: str,
    channels: Sequence[str],
    publish: Sequence[str],
    now: float,
    ttl_s: float,
    audience: str = "",
    issuer: str = "",
) -> str:
    """An HS256 token for development and tests (like Centrifugo's `gentoken`)."""
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(f"jwt_secret must be at least {MIN_SECRET_BYTES} bytes")
    if not ttl_s > 0:
        raise ConfigError("the token's ttl must be a positive number of seconds")
    try:
        Patterns.parse(channels)
        Patterns.parse(publish)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    claims: dict[str, object] = {
        "sub": sub,
        "iat": int(now),
        "exp": int(now + ttl_s),
        "channels": list(channels),
        "publish": list(publish),
    }
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    return jwt.encode(claims, secret.encode(), algorithm="HS256")
