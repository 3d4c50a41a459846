"""rawrt.log.ChannelLog: a bounded run of consecutive messages, and cursors into it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import CORE, QUIET_PATCH_WRITER

from rawrt.log import ChannelLog, Message

pytestmark = QUIET_PATCH_WRITER

OVERHEAD = Message(1, "", b"", 0, ()).size  # what a message costs beyond its bytes


def _message(seq: int, size: int = 0) -> Message:
    """A message whose `size` is OVERHEAD + size bytes."""
    return Message(seq, f"e-{seq}", b"x" * size, seq, (b"", b""))


def _filled(log: ChannelLog, count: int, size: int = 0) -> list[Message]:
    messages = [_message(log.head + 1 + i, size) for i in range(count)]
    for message in messages:
        log.append(message)
    return messages


def test_empty_log_resumes_only_its_head() -> None:
    log = ChannelLog(max_count=3, max_bytes=10_000, head=7)
    assert (len(log), log.first_seq, log.nbytes) == (0, 8, 0)
    assert log.holds_after(7) and not log.holds_after(6) and not log.holds_after(8)
    assert log.after(7) == []


def test_log_keeps_the_last_max_count_messages() -> None:
    log = ChannelLog(max_count=3, max_bytes=10**9)
    messages = _filled(log, 5)
    assert log.after(2) == messages[2:]
    assert log.first_seq == 3 and log.head == 5
    assert not log.holds_after(1)
    assert log.nbytes == 3 * OVERHEAD


def test_log_trims_to_max_bytes_but_keeps_the_newest_message() -> None:
    log = ChannelLog(max_count=100, max_bytes=3 * OVERHEAD)
    _filled(log, 4)
    assert len(log) == 3
    freed = log.append(_message(5, 10 * OVERHEAD))  # alone bigger than max_bytes
    assert freed == 3 * OVERHEAD
    assert len(log) == 1 and log.first_seq == 5 and log.nbytes == 11 * OVERHEAD


@pytest.mark.parametrize("seq", [0, 1, 3, 5])
def test_append_refuses_a_message_that_does_not_follow_the_head(seq: int) -> None:
    log = ChannelLog(max_count=3, max_bytes=10_000, head=1)
    with pytest.raises(ValueError):
        log.append(_message(seq))
    assert log.head == 1 and len(log) == 0


def test_after_refuses_a_cursor_the_log_cannot_resume() -> None:
    log = ChannelLog(max_count=2, max_bytes=10_000)
    _filled(log, 4)
    for cursor in (-1, 0, 1, 5):
        with pytest.raises(ValueError):
            log.after(cursor)


def test_trim_oldest_of_an_empty_log_frees_nothing() -> None:
    log = ChannelLog(max_count=2, max_bytes=10_000, head=4)
    assert log.trim_oldest() == 0
    assert log.first_seq == 5


def test_long_running_log_compacts_its_list_and_stays_exact() -> None:
    log = ChannelLog(max_count=3, max_bytes=10**9)
    messages = _filled(log, 1000)
    assert log.after(997) == messages[-3:]
    assert len(log._items) <= 2 * 64 + 3  # trimmed slots are given back, not kept forever


# A model: the messages held are a list; appends trim oldest first, as the docstring says.
ops = st.lists(st.one_of(st.integers(0, 900), st.just("trim")), max_size=60)


@CORE
@given(max_count=st.integers(1, 8), max_bytes=st.integers(1, 3000), ops=ops)
def test_log_matches_a_model_of_its_bounds(
    max_count: int, max_bytes: int, ops: list[int | str]
) -> None:
    log = ChannelLog(max_count, max_bytes)
    held: list[Message] = []
    head = 0
    for op in ops:
        if op == "trim":
            assert log.trim_oldest() == (held.pop(0).size if held else 0)
        else:
            assert isinstance(op, int)
            head += 1
            held.append(_message(head, op))
            freed = 0
            while len(held) > max_count or (
                sum(m.size for m in held) > max_bytes and len(held) > 1
            ):
                freed += held.pop(0).size
            assert log.append(held[-1]) == freed
        assert (len(log), log.head, log.nbytes) == (len(held), head, sum(m.size for m in held))
        assert log.first_seq == head - len(held) + 1
        for cursor in range(-1, head + 2):
            resumable = head - len(held) <= cursor <= head
            assert log.holds_after(cursor) is resumable
            if resumable:
                assert log.after(cursor) == [m for m in held if m.seq > cursor]
