"""rawrt.wire.strict: what h11 lets through is refused, and rawrt's verdict on a request is
the one a strict reading of the RFC 9110/9112 grammar gives, however the bytes are split.

The reading is written here a second time, plainly, from the RFCs' ABNF (`_Oracle`), so a
mistake in the framer does not hide behind the same mistake in its test.
"""

from __future__ import annotations

import re

import h11
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from support import CORE, QUIET_PATCH_WRITER

from rawrt.errors import HttpError
from rawrt.wire.strict import Framer, StrictParser, check_head, host_problem

pytestmark = QUIET_PATCH_WRITER

HEAD = b"POST /api/publish/c HTTP/1.1\r\nHost: a\r\n"
CHUNKED = HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
NEXT = b"POST /api/publish/smuggled HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}"


def run(parser: StrictParser | h11.Connection, pieces: list[bytes]) -> tuple[str, bytes, bytes]:
    """("ok", body, bytes after the message) | ("bad", b"", b"") | ("short", b"", b"")."""
    body = b""
    for at, piece in enumerate(pieces):
        parser.receive_data(piece)
        while True:
            try:
                event = parser.next_event()
            except (HttpError, h11.RemoteProtocolError):
                return "bad", b"", b""
            if event is h11.NEED_DATA or event is h11.PAUSED:
                break
            if isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                for later in pieces[at + 1 :]:
                    parser.receive_data(later)  # kept for the next request's parser
                return "ok", body, parser.trailing_data[0]
    return "short", b"", b""


def strict(data: bytes) -> tuple[str, bytes, bytes]:
    return run(StrictParser(16 * 1024), [data])


def refusal(data: bytes) -> HttpError:
    parser = StrictParser(16 * 1024, data)
    with pytest.raises(HttpError) as info:
        while parser.next_event() is not h11.NEED_DATA:
            pass
    return info.value


# --- what h11 0.16.0 accepts and rawrt refuses (the module docstring's list) -------------------

LENIENT = {
    "bare LF ends every line": b"GET / HTTP/1.1\nHost: a\n\n" + NEXT,
    "bare LF ends the head": b"GET / HTTP/1.1\r\nHost: a\r\n\n" + NEXT,
    "obs-fold": HEAD + b"X: a\r\n b\r\nContent-Length: 0\r\n\r\n" + NEXT,
    "TE on HTTP/1.0": b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + NEXT,
    "CL and TE": HEAD + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + NEXT,
    "CL twice, same": HEAD + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}" + NEXT,
    "CL as a list": HEAD + b"Content-Length: 2, 2\r\n\r\n{}" + NEXT,
    "DEL in a value": HEAD + b"X: a\x7fb\r\n\r\n" + NEXT,
    "C0 control in a value": HEAD + b"X: a\x01b\r\n\r\n" + NEXT,
    "empty Host": b"GET / HTTP/1.1\r\nHost:\r\n\r\n" + NEXT,
    "non-ASCII Host": "GET / HTTP/1.1\r\nHost: é.example\r\n\r\n".encode() + NEXT,
    "Host with a space": b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n" + NEXT,
    "Host with userinfo": b"GET / HTTP/1.1\r\nHost: u@h\r\n\r\n" + NEXT,
    "Host with a path": b"GET / HTTP/1.1\r\nHost: h/x\r\n\r\n" + NEXT,
    "Host with a bad port": b"GET / HTTP/1.1\r\nHost: h:x\r\n\r\n" + NEXT,
    "Host too long": b"GET / HTTP/1.1\r\nHost: " + b"a" * 254 + b"\r\n\r\n" + NEXT,
    "bare CR in a chunk extension": CHUNKED + b"2;a\rb\r\n{}\r\n0\r\n\r\n" + NEXT,
    "junk in a chunk extension": CHUNKED + b"2;a b\x01\r\n{}\r\n0\r\n\r\n" + NEXT,
    "space after a chunk size": CHUNKED + b"2 \r\n{}\r\n0\r\n\r\n" + NEXT,
    "space after a chunk extension": CHUNKED + b"2;a=b \r\n{}\r\n0\r\n\r\n" + NEXT,
    "bare LF ends the trailers": CHUNKED + b"2\r\n{}\r\n0\r\n\n" + NEXT,
    "bare LF in a trailer": CHUNKED + b"2\r\n{}\r\n0\r\nX: y\n\r\n" + NEXT,
    "obs-fold in a trailer": CHUNKED + b"2\r\n{}\r\n0\r\nX: y\r\n z\r\n\r\n" + NEXT,
}


