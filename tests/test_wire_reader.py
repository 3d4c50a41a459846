"""rawrt.wire.reader: the fast path for simple requests gives exactly the verdict of h11
behind the strict framer, on generated requests, well formed and not, split anywhere.

The reference is what rawrt's driver did before the fast path: a `StrictParser` per
request, fed what the last one left. The reader under test takes the fast path wherever it
applies; any difference in the requests read (method, target, version, headers, body), in
where the next one starts, or in the refusal and its status, fails.
"""

from __future__ import annotations

import h11
from hypothesis import example, given, settings
from hypothesis import strategies as st
from support import CORE, QUIET_PATCH_WRITER

from rawrt.errors import HttpError
from rawrt.wire.reader import Head, RequestReader, Signal, read_simple
from rawrt.wire.strict import StrictParser

pytestmark = QUIET_PATCH_WRITER

MAX_HEAD = 16 * 1024
REPOLL = (
    b"POST /api/poll/c?since=abc-1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Length: 0\r\n\r\n"
)
MAX_REQUESTS = 4  # a transcript stops after this many requests

Transcript = tuple[list[tuple[Head, bytes]], tuple[object, ...]]


def reference(pieces: list[bytes], max_head: int, ended: bool) -> Transcript:
    """Requests read by a StrictParser per request (h11 behind the strict framer)."""
    requests: list[tuple[Head, bytes]] = []
    parser = StrictParser(max_head)
    head: Head | None = None
    body = b""
    for piece in [*pieces, b""] if ended else pieces:
        parser.receive_data(piece)
        while True:
            try:
                event = parser.next_event()
            except HttpError as exc:
                return requests, ("refused", exc.status)
            if event is h11.NEED_DATA or event is h11.PAUSED:
                break
            if isinstance(event, h11.Request):
                head = Head(event.method, event.target, event.http_version, list(event.headers))
                body = b""
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                requests.append((head, body))
                if len(requests) == MAX_REQUESTS:
                    return requests, ("enough",)
                left, closed = parser.trailing_data
                parser = StrictParser(max_head, left)
                if closed:
                    parser.receive_data(b"")
            elif isinstance(event, h11.ConnectionClosed):
                return requests, ("closed",)
    return requests, ("waiting", parser.trailing_data[0])


def with_reader(pieces: list[bytes], max_head: int, ended: bool) -> Transcript:
    """The same, through a RequestReader (fast path and fallback)."""
    requests: list[tuple[Head, bytes]] = []
    reader = RequestReader(max_head)
    head: Head | None = None
    body = b""
    for piece in [*pieces, b""] if ended else pieces:
        reader.receive_data(piece)
        while True:
            try:
                event = reader.next_event()
            except HttpError as exc:
                return requests, ("refused", exc.status)
            if event is Signal.NEED_DATA:
                break
            assert event is not Signal.PAUSED  # every END is followed by start_next_cycle
            if isinstance(event, Head):
                head, body = event, b""
            elif isinstance(event, bytes):
                body += event
            elif event is Signal.END:
                assert head is not None
                requests.append((head, body))
                if len(requests) == MAX_REQUESTS:
                    return requests, ("enough",)
                reader.start_next_cycle()
            elif event is Signal.CLOSED:
                return requests, ("closed",)
    return requests, ("waiting", reader.pending)


# --- generated requests: mostly simple, with every way of not being simple ------------------

