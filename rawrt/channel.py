"""What the hub is made of: channels, subscriptions, poll answers. Plain data, no I/O.

The hub (rawrt.hub) is the only code that changes these objects; transports hold a
`Subscription` as an opaque handle and the hub's `Waiter` protocol is all a parked poll
implements.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from rawrt.log import ChannelLog, Message
from rawrt.wire import envelope, sse, wsframe
from rawrt.wire.ids import format_id, parse_id

__all__ = [
    "Channel",
    "Entry",
    "Kind",
    "PollAnswer",
    "Subscription",
    "Waiter",
    "Write",
    "join_frames",
    "reset_bytes",
]


class Kind(enum.IntEnum):
    """A subscriber's transport kind. Its value is the index of that transport's bytes in
    `Message.frames` and of its table in `Channel.live`, so it stays an int."""

    WS = 0
    SSE = 1
    # A WebSocket that negotiated permessage-deflate: its bytes are the message compressed
    # once for all such sockets (rawrt.wire.deflate), or the plain frame when it is small.
    # Present in `Message.frames` only when the server offers compression.
    WS_DEFLATE = 2


Write = Callable[[bytes], None]


class Entry(NamedTuple):
    """A message of the shared history, as a backplane hands it over."""

    seq: int
    timestamp_ms: int
    data_json: str


class Waiter(Protocol):
    """A parked long poll: woken once with the answer to its request."""

    def wake(self, answer: PollAnswer) -> None: ...


@dataclass(slots=True, eq=False)
class PollAnswer:
    """What a long poll is answered with; shared by every poller one flush wakes."""

    messages: list[Message]
    cursor: str
    reset: bool = False
    # The I/O side keeps the response bytes it built here, so they are built once.
    encoded: dict[object, bytes] = field(default_factory=dict)

    def body(self) -> bytes:
        messages = self.messages
        return envelope.poll_body(
            [m.data for m in messages], [m.id for m in messages], self.cursor, self.reset
        )


class Subscription:
    """One subscriber's place in one channel."""

    __slots__ = ("channel", "cursor", "gone", "kind", "user", "write")

    def __init__(self, channel: Channel, kind: Kind, write: Write, user: str | None = None) -> None:
        self.channel = channel
        self.kind = kind
        self.write = write
        self.user = user  # the token's `sub`, for presence (rawrt.presence); None: no token
        self.cursor = 0  # meaningful only while paused: seq of the last message written
        self.gone = False  # unsubscribed: a later pause() must not count it again

    @property
    def paused(self) -> bool:
        """Holding a cursor instead of being written to; the channel keeps that set."""
        return self in self.channel.paused


class Channel:
    __slots__ = (
        "channel_json",
        "epoch",
        "flushed",
        "live",
        "log",
        "name",
        "parked",
        "paused",
        "pending",
        "subscribers",
    )

    def __init__(self, name: str, epoch: str, log: ChannelLog) -> None:
        self.name = name
        self.channel_json = envelope.canonical_json(name)
        self.epoch = epoch
        self.log = log
        self.flushed = log.head  # seq of the last message handed to live subscribers
        self.pending: list[Message] = []  # appended since the last flush, oldest first
        self.live: tuple[dict[Subscription, Write], ...] = ({}, {}, {})  # per kind
        self.parked: dict[Waiter, str | None] = {}  # each parked poll, and its user
        self.paused: dict[Subscription, None] = {}  # subscriptions holding a cursor
        self.subscribers = 0  # live, paused and catching up

    @property
    def idle(self) -> bool:
        return not self.subscribers and not self.parked

    def id_of(self, seq: int) -> str:
        return format_id(self.epoch, seq)

    def cursor_of(self, message_id: str | None) -> int | None:
        """The seq `message_id` names if it is resumable here, else None."""
        parsed = parse_id(message_id) if message_id is not None else None
        if parsed is None or parsed[0] != self.epoch or not self.log.holds_after(parsed[1]):
            return None
        return parsed[1]


def join_frames(messages: list[Message], kind: int) -> bytes:
    """Every message's bytes for one transport; `kind` is a Kind or its value (the fan-out
    loop enumerates `Channel.live`, which is cheaper than iterating the enum)."""
    return b"".join([m.frames[kind] for m in messages])


def reset_bytes(ch: Channel, kind: Kind) -> bytes:
    head = ch.id_of(ch.flushed)
    if kind is not Kind.SSE:  # a reset goes uncompressed on a deflate socket too
        return wsframe.frame(envelope.reset(ch.name, head).encode())
    return sse.event(envelope.reset(ch.name, head), head, "reset")
