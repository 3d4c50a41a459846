"""Strict HTTP/1.1 request framing: what h11 0.16.0 lets through and RFC 9110/9112 do not.

h11 is the parser of record; this module refuses, before h11 sees them, the inputs on which
h11 is more lenient than the RFCs, so that no front proxy can read a request as ending at a
different byte than rawrt does (request smuggling). Probed against h11 0.16.0, it accepts:

    head       a bare LF as the end of the request line, of a field line or of the head
               (`GET / HTTP/1.1\\nHost: a\\n\\n` is a complete request to it)
               obs-fold (a field line starting with SP or HTAB): it joins the lines
               control characters other than NUL, CR, LF, HTAB in field values (0x01, DEL)
    framing    Transfer-Encoding on HTTP/1.0 (it then reads a chunked body)
               Content-Length together with Transfer-Encoding (RFC 9112 §6.1: an error)
               Content-Length twice with one value, or as a list (`1, 1`)
    Host       any field value: empty, non-ASCII, `a b`, `u@h`, `a/b`, `a:x`
    chunked    any bytes after `;` in a chunk extension, a bare CR included
               whitespace after a chunk size without an extension (`1 \\r\\n`)
               a bare LF ending the trailer section (`0\\r\\n\\n`), obs-fold and bare LF in
               trailer lines; and it waits forever on a body that ends `0\\n\\n`

Where h11 is stricter than the RFCs, rawrt keeps h11's answer (refusing is safe) and this
module refuses the same inputs, so that its verdict is h11's or stricter and never looser:
an empty line before the request line, whitespace between a chunk size and its first `;`,
chunk sizes and Content-Length values of more than 20 digits, empty elements in the
Transfer-Encoding list (`, chunked`).

Theory of operation. A `StrictParser` wraps one `h11.Connection` for one request, as rawrt's
HTTP driver uses h11 (a new parser per request, fed the bytes left over from the last one).
Every byte goes through a `Framer` before h11 sees it. The framer is a small state machine
over the RFC 9112 grammar: it buffers the head (at most `max_head_bytes`), checks each byte
as it arrives for a CR that is not followed by LF or an LF that is not preceded by CR,
decides the body's framing from the complete head (`check_head`) exactly as §6.3 says, then
follows the body: a Content-Length is counted down, a chunked body is read chunk line by
chunk line (`chunk-size [ chunk-ext ] CRLF`, data, CRLF, `last-chunk`, trailer section).
At the end of the message it stops looking: what follows belongs to the next request (which
gets a parser of its own) or, after an upgrade, to another protocol. On the first byte
outside the grammar it records an `HttpError` (400, 431 or 501), h11 gets nothing more, and
the next `next_event()` raises it: the driver answers it and closes the connection, so no
byte a strict parser would call body is ever read as a request.
"""

from __future__ import annotations

import ipaddress
import re

import h11

from rawrt.errors import HttpError

__all__ = ["CHUNKED", "Framer", "StrictParser", "check_head", "host_problem"]

CHUNKED = -1  # the framing `check_head` returns for a chunked body; otherwise a length

