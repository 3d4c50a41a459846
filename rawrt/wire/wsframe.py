"""Server-to-client WebSocket frames, built once and written to many sockets.

RFC 6455 §5.2: a frame is FIN/RSV/opcode, a payload length in 7, 7+16 or 7+64 bits, and the
payload. Frames a server sends are never masked (§5.1: "A server MUST NOT mask any frames
that it sends to the client"), so a frame is a function of the payload alone and the same
bytes can go to every subscriber. Building one here costs about a tenth of wsproto's general
path, which matters because a published message is framed once per message, not per socket.
Parsing client frames stays with wsproto.
"""

from __future__ import annotations

import struct

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "RSV1",
    "close_frame",
    "frame",
]

OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
# The first byte's "compressed" bit under permessage-deflate (RFC 7692 §6): OR it into the
# opcode given to `frame`.
RSV1 = 0x40

_FIN = 0x80
_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")


def frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """One unmasked, final frame carrying `payload`."""
    first = _FIN | opcode
    n = len(payload)
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return _LEN16.pack(first, 126, n) + payload
    return _LEN64.pack(first, 127, n) + payload


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame (§5.5.1): a 2-byte code then a UTF-8 reason, 125 bytes at most."""
    # Cut the reason on a character boundary: a close reason must be valid UTF-8 (§5.5.1).
    text = reason.encode()[:123].decode("utf-8", "ignore").encode()
    body = struct.pack("!H", code) + text
    return frame(body, OP_CLOSE)
