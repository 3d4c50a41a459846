"""rawrt.wire.envelope: client messages parse or fail with BadMessage; server JSON is valid."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import CORE, QUIET_PATCH_WRITER

from rawrt.errors import BadMessage
from rawrt.wire import envelope

pytestmark = QUIET_PATCH_WRITER

# Nested JSON values are slow to draw: fewer of them keep this module near a second.
JSONY = settings(CORE, max_examples=40)

MAX_CHANNEL = 16

# A high surrogate right before a low one is written as a `\\ud800\\udc00` escape pair, which
# every JSON parser reads as one astral character: JSON cannot tell the two apart, and no
# value parsed from JSON text holds such a pair. Lone surrogates are kept apart from that.
_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")
lone_surrogate_text = st.text(st.characters(categories=["Cs", "Ll", "Cc"])).filter(
    lambda t: _PAIR.search(t) is None
)
# JSON values (no NaN or infinities, which are not JSON), strings with lone surrogates too.
json_strings = st.text() | lone_surrogate_text
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | json_strings,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(json_strings, inner, max_size=4),
    max_leaves=20,
)


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


# Text shaped like client messages, so the checks past "is it JSON" are reached too.
message_like = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["subscribe", "unsubscribe", "publish", "ping", "other"])
        | json_values,
        "channel": st.text(max_size=20) | json_values,
        "since": st.none() | st.text() | json_values,
        "data": json_values,
    },
).map(_json_text)
garbage = st.text() | st.text('[]{}":,0123456789.eE+-truefalsn \\u') | message_like


@CORE
@given(text=garbage)
def test_parse_client_message_answers_a_command_or_bad_message(text: str) -> None:
    try:
        command = envelope.parse_client_message(text, MAX_CHANNEL)
    except BadMessage as exc:
        assert exc.reason
        return
    assert isinstance(
        command, (envelope.Subscribe, envelope.Unsubscribe, envelope.Publish, envelope.Ping)
    )


@pytest.mark.parametrize(
    "text",
    ["[" * 100_000, '{"type":"publish","channel":"c","data":' + "[" * 100_000 + "]" * 100_000 + "}",
     "1" * 5000, "NaN", '{"type":"publish","channel":"c","data":Infinity}', "\ud800", "",
     '{"type":"subscribe","channel":"c","since":5}', '{"type":"subscribe","channel":""}',
     '{"type":"subscribe"}', '{"type":"nope","channel":"c"}', '"ping"'],
)  # fmt: skip
def test_parse_client_message_refuses_with_bad_message(text: str) -> None:
    with pytest.raises(BadMessage):
        envelope.parse_client_message(text, MAX_CHANNEL)


def test_parse_client_message_reads_each_command() -> None:
    parse = envelope.parse_client_message
    assert parse('{"type":"ping"}', MAX_CHANNEL) == envelope.Ping()
    assert parse('{"type":"subscribe","channel":"a","since":"x-1"}', 16) == envelope.Subscribe(
        "a", "x-1"
    )
    assert parse('{"type":"subscribe","channel":"a"}', 16) == envelope.Subscribe("a", None)
    assert parse('{"type":"unsubscribe","channel":"a"}', 16) == envelope.Unsubscribe("a")
    published = parse('{"type":"publish","channel":"a","data":{"k": [1, 2.5]}}', 16)
    assert published == envelope.Publish("a", '{"k":[1,2.5]}')


def test_channel_limit_counts_utf8_bytes() -> None:
    fits = json.dumps({"type": "unsubscribe", "channel": "é" * 8})  # 16 bytes
    assert envelope.parse_client_message(fits, 16) == envelope.Unsubscribe("é" * 8)
    with pytest.raises(BadMessage):
        envelope.parse_client_message(json.dumps({"type": "ping", "x": 1} | {
            "type": "unsubscribe", "channel": "é" * 8 + "a"}), 16)  # fmt: skip


@JSONY
@given(value=json_values)
def test_canonical_json_is_one_line_and_parses_back_to_the_value(value: Any) -> None:
    text = envelope.canonical_json(value)
    assert "\r" not in text and "\n" not in text
    text.encode("utf-8")  # strict: lone surrogates must have been escaped
    assert envelope.parse_data(text) == value
    assert envelope.parse_data(text.encode()) == value


def test_canonical_json_escapes_lone_surrogates() -> None:
    text = envelope.canonical_json({"k": "a\ud800b", "é": 1})
    assert "\\ud800" in text
    assert json.loads(text) == {"k": "a\ud800b", "é": 1}


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, [1, {"x": math.nan}]])
def test_canonical_json_refuses_values_json_cannot_hold(value: object) -> None:
    with pytest.raises(ValueError):
        envelope.canonical_json(value)


def test_canonical_json_refuses_deep_nesting_with_bad_message() -> None:
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(BadMessage):
        envelope.canonical_json(deep)


@JSONY
@given(value=json_values)
def test_publish_data_is_stored_canonical(value: Any) -> None:
    text = json.dumps({"type": "publish", "channel": "c", "data": value})
    command = envelope.parse_client_message(text, MAX_CHANNEL)
    assert command == envelope.Publish("c", envelope.canonical_json(value))


# --- server to client --------------------------------------------------------------------------

channels = st.text(min_size=1) | lone_surrogate_text.filter(bool)


@JSONY
@given(channel=channels, data=json_values, ts=st.integers(0, 2**53), seq=st.integers(0, 99))
def test_server_envelopes_are_utf8_json_naming_their_channel(
    channel: str, data: Any, ts: int, seq: int
) -> None:
    message_id = f"ab-{seq}"
    texts = {
        "message": envelope.message(
            envelope.canonical_json(channel), envelope.canonical_json(data), ts, message_id
        ),
        "subscribed": envelope.subscribed(channel, message_id),
        "unsubscribed": envelope.unsubscribed(channel),
        "reset": envelope.reset(channel, message_id),
    }
    for kind, text in texts.items():
        decoded = json.loads(text.encode("utf-8"))  # strict UTF-8: what goes into a frame
        assert decoded["type"] == kind
        assert decoded["channel"] == channel
        assert decoded.get("id", message_id) == message_id
    assert json.loads(texts["message"])["data"] == data
    assert json.loads(texts["message"])["timestamp"] == ts


def test_pong_and_error_are_json() -> None:
    assert json.loads(envelope.pong(12)) == {"type": "pong", "timestamp": 12}
    assert json.loads(envelope.error("why")) == {
        "type": "error",
        "data": envelope.INVALID_FORMAT,
        "reason": "why",
    }


@JSONY
@given(items=st.lists(json_values, max_size=5), reset=st.booleans())
def test_poll_body_splices_items_into_valid_json(items: list[Any], reset: bool) -> None:
    encoded = [envelope.canonical_json(v).encode() for v in items]
    ids = [f"ab-{n}" for n in range(1, len(items) + 1)]
    body = json.loads(envelope.poll_body(encoded, ids, "ab-3", reset))
    assert body["messages"] == items
    assert body["ids"] == ids
    assert body["cursor"] == "ab-3"
    assert body.get("reset", False) is reset
