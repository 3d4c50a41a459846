"""Server-Sent Events (WHATWG HTML §9.2, "Server-sent events"), the encoding side.

An event is a block of `field: value` lines ended by a blank line. The parser on the other
side splits lines at CRLF, LF *or a lone CR*, so a value can never contain either: data is
cut into several `data:` lines (the parser joins them back with LF), and `id` and `event`
values must be single lines. rawrt's own message data is canonical JSON, which escapes CR and
LF inside strings, so a message is always one `data:` line; the general encoder here still
handles any text.

"If the field name is 'id': If the field value does not contain U+0000 NULL, then set the
last event ID buffer to the field value." An id with NUL would be silently ignored, so the
encoder refuses one.
"""

from __future__ import annotations

import re

__all__ = ["comment", "event", "retry"]

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _single_line(name: str, value: str) -> str:
    if "\r" in value or "\n" in value or "\0" in value:
        raise ValueError(f"SSE {name} must be one line without NUL: {value!r}")
    return value


def event(data: str, event_id: str | None = None, event_type: str | None = None) -> bytes:
    """One event: optional `event:` and `id:` lines, `data:` lines, then the blank line."""
    lines = []
    if event_type is not None:
        lines.append("event: " + _single_line("event", event_type))
    if event_id is not None:
        lines.append("id: " + _single_line("id", event_id))
    lines.extend("data: " + line for line in _LINE_BREAK.split(data))
    return ("\n".join(lines) + "\n\n").encode()


def comment(text: str = "") -> bytes:
    """A comment line; parsers ignore it, proxies see traffic (heartbeats)."""
    return (": " + _single_line("comment", text) + "\n\n").encode()


def retry(ms: int) -> bytes:
    """The reconnection time hint; parsers accept it only as ASCII digits."""
    if ms < 0:
        raise ValueError("retry must not be negative")
    return f"retry: {ms}\n\n".encode()
