"""rawrt.access: the policy's decisions, origins and CORS, and the access configuration.

Requests are given as h11 gives them to rawrt: lower-cased header names and byte values.
"""

from __future__ import annotations

from typing import Any

import jwt
import pytest
from support import QUIET_PATCH_WRITER

from rawrt.access import ALLOW_HEADERS, AccessPolicy, Origins, config_problems, open_warning
from rawrt.config import Config
from rawrt.errors import ConfigError, Forbidden, Unauthorized

pytestmark = QUIET_PATCH_WRITER

SECRET = "s3cret-for-tests-only-0123456789abcdef"
KEY = "publish-key-0123456789"
OLD_KEY = "publish-key-older-98765"
NOW = 1_800_000_000.0
APP = "https://app.example.test"


def _policy(**config: Any) -> AccessPolicy:
    return AccessPolicy(Config(**config))


TOKENS = {"jwt_secret": SECRET, "allowed_origins": f"{APP},https://*.example.org"}
OPEN = _policy()
KEYED = _policy(publish_key=f"{KEY}, {OLD_KEY}")
TOKENED = _policy(**TOKENS, public_channels="lobby,public:*")
BOTH = _policy(**TOKENS, publish_key=KEY)


def _token(sub: str = "alice", **claims: Any) -> str:
    body = {"sub": sub, "exp": NOW + 600, "channels": ["chat:*"], "publish": ["chat:*"]}
    return jwt.encode({**body, **claims}, SECRET, algorithm="HS256")


def _headers(**fields: str) -> list[tuple[bytes, bytes]]:
    return [(name.replace("_", "-").encode(), value.encode()) for name, value in fields.items()]


def _unauthorized(call: Any, *, invalid_token: bool) -> Unauthorized:
    with pytest.raises(Unauthorized) as caught:
        call()
    assert caught.value.status == 401
    challenge = dict(caught.value.headers)["WWW-Authenticate"]
    assert challenge == ('Bearer error="invalid_token"' if invalid_token else "Bearer")
    return caught.value


def _forbidden(call: Any, channel: str) -> Forbidden:
    with pytest.raises(Forbidden) as caught:
        call()
    assert (caught.value.status, caught.value.channel) == (403, channel)
    assert channel in caught.value.detail
    return caught.value


# --- publish ---------------------------------------------------------------------------------


def test_without_access_options_everyone_may_publish_and_subscribe() -> None:
    OPEN.check_http_publish([], {}, "news", NOW)
    assert OPEN.subscriber_grant([], {}, "news", NOW) is None
    OPEN.check_publish(None, "news")
    OPEN.check_subscribe(None, "news")
    assert not OPEN.tokens_on


@pytest.mark.parametrize(
    "headers",
    [
        _headers(authorization=f"Bearer {KEY}"),
        _headers(authorization=f"bearer  {OLD_KEY} "),
        _headers(x_api_key=KEY),
        _headers(x_api_key=OLD_KEY),
    ],
)
def test_publish_key_in_authorization_or_x_api_key_may_publish(
    headers: list[tuple[bytes, bytes]],
) -> None:
    KEYED.check_http_publish(headers, {}, "news", NOW)


def test_missing_publish_key_is_401_with_a_bare_bearer_challenge() -> None:
    error = _unauthorized(
        lambda: KEYED.check_http_publish([], {}, "news", NOW), invalid_token=False
    )
    assert "publish key" in error.detail


@pytest.mark.parametrize(
    "headers",
    [
        _headers(authorization="Bearer wrong-key-0123456789"),
        _headers(x_api_key=KEY[:-1]),
        _headers(x_api_key=KEY + "x"),
        _headers(authorization=f"Basic {KEY}", x_api_key="nope"),
    ],
)
def test_wrong_publish_key_is_401_invalid_token(headers: list[tuple[bytes, bytes]]) -> None:
    _unauthorized(lambda: KEYED.check_http_publish(headers, {}, "news", NOW), invalid_token=True)


def test_publish_key_does_not_open_websocket_publishing() -> None:
    _unauthorized(lambda: KEYED.check_publish(None, "news"), invalid_token=False)
    KEYED.check_subscribe(None, "news")  # the key guards publishing only


