"""The client's sans-I/O core: what one subscription knows and decides, with no socket or loop.

A `Feed` is one subscription's state: its position (the id of the last event it queued for
the application), the queue itself, and where it stands with the server:

    IDLE     no subscribe outstanding (not connected yet, or the connection dropped)
    WAITING  a subscribe frame went out; nothing counts until its `subscribed` answer
    LIVE     the server streams messages after the position
    BEHIND   the queue overflowed: the feed unsubscribed and waits for the application
    FAILED   the server refused the subscription for good

Exactly once: every subscribe carries `since` = the position, so the server replays what
came after it, or answers with a reset when its history no longer holds it. Frames of an
older subscription still in flight before `subscribed` are dropped (the replay brings them
again), and a message whose id is not after the position is a duplicate and dropped too
(ids are `<epoch>-<seq>`; only rawrt.wire.ids reads them).

Slow consumers: the queue is bounded (ClientConfig.queue_size, queue_max_bytes). A frame
that does not fit is dropped, the feed unsubscribes and goes BEHIND; once the application
has taken the queue down to half (`caught_up`), it subscribes again from its position.
The server's history fills the gap (or says reset), so nothing is lost silently, memory stays
bounded, and other channels on the same socket keep flowing meanwhile.
"""

from __future__ import annotations

import enum
import json
import random
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from rawrt.errors import ClientError, Refused
from rawrt.wire.ids import parse_id

__all__ = ["Endpoint", "Event", "Feed", "Message", "Reset", "State", "backoff_delay"]


@dataclass(frozen=True, slots=True)
class Message:
    """A published message: `data` is its JSON value, `timestamp` the server's stamp in
    milliseconds since the Unix epoch, `id` its position (resume from it with `since`)."""

    channel: str
    id: str
    data: Any
    timestamp: int


@dataclass(frozen=True, slots=True)
class Reset:
    """The position asked for is gone from the server's history: what came between is lost
    and the channel continues with the messages after `id`. Reload your state."""

    channel: str
    id: str


Event = Message | Reset


class State(enum.Enum):
    IDLE = "idle"
    WAITING = "waiting"
    LIVE = "live"
    BEHIND = "behind"
    FAILED = "failed"


class Feed:
    """One subscription's position, queue and protocol state. It writes nothing itself: the
    methods that change what the server should do return the frame to send, if any."""

    __slots__ = (
        "_bytes",
        "_epoch",
        "_max_bytes",
        "_max_events",
        "_queue",
        "_seq",
        "channel",
        "error",
        "position",
        "state",
    )

    def __init__(
        self,
        channel: str,
        since: str | None,
        max_events: int,
        max_bytes: int,
    ) -> None:
        self.channel = channel
        self.state = State.IDLE
        self.error: ClientError | None = None
        self._queue: deque[tuple[Event, int]] = deque()
        self._bytes = 0
        self._max_events = max_events
        self._max_bytes = max_bytes
        self.position: str | None = None
        self._epoch: str | None = None
        self._seq = 0
        self._move_to(since)

    # --- to the server -------------------------------------------------------------------

    def subscribe(self) -> str:
        """The frame asking for everything after the position (on a new connection, or to
        catch up); the caller sends it."""
        frame: dict[str, Any] = {"type": "subscribe", "channel": self.channel}
        if self.position is not None:
            frame["since"] = self.position
        self.state = State.WAITING
        return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)

    def unsubscribe(self) -> str:
        return json.dumps(
            {"type": "unsubscribe", "channel": self.channel},
            separators=(",", ":"),
            ensure_ascii=False,
        )

    def disconnected(self) -> None:
        """The connection is gone; a BEHIND feed stays so until it is drained."""
        if self.state in (State.WAITING, State.LIVE):
            self.state = State.IDLE

    # --- from the server -----------------------------------------------------------------

    def on_subscribed(self, head_id: str) -> None:
        if self.state is not State.WAITING:
            return
        self.state = State.LIVE
        if self.position is None:
            self._move_to(head_id)  # from now on: a reconnect resumes here

    def on_message(self, message: Message, size: int) -> str | None:
        """Queue `message` unless it is stale or a duplicate; the unsubscribe frame to send
        when the queue is full (the feed is BEHIND then)."""
        if self.state is not State.LIVE:
            return None
        parsed = parse_id(message.id)
        if parsed is not None and parsed[0] == self._epoch and parsed[1] <= self._seq:
            return None  # at or before the position: seen already
        return self._offer(message, size)

    def on_reset(self, reset: Reset, size: int) -> str | None:
        return self._offer(reset, size) if self.state is State.LIVE else None

    def fail(self, error: ClientError) -> None:
        self.state = State.FAILED
        self.error = error

    def refused(self, status: int, reason: str) -> None:
        self.fail(Refused(status, reason, channel=self.channel))

    # --- to the application --------------------------------------------------------------

    def take(self) -> Event | None:
        """The next event for the application, or None."""
        if not self._queue:
            return None
        event, size = self._queue.popleft()
        self._bytes -= size
        return event

    @property
    def caught_up(self) -> bool:
        """BEHIND, and the application has taken the queue down to half: subscribe again."""
        return (
            self.state is State.BEHIND
            and len(self._queue) <= self._max_events // 2
            and self._bytes <= self._max_bytes // 2
        )

    @property
    def queued(self) -> int:
        return len(self._queue)

    # --- inside --------------------------------------------------------------------------

    def _offer(self, event: Event, size: int) -> str | None:
        full = len(self._queue) >= self._max_events or self._bytes + size > self._max_bytes
        if full and self._queue:  # an empty queue takes any one event, however large
            self.state = State.BEHIND
            return self.unsubscribe()
        self._queue.append((event, size))
        self._bytes += size
        self._move_to(event.id)
        return None

    def _move_to(self, position: str | None) -> None:
        self.position = position
        parsed = parse_id(position) if position is not None else None
        self._epoch, self._seq = parsed if parsed is not None else (None, 0)


def backoff_delay(attempt: int, min_s: float, max_s: float, rng: random.Random) -> float:
    """Full jitter: `min_s` plus a uniform share of min(max_s, min_s * 2**attempt), capped."""
    ceiling = min(max_s, min_s * 2.0 ** min(attempt, 62))
    return min(max_s, min_s + rng.uniform(0.0, ceiling))


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a server is: `http://host:port/prefix` (or https, ws, wss) taken apart."""

    host: str
    port: int
    secure: bool
    prefix: str  # the path before rawrt's own routes, "" or "/something"

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https", "ws", "wss") or not parts.hostname:
            raise ValueError(f"not an http(s):// or ws(s):// URL: {url!r}")
        secure = scheme in ("https", "wss")
        try:
            port = parts.port or (443 if secure else 80)
        except ValueError:
            raise ValueError(f"bad port in {url!r}") from None
        prefix = parts.path.rstrip("/")
        if scheme.startswith("ws"):
            prefix = prefix.removesuffix("/ws")  # ws://host/ws names the route itself
        return cls(parts.hostname, port, secure, prefix)

    @property
    def authority(self) -> str:
        """The Host header's value (RFC 9110 §7.2): the port only when not the default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == (443 if self.secure else 80) else f"{host}:{self.port}"

    @property
    def websocket_target(self) -> str:
        return f"{self.prefix}/ws"

    def publish_target(self, channel: str) -> str:
        return f"{self.prefix}/api/publish/{quote(channel, safe='')}"
