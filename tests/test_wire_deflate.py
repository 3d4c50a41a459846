"""permessage-deflate without sockets: which offers rawrt takes, and the bounded inflater.

The inflater runs inside wsproto's server parser exactly as a session drives it; client frames
are built by hand (RFC 6455 §5.2 with RSV1, RFC 7692 §7.2.1), so a bad frame is exactly as bad
as the test says.
"""

from __future__ import annotations

import json
import tracemalloc
import zlib

import pytest
from support.clients import OP_BINARY, OP_CONT, OP_PING, OP_TEXT, client_frame
from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection, Event, Message, Ping, TextMessage
from wsproto.extensions import PerMessageDeflate

from rawrt.wire import deflate
from rawrt.wire.deflate import Agreement, Inflater, negotiate

RSV1 = 0x40
# What browsers send (Chromium, Firefox) and what the `websockets` library sends by default.
BROWSER = b"permessage-deflate; client_max_window_bits"
WEBSOCKETS = b"permessage-deflate; client_max_window_bits"


# --- negotiation ------------------------------------------------------------------------------


def test_browser_offer_is_taken_with_server_no_context_takeover() -> None:
    agreement = negotiate([BROWSER], 15)
    assert agreement is not None
    assert agreement.response == (
        "permessage-deflate; server_no_context_takeover; client_max_window_bits=15"
    )
    assert agreement.shared_frames and not agreement.client_no_context_takeover


def test_client_window_is_bounded_by_the_configured_maximum() -> None:
    agreement = negotiate([b"permessage-deflate; client_max_window_bits=12"], 10)
    assert agreement is not None and agreement.client_window_bits == 10
    assert "client_max_window_bits=10" in agreement.response


def test_client_that_cannot_limit_its_window_is_declined_under_a_small_bound() -> None:
    assert negotiate([b"permessage-deflate"], 12) is None
    taken = negotiate([b"permessage-deflate"], 15)
    assert taken is not None and taken.client_window_bits == 15
    assert "client_max_window_bits" not in taken.response


def test_server_window_limit_is_honoured_by_not_sharing_frames() -> None:
    agreement = negotiate([b"permessage-deflate; server_max_window_bits=10"], 15)
    assert agreement is not None and not agreement.shared_frames
    assert agreement.server_window_bits == 10
    assert "server_max_window_bits=10" in agreement.response


@pytest.mark.parametrize(
    "offer",
    [
        b"permessage-deflate; server_max_window_bits",  # a value is required (§7.1.2.1)
        b"permessage-deflate; client_max_window_bits=16",
        b"permessage-deflate; client_max_window_bits=7",
        b"permessage-deflate; client_max_window_bits=x",
        b"permessage-deflate; server_no_context_takeover=1",
        b"permessage-deflate; client_no_context_takeover; client_no_context_takeover",
        b"permessage-deflate; mystery_param",
        b"x-webkit-deflate-frame",
    ],
)
def test_invalid_offer_is_declined_not_an_error(offer: bytes) -> None:
    assert negotiate([offer], 15) is None


def test_a_declined_offer_falls_back_to_the_next() -> None:
    offers = b"permessage-deflate; bogus, permessage-deflate; client_no_context_takeover"
    agreement = negotiate([offers], 15)
    assert agreement is not None and agreement.client_no_context_takeover
    assert "client_no_context_takeover" in agreement.response


def test_quoted_values_and_several_header_lines_are_read() -> None:
    lines = [b"foo", b'permessage-deflate; client_max_window_bits="11"']
    agreement = negotiate(lines, 15)
    assert agreement is not None and agreement.client_window_bits == 11


# --- outbound ---------------------------------------------------------------------------------


def test_deflated_frame_has_rsv1_and_inflates_alone() -> None:
    payload = json.dumps({"text": "hello " * 100}).encode()
    frame = deflate.deflated_frame(payload)
    assert frame is not None and frame[0] == 0x80 | RSV1 | OP_TEXT
    body = frame[4:] if frame[1] == 126 else frame[2:]
    assert zlib.decompressobj(-15).decompress(body + b"\x00\x00\xff\xff") == payload


def test_incompressible_payload_gets_no_deflated_frame() -> None:
    assert deflate.deflated_frame(bytes(range(256))) is None


def test_wsproto_client_reads_frames_compressed_once() -> None:
    """Two messages compressed separately decode on one client (no server context)."""
    client = _client(b"permessage-deflate; server_no_context_takeover")
    texts = ["a" * 500, "b" * 700]
    for text in texts:
        frame = deflate.deflated_frame(text.encode())
        assert frame is not None
        client.receive_data(frame)
    got = [e.data for e in client.events() if isinstance(e, TextMessage)]
    assert got == texts


# --- inbound ----------------------------------------------------------------------------------


def _client(response: bytes) -> Connection:
    extension = PerMessageDeflate()
    extension.finalize(response.decode())
    return Connection(ConnectionType.CLIENT, extensions=[extension])


def _inflater(offer: bytes = BROWSER, max_bytes: int = 1 << 20) -> Inflater:
    agreement = negotiate([offer], 15)
    assert agreement is not None
    return Inflater(agreement, max_bytes)


def _events(inflater: Inflater, *frames: bytes) -> list[Event]:
    parser = Connection(ConnectionType.SERVER, [inflater])
    parser.receive_data(b"".join(frames))
    return list(parser.events())


