"""rawrt.wire.wsframe: server frames parse back with wsproto, a client-side parser."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import CORE, QUIET_PATCH_WRITER
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, Pong, TextMessage

from rawrt.wire import wsframe

pytestmark = QUIET_PATCH_WRITER

# The payload lengths where the header changes shape (RFC 6455 §5.2), and their neighbours.
EDGE_SIZES = [0, 1, 125, 126, 127, 65535, 65536, 65537]
sizes = st.sampled_from(EDGE_SIZES) | st.integers(0, 70_000)


def _client_events(data: bytes) -> list[Event]:
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(data)
    return list(client.events())


def _messages(events: list[Event]) -> list[tuple[type, bytes | str]]:
    """Whole messages (wsproto may hand over a message in parts), with their kind."""
    out: list[tuple[type, bytes | str]] = []
    parts: list[bytes | str] = []
    for event in events:
        assert isinstance(event, (TextMessage, BytesMessage)), event
        parts.append(bytes(event.data) if isinstance(event, BytesMessage) else event.data)
        if event.message_finished:
            joined = "".join(parts) if isinstance(event, TextMessage) else b"".join(parts)  # type: ignore[arg-type]
            out.append((type(event), joined))
            parts = []
    assert not parts
    return out


def _payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _text(size: int, sample: str) -> str:
    """Text of exactly `size` UTF-8 bytes that starts with as much of `sample` as fits."""
    head = sample.encode()[:size].decode("utf-8", "ignore")
    return head + "a" * (size - len(head.encode()))


@CORE
@given(size=sizes, seed=st.integers(0, 2**32))
def test_binary_frame_parses_back_with_wsproto(size: int, seed: int) -> None:
    payload = _payload(size, seed)
    frame = wsframe.frame(payload, wsframe.OP_BINARY)
    assert _messages(_client_events(frame)) == [(BytesMessage, payload)]


@CORE
@given(size=sizes, sample=st.text())
def test_text_frame_parses_back_with_wsproto(size: int, sample: str) -> None:
    text = _text(size, sample)
    assert _messages(_client_events(wsframe.frame(text.encode()))) == [(TextMessage, text)]


@pytest.mark.parametrize(
    ("size", "header"),
    [(0, b"\x81\x00"), (125, b"\x81\x7d"), (126, b"\x81\x7e\x00\x7e"),
     (65535, b"\x81\x7e\xff\xff"), (65536, b"\x81\x7f" + (65536).to_bytes(8, "big"))],
)  # fmt: skip
def test_frame_header_uses_the_shortest_length_form(size: int, header: bytes) -> None:
    frame = wsframe.frame(b"a" * size)
    assert frame == header + b"a" * size


@CORE
@given(payloads=st.lists(st.binary(max_size=300), max_size=8))
def test_frames_written_back_to_back_parse_as_separate_messages(payloads: list[bytes]) -> None:
    stream = b"".join(wsframe.frame(p, wsframe.OP_BINARY) for p in payloads)
    assert _messages(_client_events(stream)) == [(BytesMessage, p) for p in payloads]


@CORE
@given(payload=st.binary(max_size=125), opcode=st.sampled_from([wsframe.OP_PING, wsframe.OP_PONG]))
def test_control_frames_parse_back_with_wsproto(payload: bytes, opcode: int) -> None:
    (event,) = _client_events(wsframe.frame(payload, opcode))
    assert isinstance(event, Ping if opcode == wsframe.OP_PING else Pong)
    assert event.payload == payload


# Codes a peer may send (RFC 6455 §7.4): wsproto refuses reserved and local-only ones.
close_codes = st.sampled_from([1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012]) | (
    st.integers(3000, 4999)
)


@CORE
@given(code=close_codes, reason=st.text(max_size=200))
def test_close_frame_parses_back_with_code_and_a_prefix_of_the_reason(
    code: int, reason: str
) -> None:
    frame = wsframe.close_frame(code, reason)
    assert len(frame) - 2 <= 125  # a control frame's payload (§5.5)
    (event,) = _client_events(frame)
    assert isinstance(event, CloseConnection)
    assert event.code == code
    assert reason.startswith(event.reason)
    cut = len(event.reason)
    if cut < len(reason):  # cut only where the next character would not fit
        assert len(event.reason.encode()) + len(reason[cut].encode()) > 123


@pytest.mark.parametrize("char", ["é", "€", "\U0001f600"])
def test_close_frame_cuts_long_non_ascii_reason_on_a_character_boundary(char: str) -> None:
    frame = wsframe.close_frame(1008, char * 200)
    reason = frame[4:].decode("utf-8")  # raises if a character was cut in half
    assert reason == char * (123 // len(char.encode()))
    assert len(frame[2:]) <= 125


def test_close_frame_with_short_reason_is_exact() -> None:
    assert wsframe.close_frame(1000, "bye") == b"\x88\x05\x03\xe8bye"
