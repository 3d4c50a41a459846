"""A channel's bounded history: the last messages, by sequence number, with their bytes.

A subscriber is a cursor into this log, not a queue of copies: a slow reader costs an
integer, and catching up is a slice. The log holds a contiguous run of sequence numbers
`first_seq .. head`; a cursor `c` can be resumed exactly when `first_seq - 1 <= c <= head`,
that is, when the message after it is still here (or nothing came after it). Anything older
has fallen off, and the reader is told so with a reset rather than given a silent gap.

Bounds: at most `max_count` messages and, beyond the newest one, `max_bytes` of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ChannelLog", "Message"]

# Per-message bookkeeping beyond its byte strings (objects, list slot), for the byte budget.
_OVERHEAD_BYTES = 200


@dataclass(slots=True, eq=False)
class Message:
    """One published message and every encoding of it, built once at publish."""

    seq: int
    id: str
    data: bytes  # canonical JSON of the data, UTF-8
    timestamp_ms: int
    frames: tuple[bytes, ...]  # the bytes each transport kind writes, indexed by kind
    size: int = field(init=False)  # what it costs the history budget, counted once

    def __post_init__(self) -> None:
        # A kind may share another's bytes (a small message's deflate frame is its plain one).
        shared = {id(f): len(f) for f in self.frames}
        self.size = len(self.data) + sum(shared.values()) + _OVERHEAD_BYTES


class ChannelLog:
    """Messages `first_seq .. head` of one channel, oldest first."""

    __slots__ = ("_items", "_start", "head", "max_bytes", "max_count", "nbytes")

    def __init__(self, max_count: int, max_bytes: int, head: int = 0) -> None:
        self._items: list[Message] = []
        self._start = 0  # items before this index have been trimmed
        self.head = head  # seq of the newest message ever appended (0: none yet)
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._items) - self._start

    @property
    def first_seq(self) -> int:
        """Seq of the oldest message held (head + 1 when none is held)."""
        return self.head - len(self) + 1

    def append(self, message: Message) -> int:
        """Add the next message; returns how many bytes trimming freed."""
        if message.seq != self.head + 1:
            raise ValueError(f"seq {message.seq} does not follow head {self.head}")
        self._items.append(message)
        self.head = message.seq
        self.nbytes += message.size
        freed = 0
        while len(self) > self.max_count or (self.nbytes > self.max_bytes and len(self) > 1):
            freed += self.trim_oldest()
        return freed

    def trim_oldest(self) -> int:
        """Forget the oldest message; returns its size (0 if the log is empty)."""
        if not len(self):
            return 0
        size = self._items[self._start].size
        self._start += 1
        self.nbytes -= size
        if self._start > 64 and self._start * 2 > len(self._items):
            del self._items[: self._start]  # compact: amortised O(1) per trim
            self._start = 0
        return size

    def holds_after(self, cursor: int) -> bool:
        """True when every message after `cursor` is still held."""
        return self.first_seq - 1 <= cursor <= self.head

    def after(self, cursor: int) -> list[Message]:
        """The messages after `cursor`, which must satisfy holds_after."""
        if not self.holds_after(cursor):
            raise ValueError(f"cursor {cursor} is outside {self.first_seq - 1}..{self.head}")
        return self._items[self._start + (cursor - self.first_seq + 1) :]
