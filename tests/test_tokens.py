"""rawrt.tokens: JWT verification with PyJWT, the algorithm bound to the key, time claims.

Every key is made at test time. Tokens that PyJWT refuses to sign (an HS256 token keyed with
a PEM text, the algorithm-confusion attack) are built by hand, as an attacker would.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given
from hypothesis import strategies as st
from support import CORE, QUIET_PATCH_WRITER

from rawrt.cli import token_command
from rawrt.errors import ConfigError, Unauthorized
from rawrt.tokens import NOBODY, Grant, Patterns, TokenVerifier, issue_token

pytestmark = QUIET_PATCH_WRITER

SECRET = "s3cret-for-tests-only-0123456789abcdef"
NOW = 1_800_000_000.0


def _pem(public_key: Any) -> str:
    return str(
        public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "sub": "alice",
        "exp": NOW + 600,
        "iat": NOW,
        "channels": ["chat:*", "news"],
        "publish": ["chat:*"],
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _hs256(claims: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hand_signed_hs256(claims: dict[str, Any], key: bytes) -> str:
    signing_input = _b64(b'{"alg":"HS256","typ":"JWT"}') + "." + _b64(json.dumps(claims).encode())
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64(signature)


def _refused(verifier: TokenVerifier, token: str, now: float = NOW) -> Unauthorized:
    with pytest.raises(Unauthorized) as caught:
        verifier.verify(token, now)
    assert caught.value.status == 401
    assert caught.value.invalid_token
    assert ("WWW-Authenticate", 'Bearer error="invalid_token"') in caught.value.headers
    return caught.value


HS = TokenVerifier(SECRET, None)


# --- patterns --------------------------------------------------------------------------------


def test_patterns_match_exact_names_prefixes_and_everything() -> None:
    patterns = Patterns.parse(["news", "chat:*"])
    assert patterns.matches("news") and patterns.matches("chat:room1")
    assert patterns.matches("chat:a:b") and patterns.matches("chat:")
    assert not patterns.matches("news:x") and not patterns.matches("chat")
    assert not patterns.matches("chatroom") and not patterns.matches("new")
    assert Patterns.parse(["*"]).matches("anything:at:all")
    assert Patterns.parse(["a", "*"]).everything
    assert not NOBODY.matches("news") and not NOBODY.matches("")


@pytest.mark.parametrize("bad", ["", "a*b", "*x", 3, None, ["news"]])
def test_patterns_refuse_what_is_not_a_pattern(bad: object) -> None:
    with pytest.raises(ValueError, match="pattern"):
        Patterns.parse(["ok", bad])


# --- valid tokens ----------------------------------------------------------------------------


def test_valid_hs256_token_gives_its_grant() -> None:
    grant = HS.verify(_hs256(_claims()), NOW)
    assert grant == Grant("alice", NOW + 600, Patterns.parse(["chat:*", "news"]), grant.publish)
    assert grant.publish.matches("chat:x") and not grant.publish.matches("news")


def test_token_without_channels_or_publish_allows_nothing() -> None:
    grant = HS.verify(_hs256(_claims(channels=None, publish=None, sub=None)), NOW)
    assert (grant.sub, grant.channels, grant.publish) == ("", NOBODY, NOBODY)


def test_rs256_and_es256_tokens_verify_with_the_public_key(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    rs = TokenVerifier("", _pem(rsa_key.public_key()))
    assert rs.verify(jwt.encode(_claims(), rsa_key, algorithm="RS256"), NOW).sub == "alice"
    es = TokenVerifier("", _pem(ec_key.public_key()))
    assert es.verify(jwt.encode(_claims(), ec_key, algorithm="ES256"), NOW).sub == "alice"


def test_secret_and_public_key_together_each_verify_their_own_algorithm(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    both = TokenVerifier(SECRET, _pem(rsa_key.public_key()))
    assert both.verify(_hs256(_claims(sub="h")), NOW).sub == "h"
    assert both.verify(jwt.encode(_claims(sub="r"), rsa_key, algorithm="RS256"), NOW).sub == "r"


# --- refused tokens --------------------------------------------------------------------------


def test_alg_none_is_refused() -> None:
    token = jwt.encode(_claims(), None, algorithm="none")
    assert "'none'" in str(_refused(HS, token))


def test_hs256_token_signed_with_the_public_pem_text_is_refused(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    pem = _pem(rsa_key.public_key())
    forged = _hand_signed_hs256(_claims(), pem.encode())
    _refused(TokenVerifier("", pem), forged)
    # and with a secret configured too, the PEM text is still not the HS256 key
    _refused(TokenVerifier(SECRET, pem), forged)


def test_algorithm_not_configured_is_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    _refused(HS, jwt.encode(_claims(), rsa_key, algorithm="RS256"))
    _refused(TokenVerifier("", _pem(rsa_key.public_key())), _hs256(_claims()))


def test_bad_signature_and_garbage_are_refused() -> None:
    _refused(HS, _hs256(_claims(), secret="another-secret-of-thirty-two-bytes!!"))
    head, body, _ = _hs256(_claims()).split(".")
    _refused(HS, f"{head}.{body}.{_b64(b'x' * 32)}")
    for garbage in ("", "abc", "a.b.c", "Bearer x", "é.é.é"):
        _refused(HS, garbage)


@CORE
@given(st.text(max_size=200))
def test_any_text_is_refused_with_unauthorized_and_nothing_else(text: str) -> None:
    with pytest.raises(Unauthorized):
        HS.verify(text, NOW)


def test_expired_token_is_refused_beyond_the_leeway_only() -> None:
    token = _hs256(_claims(exp=NOW - 10))
    assert HS.verify(token, NOW).sub == "alice"  # 10 s late: within the 30 s leeway
    assert "expired" in str(_refused(HS, _hs256(_claims(exp=NOW - 31))))
    strict = TokenVerifier(SECRET, None, leeway_s=0)
    _refused(strict, token)


def test_nbf_in_the_future_within_and_beyond_the_leeway() -> None:
    assert HS.verify(_hs256(_claims(nbf=NOW + 20)), NOW).sub == "alice"
    assert "nbf" in str(_refused(HS, _hs256(_claims(nbf=NOW + 60))))


def test_iat_in_the_future_beyond_the_leeway_is_refused() -> None:
    assert HS.verify(_hs256(_claims(iat=NOW + 20)), NOW).sub == "alice"
    assert "iat" in str(_refused(HS, _hs256(_claims(iat=NOW + 60))))


@pytest.mark.parametrize(
    "claims",
    [
        _claims(exp=None),
        _claims(exp="soon"),
        _claims(exp=True),
        _claims(nbf="later"),
        _claims(sub=7),
        _claims(channels="chat:*"),
        _claims(publish=["a*b"]),
    ],
    ids=["no-exp", "exp-text", "exp-bool", "nbf-text", "sub-number", "channels-str", "pattern"],
)
def test_malformed_claims_are_refused(claims: dict[str, Any]) -> None:
    _refused(HS, _hs256(claims))


def test_audience_and_issuer_are_checked_when_configured() -> None:
    verifier = TokenVerifier(SECRET, None, audience="rawrt", issuer="https://auth.test")
    good = _claims(aud="rawrt", iss="https://auth.test")
    assert verifier.verify(_hs256(good), NOW).sub == "alice"
    _refused(verifier, _hs256({**good, "aud": "other"}))
    _refused(verifier, _hs256({**good, "iss": "https://evil.test"}))
    _refused(verifier, _hs256({**good, "iss": "auth"}))  # no partial match (CVE-2024-53861)
    _refused(verifier, _hs256(_claims(iss="https://auth.test")))  # aud missing
    _refused(verifier, _hs256(_claims(aud="rawrt")))  # iss missing
    # a token meant for some audience is not for a server that names none (RFC 7519 §4.1.3)
    _refused(HS, _hs256(good))


def test_expired_tells_an_open_connection_its_token_ran_out() -> None:
    grant = HS.verify(_hs256(_claims(exp=NOW + 5)), NOW)
    assert not HS.expired(grant, NOW + 35)
    assert HS.expired(grant, NOW + 35.5)


# --- keys ------------------------------------------------------------------------------------


def test_public_keys_rawrt_cannot_use_are_refused_at_start() -> None:
    with pytest.raises(ConfigError, match="PEM"):
        TokenVerifier("", "not a pem")
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ConfigError, match="2048"):
        TokenVerifier("", _pem(small.public_key()))
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ConfigError, match="P-256"):
        TokenVerifier("", _pem(p384.public_key()))


# --- issuing ---------------------------------------------------------------------------------


def test_issued_token_verifies_with_its_patterns_and_ttl() -> None:
    token = issue_token(SECRET, sub="bob", channels=["news"], publish=["chat:*"], now=NOW, ttl_s=60)
    grant = HS.verify(token, NOW)
    assert (grant.sub, grant.exp) == ("bob", NOW + 60)
    assert grant.channels.matches("news") and grant.publish.matches("chat:x")


@pytest.mark.parametrize(
    ("secret", "ttl_s", "patterns"),
    [("short", 60.0, ["x"]), (SECRET, 0.0, ["x"]), (SECRET, 60.0, ["a*b"])],
)
def test_issuing_refuses_a_short_secret_a_bad_ttl_or_pattern(
    secret: str, ttl_s: float, patterns: list[str]
) -> None:
    with pytest.raises(ConfigError):
        issue_token(secret, sub="x", channels=patterns, publish=[], now=NOW, ttl_s=ttl_s)


def test_rawrt_token_command_prints_a_token_the_server_accepts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--sub", "carol", "--channels", "chat:*,news", "--publish", "chat:*", "--ttl", "90"]
    env = {"RAWRT_JWT_SECRET": SECRET, "RAWRT_JWT_AUDIENCE": "rawrt"}
    assert token_command(argv, env) == 0
    token = capsys.readouterr().out.strip()
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="rawrt")
    assert claims["sub"] == "carol" and claims["exp"] - claims["iat"] == 90
    assert claims["channels"] == ["chat:*", "news"] and claims["publish"] == ["chat:*"]


def test_rawrt_token_command_without_a_secret_says_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert token_command(["--sub", "x"], {}) == 2
    assert "RAWRT_JWT_SECRET" in capsys.readouterr().err


def test_tokens_of_one_role_share_their_parsed_patterns() -> None:
    verifier = TokenVerifier(SECRET, None, memo_size=2)
    first = verifier.verify(_hs256(_claims(sub="a")), NOW)
    second = verifier.verify(_hs256(_claims(sub="b")), NOW)
    assert first.channels is second.channels and first.publish is second.publish
    for n in range(5):  # the memo stays bounded, and still answers right
        grant = verifier.verify(_hs256(_claims(channels=[f"room:{n}"])), NOW)
        assert grant.channels.matches(f"room:{n}") and not grant.channels.matches("room:x")
    assert len(verifier._memo) <= 2
