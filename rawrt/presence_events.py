"""Join and leave events for a channel's subscribers (`--presence-events`), at most once.

Theory of operation
-------------------
When a WebSocket or SSE subscriber starts or ends a subscription (unsubscribes, or its
connection goes), the hub tells `PresenceEvents.member()`. It writes one event, a
`{"type":"join"|"leave","channel":C,"user":S|null,"transport":"ws"|"sse"}` WebSocket frame
or an SSE `event: join` / `event: leave` with the same JSON as data, to every other live
subscriber of the channel here (`Hub.write_event`: the subscriber itself is not live yet when
it joins, and no longer when it leaves), and hands the JSON to the backplane, which carries it
to the other nodes (`relay`); their backplane calls `received()`, which writes it to their own
subscribers. `user` is the token's `sub`, null without a token.

Events are not messages: no id, no place in the history, not counted in the channel's
numbering, never replayed on resume. A subscriber that is paused (its socket is full) or
catching up misses them, as do long polls. So an event arrives at most once: never twice,
but it may be lost (a paused reader, a Redis outage, the bounds below). The truth is always
`GET /api/presence/{channel}`.

Bounds, per channel and per node, so that a crowd connecting at once cannot turn into the
square of its size in frames:

- a channel with more than `presence_events_max_subscribers` subscribers on a node (the one
  joining or leaving included) sends no events from there and writes none there (like
  Centrifugo, where join/leave is opt-in per namespace: events are for rooms, not for
  audiences);
- at most `presence_events_per_s` events per channel per second (the node's own and the
  others' together; each calendar second of the clock counts afresh); past it they are
  dropped, not queued.

So a node writes at most max_subscribers x per_s event frames per channel per second, and
publishes at most per_s of its own to Redis.

Plain synchronous code: the clock comes in as a callable, the writes go through the hub.
"""

from __future__ import annotations

from collections.abc import Callable

from rawrt.channel import Subscription
from rawrt.config import Config
from rawrt.hub import Hub
from rawrt.wire import envelope, sse, wsframe

__all__ = ["PresenceEvents", "frames_of"]

# The `transport` of an event, by Kind value (Kind.WS, Kind.SSE, Kind.WS_DEFLATE).
_TRANSPORTS = ("ws", "sse", "ws")
_KINDS = ("join", "leave")


def frames_of(text: str) -> tuple[bytes, bytes, bytes] | None:
    """An event's bytes by Kind: the WebSocket frame, the SSE event (no id), and for sockets
    that negotiated deflate the same plain frame (RFC 7692 §6: an uncompressed message, RSV1
    clear, is valid on them; an event is too small and too rare to compress). None for a
    text `envelope.presence_event` did not make (it always starts with the type)."""
    for kind in _KINDS:
        if text.startswith(f'{{"type":"{kind}",'):
            ws = wsframe.frame(text.encode())
            return ws, sse.event(text, None, kind), ws
    return None


class PresenceEvents:
    """Writes a channel's join and leave events here and relays this node's to the others."""

    __slots__ = ("_clock", "_counts", "_hub", "_max_per_s", "_max_subscribers", "_relay", "_second")

    def __init__(
        self,
        config: Config,
        hub: Hub,
        clock: Callable[[], float],
        relay: Callable[[str, str], None],
    ) -> None:
        self._hub = hub
        self._clock = clock
        self._relay = relay  # (channel, event JSON) to the other nodes, fire and forget
        self._max_subscribers = config.presence_events_max_subscribers
        self._max_per_s = config.presence_events_per_s
        # Events per channel in the current second; a new second starts every count afresh,
        # so this holds at most the channels that had an event within one second.
        self._second = -1
        self._counts: dict[str, int] = {}

    def member(self, sub: Subscription, joined: bool) -> None:
        """The hub's hook: `sub` started (True) or ended its subscription."""
        ch = sub.channel
        # Counting the subscriber itself, which a leave has already left: its join and its
        # leave are judged alike, so nobody is seen leaving who was not seen joining.
        size = ch.subscribers if joined else ch.subscribers + 1
        if size > self._max_subscribers or not self._allowed(ch.name):
            return
        kind = _KINDS[0] if joined else _KINDS[1]
        text = envelope.presence_event(kind, ch.name, sub.user, _TRANSPORTS[sub.kind])
        frames = frames_of(text)
        assert frames is not None
        self._hub.write_event(ch.name, frames, self._max_subscribers)
        self._relay(ch.name, text)

    def received(self, channel: str, text: str) -> None:
        """An event of another node's subscriber (its JSON, as `member` relayed it)."""
        frames = frames_of(text)
        if frames is not None and self._allowed(channel):
            self._hub.write_event(channel, frames, self._max_subscribers)

    def _allowed(self, channel: str) -> bool:
        """Count one event of `channel` in this second; False past presence_events_per_s."""
        second = int(self._clock())
        if second != self._second:
            self._second, self._counts = second, {}
        count = self._counts.get(channel, 0)
        if count >= self._max_per_s:
            return False
        self._counts[channel] = count + 1
        return True
