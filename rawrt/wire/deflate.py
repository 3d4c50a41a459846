"""permessage-deflate (RFC 7692): the offer a server takes, compressing once, inflating bounded.

Theory of operation
-------------------
rawrt always answers with `server_no_context_takeover` (§7.1.1.1): its deflate state starts
fresh for every message, so a compressed message depends on nothing but its payload, and one
compressed frame is valid on every connection that negotiated the extension. A published
message is compressed once, when its frames are built (`deflated_frame`), and those bytes go
to every such subscriber. rawrt compresses with a 2^15-byte window; a connection whose offer
limits the server's window (`server_max_window_bits` below 15) gets a shared frame only when
it could not tell the difference, that is never (`Agreement.shared_frames` is False): its
messages go uncompressed, which §6 allows per message.

An offer is read as §7.1 says: parameters not defined for an offer, a bad or repeated value,
or a window the server will not honour decline that offer and the next is tried; a request
whose every offer is declined gets a plain WebSocket, never an error.

Inbound, `Inflater` is a wsproto `Extension` that inflates client messages with its own
bound: wsproto's `PerMessageDeflate` inflates whatever a frame holds (a 1 KiB frame of zeros
can become a gigabyte), so rawrt asks zlib for at most what the message may still hold
(`decompress(data, max_length)`) and refuses the message (1009) the moment more would come,
before inflating any further. The zlib state (a window of up to 32 KiB plus about 7 KiB) is
made on the first compressed message, so an idle connection holds only a few fields; it is
kept between messages (client context takeover, the default) unless the agreement says
`client_no_context_takeover`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits

from rawrt.wire.wsframe import OP_TEXT, RSV1, frame

__all__ = [
    "MIN_DEFLATE_BITS",
    "NAME",
    "Agreement",
    "Inflater",
    "deflate",
    "deflated_frame",
    "negotiate",
]

NAME = "permessage-deflate"
# The window rawrt compresses its own messages with (the largest, best for ratio; the
# compressor lives for one message, so its memory is not per connection).
SERVER_WINDOW_BITS = 15
# §7.1.2: window bits are 8..15. zlib cannot deflate with 8 (it rejects a raw window of 8),
# so a connection limited to 8 gets no compressed message; an inflater is never made smaller
# than 9, since zlib's own deflaters turn 8 into 9.
_MIN_BITS, _MAX_BITS = 8, 15
MIN_DEFLATE_BITS = 9
_TAIL = b"\x00\x00\xff\xff"  # §7.2.1: the empty stored block a sync flush ends with
_PARAMS = (
    "server_no_context_takeover",
    "client_no_context_takeover",
    "server_max_window_bits",
    "client_max_window_bits",
)


@dataclass(frozen=True, slots=True)
class Agreement:
    """What one connection negotiated, and the header value that said so."""

    response: str  # the Sec-WebSocket-Extensions value of the 101
    client_window_bits: int  # the window the client compresses with (our inflater's)
    client_no_context_takeover: bool
    server_window_bits: int  # at most this window in what rawrt sends (8: nothing compressed)

    @property
    def shared_frames(self) -> bool:
        """True when the frames compressed once (with SERVER_WINDOW_BITS) suit this peer."""
        return self.server_window_bits >= SERVER_WINDOW_BITS


def negotiate(header_values: list[bytes], max_client_window_bits: int) -> Agreement | None:
    """The first permessage-deflate offer in the request's Sec-WebSocket-Extensions values
    that rawrt can honour (client window at most `max_client_window_bits`), else None."""
    for offer in _offers(b",".join(header_values)):
        if offer[0] != NAME:
            continue
        agreement = _accept(offer[1:], max_client_window_bits)
        if agreement is not None:
            return agreement
    return None


def _offers(value: bytes) -> list[list[str]]:
    """Each offer as [name, "param", "param=value", ...]: lower-cased, blanks removed."""
    text = value.decode("latin-1")
    return [
        [part.strip().lower().replace(" ", "").replace("\t", "") for part in item.split(";")]
        for item in text.split(",")
        if item.strip()
    ]


def _accept(params: list[str], max_client_bits: int) -> Agreement | None:
    """§7.1: the agreement for one offer, or None to decline it."""
    seen: dict[str, str | None] = {}
    for param in params:
        name, eq, value = param.partition("=")
        if name not in _PARAMS or name in seen:
            return None  # §7: undefined or repeated parameter
        seen[name] = value.strip('"') if eq else None
    if any(seen.get(flag) is not None for flag in _PARAMS[:2]):
        return None  # the takeover flags take no value
    server_bits = _bits(seen, "server_max_window_bits", required=True)
    client_bits = _bits(seen, "client_max_window_bits", required=False)
    if server_bits is None or client_bits is None:
        return None
    answer = ["permessage-deflate", "server_no_context_takeover"]
    no_takeover = "client_no_context_takeover" in seen
    if no_takeover:
        answer.append("client_no_context_takeover")
    if "client_max_window_bits" in seen:
        # §7.1.2.2: the client may use any window up to what it offered; we may ask less.
        client_bits = min(client_bits, max_client_bits)
        answer.append(f"client_max_window_bits={client_bits}")
    elif max_client_bits < _MAX_BITS:
        return None  # the client did not say it can limit its window: it will use 15
    if "server_max_window_bits" in seen:
        answer.append(f"server_max_window_bits={server_bits}")  # §7.1.2.1: echo it, or less
    return Agreement("; ".join(answer), client_bits, no_takeover, server_bits)


def _bits(seen: dict[str, str | None], name: str, *, required: bool) -> int | None:
    """A window-bits value (8..15); absent: 15. None when invalid (the offer is declined):
    `server_max_window_bits` must carry a value, `client_max_window_bits` may omit it."""
    if name not in seen:
        return _MAX_BITS
    value = seen[name]
    if value is None:
        return None if required else _MAX_BITS
    if not (value.isdigit() and len(value) <= 2 and _MIN_BITS <= int(value) <= _MAX_BITS):
        return None
    return int(value)


# --- outbound -------------------------------------------------------------------------------


def deflate(payload: bytes, window_bits: int = SERVER_WINDOW_BITS) -> bytes:
    """§7.2.1: the payload compressed alone (no context kept), without the 4-byte tail."""
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -window_bits)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4] if data.endswith(_TAIL) else data


def deflated_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes | None:
    """A final frame with RSV1 set carrying `payload` compressed, or None when compressing
    does not make it smaller (the plain frame is then the better one for everybody)."""
    data = deflate(payload)
    if len(data) >= len(payload):
        return None
    return frame(data, opcode | RSV1)


# --- inbound --------------------------------------------------------------------------------


class Inflater(Extension):
    """wsproto's view of the extension on one server connection, inflating with a bound.

    `max_bytes` bounds each message after inflation (rawrt's max_message_bytes): a message
    that would inflate past it fails with MESSAGE_TOO_BIG (1009) and no more of it is
    inflated. Control frames and continuation frames with RSV1, and RSV2/RSV3, are protocol
    errors (§6.1, RFC 6455 §5.2), as is an RSV1 message when nothing was negotiated (wsproto
    sees no enabled extension then).
    """

    __slots__ = (
        "_inflater",
        "_message",
        "_produced",
        "_window_bits",
        "agreement",
        "max_bytes",
        "reuse",
    )
    name = NAME

    def __init__(self, agreement: Agreement, max_bytes: int) -> None:
        self.agreement = agreement
        self._window_bits = max(agreement.client_window_bits, MIN_DEFLATE_BITS)
        self.reuse = not agreement.client_no_context_takeover  # client context takeover
        self.max_bytes = max_bytes
        self._inflater: zlib._Decompress | None = None  # made on the first compressed message
        self._message: bool | None = None  # the message in progress is compressed (None: none)
        self._produced = 0  # bytes this message has inflated to so far

    @property
    def in_message(self) -> bool:
        """True between the first and last frame of a compressed message."""
        return bool(self._message)

    def enabled(self) -> bool:
        return True

    def offer(self) -> bool:
        return False  # a server never offers (only a client does)

    def frame_inbound_header(
        self, proto: FrameDecoder | FrameProtocol, opcode: Opcode, rsv: RsvBits, length: int
    ) -> CloseReason | RsvBits:
        if opcode.iscontrol():
            return CloseReason.PROTOCOL_ERROR if rsv.rsv1 else RsvBits(False, False, False)
        if opcode is Opcode.CONTINUATION:
            if rsv.rsv1:
                return CloseReason.PROTOCOL_ERROR  # §6.1: RSV1 only on a message's first frame
        else:
            self._message = rsv.rsv1
            self._produced = 0
            if rsv.rsv1 and self._inflater is None:
                self._inflater = zlib.decompressobj(-self._window_bits)
        return RsvBits(bool(self._message), False, False)

    def frame_inbound_payload_data(
        self, proto: FrameDecoder | FrameProtocol, data: bytes
    ) -> bytes | CloseReason:
        if not self._message or _is_control(proto):
            return data
        return self._inflate(data)

    def frame_inbound_complete(
        self, proto: FrameDecoder | FrameProtocol, fin: bool
    ) -> bytes | CloseReason | None:
        if not self._message or _is_control(proto):
            return None
        if not fin:
            return None
        out = self._inflate(_TAIL)  # §7.2.2: the tail the sender removed
        self._message = None
        inflater = self._inflater
        # A sender that ended with a final block (§7.2.3.3) starts its next message afresh.
        if not self.reuse or (inflater is not None and inflater.eof):
            self._inflater = None
        return out

    def _inflate(self, data: bytes) -> bytes | CloseReason:
        inflater = self._inflater
        assert inflater is not None
        room = self.max_bytes - self._produced
        try:
            out = inflater.decompress(data, room + 1)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self._produced += len(out)
        if len(out) > room or inflater.unconsumed_tail:
            self._inflater = None  # the connection closes; keep nothing of it
            return CloseReason.MESSAGE_TOO_BIG
        return out


def _is_control(proto: FrameDecoder | FrameProtocol) -> bool:
    """True when the frame being parsed is a control frame (a ping inside a message)."""
    header = getattr(proto, "header", None)
    return header is not None and header.opcode.iscontrol()