@pytest.mark.parametrize("data", LENIENT.values(), ids=LENIENT.keys())
def test_h11_alone_accepts_and_rawrt_refuses_with_400(data: bytes) -> None:
    verdict, _, _ = run(h11.Connection(h11.SERVER), [data])
    assert verdict == "ok"  # if h11 grows stricter, this list (and the docstring) shrink
    assert refusal(data).status == 400


def test_h11_waits_forever_on_bare_lf_last_chunk_and_rawrt_refuses_at_once() -> None:
    data = CHUNKED + b"2\r\n{}\r\n0\n\n"  # and the client waits for its answer
    assert run(h11.Connection(h11.SERVER), [data])[0] == "short"
    assert refusal(data).status == 400


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (HEAD + b"Transfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (HEAD + b"Transfer-Encoding: chunked, gzip\r\n\r\n", 400),
        (HEAD + b"Transfer-Encoding: chunked, chunked\r\n\r\n", 400),
        (HEAD + b"Transfer-Encoding: , chunked\r\n\r\n", 400),
        (HEAD + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (HEAD + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (HEAD + b"Content-Length: +1\r\n\r\n", 400),
        (HEAD + b"Host: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (HEAD + b"X : y\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: " + b"y" * 17000 + b"\r\n\r\n", 431),
        (CHUNKED + b"2\r\n{}\r\n0\r\n" + b"X: y\r\n" * 3000 + b"\r\n", 431),
        (CHUNKED + b"2\r\n{}x\r\n", 400),
        (CHUNKED + b"2\n{}\r\n", 400),
    ],
)
def test_framing_faults_get_their_status(data: bytes, status: int) -> None:
    assert refusal(data).status == status


@pytest.mark.parametrize(
    ("data", "body"),
    [
        (HEAD + b"Content-Length: 2\r\n\r\n{}", b"{}"),
        (HEAD + b"Content-Length: 002\r\n\r\n{}", b"{}"),
        (HEAD + b"Transfer-Encoding: CHUNKED\r\n\r\n2\r\n{}\r\n0\r\n\r\n", b"{}"),
        (HEAD + b"Transfer-Encoding:  chunked \r\n\r\n2\r\n{}\r\n0\r\n\r\n", b"{}"),
        (CHUNKED + b'2;a=b ; c = "x \\" y";d\r\n{}\r\n000;e\r\nX-T: 1\r\n\r\n', b"{}"),
        (CHUNKED + b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
        (b"POST / HTTP/1.0\r\nContent-Length: 1\r\n\r\nx", b"x"),
    ],
)
def test_well_framed_requests_pass_with_their_body_and_leave_the_next_one(
    data: bytes, body: bytes
) -> None:
    assert strict(data + NEXT) == ("ok", body, NEXT)
    assert run(StrictParser(16 * 1024), [bytes([b]) for b in data + NEXT]) == ("ok", body, NEXT)


def test_a_message_that_ended_leaves_later_bytes_unread() -> None:
    framer = Framer(1024)
    framer.feed(b"GET /ws HTTP/1.1\r\nHost: a\r\n\r\n\x81\x85\n\r\x00")  # a WebSocket frame
    assert framer.done


@pytest.mark.parametrize(
    "host",
    [b"a", b"example.com:8000", b"127.0.0.1", b"[::1]", b"[::1]:80", b"[2001:db8::1.2.3.4]",
     b"[v7.a:b]", b"a%20b", b"x:", b"a" * 253],
)  # fmt: skip
def test_valid_hosts_pass(host: bytes) -> None:
    assert host_problem(host) is None


@pytest.mark.parametrize(
    "host",
    [b"", b"a b", b"[::1", b"[::1]x", b"[fe80::1%eth0]", b"[1.2.3.4]", b"[::g]", b"h:123456",
     b"a,b c", b"a" * 254, b"\xc3\xa9", b"h:-1", b"[]"],
)  # fmt: skip
def test_invalid_hosts_are_named(host: bytes) -> None:
    assert host_problem(host) is not None


def test_check_head_gives_the_framing() -> None:
    assert check_head(b"GET / HTTP/1.1\r\nHost: a\r\n") == 0
    assert check_head(HEAD + b"Content-Length: 7\r\n") == 7
    with pytest.raises(HttpError):
        check_head(b"GET / HTTP/1.1\r\nHost: a")  # a head ends with CRLF


# --- the RFC grammar, written again plainly ----------------------------------------------------

TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
TOKEN = TCHAR + b"+"
OWS = rb"[ \t]*"
FIELD_VCHAR = rb"[\x21-\x7e\x80-\xff]"
FIELD_CONTENT = FIELD_VCHAR + rb"(?:[ \t\x21-\x7e\x80-\xff]*" + FIELD_VCHAR + rb")?"
FIELD_LINE = b"(" + TOKEN + b"):" + OWS + b"((?:" + FIELD_CONTENT + b")?)" + OWS
REQUEST_LINE = TOKEN + rb" [\x21-\x7e]+ HTTP/([0-9])\.([0-9])"
HEAD_RE = re.compile(REQUEST_LINE + rb"\r\n((?:" + FIELD_LINE + rb"\r\n)*)\r\n")
FIELD_RE = re.compile(FIELD_LINE + rb"\r\n")
QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
CHUNK_EXT = b"(?:" + OWS + b";" + OWS + TOKEN + b"(?:" + OWS + b"=" + OWS
CHUNK_EXT += b"(?:" + TOKEN + b"|" + QUOTED + b"))?)*"
# h11 refuses BWS before the first ";" and more than 20 hex digits; rawrt keeps its refusal.
CHUNK_LINE_RE = re.compile(rb"([0-9A-Fa-f]{1,20})(?![ \t])" + CHUNK_EXT + rb"\r\n")
UNRESERVED_SUB = rb"A-Za-z0-9\-._~!$&'()*+,;="
REG_NAME = re.compile(rb"(?:[" + UNRESERVED_SUB + rb"]|%[0-9A-Fa-f][0-9A-Fa-f])*")
DEC_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
IPV4 = rf"{DEC_OCTET}\.{DEC_OCTET}\.{DEC_OCTET}\.{DEC_OCTET}"
H16 = r"[0-9A-Fa-f]{1,4}"
LS32 = rf"(?:{H16}:{H16}|{IPV4})"
IPV6 = "|".join(  # RFC 3986 §3.2.2, its nine lines
    [
        rf"(?:{H16}:){{6}}{LS32}",
        rf"::(?:{H16}:){{5}}{LS32}",
        rf"(?:{H16})?::(?:{H16}:){{4}}{LS32}",
        rf"(?:(?:{H16}:){{0,1}}{H16})?::(?:{H16}:){{3}}{LS32}",
        rf"(?:(?:{H16}:){{0,2}}{H16})?::(?:{H16}:){{2}}{LS32}",
        rf"(?:(?:{H16}:){{0,3}}{H16})?::{H16}:{LS32}",
        rf"(?:(?:{H16}:){{0,4}}{H16})?::{LS32}",
        rf"(?:(?:{H16}:){{0,5}}{H16})?::{H16}",
        rf"(?:(?:{H16}:){{0,6}}{H16})?::",
    ]
)
IPV_FUTURE = rb"v[0-9A-Fa-f]+\.[" + UNRESERVED_SUB + rb":]+"
IP_LITERAL = re.compile(rb"\[(?:" + IPV6.encode() + b"|" + IPV_FUTURE + rb")\]")
HOST_RE = re.compile(rb"(\[[^\]]*\]|[^:\[\]]*)(?::([0-9]*))?")


def oracle_host_ok(value: bytes) -> bool:
    """RFC 9110 §7.2 Host = uri-host [ ":" port ] (RFC 3986), not empty (RFC 9110 §4.2.1),
    plus rawrt's written bounds: the host at most 253 bytes, the port at most 5 digits."""
    match = HOST_RE.fullmatch(value)
    if match is None:
        return False
    host, port = match.group(1), match.group(2) or b""
    grammar = IP_LITERAL.fullmatch(host) or (host and REG_NAME.fullmatch(host))
    return bool(grammar) and len(host) <= 253 and len(port) <= 5


def oracle(data: bytes) -> tuple[str, bytes, bytes]:
    """The verdict on the first request in `data`: ok (body, rest), bad, or short (a line
    without its CRLF that holds no bare CR or LF, or a body still being counted)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return _short_or_bad(data)
    head = HEAD_RE.fullmatch(data[: end + 4])
    if head is None:
        return "bad", b"", b""
    http_1_0, http_1_1 = head.group(1, 2) == (b"1", b"0"), head.group(1, 2) == (b"1", b"1")
    fields = [(m[1].lower(), m[2]) for m in FIELD_RE.finditer(head.group(3))]
    hosts = [v for n, v in fields if n == b"host"]
    if len(hosts) > 1 or (http_1_1 and not hosts) or not all(map(oracle_host_ok, hosts)):
        return "bad", b"", b""  # RFC 9112 §3.2
    te = [v for n, v in fields if n == b"transfer-encoding"]
    cl = [v for n, v in fields if n == b"content-length"]
    rest = data[end + 4 :]
    if te:
        # h11 refuses empty list elements (RFC 9110 §5.6.1.2 has them ignored): so does rawrt.
        codings = [c.strip(b" \t").lower() for c in b",".join(te).split(b",")]
        if http_1_0 or cl or len(te) > 1 or codings != [b"chunked"]:
            return "bad", b"", b""  # RFC 9112 §6.1, §6.3
        return _chunked(rest)
    if len(cl) > 1 or (cl and not re.fullmatch(rb"[0-9]{1,20}", cl[0])):
        return "bad", b"", b""  # RFC 9110 §8.6, as strict as it allows
    length = int(cl[0]) if cl else 0
    if len(rest) < length:
        return "short", b"", b""
    return "ok", rest[:length], rest[length:]


def _short_or_bad(line: bytes) -> tuple[str, bytes, bytes]:
    if re.search(rb"\r(?!\n)|(?<!\r)\n", line[:-1] if line.endswith(b"\r") else line):
        return "bad", b"", b""
    return "short", b"", b""


def _chunked(data: bytes) -> tuple[str, bytes, bytes]:
    """RFC 9112 §7.1: *chunk last-chunk trailer-section CRLF."""
    body, at = b"", 0
    while True:
        eol = data.find(b"\r\n", at)
        if eol < 0:
            return _short_or_bad(data[at:])
        line = CHUNK_LINE_RE.fullmatch(data[at : eol + 2])
        if line is None:
            return "bad", b"", b""
        size, at = int(line[1], 16), eol + 2
        if size == 0:
            return _trailers(data, at, body)
        if len(data) < at + size + 2:
            piece = data[at + size :]
            return ("short" if b"\r\n".startswith(piece) else "bad"), b"", b""
        if data[at + size : at + size + 2] != b"\r\n":
            return "bad", b"", b""
        body, at = body + data[at : at + size], at + size + 2


def _trailers(data: bytes, at: int, body: bytes) -> tuple[str, bytes, bytes]:
    while True:
        eol = data.find(b"\r\n", at)
        if eol < 0:
            return _short_or_bad(data[at:])
        if eol == at:
            return "ok", body, data[at + 2 :]
        if FIELD_RE.fullmatch(data[at : eol + 2]) is None:
            return "bad", b"", b""
        at = eol + 2


# --- generated requests: mostly well formed, with the faults a smuggler tries ------------------

EOL = st.sampled_from([b"\r\n"] * 80 + [b"\n", b"\r", b"\r\r\n", b" \r\n"])
HOSTS = st.sampled_from(
    [b"a"] * 20 + [b"127.0.0.1:8000", b"[::1]:80", b"[v1.x]", b"xn--e.com", b"", b"h:x", b"a b",
     b"\xc3\xa9", b"u@h", b"[::1", b"a" * 254, b"h:", b"[fe80::1%25x]"]
)  # fmt: skip
ODD_VALUE = st.binary(max_size=6).map(lambda b: bytes(c % 0x84 for c in b))
VALUE = st.sampled_from([b"x", b"a b", b" x ", b"\tx", b"", b"\x80\xff"] * 3 + [b"?"]).flatmap(
    lambda v: ODD_VALUE if v == b"?" else st.just(v)
)
CODINGS = st.sampled_from(
    [b"chunked"] * 10 + [b"CHUNKED", b" chunked", b"gzip, chunked", b"chunked, gzip", b", chunked",
     b"chunked, chunked", b"identity", b"chunked;q=1", b""]
)  # fmt: skip
EXT = st.sampled_from(
    [b""] * 10 + [b";a", b";a=b", b';a="q \\" x"', b" ;a", b"; a = b", b";a\rb", b";a b",
     b";a=", b";\x01", b";a;b=c", b"\t", b";a=b "]
)  # fmt: skip


@st.composite
def field(draw: st.DrawFn) -> bytes:
    name = draw(st.sampled_from([b"X", b"Accept", b"X-Y"] * 5 + [b"X ", b" X", b"", b"X\x7f"]))
    return name + b":" + draw(st.sampled_from([b" ", b"", b"\t"])) + draw(VALUE)


@st.composite
def chunked_body(draw: st.DrawFn) -> bytes:
    out = b""
    for data in draw(st.lists(st.binary(min_size=1, max_size=12), max_size=3)):
        size = len(data) + draw(st.sampled_from([0] * 30 + [-1, 1]))
        digits = draw(st.sampled_from(["%x", "%X", "%04x"])) % max(size, 0)
        out += digits.encode() + draw(EXT) + draw(EOL) + data + draw(EOL)
    out += draw(st.sampled_from([b"0"] * 5 + [b"000", b"0" * 23])) + draw(EXT)
    out += draw(EOL)
    for line in draw(st.lists(field(), max_size=2)):
        out += line + draw(EOL)
    return out + draw(EOL)


@st.composite
def request(draw: st.DrawFn) -> bytes:
    version = draw(st.sampled_from([b"1.1"] * 4 + [b"1.0"]))
    method = draw(st.sampled_from([b"POST", b"GET"] * 5 + [b"P\x00ST"]))
    head = method + b" /api/publish/c HTTP/" + version + draw(EOL)
    hosts = draw(st.sampled_from([1] * 8 + [0, 2]))
    lines = [b"Host: " + draw(HOSTS) for _ in range(hosts)]
    lines += draw(st.lists(field(), max_size=2))
    body = b'{"k":1}'
    framing = draw(st.sampled_from(["length", "chunked"] * 3 + ["both", "none", "lengths"]))
    if framing in ("length", "both", "lengths"):
        lines.append(
            b"Content-Length: " + draw(st.sampled_from([b"7"] * 5 + [b"07", b"7, 7", b"+7", b"6"]))
        )
    if framing == "lengths":
        lines.append(b"Content-Length: " + draw(st.sampled_from([b"7", b"8"])))
    if framing in ("chunked", "both"):
        codings = draw(st.lists(CODINGS, min_size=1, max_size=2))
        lines += [b"Transfer-Encoding: " + c for c in codings]
        body = draw(chunked_body())
    lines = draw(st.permutations(lines))
    if lines and draw(st.integers(0, 19)) == 0:
        lines.insert(draw(st.integers(0, len(lines))), b" folded")  # obs-fold
    head += b"".join(line + draw(EOL) for line in lines) + draw(EOL)
    return head + (b"" if framing == "none" else body)


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    # Never an empty piece: h11 reads b"" as the end of the stream.
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True) if b > a]


@settings(CORE, max_examples=400)  # about one in five generated requests is well formed
@given(
    message=request(),
    tail=st.sampled_from([NEXT, b"", b"\x81\x85junk"]),
    cuts=st.lists(st.integers(0, 10_000), max_size=8),
)
@example(message=CHUNKED + b"2\r\n{}\r\n0\n\n", tail=NEXT, cuts=[])
@example(message=b"GET / HTTP/1.1\nHost: a\n\n", tail=NEXT, cuts=[3])
@example(message=HEAD + b"Content-Length: 2\r\n\r\n{}", tail=NEXT, cuts=[1, 5, 40])
def test_rawrt_verdict_is_the_strict_reading_of_the_grammar_split_anywhere(
    message: bytes, tail: bytes, cuts: list[int]
) -> None:
    data = message + tail
    expected = oracle(data)
    assert run(StrictParser(16 * 1024), pieces(data, cuts)) == expected


@CORE
@given(st.text("0123456789abcdefv.:[]%", max_size=24).map(str.encode))
@example(b"[1:2:3:4:5:6:7::]")
@example(b"[::ffff:1.2.3.4]")
@example(b"[1::2::3]")
@example(b"[::01.2.3.4]")
def test_host_grammar_is_rfc_3986(value: bytes) -> None:
    assert (host_problem(value) is None) == oracle_host_ok(value)
