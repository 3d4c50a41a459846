"""The server side of the WebSocket opening handshake (RFC 6455 §4.2), checked by rawrt.

wsproto's own handshake accepts a malformed Sec-WebSocket-Key and raises a bare UnicodeError
on a Host that is not IDNA, so rawrt validates the request itself and answers every failure
with a status: 426 when the request is not a WebSocket upgrade at all or speaks another
version, 400 when it tries and gets it wrong.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from rawrt.errors import HttpError

__all__ = ["accept_token", "check_upgrade", "switching_protocols"]

# §1.3: the GUID every server appends to the client's key.
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_VERSION = "13"


def _tokens(value: bytes) -> set[str]:
    return {t.strip().lower() for t in value.decode("latin-1").split(",")}


def check_upgrade(method: bytes, http_version: bytes, headers: list[tuple[bytes, bytes]]) -> str:
    """The Sec-WebSocket-Accept value for a valid upgrade request; HttpError otherwise."""
    fields: dict[bytes, bytes] = {}
    for name, value in headers:  # h11 lower-cases names
        fields[name] = fields[name] + b"," + value if name in fields else value
    if "websocket" not in _tokens(fields.get(b"upgrade", b"")):
        raise HttpError(426, "this route needs a WebSocket upgrade", headers=_UPGRADE)
    if method != b"GET" or http_version < b"1.1":
        raise HttpError(400, "a WebSocket upgrade must be GET over HTTP/1.1")
    if "upgrade" not in _tokens(fields.get(b"connection", b"")):
        raise HttpError(400, "Connection header must include 'upgrade'")
    if fields.get(b"sec-websocket-version", b"").strip() != _VERSION.encode():
        raise HttpError(426, "unsupported WebSocket version", headers=_UPGRADE)
    if b"host" not in fields:
        raise HttpError(400, "missing Host header")
    return accept_token(_checked_key(fields.get(b"sec-websocket-key", b"")))


def _checked_key(key: bytes) -> bytes:
    """§4.2.1: "a base64-encoded value that, when decoded, is 16 bytes in length"."""
    key = key.strip()
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 16:
        raise HttpError(400, "Sec-WebSocket-Key must be base64 of 16 bytes")
    return key


def accept_token(key: bytes) -> str:
    """§4.2.2: base64 of the SHA-1 of the key followed by the GUID."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest()).decode()


def switching_protocols(accept: str, extensions: str | None = None) -> bytes:
    """The 101; `extensions` is the Sec-WebSocket-Extensions value agreed (rawrt.wire.deflate)."""
    agreed = f"Sec-WebSocket-Extensions: {extensions}\r\n" if extensions else ""
    return (
        "HTTP/1.1 101 Switching Protocols\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n"
        f"{agreed}"
        "\r\n"
    ).encode()


_UPGRADE = (("Upgrade", "websocket"), ("Sec-WebSocket-Version", _VERSION))
