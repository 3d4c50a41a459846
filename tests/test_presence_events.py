"""rawrt.presence_events driven directly over a Hub: subscribers are lists of the bytes they
were written, the clock is a number the test sets, and the relay to other nodes is a list.
No loop, no socket."""

from __future__ import annotations

import json

from support import QUIET_PATCH_WRITER

from rawrt.config import Config
from rawrt.hub import Hub, Kind
from rawrt.presence_events import PresenceEvents, frames_of
from rawrt.wire import envelope

pytestmark = QUIET_PATCH_WRITER


class Rig:
    """A hub with presence events, a settable clock and a record of what was relayed."""

    def __init__(self, **settings: object) -> None:
        config = Config(presence_events=True, **settings)  # type: ignore[arg-type]
        self.now = 100.0
        self.relayed: list[tuple[str, str]] = []
        self.hub = Hub(config, "run", lambda: None)
        self.events = PresenceEvents(
            config, self.hub, lambda: self.now, lambda c, t: self.relayed.append((c, t))
        )
        self.hub.on_member = self.events.member

    def watcher(self, channel: str, kind: Kind = Kind.WS) -> list[bytes]:
        written: list[bytes] = []
        self.hub.subscribe(channel, kind, written.append)
        return written


def join(channel: str, user: str | None = None, transport: str = "ws") -> str:
    return envelope.presence_event("join", channel, user, transport)


def test_an_event_is_written_to_the_others_and_relayed_once() -> None:
    rig = Rig()
    ws, sse = rig.watcher("room"), rig.watcher("room", Kind.SSE)
    assert ws == [frames_of(join("room", None, "sse"))[0]]  # the SSE watcher's own join
    ws.clear()
    rig.relayed.clear()
    joiner: list[bytes] = []
    sub = rig.hub.subscribe("room", Kind.WS, joiner.append, user="carol")
    frames = frames_of(join("room", "carol"))
    assert frames is not None
    assert (ws, sse[-1:], joiner) == ([frames[0]], [frames[1]], [])
    assert rig.relayed == [("room", join("room", "carol"))]
    rig.hub.unsubscribe(sub)
    rig.hub.unsubscribe(sub)  # a second unsubscribe is no second leave
    leave = envelope.presence_event("leave", "room", "carol", "ws")
    assert json.loads(rig.relayed[-1][1]) == json.loads(leave)
    assert len(rig.relayed) == 2 and len(ws) == 2 and joiner == []


def test_events_per_channel_per_second_are_capped_their_own_and_others_together() -> None:
    rig = Rig(presence_events_per_s=3)
    ws = rig.watcher("room")
    ws.clear()
    rig.relayed.clear()
    for n in range(10):
        rig.hub.subscribe("room", Kind.WS, [].append, user=f"u{n}")
    assert len(ws) == 2 and len(rig.relayed) == 2  # the watcher's own join was the first
    rig.events.received("room", join("room", "remote"))  # another node's, past the cap too
    assert len(ws) == 2
    assert len(rig.hub.presence("room", 100).users) == 10  # the joins happened all the same
    rig.now = 101.0  # a new second counts afresh
    rig.events.received("room", join("room", "remote"))
    for n in range(10, 15):
        rig.hub.subscribe("room", Kind.WS, [].append, user=f"u{n}")
    assert len(ws) == 5 and len(rig.relayed) == 4
    # Another channel has a count of its own.
    other = rig.watcher("other")
    rig.hub.subscribe("other", Kind.WS, [].append)
    assert len(other) == 1


def test_a_channel_past_the_size_bound_neither_writes_nor_relays() -> None:
    rig = Rig(presence_events_max_subscribers=2)
    ws = rig.watcher("room")
    rig.watcher("room")
    assert len(ws) == 1 and len(rig.relayed) == 2
    third = rig.hub.subscribe("room", Kind.WS, [].append)
    rig.events.received("room", join("room", "remote"))
    rig.hub.unsubscribe(third)  # its leave is judged with it counted, as its join was
    assert len(ws) == 1 and len(rig.relayed) == 2


def test_an_event_comes_after_the_messages_published_before_it() -> None:
    rig = Rig()
    ws = rig.watcher("room")
    ws.clear()
    message = rig.hub.publish("room", '"before"', 1)  # pending: no flush has run yet
    rig.events.received("room", join("room", "remote"))
    assert ws == [message.frames[0], frames_of(join("room", "remote"))[0]]  # type: ignore[index]


def test_a_received_text_rawrt_did_not_make_is_dropped() -> None:
    rig = Rig()
    ws = rig.watcher("room")
    ws.clear()
    for text in ("", "garbage", '{"type":"message","id":"x-1"}', '{"type":"joint"}'):
        rig.events.received("room", text)
    rig.events.received("nobody-here", join("nobody-here", "remote"))
    assert ws == []