# RFC 9110 §5.6.2: token = 1*tchar.
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# RFC 9112 §3: request-line = method SP request-target SP HTTP-version; h11 takes any VCHARs
# as the target and so does rawrt (routing parses it).
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") [\x21-\x7e]+ HTTP/([0-9])\.([0-9])")
# RFC 9112 §5: field-line = field-name ":" OWS field-value OWS, and a field value is made of
# field-vchar (VCHAR / obs-text) with SP and HTAB inside: no other control character.
_FIELD_LINE = re.compile(rb"(" + _TOKEN + rb"):([\t \x21-\x7e\x80-\xff]*)")
# A CR that is not followed by LF, or an LF that is not preceded by CR (RFC 9112 §2.2).
_BARE_CR_OR_LF = re.compile(rb"\r(?!\n)|(?<!\r)\n")
# RFC 9112 §7.1.1: chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] ),
# chunk-ext-val = token / quoted-string (RFC 9110 §5.6.4). h11 takes no BWS before the first
# ";" and at most 20 hex digits; rawrt refuses what h11 refuses.
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_EXT = rb"[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?"
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,20})(?![ \t])(?:" + _EXT + rb")*")
_CONTENT_LENGTH = re.compile(rb"[0-9]{1,20}")
# RFC 3986 §3.2.2: reg-name = *( unreserved / pct-encoded / sub-delims ); IPvFuture.
_REG_NAME = re.compile(rb"(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+")
_IPV_FUTURE = re.compile(rb"v[0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+")
_PORT = re.compile(rb"[0-9]{0,5}")
# RFC 1035 §2.3.4 via RFC 1123: a host name is at most 255 octets on the wire, 253 as text.
MAX_HOST_BYTES = 253

# Framer states.
_HEAD, _LENGTH, _CHUNK_LINE_STATE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _DONE = range(7)


def host_problem(value: bytes) -> str | None:
    """Why `value` is not a valid Host field value (RFC 9110 §7.2), or None if it is.

    Host = uri-host [ ":" port ], uri-host = IP-literal / IPv4address / reg-name (RFC 3986;
    an IPv4address is also a reg-name). The host may not be empty (RFC 9110 §4.2.1: an http
    URI with an empty host is invalid), is at most 253 bytes, and the port at most 5 digits.
    """
    host, port = value, b""
    if value.startswith(b"["):
        end = value.find(b"]")
        host, rest = value[: end + 1], value[end + 1 :]
        if end < 0 or (rest and not rest.startswith(b":")):
            return "Host is not a valid host[:port]"
        port = rest[1:]
        if not _ip_literal(host[1:-1]):
            return "Host is not a valid IP literal"
    else:
        host, _, port = value.partition(b":")
        if not _REG_NAME.fullmatch(host):
            return "Host is not a valid host[:port]"
    if len(host) > MAX_HOST_BYTES:
        return f"Host is longer than {MAX_HOST_BYTES} bytes"
    if not _PORT.fullmatch(port):
        return "Host has an invalid port"
    return None


def _ip_literal(inner: bytes) -> bool:
    if _IPV_FUTURE.fullmatch(inner):
        return True
    # ipaddress also takes an RFC 4007 zone ("%eth0"), which RFC 3986's IPv6address has not.
    if not inner or b"%" in inner or not inner.isascii():
        return False
    try:
        ipaddress.IPv6Address(inner.decode("ascii"))
    except ValueError:
        return False
    return True


def check_head(head: bytes) -> int:
    """The body framing of a request head (request line and field lines, each ending in
    CRLF, without the empty line): a Content-Length, 0 for none, or CHUNKED.

    Raises HttpError (400, or 501 for a transfer coding rawrt does not implement) for a head
    outside the grammar of RFC 9112 §2 to §6 and RFC 9110 §7.2 (Host).
    """
    lines = head.split(b"\r\n")
    if lines[-1] != b"" or _BARE_CR_OR_LF.search(head):
        raise HttpError(400, "bare CR or LF in the request head")
    match = _REQUEST_LINE.fullmatch(lines[0])
    if match is None:
        raise HttpError(400, "invalid request line")
    fields = [_field(line) for line in lines[1:-1]]
    _check_hosts([v for n, v in fields if n == b"host"], match.group(2, 3) == (b"1", b"1"))
    return _framing(fields, match.group(2, 3) == (b"1", b"0"))


def _field(line: bytes) -> tuple[bytes, bytes]:
    match = _FIELD_LINE.fullmatch(line)
    if match is not None:
        return match.group(1).lower(), match.group(2).strip(b" \t")
    if line[:1] in (b" ", b"\t"):
        raise HttpError(400, "obs-fold (a field line starting with whitespace)")
    name, colon, _ = line.partition(b":")
    if colon and name.rstrip(b" \t") != name:
        raise HttpError(400, "whitespace between a field name and its colon")
    raise HttpError(400, "invalid header field line")


