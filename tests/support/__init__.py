"""Helpers shared by rawrt's fast tests: hypothesis settings, an independent SSE parser, and
sinks that stand in for subscribers' sockets.

`CORE` is the hypothesis profile of the sans-I/O tests. It is applied per test (as a
decorator), not loaded globally, so other test modules keep their own settings.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, settings
from wsproto.connection import Connection, ConnectionType
from wsproto.events import TextMessage
from wsproto.extensions import PerMessageDeflate

from rawrt.hub import Kind
from rawrt.wire.envelope import canonical_json

from .sse_parser import Event, SseParser

__all__ = ["CORE", "QUIET_PATCH_WRITER", "STATEFUL", "Item", "Sink"]

# When a property fails, hypothesis's pytest plugin imports libcst to write a patch of the
# failing example; libcst uses mypy_extensions.TypedDict, whose DeprecationWarning becomes an
# error under `filterwarnings = error` and turns the failure report into an INTERNALERROR.
# Each module here sets `pytestmark = QUIET_PATCH_WRITER` so failures stay readable.
QUIET_PATCH_WRITER = pytest.mark.filterwarnings(
    "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning"
)

settings.register_profile("rawrt-core", max_examples=100, deadline=None)
settings.register_profile(
    "rawrt-stateful",
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

CORE = settings.get_profile("rawrt-core")
STATEFUL = settings.get_profile("rawrt-stateful")


# --- a subscriber's socket, as the hub sees it -------------------------------------------------


class Item(NamedTuple):
    """One thing a subscriber was told: a message (with its data) or a reset (to an id)."""

    type: str  # "message" or "reset"
    id: str
    data: str  # the message data as canonical JSON ("" for a reset)


class Sink:
    """A callable taking the hub's bytes, decoding them as a client would.

    WebSocket bytes go through wsproto's client side, event-stream bytes through the WHATWG
    parser, so what a test reads is what a browser would see. `on_write` lets a test act
    inside a write, as a transport's `pause_writing()` does when its buffer fills.
    """

    def __init__(self, kind: Kind, on_write: Callable[[Sink, list[Item]], None] | None = None):
        self.kind = kind
        self.writes: list[bytes] = []
        self.items: list[Item] = []
        self.on_write = on_write
        self._ws = _ws_client(kind) if kind != Kind.SSE else None
        self._sse = SseParser() if kind == Kind.SSE else None

    def __call__(self, data: bytes) -> None:
        self.writes.append(data)
        new = self._decode(data)
        self.items += new
        if self.on_write is not None:
            self.on_write(self, new)

    def _decode(self, data: bytes) -> list[Item]:
        if self._sse is not None:
            return [_sse_item(event) for event in self._sse.feed(data)]
        assert self._ws is not None
        self._ws.receive_data(data)
        items = []
        for event in self._ws.events():
            assert isinstance(event, TextMessage) and event.message_finished, event
            items.append(_ws_item(json.loads(event.data)))
        return items

    @property
    def messages(self) -> list[Item]:
        return [item for item in self.items if item.type == "message"]


def _ws_client(kind: Kind) -> Connection:
    """wsproto's client; for Kind.WS_DEFLATE one that agreed to permessage-deflate as rawrt
    answers it (server_no_context_takeover), so it inflates what rawrt compressed."""
    if kind != Kind.WS_DEFLATE:
        return Connection(ConnectionType.CLIENT)
    extension = PerMessageDeflate()
    extension.finalize("permessage-deflate; server_no_context_takeover")
    return Connection(ConnectionType.CLIENT, extensions=[extension])


def _ws_item(obj: dict[str, Any]) -> Item:
    if obj["type"] == "message":
        return Item("message", obj["id"], canonical_json(obj["data"]))
    assert obj["type"] == "reset", obj
    return Item("reset", obj["id"], "")


def _sse_item(event: Event) -> Item:
    if event.type == "message":
        return Item("message", event.last_event_id, event.data)
    assert event.type == "reset", event
    obj = json.loads(event.data)
    assert obj["type"] == "reset" and obj["id"] == event.last_event_id, event
    return Item("reset", event.last_event_id, "")
