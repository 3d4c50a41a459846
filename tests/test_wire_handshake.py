"""rawrt.wire.handshake: the server side of the RFC 6455 §4.2 opening handshake."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import CORE, QUIET_PATCH_WRITER
from wsproto.utilities import generate_accept_token

from rawrt.errors import HttpError
from rawrt.wire.handshake import accept_token, check_upgrade, switching_protocols

pytestmark = QUIET_PATCH_WRITER

RFC_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3, "the sample nonce"
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

Headers = list[tuple[bytes, bytes]]


def _upgrade(**changes: bytes | None) -> Headers:
    """A valid upgrade request's headers (names lower-cased, as h11 hands them over)."""
    fields: dict[str, bytes | None] = {
        "host": b"example.com",
        "upgrade": b"websocket",
        "connection": b"Upgrade",
        "sec-websocket-key": RFC_KEY,
        "sec-websocket-version": b"13",
    }
    fields.update({name.replace("_", "-"): value for name, value in changes.items()})
    return [(name.encode(), value) for name, value in fields.items() if value is not None]


def test_accept_token_is_the_rfc_example() -> None:
    assert accept_token(RFC_KEY) == RFC_ACCEPT
    assert check_upgrade(b"GET", b"1.1", _upgrade()) == RFC_ACCEPT


@CORE
@given(raw_key=st.binary(min_size=16, max_size=16))
def test_any_16_byte_key_is_accepted_with_wsproto_s_token(raw_key: bytes) -> None:
    key = base64.b64encode(raw_key)
    accept = check_upgrade(b"GET", b"1.1", _upgrade(sec_websocket_key=key))
    assert accept == generate_accept_token(key).decode()


@pytest.mark.parametrize(
    "headers",
    [
        _upgrade(upgrade=b"WebSocket", connection=b"keep-alive, Upgrade"),
        [*_upgrade(connection=b"keep-alive"), (b"connection", b"upgrade")],
        _upgrade(upgrade=b"h2c, websocket"),
    ],
)
def test_upgrade_tokens_are_case_insensitive_lists(headers: Headers) -> None:
    assert check_upgrade(b"GET", b"1.1", headers) == RFC_ACCEPT


def _refusal(method: bytes, version: bytes, headers: Headers) -> HttpError:
    with pytest.raises(HttpError) as caught:
        check_upgrade(method, version, headers)
    return caught.value


@pytest.mark.parametrize(
    "key",
    [None, b"", b"not base64!", b"dGhlIHNhbXBsZSBub25jZQ", base64.b64encode(b"x" * 15),
     base64.b64encode(b"x" * 17), b"dGhlIHNhbXBsZSBub25jZQ==dGhl",
     "dGhlIHNhbXBsZSBub25jZQ==\u00e9".encode()],
)  # fmt: skip
def test_malformed_key_gets_400(key: bytes | None) -> None:
    assert _refusal(b"GET", b"1.1", _upgrade(sec_websocket_key=key)).status == 400


@pytest.mark.parametrize("upgrade", [None, b"", b"h2c", b"websockets"])
def test_request_without_websocket_upgrade_gets_426(upgrade: bytes | None) -> None:
    error = _refusal(b"GET", b"1.1", _upgrade(upgrade=upgrade))
    assert error.status == 426
    assert ("Upgrade", "websocket") in error.headers


@pytest.mark.parametrize("version", [None, b"8", b"12", b"14", b"13, 8"])
def test_other_websocket_version_gets_426_naming_version_13(version: bytes | None) -> None:
    error = _refusal(b"GET", b"1.1", _upgrade(sec_websocket_version=version))
    assert error.status == 426
    assert ("Sec-WebSocket-Version", "13") in error.headers


@pytest.mark.parametrize(
    ("method", "version", "headers"),
    [
        (b"POST", b"1.1", _upgrade()),
        (b"GET", b"1.0", _upgrade()),
        (b"GET", b"1.1", _upgrade(connection=None)),
        (b"GET", b"1.1", _upgrade(connection=b"keep-alive")),
        (b"GET", b"1.1", _upgrade(host=None)),
    ],
)
def test_upgrade_that_gets_the_rules_wrong_gets_400(
    method: bytes, version: bytes, headers: Headers
) -> None:
    assert _refusal(method, version, headers).status == 400


header_names = st.sampled_from(
    [b"host", b"upgrade", b"connection", b"sec-websocket-key", b"sec-websocket-version"]
) | st.binary(max_size=10)
header_values = st.sampled_from([b"websocket", b"Upgrade", b"13", RFC_KEY]) | st.binary(max_size=40)


@CORE
@given(
    method=st.sampled_from([b"GET", b"POST"]) | st.binary(max_size=8),
    version=st.sampled_from([b"1.1", b"1.0"]) | st.binary(max_size=4),
    headers=st.lists(st.tuples(header_names, header_values), max_size=8),
)
def test_check_upgrade_answers_a_token_or_http_error_on_any_bytes(
    method: bytes, version: bytes, headers: Headers
) -> None:
    try:
        accept = check_upgrade(method, version, headers)
    except HttpError as exc:
        assert exc.status in (400, 426)
        return
    assert len(base64.b64decode(accept, validate=True)) == 20  # a SHA-1 digest


def test_switching_protocols_is_a_101_with_the_accept_token() -> None:
    head = switching_protocols(RFC_ACCEPT)
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"\r\nSec-WebSocket-Accept: " + RFC_ACCEPT.encode() + b"\r\n" in head
    assert head.endswith(b"\r\n\r\n")