def _check_hosts(hosts: list[bytes], http_1_1: bool) -> None:
    # RFC 9112 §3.2: 400 to an HTTP/1.1 request without Host, with more than one Host field
    # line, or with a Host field with an invalid field value.
    if len(hosts) > 1:
        raise HttpError(400, "more than one Host header")
    if not hosts and http_1_1:
        raise HttpError(400, "an HTTP/1.1 request needs a Host header")
    problem = host_problem(hosts[0]) if hosts else None
    if problem is not None:
        raise HttpError(400, problem)


def _framing(fields: list[tuple[bytes, bytes]], http_1_0: bool) -> int:
    """RFC 9112 §6.3 for a request: chunked if Transfer-Encoding, else Content-Length, else 0."""
    codings = [v for n, v in fields if n == b"transfer-encoding"]
    lengths = [v for n, v in fields if n == b"content-length"]
    if codings and lengths:
        raise HttpError(400, "Content-Length together with Transfer-Encoding")
    if codings:
        return _transfer_coding(codings, http_1_0)
    if len(lengths) > 1:
        raise HttpError(400, "more than one Content-Length")
    if lengths and not _CONTENT_LENGTH.fullmatch(lengths[0]):
        raise HttpError(400, "invalid Content-Length")
    return int(lengths[0]) if lengths else 0


def _transfer_coding(codings: list[bytes], http_1_0: bool) -> int:
    if http_1_0:
        # RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
        raise HttpError(400, "Transfer-Encoding in an HTTP/1.0 request")
    if len(codings) > 1:
        raise HttpError(400, "more than one Transfer-Encoding header")
    names = [c.strip(b" \t").lower() for c in codings[0].split(b",")]
    # RFC 9110 §5.6.1.2 would have empty list elements ignored; h11 refuses them (501).
    if names[-1] != b"chunked" or b"chunked" in names[:-1] or b"" in names:
        # RFC 9112 §6.3: chunked not final (or applied twice) is 400, then close.
        raise HttpError(400, "Transfer-Encoding must end with chunked, once")
    if len(names) > 1:
        raise HttpError(501, "only Transfer-Encoding: chunked is implemented")
    return CHUNKED


