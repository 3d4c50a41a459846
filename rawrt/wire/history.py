"""The body of a history answer (`GET /api/history/{channel}`).

    {"channel": C, "messages": [{"id": ID, "timestamp": MS, "data": ANY}, ...],
     "head": ID, "reset": BOOL}

`messages` are oldest first; `head` is the channel's newest id, so a reader that got fewer
than it asked for knows it is up to date, and one that got `limit` pages on with the last
id as `since`. `reset` is true when `since` is no longer held (then the messages start at the
oldest one held). Each message's data is its canonical JSON, spliced in as the other
transports do, never serialised again.
"""

from __future__ import annotations

from rawrt.log import Message
from rawrt.wire.envelope import canonical_json

__all__ = ["history_body"]


def history_body(channel: str, messages: list[Message], head: str, reset: bool) -> bytes:
    items = b",".join(
        b'{"id":"%s","timestamp":%d,"data":%s}' % (m.id.encode(), m.timestamp_ms, m.data)
        for m in messages
    )
    return b"".join(
        (
            b'{"channel":',
            canonical_json(channel).encode(),
            b',"messages":[',
            items,
            b'],"head":"',
            head.encode(),
            b'","reset":',
            b"true" if reset else b"false",
            b"}",
        )
    )
