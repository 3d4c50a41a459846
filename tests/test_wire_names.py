"""rawrt.wire.names: the channel-name grammar, one function for URLs and frames."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import CORE, QUIET_PATCH_WRITER

from rawrt.errors import BadMessage
from rawrt.wire import envelope
from rawrt.wire.names import channel_problem

pytestmark = QUIET_PATCH_WRITER


@pytest.mark.parametrize(
    "name", ["news", "news:sport", "a:b:c", "a/b", "café", "with space", "x" * 256, "é" * 128]
)
def test_valid_names_pass(name: str) -> None:
    assert channel_problem(name, 256) is None


@pytest.mark.parametrize(
    "name",
    ["", ":a", "a:", "a::b", "news:*", "*", "a\x00b", "a\nb", "a\x7f", "a\x85", "a\ud800",
     "x" * 257, "é" * 129],
)  # fmt: skip
def test_invalid_names_are_refused_with_a_reason(name: str) -> None:
    assert channel_problem(name, 256)


def test_websocket_frames_use_the_same_grammar() -> None:
    with pytest.raises(BadMessage, match="namespace"):
        envelope.parse_client_message('{"type":"subscribe","channel":"a::b"}', 256)
    with pytest.raises(BadMessage, match="surrogate"):
        envelope.parse_client_message('{"type":"subscribe","channel":"a\\ud800"}', 256)


# The grammar again, plainly: segments of scalar values other than ':', '*' and controls.
_NAME = re.compile(
    r"[^:*\x00-\x1f\x7f-\x9f\ud800-\udfff]+(?::[^:*\x00-\x1f\x7f-\x9f\ud800-\udfff]+)*"
)


@CORE
@given(st.text(st.sampled_from("ab:*é\x00\x1f\x7f\x9f\ud800 /"), max_size=12), st.integers(1, 16))
def test_channel_problem_is_the_written_grammar(name: str, max_bytes: int) -> None:
    fits = len(name.encode("utf-8", "surrogatepass")) <= max_bytes
    assert (channel_problem(name, max_bytes) is None) == bool(_NAME.fullmatch(name) and fits)
