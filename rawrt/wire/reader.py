"""Requests off one connection's bytes: a checked fast path for the simple request, and h11
(behind rawrt.wire.strict) for everything else.

h11 is the parser of record. But a long poll is a request per delivery, and a new h11
parser, the strict framer in front of it and h11's own parse of a typical re-poll (`POST
/api/poll/c?since=... HTTP/1.1`, Host, Content-Length: 0) cost about half of what the
server spends on a delivery. `read_simple()` reads that request in one regular-expression
match instead, and accepts only what both rawrt.wire.strict and h11 accept and read the
same way; for anything else it says None and the request goes to the `StrictParser`.

What the fast path takes (a strict subset of the RFC 9112 grammar, each byte accounted for):

    request line   GET, HEAD, POST, PUT, DELETE or OPTIONS, an origin-form target of
                   VCHARs, HTTP/1.1, CRLF
    field lines    token ":" OWS value OWS CRLF, the value ASCII VCHARs with SP or HTAB
                   inside (no obs-text, no obs-fold)
    head           complete in what has arrived, CRLF CRLF, at most max_head_bytes
    Host           exactly one, valid (rawrt.wire.strict.host_problem)
    framing        no Transfer-Encoding; at most one Content-Length, 1 to 20 digits, and
                   the whole body already arrived
    and none of    Upgrade, Expect, and a Connection field other than `keep-alive`: these
                   change h11's state machine (a protocol switch, 100-continue, the state
                   after a `close`), so h11 decides them

For an input it accepts it gives what h11 would: the method, the target, the version, the
(lower-cased name, value) pairs with the value's OWS stripped, the body, and where the next
request starts. tests/test_wire_reader.py checks that claim with a differential property:
generated requests, well formed and not, split at any byte, read by a `RequestReader` and by
the `StrictParser` alone, must give the same requests and the same refusals.

Theory of operation. A `RequestReader` belongs to one HTTP connection and follows h11's
cycle: `receive_data()`, then `next_event()` until it says NEED_DATA or PAUSED; the events
are a `Head`, body bytes and END. After END it is PAUSED until the driver has answered and
calls `start_next_cycle()`. Between requests it holds the bytes that have arrived and no
parser at all; a request that is not simple (or not yet complete, or followed by the end of
the stream) gets a `StrictParser` of its own, dropped again at its end, so the common
request costs no h11 object.
"""

from __future__ import annotations

import enum
import re
from typing import NamedTuple

import h11

from rawrt.wire.strict import StrictParser, host_problem

__all__ = ["Head", "RequestReader", "Signal", "read_simple"]

RequestHeaders = list[tuple[bytes, bytes]]


class Signal(enum.Enum):
    """What `next_event()` says when it has no head or body bytes to give."""

    NEED_DATA = "need data"  # more bytes must arrive
    PAUSED = "paused"  # a request has been read: answer it, then start_next_cycle()
    END = "end"  # the request read last is complete
    CLOSED = "closed"  # the peer ended the stream between requests


class Head(NamedTuple):
    """A request's head, as h11 gives it: names lower-cased, values without OWS."""

    method: bytes
    target: bytes
    http_version: bytes
    headers: RequestHeaders


class _Stage(enum.Enum):
    IDLE = "idle"  # reading a head (through the parser, if there is one)
    BODY = "body"  # a simple request's body is to be handed out
    END = "end"  # a simple request's END is to be handed out
    DONE = "done"  # read: PAUSED until start_next_cycle()


_IDLE, _BODY, _END, _DONE = _Stage.IDLE, _Stage.BODY, _Stage.END, _Stage.DONE

_TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_FIELD = _TCHAR + rb"+:[\t \x21-\x7e]*\r\n"
_SIMPLE_HEAD = re.compile(
    rb"(GET|HEAD|POST|PUT|DELETE|OPTIONS) (/[\x21-\x7e]*) HTTP/1\.1\r\n((?:" + _FIELD + rb")*)\r\n"
)
_FIELDS = re.compile(rb"(" + _TCHAR + rb"+):([\t \x21-\x7e]*)\r\n")
_CONTENT_LENGTH = re.compile(rb"[0-9]{1,20}")
# Fields whose value h11's state machine acts on: left to it.
_H11_DECIDES = frozenset({b"transfer-encoding", b"upgrade", b"expect"})


