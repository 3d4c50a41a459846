"""rawrt.wire.ids: message ids are `<epoch>-<seq>`, and anything else is simply unknown."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import CORE, QUIET_PATCH_WRITER

from rawrt.wire.ids import format_id, parse_id, to_base36

pytestmark = QUIET_PATCH_WRITER

epochs = st.text("0123456789abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=24)
seqs = st.integers(0, 10**19 - 1)  # ids carry at most a 19-digit sequence number


@CORE
@given(epoch=epochs, seq=seqs)
def test_format_id_round_trips_through_parse_id(epoch: str, seq: int) -> None:
    assert parse_id(format_id(epoch, seq)) == (epoch, seq)


@CORE
@given(text=st.text() | st.text("0123456789abcxyz-", max_size=50))
def test_parse_id_never_raises_and_answers_none_or_a_pair(text: str) -> None:
    parsed = parse_id(text)
    if parsed is not None:
        epoch, seq = parsed
        assert seq >= 0 and epoch and "-" not in epoch
        assert int(format_id(epoch, seq).rpartition("-")[2]) == seq


@pytest.mark.parametrize(
    "text",
    ["", "-", "abc", "abc-", "-12", "ABC-1", "a-b-1x", "a-\u0661", "a-+1", "a- 1", "a" * 25 + "-1",
     "a-" + "1" * 43],
)  # fmt: skip
def test_parse_id_refuses_what_rawrt_never_makes(text: str) -> None:
    assert parse_id(text) is None


@CORE
@given(n=st.integers(0, 2**80))
def test_to_base36_round_trips_through_int(n: int) -> None:
    digits = to_base36(n)
    assert int(digits, 36) == n
    assert digits == digits.lower() and (digits == "0" or not digits.startswith("0"))


def test_to_base36_refuses_negative_numbers() -> None:
    with pytest.raises(ValueError):
        to_base36(-1)