EOL = st.sampled_from([b"\r\n"] * 40 + [b"\n", b"\r", b"\r\r\n", b" \r\n"])
METHOD = st.sampled_from(
    [b"POST", b"GET"] * 8 + [b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"CONNECT", b"PATCH",
     b"get", b"P\x00ST", b"", b"GET "]
)  # fmt: skip
TARGET = st.sampled_from(
    [b"/api/poll/c?since=abc-1"] * 8 + [b"/", b"/a%2Fb?x=1&y", b"*", b"http://a/b", b"/a b",
     b"/\x7f", b"/\xc3\xa9", b"", b"/?a=b=c&&d=+"]
)  # fmt: skip
VERSION = st.sampled_from(
    [b"HTTP/1.1"] * 12 + [b"HTTP/1.0", b"HTTP/2.0", b"http/1.1", b"HTTP/1.1 ", b"HTTP/1.10"]
)
HOST = st.sampled_from(
    [b"127.0.0.1:8080"] * 10 + [b"a", b"[::1]:80", b"", b"a b", b"h:x", b"\xc3\xa9", b"u@h",
     b"a" * 254, b"[v1.x]", b"[::1"]
)  # fmt: skip
LENGTH = st.sampled_from(
    [b"0"] * 6 + [b"2"] * 4 + [b"07", b"1, 1", b"+1", b"", b"1" * 21, b"0" * 20, b"0" * 21,
     b"3", b"99"]
)  # fmt: skip
CONNECTION = st.sampled_from(
    [b"keep-alive"] * 4 + [b"Keep-Alive", b"close", b"upgrade", b"keep-alive, close", b""]
)
OTHER = st.sampled_from(
    [(b"Accept", b"*/*"), (b"User-Agent", b"loadgen/1"), (b"X-Y", b"a\tb"), (b"X", b""),
     (b"Origin", b"http://x"), (b"Transfer-Encoding", b"chunked"), (b"Upgrade", b"websocket"),
     (b"Expect", b"100-continue"), (b"X", b"a\x01b"), (b"X", b"a\x7fb"), (b"X", b"\x80\xff"),
     (b"X", b"\x0bv"), (b"X ", b"y"), (b" X", b"y"), (b"", b"y"), (b"X\x7f", b"y"),
     (b"Cookie", b"a=b; c=d")]
)  # fmt: skip
SEP = st.sampled_from([b": "] * 6 + [b":", b":\t", b":  ", b" :", b""])
TRAIL = st.sampled_from([b""] * 4 + [b" ", b"\t", b" \t"])


GOOD = {
    "eol": st.just(b"\r\n"),
    "method": st.sampled_from([b"POST", b"GET", b"HEAD", b"OPTIONS"]),
    "target": st.sampled_from([b"/api/poll/c?since=abc-1", b"/", b"/a%2Fb?x=1&y"]),
    "version": st.just(b"HTTP/1.1"),
    "host": st.sampled_from([b"127.0.0.1:8080", b"a", b"[::1]:80"]),
    "hosts": st.just(1),
    "lengths": st.sampled_from([0, 1]),
    "length": st.sampled_from([b"0", b"2", b"002"]),
    "connection": st.just(b"keep-alive"),
    "other": st.sampled_from([(b"Accept", b"*/*"), (b"X-Y", b"a\tb"), (b"X", b"")]),
    "sep": st.sampled_from([b": ", b":", b":\t"]),
}
ANY = {
    "eol": EOL,
    "method": METHOD,
    "target": TARGET,
    "version": VERSION,
    "host": HOST,
    "hosts": st.sampled_from([1] * 10 + [0, 2]),
    "lengths": st.sampled_from([1] * 6 + [0, 0, 2]),
    "length": LENGTH,
    "connection": CONNECTION,
    "other": OTHER,
    "sep": SEP,
}


@st.composite
def request(draw: st.DrawFn) -> bytes:
    """Half the time a simple request with at most one part drawn from anything."""
    clean = draw(st.booleans())
    odd = draw(st.sampled_from([*GOOD, None])) if clean else None

    def part(name: str) -> st.SearchStrategy[object]:
        return GOOD[name] if clean and name != odd else ANY[name]

    eol = part("eol")
    line = draw(part("method")) + b" " + draw(part("target")) + b" " + draw(part("version"))
    line += draw(eol)
    fields = [(b"Host", draw(part("host"))) for _ in range(draw(part("hosts")))]
    length = b"0"
    for _ in range(draw(part("lengths"))):
        length = draw(part("length"))
        fields.append((b"Content-Length", length))
    if draw(st.integers(0, 4)) == 0:
        fields.append((b"Connection", draw(part("connection"))))
    fields += draw(st.lists(part("other"), max_size=3))
    fields = draw(st.permutations(fields))
    lines = [name + draw(part("sep")) + value + draw(TRAIL) for name, value in fields]
    if lines and not clean and draw(st.integers(0, 9)) == 0:
        lines.insert(draw(st.integers(0, len(lines))), b" folded")  # obs-fold
    head = line + b"".join(line + draw(eol) for line in lines) + draw(eol)
    size = (
        int(length) if clean and length.isdigit() and len(length) < 4 else draw(st.integers(0, 4))
    )
    return head + draw(st.binary(min_size=size, max_size=size + 1))


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    # Never an empty piece: b"" is the end of the stream.
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True) if b > a]