class Framer:
    """Follows one request's bytes through the RFC 9112 grammar; see the module docstring.

    `feed()` raises HttpError at the first byte outside it; `done` is true once the message
    has ended, after which `feed()` ignores what it is given.
    """

    __slots__ = ("_buffer", "_max_head_bytes", "_remaining", "_state", "_trailer_bytes")

    def __init__(self, max_head_bytes: int) -> None:
        self._max_head_bytes = max_head_bytes
        self._state = _HEAD
        self._buffer = bytearray()  # the head, or the chunk or trailer line, being read
        self._remaining = 0  # body or chunk-data bytes still to come
        self._trailer_bytes = 0

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes) -> None:
        at = 0
        while at < len(data) and self._state != _DONE:
            if self._state in (_LENGTH, _CHUNK_DATA):
                at = self._skip(data, at)
            elif self._state == _CHUNK_END:
                at = self._chunk_end(data, at)
            else:
                at = self._line(data, at)

    def _skip(self, data: bytes, at: int) -> int:
        taken = min(self._remaining, len(data) - at)
        self._remaining -= taken
        if self._remaining == 0:
            self._state = _DONE if self._state == _LENGTH else _CHUNK_END
        return at + taken

    def _chunk_end(self, data: bytes, at: int) -> int:
        """The CRLF after chunk data, possibly split between two reads."""
        expected = b"\r\n"[len(self._buffer)]
        if data[at] != expected:
            raise HttpError(400, "chunk data not followed by CRLF")
        self._buffer.append(expected)
        if len(self._buffer) == 2:
            self._buffer.clear()
            self._state = _CHUNK_LINE_STATE
        return at + 1

    def _line(self, data: bytes, at: int) -> int:
        """Buffer the head, or a chunk or trailer line, up to the CRLF that ends it."""
        buffer = self._buffer
        start = len(buffer)
        end = b"\r\n\r\n" if self._state == _HEAD else b"\r\n"
        # Copy no further than the end of the line (pipelined requests may follow) and one
        # byte past the bound, which is enough to know it is passed.
        window = min(len(data), at + self._max_head_bytes - start + 1)
        ends_at = data.find(end, at, window)
        buffer += data[at : ends_at + len(end) if ends_at >= 0 else window]
        found = buffer.find(end, max(start - len(end) + 1, 0))
        stop = len(buffer) if found < 0 else found + len(end)
        bare = _BARE_CR_OR_LF.search(buffer, max(start - 1, 0), stop)
        # A CR that ends what has arrived may yet be followed by its LF.
        if bare is not None and (found >= 0 or bare.start() != stop - 1 or buffer[-1] != 13):
            raise HttpError(400, "bare CR or LF in the request")
        if stop > self._max_head_bytes:
            what = "request head" if self._state == _HEAD else "chunk or trailer line"
            raise HttpError(431, f"{what} is larger than {self._max_head_bytes} bytes")
        if found < 0:
            return len(data)
        line = bytes(buffer[: found + 2])
        buffer.clear()
        self._end_of_line(line)
        return at + stop - start

    def _end_of_line(self, line: bytes) -> None:
        if self._state == _HEAD:
            framing = check_head(line)
            self._state = _CHUNK_LINE_STATE if framing == CHUNKED else _LENGTH
            self._remaining = max(framing, 0)
            if framing == 0:
                self._state = _DONE
        elif self._state == _CHUNK_LINE_STATE:
            self._chunk_line(line[:-2])
        else:
            self._trailer_line(line[:-2])

    def _chunk_line(self, line: bytes) -> None:
        match = _CHUNK_LINE.fullmatch(line)
        if match is None:
            raise HttpError(400, "invalid chunk size line")
        self._remaining = int(match.group(1), 16)
        self._state = _CHUNK_DATA if self._remaining else _TRAILER

    def _trailer_line(self, line: bytes) -> None:
        if not line:
            self._state = _DONE
            return
        self._trailer_bytes += len(line) + 2
        if self._trailer_bytes > self._max_head_bytes:
            raise HttpError(431, f"trailer section is larger than {self._max_head_bytes} bytes")
        _field(line)


class StrictParser:
    """An `h11.Connection` (server side, one request) behind a `Framer`.

    It offers the part of h11's interface rawrt's driver uses; every refusal, the framer's or
    h11's own, comes out of `next_event()` as an HttpError.
    """

    __slots__ = ("_error", "_framer", "_h11")

    def __init__(self, max_head_bytes: int, trailing: bytes = b"") -> None:
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head_bytes)
        self._framer = Framer(max_head_bytes)
        self._error: HttpError | None = None
        if trailing:
            self.receive_data(trailing)

    def receive_data(self, data: bytes) -> None:
        if self._error is not None:
            return  # the connection is being refused: h11 gets nothing more
        if data:
            try:
                self._framer.feed(data)
            except HttpError as exc:
                self._error = exc
                return
        self._h11.receive_data(data)

    def next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        if self._error is not None:
            raise self._error
        try:
            return self._h11.next_event()
        except h11.RemoteProtocolError as exc:
            raise HttpError(exc.error_status_hint or 400, str(exc)) from None

    @property
    def trailing_data(self) -> tuple[bytes, bool]:
        return self._h11.trailing_data

    @property
    def they_are_waiting_for_100_continue(self) -> bool:
        return self._h11.they_are_waiting_for_100_continue
