"""What a channel name may be: one grammar, checked in one function for URLs and frames.

A channel is named in a URL path segment (`/api/poll/{channel}`, percent-decoded) or in the
`channel` string of a WebSocket frame. Both reach `channel_problem`, so a name valid on one
transport is valid on all three, and the hub, the backplane's keys and access patterns never
see anything else:

    channel   = segment *( ":" segment )        ":" separates namespaces, as patterns do
    segment   = 1*char
    char      = any Unicode scalar value except
                  ":" (the separator) and "*" (the wildcard of a pattern: `news:*`),
                  U+0000..U+001F, U+007F..U+009F (control characters, NUL among them)
    and the whole name is at most `max_channel_bytes` bytes in UTF-8.

A lone surrogate (U+D800..U+DFFF, which a JSON "\\ud800" escape can produce) is not a scalar
value, so it has no UTF-8 encoding and is refused. Everything else is the client's choice:
`/`, spaces, any script. Control characters are refused because names are echoed in log
lines, SSE fields and JSON; `*` because a name equal to a pattern must not read as one.
"""

from __future__ import annotations

import re

__all__ = ["SEPARATOR", "channel_problem"]

SEPARATOR = ":"

# One segment: no separator, no wildcard, no C0 or C1 control, no surrogate code point.
_SEGMENT = re.compile(r"[^:*\x00-\x1f\x7f-\x9f\ud800-\udfff]+")


def channel_problem(name: str, max_bytes: int) -> str | None:
    """Why `name` is not a valid channel name (a sentence for the client), or None."""
    if not name:
        return "channel name is empty"
    if len(name) > max_bytes or len(name.encode("utf-8", "surrogatepass")) > max_bytes:
        return f"channel name is longer than {max_bytes} bytes"
    for segment in name.split(SEPARATOR):
        if not segment:
            return "channel name has an empty namespace segment (':' at an end or doubled)"
        if not _SEGMENT.fullmatch(segment):
            return "channel name holds '*', a control character or a lone surrogate"
    return None