def test_with_tokens_an_http_publish_needs_the_key_or_a_token_that_covers_the_channel() -> None:
    BOTH.check_http_publish(_headers(x_api_key=KEY), {}, "anything", NOW)
    BOTH.check_http_publish(_headers(authorization=f"Bearer {KEY}"), {}, "anything", NOW)
    BOTH.check_http_publish(_headers(authorization=f"Bearer {_token()}"), {}, "chat:1", NOW)
    _forbidden(
        lambda: BOTH.check_http_publish(
            _headers(authorization=f"Bearer {_token()}"), {}, "news", NOW
        ),
        "news",
    )
    _unauthorized(
        lambda: BOTH.check_http_publish(_headers(authorization="Bearer junk"), {}, "x", NOW),
        invalid_token=True,
    )
    _unauthorized(lambda: BOTH.check_http_publish([], {}, "x", NOW), invalid_token=False)


# --- subscribe -------------------------------------------------------------------------------


def test_with_tokens_a_subscribe_needs_a_token_that_covers_the_channel() -> None:
    headers = _headers(authorization=f"Bearer {_token()}")
    grant = TOKENED.subscriber_grant(headers, {}, "chat:1", NOW)
    assert grant is not None and grant.sub == "alice"
    _forbidden(lambda: TOKENED.subscriber_grant(headers, {}, "news", NOW), "news")
    _unauthorized(lambda: TOKENED.subscriber_grant([], {}, "news", NOW), invalid_token=False)
    expired = _headers(authorization=f"Bearer {_token(exp=NOW - 100)}")
    _unauthorized(lambda: TOKENED.subscriber_grant(expired, {}, "chat:1", NOW), invalid_token=True)


def test_public_channels_need_no_token_and_keep_no_grant() -> None:
    assert TOKENED.subscriber_grant([], {}, "lobby", NOW) is None
    assert TOKENED.subscriber_grant([], {}, "public:news", NOW) is None
    TOKENED.check_subscribe(None, "public:x")
    _unauthorized(lambda: TOKENED.check_subscribe(None, "lobby2"), invalid_token=False)
    # public is for reading: publishing there still needs a token
    _unauthorized(lambda: TOKENED.check_publish(None, "lobby"), invalid_token=False)


def test_websocket_grant_checks_subscribe_and_publish_separately() -> None:
    grant = TOKENED.verify(_token(channels=["news", "chat:*"], publish=["chat:me"]), NOW)
    TOKENED.check_subscribe(grant, "news")
    TOKENED.check_publish(grant, "chat:me")
    _forbidden(lambda: TOKENED.check_publish(grant, "news"), "news")
    _forbidden(lambda: TOKENED.check_subscribe(grant, "other"), "other")
    assert TOKENED.expired(grant, NOW + 631) and not TOKENED.expired(grant, NOW + 629)


# --- where a token comes from ----------------------------------------------------------------


def _sub_of(policy: AccessPolicy, headers: list[tuple[bytes, bytes]], query: dict[str, str]) -> str:
    token = policy.request_token(headers, query)
    return "" if token is None else policy.verify(token, NOW).sub


def test_token_is_taken_from_authorization_then_cookie_then_query() -> None:
    query = {"token": _token("query")}
    cookie = f"theme=dark; rawrt_token={_token('cookie')}; other=1"
    assert (
        _sub_of(TOKENED, _headers(authorization=f"Bearer {_token('header')}", cookie=cookie), query)
        == "header"
    )
    assert _sub_of(TOKENED, _headers(cookie=cookie), query) == "cookie"
    assert _sub_of(TOKENED, _headers(cookie="theme=dark"), query) == "query"
    assert _sub_of(TOKENED, _headers(authorization="Basic abc"), query) == "query"
    assert TOKENED.request_token([], {"token": ""}) is None


