"""An event-stream parser that follows the WHATWG processing model, for tests only.

HTML Living Standard, §9.2.6 "Interpreting an event stream". It is written from the spec,
not from rawrt's encoder, so a round trip through it checks rawrt against what a browser's
`EventSource` does. The steps it implements, in the spec's words where they matter:

- Decoding: "Streams must be decoded using the UTF-8 decode algorithm" (invalid bytes become
  U+FFFD), and "One leading U+FEFF BYTE ORDER MARK character must be ignored if any are
  present." Bytes arrive in any pieces, so decoding is incremental.
- Lines: "Lines must be separated by either a U+000D CARRIAGE RETURN U+000A LINE FEED (CRLF)
  character pair, a single U+000A LINE FEED (LF) character, or a single U+000D CARRIAGE
  RETURN (CR) character." A CR that ends one piece and an LF that starts the next are one
  CRLF.
- Each line: empty -> dispatch the event; starts with ':' -> ignore; contains ':' -> field is
  what precedes the first colon, value what follows it, "If value starts with a U+0020 SPACE
  character, remove it from value"; otherwise the whole line is the field and the value is
  empty.
- Fields: `event` sets the event type buffer; `data` appends the value and an LF to the data
  buffer; `id` sets the last event ID buffer "If the field value does not contain U+0000
  NULL"; `retry` sets the reconnection time "If the field value consists of only ASCII
  digits"; anything else is ignored.
- Dispatch: set the last event ID string to the buffer; "If the data buffer is an empty
  string, set the data buffer and the event type buffer to the empty string and return";
  remove one trailing LF from the data; the type is the event type buffer, or "message"
  when it is empty; then empty both buffers (the last event ID buffer stays).
- End of stream: "any pending data must be discarded", so an event without its blank line is
  never dispatched.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Event", "SseParser", "parse"]

_LINE_END = re.compile(r"\r\n|\r|\n")
_ASCII_DIGITS = frozenset("0123456789")


@dataclass(frozen=True, slots=True)
class Event:
    """A dispatched MessageEvent: its type, data and lastEventId."""

    type: str
    data: str
    last_event_id: str


class SseParser:
    """Bytes in (any pieces), dispatched events out."""

    def __init__(self, last_event_id: str = "") -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._at_start = True  # no character decoded yet: a BOM may come
        self._after_cr = False  # the last character seen was a CR that ended a line
        self._line: list[str] = []  # the pieces of the line not yet ended
        self._data: list[str] = []  # the data buffer, as its values (LF-joined on dispatch)
        self._event_type = ""
        self._id_buffer = last_event_id
        self.last_event_id = last_event_id  # the EventSource's last event ID string
        self.reconnection_time_ms: int | None = None
        self.closed = False

    def feed(self, data: bytes) -> list[Event]:
        """Take the next bytes of the stream; returns the events they complete."""
        if self.closed:
            raise ValueError("the stream has ended")
        return self._feed_text(self._decoder.decode(data))

    def close(self) -> list[Event]:
        """End of stream: pending data is discarded, so this never dispatches."""
        self._feed_text(self._decoder.decode(b"", True))
        self.closed = True
        self._line, self._data, self._event_type = [], [], ""
        return []

    @property
    def has_pending(self) -> bool:
        """True when an unfinished line or undispatched event would be lost at the end."""
        return bool(self._line or self._data or self._event_type)

    def _feed_text(self, text: str) -> list[Event]:
        if not text:
            return []
        if self._at_start:
            self._at_start = False
            if text.startswith("\ufeff"):
                text = text[1:]
        pos = 0
        if self._after_cr and text.startswith("\n"):
            pos = 1  # the LF of a CRLF cut between two pieces
        self._after_cr = False
        events: list[Event] = []
        while (end := _LINE_END.search(text, pos)) is not None:
            line = "".join(self._line) + text[pos : end.start()]
            self._line = []
            self._after_cr = end.group() == "\r" and end.end() == len(text)
            event = self._process_line(line)
            if event is not None:
                events.append(event)
            pos = end.end()
        if pos < len(text):
            self._line.append(text[pos:])
        return events

    def _process_line(self, line: str) -> Event | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        self._process_field(field, value)
        return None

    def _process_field(self, field: str, value: str) -> None:
        if field == "event":
            self._event_type = value
        elif field == "data":
            self._data.append(value)
        elif field == "id":
            if "\0" not in value:
                self._id_buffer = value
        elif field == "retry" and value and _ASCII_DIGITS.issuperset(value):
            self.reconnection_time_ms = int(value)

    def _dispatch(self) -> Event | None:
        self.last_event_id = self._id_buffer
        if not self._data:
            self._event_type = ""
            return None
        # The buffer is each value followed by LF, less the final LF: the values LF-joined.
        event = Event(self._event_type or "message", "\n".join(self._data), self.last_event_id)
        self._data, self._event_type = [], ""
        return event


def parse(stream: bytes, pieces: Iterable[int] = ()) -> tuple[list[Event], SseParser]:
    """Parse a whole stream, cut after the given byte offsets; returns events and parser."""
    parser = SseParser()
    events: list[Event] = []
    start = 0
    for cut in sorted(set(pieces)):
        events += parser.feed(stream[start:cut])
        start = cut
    events += parser.feed(stream[start:])
    events += parser.close()
    return events, parser