def read_simple(data: bytes, max_head_bytes: int) -> tuple[Head, bytes, int] | None:
    """(head, body, bytes used) of the simple request `data` starts with, or None when
    `data` does not start with a complete simple request (see the module docstring)."""
    match = _SIMPLE_HEAD.match(data)
    if match is None or match.end() > max_head_bytes:
        return None
    headers = [(n.lower(), v.strip(b" \t")) for n, v in _FIELDS.findall(match.group(3))]
    length = _framing(headers)
    end = match.end() + length if length is not None else -1
    if length is None or end > len(data):
        return None
    head = Head(match.group(1), match.group(2), b"1.1", headers)
    return head, data[match.end() : end], end


def _framing(headers: RequestHeaders) -> int | None:
    """The body length of a simple request with these fields; None if it is not one."""
    host: bytes | None = None
    length: bytes | None = None
    for name, value in headers:
        if name == b"host":
            if host is not None:
                return None
            host = value
        elif name == b"content-length":
            if length is not None or not _CONTENT_LENGTH.fullmatch(value):
                return None
            length = value
        elif name in _H11_DECIDES or (name == b"connection" and value.lower() != b"keep-alive"):
            return None
    if host is None or host_problem(host) is not None:
        return None
    return int(length) if length is not None else 0


class RequestReader:
    """One connection's requests, one at a time; see the module docstring."""

    __slots__ = ("_body", "_ended", "_input", "_max_head_bytes", "_parser", "_stage")

    def __init__(self, max_head_bytes: int, pending: bytes = b"") -> None:
        self._max_head_bytes = max_head_bytes
        self._input = pending  # bytes not yet read (between requests: all of them)
        self._ended = False  # the peer has ended the stream
        self._parser: StrictParser | None = None  # a request that is not simple
        self._stage = _IDLE
        self._body = b""  # a simple request's body, until handed out

    @property
    def pending(self) -> bytes:
        """The bytes that have arrived and are not part of the request read so far."""
        if self._parser is not None:
            return self._parser.trailing_data[0]
        return self._input

    @property
    def they_are_waiting_for_100_continue(self) -> bool:
        return self._parser is not None and self._parser.they_are_waiting_for_100_continue

    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer; b"" when it has ended the stream."""
        if self._parser is not None:
            self._parser.receive_data(data)
        elif not data:
            self._ended = True
        else:
            self._input = self._input + data if self._input else data

    def start_next_cycle(self) -> None:
        """The request read last has been answered: read the next one."""
        self._stage = _IDLE

    def next_event(self) -> Head | bytes | Signal:
        """The next part of the request: its Head, body bytes, END; or a Signal. Raises
        HttpError (the strict framer's refusals and h11's) for a request to refuse."""
        stage = self._stage
        if stage is _IDLE:
            if self._parser is None:
                head = self._read_simple()
                if head is not None:
                    return head
                if not self._input and not self._ended:
                    return Signal.NEED_DATA
                self._parser = StrictParser(self._max_head_bytes, self._input)
                self._input = b""
                if self._ended:
                    self._parser.receive_data(b"")
            return self._from_parser()
        if stage is _BODY:
            self._stage = _END
            body, self._body = self._body, b""
            return body
        if stage is _END:
            self._stage = _DONE
            return Signal.END
        return Signal.PAUSED

    def _read_simple(self) -> Head | None:
        """The head of the next request if it is simple and complete; its body waits."""
        data = self._input
        simple = read_simple(data, self._max_head_bytes) if data else None
        if simple is None:
            return None
        head, self._body, used = simple
        self._input = data[used:]
        self._stage = _BODY if self._body else _END
        return head

    def _from_parser(self) -> Head | bytes | Signal:
        parser = self._parser
        assert parser is not None
        event = parser.next_event()
        if isinstance(event, h11.Request):
            # h11's Headers is a Sequence whose iteration goes through __getitem__: copy once.
            return Head(event.method, event.target, event.http_version, list(event.headers))
        if isinstance(event, h11.Data):
            return bytes(event.data)  # h11 hands out a bytearray at times
        if isinstance(event, h11.EndOfMessage):
            self._input, self._ended = parser.trailing_data
            self._parser = None
            self._stage = _DONE
            return Signal.END
        if isinstance(event, h11.ConnectionClosed):
            return Signal.CLOSED
        return Signal.NEED_DATA