def test_cookie_is_believed_only_without_an_origin_or_from_an_allowed_one() -> None:
    cookie = f"rawrt_token={_token('cookie')}"
    assert _sub_of(TOKENED, _headers(cookie=cookie, origin=APP), {}) == "cookie"
    assert _sub_of(TOKENED, _headers(cookie=cookie, origin="https://a.example.org"), {}) == "cookie"
    # a foreign page's request carries the user's cookie too: it is ignored
    assert TOKENED.request_token(_headers(cookie=cookie, origin="https://evil.test"), {}) is None
    foreign = _headers(cookie=cookie, origin="https://evil.test")
    _unauthorized(lambda: TOKENED.subscriber_grant(foreign, {}, "chat:1", NOW), invalid_token=False)


# --- origins and CORS ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (APP, True),
        (APP.upper(), True),
        ("https://a.example.org", True),
        ("https://a.b.example.org", True),
        ("https://example.org", False),
        ("http://a.example.org", False),
        ("https://a.example.org:8443", False),
        ("https://evilexample.org", False),
        ("https://example.org.evil.test", False),
        ("https://app.example.test.evil.test", False),
        ("https://.example.org", False),
        ("https://a_b.example.org", False),
        ("http://app.example.test", False),
        ("null", False),
    ],
)
def test_origins_match_exactly_or_as_subdomains(origin: str, allowed: bool) -> None:
    assert Origins.parse(TOKENS["allowed_origins"]).allows(origin) is allowed


def test_allow_list_entries_are_normalised() -> None:
    origins = Origins.parse("HTTPS://App.Example.test:443/, http://localhost:3000")
    assert origins.allows(APP) and origins.allows("http://localhost:3000")
    assert not origins.allows("http://localhost:3001")


def test_websocket_upgrade_from_a_foreign_origin_is_403_and_without_origin_allowed() -> None:
    TOKENED.check_upgrade_origin([])
    TOKENED.check_upgrade_origin(_headers(origin=APP))
    with pytest.raises(Forbidden) as caught:
        TOKENED.check_upgrade_origin(_headers(origin="https://evil.test"))
    assert caught.value.status == 403
    OPEN.check_upgrade_origin(_headers(origin="https://evil.test"))  # '*' allows any page
    with pytest.raises(Forbidden):
        _policy(allowed_origins="").check_upgrade_origin(_headers(origin=APP))


def test_cors_echoes_an_allowed_origin_with_credentials_and_vary() -> None:
    headers = dict(TOKENED.cors_headers(_headers(origin=APP)))
    assert headers == {
        "Access-Control-Allow-Origin": APP,
        "Access-Control-Allow-Credentials": "true",
        "Vary": "Origin",
    }


def test_cors_gives_a_foreign_origin_nothing_but_vary() -> None:
    assert TOKENED.cors_headers(_headers(origin="https://evil.test")) == (("Vary", "Origin"),)
    assert TOKENED.cors_headers([]) == (("Vary", "Origin"),)
    assert TOKENED.preflight_headers(_headers(origin="https://evil.test")) == (("Vary", "Origin"),)


def test_open_server_answers_star_without_credentials_and_none_mode_nothing() -> None:
    assert OPEN.cors_headers(_headers(origin="https://any.test")) == (
        ("Access-Control-Allow-Origin", "*"),
    )
    assert _policy(allowed_origins="").cors_headers(_headers(origin=APP)) == ()


@pytest.mark.parametrize("policy", [OPEN, KEYED, TOKENED, BOTH])
@pytest.mark.parametrize("origin", [APP, "https://evil.test", "https://a.example.org", None])
def test_star_is_never_combined_with_credentials(policy: AccessPolicy, origin: str | None) -> None:
    request = _headers(origin=origin) if origin else []
    for headers in (policy.cors_headers(request), policy.preflight_headers(request)):
        fields = dict(headers)
        if fields.get("Access-Control-Allow-Origin") == "*":
            assert "Access-Control-Allow-Credentials" not in fields


