"""`_parser_is_idle` reads wsproto internals: fed real frames, it must tell a parser that
holds nothing from one holding part of a frame or message.

If a wsproto release renames what it reads, the function answers False (safe, but every
socket keeps its parser): the "holds nothing" cases below then fail, which is the signal to
check the new internals before raising the pin in pyproject.toml.
"""

from __future__ import annotations

from support import QUIET_PATCH_WRITER
from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection, Message, Ping, TextMessage

from rawrt.transports.websocket import _parser_is_idle

pytestmark = QUIET_PATCH_WRITER


def _client_bytes(*events: Message[str] | Ping | CloseConnection) -> bytes:
    """Masked frames as a client sends them."""
    client = Connection(ConnectionType.CLIENT)
    return b"".join(client.send(event) for event in events)


def _fed(data: bytes) -> tuple[Connection, list[object]]:
    server = Connection(ConnectionType.SERVER)
    server.receive_data(data)
    return server, list(server.events())


def test_a_new_parser_is_idle() -> None:
    assert _parser_is_idle(Connection(ConnectionType.SERVER))


def test_a_parser_that_read_whole_frames_is_idle() -> None:
    parser, events = _fed(_client_bytes(TextMessage("hello"), Ping(b"p"), TextMessage("x")))
    assert [type(e) for e in events] == [TextMessage, Ping, TextMessage]
    assert _parser_is_idle(parser)


def test_a_parser_holding_part_of_a_header_is_not_idle() -> None:
    frame = _client_bytes(TextMessage("hello"))
    for cut in range(1, 6):  # 2 bytes of header, then the 4-byte mask
        parser, events = _fed(frame[:cut])
        assert events == []
        assert not _parser_is_idle(parser), cut


def test_a_parser_holding_part_of_a_payload_is_not_idle() -> None:
    frame = _client_bytes(TextMessage("x" * 100))
    parser, _ = _fed(frame[:-1])
    assert not _parser_is_idle(parser)
    parser.receive_data(frame[-1:])
    assert list(parser.events()) and _parser_is_idle(parser)


def test_a_parser_inside_a_fragmented_message_is_not_idle() -> None:
    first = _client_bytes(TextMessage("part one, ", message_finished=False))
    parser, events = _fed(first)
    assert len(events) == 1 and isinstance(events[0], TextMessage)
    assert not events[0].message_finished
    assert not _parser_is_idle(parser)


def test_a_parser_with_events_not_yet_read_is_not_idle() -> None:
    parser = Connection(ConnectionType.SERVER)
    parser.receive_data(_client_bytes(TextMessage("hello")))
    assert not _parser_is_idle(parser)
    assert list(parser.events())
    assert _parser_is_idle(parser)


def test_a_parser_that_got_a_close_frame_is_not_idle() -> None:
    parser, events = _fed(_client_bytes(CloseConnection(1000)))
    assert isinstance(events[0], CloseConnection)
    assert not _parser_is_idle(parser)