def _compressor() -> zlib._Compress:
    return zlib.compressobj(6, zlib.DEFLATED, -15)


def _compressed(data: bytes, compressor: zlib._Compress | None = None) -> bytes:
    compressor = compressor or _compressor()
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def test_compressed_client_message_is_inflated() -> None:
    inflater = _inflater()
    events = _events(inflater, client_frame(_compressed(b"hello" * 50), RSV1 | OP_TEXT))
    assert [e.data for e in events if isinstance(e, Message)] == ["hello" * 50]


def test_client_context_takeover_spans_messages_and_parsers() -> None:
    """The client keeps its compressor between messages: so does the inflater, even when the
    session drops its parser between messages."""
    inflater, compressor = _inflater(), _compressor()
    first = _events(inflater, client_frame(_compressed(b"x" * 300, compressor), RSV1 | OP_TEXT))
    second = _events(inflater, client_frame(_compressed(b"x" * 300, compressor), RSV1 | OP_TEXT))
    assert [e.data for e in first + second if isinstance(e, Message)] == ["x" * 300] * 2


def test_inflater_state_is_made_on_the_first_compressed_message() -> None:
    inflater = _inflater()
    _events(inflater, client_frame(b"plain"))
    assert inflater._inflater is None
    _events(inflater, client_frame(_compressed(b"y" * 100), RSV1 | OP_TEXT))
    assert inflater._inflater is not None


def test_client_no_context_takeover_drops_the_state_after_each_message() -> None:
    inflater = _inflater(b"permessage-deflate; client_no_context_takeover")
    events = _events(inflater, client_frame(_compressed(b"z" * 100), RSV1 | OP_TEXT))
    assert [e.data for e in events if isinstance(e, Message)] == ["z" * 100]
    assert inflater._inflater is None


def test_fragmented_compressed_message_with_a_ping_inside() -> None:
    body = _compressed(json.dumps(list(range(200))).encode())
    half = len(body) // 2
    events = _events(
        _inflater(),
        client_frame(body[:half], RSV1 | OP_BINARY, fin=False),
        client_frame(b"p", OP_PING),
        client_frame(body[half:], OP_CONT),
    )
    assert any(isinstance(e, Ping) for e in events)
    data = b"".join(bytes(e.data) for e in events if isinstance(e, Message))
    assert json.loads(data) == list(range(200))


def test_decompression_bomb_closes_1009_without_inflating_it() -> None:
    """1 MiB of zeros compresses to about 1 KiB; against a 64 KiB limit it is refused, and the
    inflater never holds much more than the limit."""
    bomb = _compressed(bytes(1 << 20))
    assert len(bomb) < 2048
    inflater = _inflater(max_bytes=64 * 1024)
    tracemalloc.start()
    try:
        events = _events(inflater, client_frame(bomb, RSV1 | OP_BINARY))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    closes = [e for e in events if isinstance(e, CloseConnection)]
    assert [c.code for c in closes] == [1009]
    assert not any(isinstance(e, Message) for e in events)
    assert peak < 512 * 1024, peak  # the bomb's 1 MiB was never produced


def test_bomb_spread_over_fragments_is_counted_per_message() -> None:
    body = _compressed(bytes(200_000))
    third = len(body) // 3
    events = _events(
        _inflater(max_bytes=100_000),
        client_frame(body[:third], RSV1 | OP_BINARY, fin=False),
        client_frame(body[third : 2 * third], OP_CONT, fin=False),
        client_frame(body[2 * third :], OP_CONT),
    )
    assert [e.code for e in events if isinstance(e, CloseConnection)] == [1009]


def test_message_at_the_limit_passes() -> None:
    events = _events(_inflater(max_bytes=1000), client_frame(_compressed(b"q" * 1000), RSV1 | 2))
    assert sum(len(e.data) for e in events if isinstance(e, Message)) == 1000


@pytest.mark.parametrize(
    "frames",
    [
        [client_frame(b"", RSV1 | OP_PING)],  # a control frame is never compressed (§6.1)
        [client_frame(b"ab", OP_TEXT, fin=False), client_frame(b"cd", RSV1 | OP_CONT)],
        [client_frame(b"x", 0x20 | OP_TEXT)],  # RSV2 means nothing here
    ],
    ids=["rsv1-on-ping", "rsv1-on-continuation", "rsv2"],
)
def test_misplaced_reserved_bits_close_1002(frames: list[bytes]) -> None:
    events = _events(_inflater(), *frames)
    assert [e.code for e in events if isinstance(e, CloseConnection)] == [1002]


def test_rsv1_without_negotiation_closes_1002() -> None:
    parser = Connection(ConnectionType.SERVER)
    parser.receive_data(client_frame(_compressed(b"hi" * 10), RSV1 | OP_TEXT))
    assert [e.code for e in parser.events() if isinstance(e, CloseConnection)] == [1002]


def test_corrupt_deflate_data_closes_1007() -> None:
    events = _events(_inflater(), client_frame(b"\xff\xff\xff\xff", RSV1 | OP_TEXT))
    assert [e.code for e in events if isinstance(e, CloseConnection)] == [1007]


def test_agreement_is_plain_data() -> None:
    agreement = Agreement("permessage-deflate", 15, False, 15)
    assert agreement.shared_frames