def test_preflight_answers_the_methods_and_headers_rawrt_accepts() -> None:
    for policy in (OPEN, TOKENED):
        fields = dict(policy.preflight_headers(_headers(origin=APP)))
        assert {"GET", "POST", "OPTIONS"} <= set(fields["Access-Control-Allow-Methods"].split(", "))
        allowed = {h.lower() for h in fields["Access-Control-Allow-Headers"].split(", ")}
        assert allowed == {"authorization", "content-type", "last-event-id", "x-api-key"}
    assert ALLOW_HEADERS.count(",") == 3


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"jwt_secret": SECRET}, "cookie"),
        ({"jwt_public_key": "/k.pem"}, "cookie"),
        ({"jwt_secret": "short", "allowed_origins": APP}, "32 bytes"),
        ({"jwt_secret": "-----BEGIN PUBLIC KEY-----" + "x" * 40, "allowed_origins": APP}, "PEM"),
        ({"publish_key": "short"}, "16"),
        ({"publish_key": f"{KEY},with space in it ok?"}, "16"),
        ({"public_channels": "news"}, "public_channels needs tokens"),
        ({"jwt_audience": "rawrt"}, "jwt_audience needs tokens"),
        ({"jwt_issuer": "me"}, "jwt_issuer needs tokens"),
        ({**TOKENS, "public_channels": "a*b"}, "only end"),
        ({"allowed_origins": "*,https://a.test"}, "cannot be combined"),
        ({"allowed_origins": "app.example.test"}, "not an origin"),
        ({"allowed_origins": "https://a.test/path"}, "not an origin"),
        ({"allowed_origins": "https://a.*.test"}, "not an origin"),
        ({"allowed_origins": "null"}, "null"),
        ({"jwt_leeway_s": float("inf")}, "jwt_leeway_s"),
    ],
)
def test_access_settings_that_would_be_unsafe_or_meaningless_are_refused(
    changes: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        Config(**changes)


def test_tokens_start_with_an_allow_list_or_with_no_browser_origin() -> None:
    assert not config_problems(Config(jwt_secret=SECRET, allowed_origins=APP))
    assert not config_problems(Config(jwt_secret=SECRET, allowed_origins=""))


def test_credentials_never_appear_in_the_config_repr() -> None:
    text = repr(Config(publish_key=KEY, jwt_secret=SECRET, allowed_origins=APP))
    assert KEY not in text and SECRET not in text


def test_public_key_text_must_be_handed_in_when_configured() -> None:
    config = Config(jwt_public_key="/somewhere.pem", allowed_origins=APP)
    with pytest.raises(ConfigError, match="jwt_public_key"):
        AccessPolicy(config)


@pytest.mark.parametrize(
    ("config", "warns"),
    [
        ({"host": "0.0.0.0"}, True),
        ({"host": "::"}, True),
        ({"host": "192.0.2.7"}, True),
        ({"host": "rawrt.internal"}, True),
        ({"host": "127.0.0.1"}, False),
        ({"host": "::1"}, False),
        ({"host": "localhost"}, False),
        ({"host": "0.0.0.0", "publish_key": KEY}, False),
        ({"host": "0.0.0.0", **TOKENS}, False),
    ],
)
def test_open_server_on_a_reachable_address_is_warned_about(
    config: dict[str, Any], warns: bool
) -> None:
    warning = open_warning(Config(**config))
    assert (warning is not None) is warns
    if warning is not None:
        assert "access control is off" in warning and config["host"] in warning


# --- the WebSocket frames of access control (rawrt.wire.envelope) ----------------------------


def test_auth_frame_parses_with_or_without_a_token_string() -> None:
    from rawrt.wire import envelope

    assert envelope.parse_client_message('{"type":"auth","token":"abc"}', 256) == envelope.Auth(
        "abc"
    )
    for bad in ('{"type":"auth"}', '{"type":"auth","token":42}', '{"type":"auth","token":""}'):
        assert envelope.parse_client_message(bad, 256) == envelope.Auth(None)


def test_access_error_frame_names_the_channel_and_authenticated_its_holder() -> None:
    import json

    from rawrt.wire import envelope

    frame = json.loads(envelope.error("no", data="Forbidden", channel="chat:\ud800x"))
    assert frame == {
        "type": "error",
        "data": "Forbidden",
        "reason": "no",
        "channel": "chat:\ud800x",
    }
    assert json.loads(envelope.authenticated('al"ice', 1764300600.0)) == {
        "type": "authenticated",
        "sub": 'al"ice',
        "exp": 1764300600,
    }
    assert json.loads(envelope.authenticated("a", 1.5))["exp"] == 1.5