@settings(CORE, max_examples=1500)
@given(
    messages=st.lists(request(), min_size=1, max_size=3),
    cuts=st.lists(st.integers(0, 10_000), max_size=6),
    max_head=st.sampled_from([MAX_HEAD] * 6 + [40, 60, 75, 90]),
    ended=st.booleans(),
)
@example(messages=[REPOLL, REPOLL], cuts=[], max_head=MAX_HEAD, ended=False)
@example(messages=[REPOLL], cuts=[], max_head=len(REPOLL) - 1, ended=False)
@example(
    messages=[REPOLL[:-4] + b"\r\nConnection: close\r\n\r\n", REPOLL],
    cuts=[],
    max_head=MAX_HEAD,
    ended=True,
)
def test_reader_reads_what_h11_behind_the_strict_framer_reads_split_anywhere(
    messages: list[bytes], cuts: list[int], max_head: int, ended: bool
) -> None:
    data = b"".join(messages)
    split = pieces(data, cuts)
    assert with_reader(split, max_head, ended) == reference(split, max_head, ended)


@settings(CORE, max_examples=1000)
@given(message=request(), tail=st.sampled_from([b"", REPOLL, b"GET / HTTP/1.1\r\n"]))
def test_whatever_the_fast_path_accepts_h11_reads_the_same(message: bytes, tail: bytes) -> None:
    simple = read_simple(message + tail, MAX_HEAD)
    if simple is None:
        return
    head, body, used = simple
    requests, _ = reference([message + tail], MAX_HEAD, False)
    assert requests[:1] == [(head, body)]
    parser = StrictParser(MAX_HEAD, message + tail)
    while not isinstance(parser.next_event(), h11.EndOfMessage):
        pass
    assert parser.trailing_data[0] == (message + tail)[used:]


# --- what takes the fast path (so that the properties above are not vacuous) ----------------


def test_a_re_poll_and_a_browser_poll_take_the_fast_path() -> None:
    browser = (
        b"GET /api/poll/news?since=x-2 HTTP/1.1\r\nHost: localhost:8080\r\n"
        b"Connection: keep-alive\r\nAccept: */*\r\nOrigin: http://localhost:8080\r\n"
        b"User-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\nCookie: t=abc.def\r\n\r\n"
    )
    publish = b"POST /api/publish/c HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}"
    for data in (REPOLL, browser, publish):
        assert read_simple(data + REPOLL, MAX_HEAD) is not None
    simple = read_simple(REPOLL + REPOLL, MAX_HEAD)
    assert simple is not None
    assert simple[0] == Head(
        b"POST",
        b"/api/poll/c?since=abc-1",
        b"1.1",
        [(b"host", b"127.0.0.1:8080"), (b"content-length", b"0")],
    )
    assert simple[2] == len(REPOLL)


def test_unusual_requests_go_to_h11() -> None:
    base = b"POST /p HTTP/1.1\r\nHost: a\r\n"
    for extra in (
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"Expect: 100-continue\r\nContent-Length: 1\r\n\r\nx",
        b"Connection: close\r\n\r\n",
        b"Content-Length: 5\r\n\r\nab",  # the body has not all arrived
        b"X: caf\xc3\xa9\r\n\r\n",  # obs-text
    ):
        assert read_simple(base + extra, MAX_HEAD) is None
    assert read_simple(b"GET / HTTP/1.0\r\nHost: a\r\n\r\n", MAX_HEAD) is None
    assert read_simple(b"GET /p HTTP/1.1\r\nHost: a\r\n", MAX_HEAD) is None  # incomplete


def test_a_request_split_in_two_reads_is_read_by_h11_and_the_next_one_fast() -> None:
    reader = RequestReader(MAX_HEAD)
    reader.receive_data(REPOLL[:10])
    assert reader.next_event() is Signal.NEED_DATA
    reader.receive_data(REPOLL[10:] + REPOLL)
    assert isinstance(reader.next_event(), Head)
    assert reader.next_event() is Signal.END
    assert reader.next_event() is Signal.PAUSED  # until answered
    assert reader.pending == REPOLL
    reader.start_next_cycle()
    assert isinstance(reader.next_event(), Head)
    assert reader.next_event() is Signal.END
    assert reader.pending == b""
