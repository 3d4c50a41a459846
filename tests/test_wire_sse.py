"""rawrt.wire.sse against an independent WHATWG event-stream parser (tests/support).

The first half checks the parser itself on the spec's corner cases, so that the round-trip
properties in the second half mean what they say.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import CORE, QUIET_PATCH_WRITER
from support.sse_parser import Event, SseParser, parse

from rawrt.wire import sse

pytestmark = QUIET_PATCH_WRITER

# --- the parser follows the spec ---------------------------------------------------------------


def test_parser_dispatches_on_blank_line_with_default_type() -> None:
    events, _ = parse(b"data: hello\n\n")
    assert events == [Event("message", "hello", "")]


@pytest.mark.parametrize("eol", [b"\n", b"\r", b"\r\n"])
def test_parser_splits_lines_at_lf_cr_and_crlf(eol: bytes) -> None:
    stream = b"event: e" + eol + b"id: 7" + eol + b"data: a" + eol + b"data: b" + eol + eol
    assert parse(stream)[0] == [Event("e", "a\nb", "7")]


def test_parser_reads_crlf_cut_between_pieces_as_one_line_end() -> None:
    stream = b"data: a\r\ndata: b\r\n\r\n"
    for cut in range(len(stream) + 1):
        assert parse(stream, [cut])[0] == [Event("message", "a\nb", "")], cut


def test_parser_ignores_one_leading_bom_only() -> None:
    assert parse(b"\xef\xbb\xbfdata: x\n\n", [1, 2])[0] == [Event("message", "x", "")]
    # A second BOM is part of the first field name, which is then unknown.
    assert parse("\ufeff\ufeffdata: x\n\n".encode())[0] == []


def test_parser_strips_one_space_only_and_reads_colonless_fields() -> None:
    events, _ = parse(b"data:  two\ndata:none\ndata\n\n")
    assert events == [Event("message", " two\nnone\n", "")]


def test_parser_ignores_comments_and_unknown_fields() -> None:
    assert parse(b": hi\nfoo: bar\ndata: x\n\n")[0] == [Event("message", "x", "")]


def test_parser_keeps_last_event_id_and_ignores_id_with_nul() -> None:
    events, parser = parse(b"id: 1\ndata: a\n\nid: 2\0\ndata: b\n\nid\ndata: c\n\n")
    assert [e.last_event_id for e in events] == ["1", "1", ""]
    assert parser.last_event_id == ""


def test_parser_sets_last_event_id_even_without_data() -> None:
    events, parser = parse(b"id: 9\n\nevent: lost\n\ndata: x\n\n")
    assert events == [Event("message", "x", "9")]  # the type was cleared with the empty event
    assert parser.last_event_id == "9"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"retry: 1500", 1500),
        (b"retry: 15x", None),
        (b"retry: ", None),
        ("retry: \u0661".encode(), None),  # ARABIC-INDIC DIGIT ONE: a digit, not ASCII
    ],
)
def test_parser_takes_retry_only_as_ascii_digits(line: bytes, expected: int | None) -> None:
    events, parser = parse(line + b"\n\n")
    assert events == []
    assert parser.reconnection_time_ms == expected


def test_parser_discards_event_without_blank_line_at_end_of_stream() -> None:
    events, parser = parse(b"data: a\n\ndata: b\n")
    assert events == [Event("message", "a", "")]
    assert parser.closed and not parser.has_pending


def test_parser_replaces_invalid_utf8_and_joins_split_characters() -> None:
    assert parse(b"data: \xff\n\n")[0] == [Event("message", "\ufffd", "")]
    snowman = "data: \u2603\U0001f600\n\n".encode()
    for cut in range(len(snowman) + 1):
        assert parse(snowman, [cut])[0] == [Event("message", "\u2603\U0001f600", "")]


# --- rawrt's encoder round-trips through the parser --------------------------------------------

# Everything an id or event type may hold: any text without CR, LF or NUL.
single_lines = st.text(st.characters(exclude_characters="\r\n\0", exclude_categories=("Cs",)))
any_text = st.text(st.characters(exclude_categories=("Cs",))) | st.text(
    st.sampled_from("\r\n a\u00e9\u2028\U0001f600")
)


def _normalised(data: str) -> str:
    return data.replace("\r\n", "\n").replace("\r", "\n")


@CORE
@given(data=any_text, event_id=st.none() | single_lines, event_type=st.none() | single_lines)
def test_event_round_trips_through_a_whatwg_parser(
    data: str, event_id: str | None, event_type: str | None
) -> None:
    events, parser = parse(sse.event(data, event_id, event_type))
    expected_id = "" if event_id is None else event_id
    assert events == [Event(event_type or "message", _normalised(data), expected_id)]
    assert parser.last_event_id == expected_id


@CORE
@given(
    bad=st.text().map(lambda t: t + "\r")
    | st.text().map(lambda t: "\n" + t)
    | st.builds(lambda a, b: a + "\0" + b, st.text(), st.text()),
    field=st.sampled_from(["id", "event"]),
)
def test_event_refuses_id_or_type_with_line_break_or_nul(bad: str, field: str) -> None:
    with pytest.raises(ValueError):
        sse.event("x", **{"event_id" if field == "id" else "event_type": bad})


stream_events = st.lists(
    st.tuples(any_text, st.none() | single_lines, st.none() | single_lines), max_size=6
)


def _expected(events: list[tuple[str, str | None, str | None]]) -> list[Event]:
    out, last_id = [], ""
    for data, event_id, event_type in events:
        last_id = last_id if event_id is None else event_id
        out.append(Event(event_type or "message", _normalised(data), last_id))
    return out


@CORE
@given(events=stream_events, cuts=st.lists(st.integers(0, 400), max_size=12))
def test_stream_of_events_cut_anywhere_parses_to_the_same_events(
    events: list[tuple[str, str | None, str | None]], cuts: list[int]
) -> None:
    stream = b"".join(sse.event(*e) for e in events)
    assert parse(stream, cuts)[0] == _expected(events)


@CORE
@given(events=stream_events)
def test_stream_of_events_fed_byte_by_byte_parses_to_the_same_events(
    events: list[tuple[str, str | None, str | None]],
) -> None:
    stream = b"".join(sse.event(*e) for e in events)
    assert parse(stream, range(len(stream)))[0] == _expected(events)


@CORE
@given(text=single_lines, before=any_text, after=any_text)
def test_comment_is_invisible_to_the_parser(text: str, before: str, after: str) -> None:
    stream = sse.event(before, "1") + sse.comment(text) + sse.event(after)
    events, parser = parse(stream)
    assert events == [
        Event("message", _normalised(before), "1"),
        Event("message", _normalised(after), "1"),
    ]
    assert parser.reconnection_time_ms is None


@pytest.mark.parametrize("bad", ["a\rb", "a\nb", "\0"])
def test_comment_refuses_line_breaks_and_nul(bad: str) -> None:
    with pytest.raises(ValueError):
        sse.comment(bad)


@CORE
@given(ms=st.integers(0, 2**53))
def test_retry_sets_reconnection_time_and_dispatches_nothing(ms: int) -> None:
    events, parser = parse(sse.retry(ms) + sse.event("x"))
    assert events == [Event("message", "x", "")]
    assert parser.reconnection_time_ms == ms


def test_retry_refuses_negative_time() -> None:
    with pytest.raises(ValueError):
        sse.retry(-1)


def test_parser_refuses_bytes_after_close() -> None:
    parser = SseParser()
    parser.close()
    with pytest.raises(ValueError):
        parser.feed(b"data: x\n\n")
