"""Message ids: opaque to clients, `<epoch>-<seq>` to rawrt.

One id names one message of one channel's history, on every transport: the SSE `id:` field,
the WebSocket message `id` and the long-poll `cursor` are the same string, so a position
learnt on one transport resumes another.

- `seq` counts the channel's messages from 1; 0 is the position before the first message.
- `epoch` names one lifetime of the channel's history. A new server run, an evicted and
  recreated channel, or (with a backplane) a history Redis lost, each start a new epoch, so
  an id from an older lifetime is recognised as such and answered with an explicit reset
  instead of being matched against unrelated sequence numbers.

Epochs are short base-36 tokens made by whoever owns the history (the hub in one process,
Redis for many), so ids stay short ASCII, as SSE wants (WHATWG: ids with NUL are ignored,
long ones cost a CORS preflight).
"""

from __future__ import annotations

import functools

__all__ = ["format_id", "parse_id", "to_base36"]

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
_EPOCH_CHARS = frozenset(_DIGITS)
# Longest id rawrt ever makes: a 24-character epoch, '-', and a 19-digit sequence number.
_MAX_ID_LENGTH = 44


def to_base36(n: int) -> str:
    """`n` (not negative) in base 36, lower case."""
    if n < 0:
        raise ValueError("negative")
    out = []
    while True:
        n, digit = divmod(n, 36)
        out.append(_DIGITS[digit])
        if n == 0:
            return "".join(reversed(out))


def format_id(epoch: str, seq: int) -> str:
    return f"{epoch}-{seq}"


# Remembered parses: the pollers one flush woke all come back with the same `since`, so
# most parses repeat one text. Bounded: ids are at most _MAX_ID_LENGTH characters.
_PARSED_IDS = 1024


@functools.lru_cache(maxsize=_PARSED_IDS)
def parse_id(text: str) -> tuple[str, int] | None:
    """(epoch, seq) of an id rawrt made, or None for anything else.

    None is not an error to report: callers treat an unknown position like a lost one and
    answer with a reset, so a client can always recover. Pure, so remembered (a repeat
    costs a dict lookup instead of the checks).
    """
    if len(text) > _MAX_ID_LENGTH:
        return None
    epoch, dash, seq = text.rpartition("-")
    if not dash or not epoch or not seq.isdigit() or not seq.isascii():
        return None
    if len(epoch) > 24 or not _EPOCH_CHARS.issuperset(epoch):
        return None
    return epoch, int(seq)
