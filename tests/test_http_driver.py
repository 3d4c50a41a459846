"""rawrt.connection.HttpConnection fed by hand: the same bytes in any pieces give the same
bytes out, and the limits h11 leaves to its user are enforced.

Most tests have a real `Server` (port 0 on 127.0.0.1) supply routes and the hub; the
connection under test is not one of its sockets but an HttpConnection given a fake transport
that records what is written. The last ones give the driver a fake host instead (the
`HttpHost` protocol of rawrt.edge, in a few lines), with no server and no socket at all.
Everything the driver does here is synchronous, so each feed is finished when
`data_received` returns.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import CORE, QUIET_PATCH_WRITER

from rawrt.config import Config
from rawrt.connection import HttpConnection
from rawrt.counts import Counts
from rawrt.edge import AT_CAPACITY, AnyReply, Exchange, Handler, Reply, Request, Session
from rawrt.errors import HttpError
from rawrt.netpolicy import TrustedProxies
from rawrt.server import Server
from rawrt.wire import http

pytestmark = QUIET_PATCH_WRITER

CHANNEL = "x"


class FakeTransport(asyncio.Transport):
    """Records writes; closing it tells the protocol soon after, as asyncio's transports do."""

    def __init__(self, peer: str = "192.0.2.1") -> None:
        super().__init__()
        self.peer = peer
        self.written = bytearray()
        self.closed = False
        self.protocol: asyncio.BaseProtocol | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "write after close"
        self.written += data

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            protocol = self.protocol
            assert protocol is not None
            asyncio.get_running_loop().call_soon(protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self.closed

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self.protocol is not None
        return self.protocol

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return (self.peer, 40000) if name == "peername" else default


def _pieces(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = [0, *sorted({c for c in cuts if 0 < c < len(data)}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


async def _serve(
    pieces: Iterable[bytes] | None, config: Config, make_input: Any = None
) -> tuple[bytes, bool]:
    """Feed the input to a fresh connection of a fresh server; returns (output, closed).

    `make_input(epoch)` builds the input when it must name the channel's epoch; the epoch is
    replaced by "EPOCH" in the output, so that runs of different servers compare equal.
    """
    server = Server(config)
    await server.start()
    try:
        epoch = server.hub.head_id(CHANNEL).rpartition("-")[0]
        if make_input is not None:
            data, cuts = make_input(epoch)
            pieces = _pieces(data, cuts)
        assert pieces is not None
        transport = FakeTransport()
        conn = HttpConnection(server)
        transport.set_protocol(conn)
        conn.connection_made(transport)
        for piece in pieces:
            if transport.closed:
                break
            conn.data_received(piece)
        closed = transport.closed
        if not closed:
            transport.close()
    finally:
        await server.stop()
    return bytes(transport.written).replace(epoch.encode(), b"EPOCH"), closed


def _request(head: str, body: bytes = b"") -> bytes:
    return head.replace("\n", "\r\n").encode() + b"\r\n" + body


def pipeline(epoch: str) -> bytes:
    """Pipelined requests touching each part of the driver; the last one closes."""
    json_body = b'{"n":1}'
    parts = [b'{"n":', '[2,"é"]}'.encode()]
    chunked = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    return b"".join(
        [
            _request(
                f"POST /api/publish/{CHANNEL} HTTP/1.1\nHost: h\n"
                f"Content-Length: {len(json_body)}\n",
                json_body,
            ),
            _request(
                f"POST /api/publish/{CHANNEL} HTTP/1.1\nHost: h\nTransfer-Encoding: chunked\n",
                chunked,
            ),
            _request("GET /healthz HTTP/1.1\nHost: h\n"),
            _request(f"GET /api/poll/{CHANNEL}?since={epoch}-0 HTTP/1.1\nHost: h\n"),
            _request(f"GET /api/poll/{CHANNEL}?since=nope HTTP/1.1\nHost: h\n"),
            _request("GET /no/such/route HTTP/1.1\nHost: h\n"),
            _request(f"OPTIONS /api/publish/{CHANNEL} HTTP/1.1\nHost: h\n"),
            _request(f"GET /api/publish/{CHANNEL} HTTP/1.1\nHost: h\n"),
            _request(
                f"POST /api/publish/{CHANNEL} HTTP/1.1\nHost: h\nExpect: 100-continue\n"
                "Content-Length: 4\n",
                b"null",
            ),
            _request("GET /healthz HTTP/1.1\nHost: h\nConnection: close\n"),
            _request("GET /healthz HTTP/1.1\nHost: h\n"),  # after the close: never answered
        ]
    )


EXPECTED_STATUSES = [200, 200, 200, 200, 200, 404, 204, 405, 100, 200, 200]


def _statuses(output: bytes) -> list[int]:
    return [int(s) for s in re.findall(rb"HTTP/1\.1 (\d{3}) ", output)]


async def test_pipelined_requests_fed_whole_get_each_answer_in_order() -> None:
    output, closed = await _serve(None, Config(port=0), lambda e: (pipeline(e), []))
    assert _statuses(output) == EXPECTED_STATUSES
    assert closed
    assert b'{"published":true,"id":"EPOCH-1"}' in output
    assert (
        b'{"messages":[{"n":1},{"n":[2,"\xc3\xa9"]}],"ids":["EPOCH-1","EPOCH-2"],"cursor":"EPOCH-2"}'
        in output
    )
    assert b'{"messages":[],"ids":[],"cursor":"EPOCH-2","reset":true}' in output
    assert b'{"published":true,"id":"EPOCH-3"}' in output


async def test_pipelined_requests_fed_byte_by_byte_get_the_same_bytes() -> None:
    whole, _ = await _serve(None, Config(port=0), lambda e: (pipeline(e), []))
    bytewise, closed = await _serve(
        None, Config(port=0), lambda e: (pipeline(e), range(len(pipeline(e))))
    )
    assert bytewise == whole and closed


@pytest.fixture(scope="module")
def whole_output() -> bytes:
    return asyncio.run(_serve(None, Config(port=0), lambda e: (pipeline(e), [])))[0]


@settings(CORE, max_examples=60)
@given(cuts=st.lists(st.integers(0, 1200), max_size=30))
def test_pipelined_requests_cut_anywhere_get_the_same_bytes(
    whole_output: bytes, cuts: list[int]
) -> None:
    output, closed = asyncio.run(_serve(None, Config(port=0), lambda e: (pipeline(e), cuts)))
    assert output == whole_output and closed


# --- limits h11 leaves to its user ------------------------------------------------------------

LIMITS = Config(
    port=0, max_head_bytes=1024, max_header_count=10, max_body_bytes=100, max_target_bytes=200
)


PUBLISH = "POST /api/publish/x HTTP/1.1\nHost: h\n"
REFUSALS = [
    ("head over max_head_bytes", _request(f"GET / HTTP/1.1\nHost: h\nX-Big: {'a' * 1100}\n"), 431),
    ("too many headers", _request("GET / HTTP/1.1\nHost: h\n" + "X-A: 1\n" * 10), 431),
    ("content-length with transfer-encoding",
     _request(PUBLISH + "Content-Length: 5\nTransfer-Encoding: chunked\n", b"0\r\n\r\n"), 400),
    ("declared body over max_body_bytes",
     _request(PUBLISH + "Content-Length: 101\n", b"1" * 101), 413),
    ("chunked body over max_body_bytes",
     _request(PUBLISH + "Transfer-Encoding: chunked\n",
              b"40\r\n" + b"1" * 64 + b"\r\n40\r\n" + b"1" * 64 + b"\r\n0\r\n\r\n"), 413),
    ("target over max_target_bytes", _request(f"GET /{'t' * 200} HTTP/1.1\nHost: h\n"), 414),
    ("not http at all", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
]  # fmt: skip

# h11 checks max_incomplete_event_size only while a head is incomplete (h11 issue #182).
WHOLE_HEAD_DETAILS = {
    "head over max_head_bytes": b"request head is larger than 1024 bytes",
    "too many headers": b"more than 10 header fields",
    "content-length with transfer-encoding": b"Content-Length together with Transfer-Encoding",
}


@pytest.mark.parametrize(("case", "data", "status"), REFUSALS, ids=[c[0] for c in REFUSALS])
async def test_request_past_a_limit_arriving_whole_is_refused_and_closed(
    case: str, data: bytes, status: int
) -> None:
    after = _request("GET /healthz HTTP/1.1\nHost: h\n")
    output, closed = await _serve([data + after], LIMITS)
    assert _statuses(output) == [status], output
    assert b"Connection: close\r\n" in output
    assert closed  # and the pipelined request after it is never read
    if case in WHOLE_HEAD_DETAILS:  # h11 lets these through whole: rawrt's own check answers
        assert WHOLE_HEAD_DETAILS[case] in output


@pytest.mark.parametrize(("case", "data", "status"), REFUSALS, ids=[c[0] for c in REFUSALS])
async def test_request_past_a_limit_fed_byte_by_byte_gets_the_same_status(
    case: str, data: bytes, status: int
) -> None:
    output, closed = await _serve([data[i : i + 1] for i in range(len(data))], LIMITS)
    assert _statuses(output) == [status], output
    assert closed


async def test_request_within_every_limit_is_served() -> None:
    body = b'"' + b"b" * 98 + b'"'
    data = _request(
        f"POST /api/publish/{'c' * 180} HTTP/1.1\nHost: h\n" + "X-A: 1\n" * 8
        + f"Content-Length: {len(body)}\n", body)  # fmt: skip
    output, closed = await _serve([data], LIMITS)
    assert _statuses(output) == [200] and not closed


async def test_response_to_head_has_no_body_so_the_next_response_follows_its_head() -> None:
    data = _request("HEAD /healthz HTTP/1.1\nHost: h\n") + _request(
        "GET /healthz HTTP/1.1\nHost: h\n"
    )
    output, _ = await _serve([data], Config(port=0))
    first_head, _, rest = output.partition(b"\r\n\r\n")
    assert first_head.startswith(b"HTTP/1.1 ")
    assert rest.startswith(b"HTTP/1.1 200 ")  # RFC 9112 §6.3: a HEAD response has no content


# --- the driver alone: a fake host, no server, no listening socket -----------------------------


class FakeHost:
    """An HttpHost (rawrt.edge): one handler for every path, and the registry as a set."""

    def __init__(self, handler: Handler, *, full: bool = False, shed_room: int = 0) -> None:
        self.config = Config(port=0)
        self.stopping = False
        self.router = self  # resolve() below
        self.handler, self.full = handler, full
        self.open: set[Session] = set()
        self.paths: list[list[str]] = []
        self.trusted_proxies = TrustedProxies()
        self.claims: list[str] = []  # what reclaim() was asked to count, in order
        self.full_clients: set[str] = set()  # reclaim() refuses these
        self.counts = Counts()
        self.shed_room = shed_room  # connections shed() may hold past the cap
        self.shed_heads: list[list[str]] = []  # what at_capacity() was asked to answer

    def resolve(self, request: Request) -> tuple[Handler, str]:
        self.paths.append(request.path)
        return self.handler, request.path[-1]

    def cors_for(self, headers: list[tuple[bytes, bytes]]) -> tuple[tuple[str, str], ...]:
        return (("Access-Control-Allow-Origin", "*"),)

    def at_capacity(self, request: Request) -> bytes:
        self.shed_heads.append(request.path)
        return http.error_response(503, AT_CAPACITY)

    def shed(self, conn: Session) -> bool:
        if self.shed_room <= 0:
            return False
        self.shed_room -= 1
        self.open.add(conn)
        return True

    def admit(self, conn: Session) -> bool:
        if not self.full:
            self.open.add(conn)
        return not self.full

    def reclaim(self, conn: Session, client: str) -> bool:
        self.claims.append(client)
        return client not in self.full_clients

    def register(self, conn: Session) -> None:
        self.open.add(conn)

    def forget(self, conn: Session) -> None:
        self.open.discard(conn)


def _echo_path(request: Request, conn: Exchange, channel: str) -> AnyReply:
    return http.response(200, channel.encode(), keep_alive=request.keep_alive)


def _driven(
    host: FakeHost, data: bytes, peer: str = "192.0.2.1"
) -> tuple[HttpConnection, FakeTransport]:
    transport = FakeTransport(peer)
    conn = HttpConnection(host)
    transport.set_protocol(conn)
    conn.connection_made(transport)
    conn.data_received(data)
    return conn, transport


async def _until(condition: Callable[[], bool]) -> None:
    """Let callbacks run (closing tells the protocol on the next iteration), bounded."""
    for _ in range(100):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not met within 100 loop iterations")


async def test_driver_answers_pipelined_requests_of_a_fake_host_in_order() -> None:
    host = FakeHost(_echo_path)
    data = _request("GET /a HTTP/1.1\nHost: h\n") + _request("HEAD /bb HTTP/1.1\nHost: h\n")
    data += _request("GET /c HTTP/1.1\nHost: h\nConnection: close\n")
    _, transport = _driven(host, data)
    assert host.paths == [["a"], ["bb"], ["c"]]
    out = bytes(transport.written)
    assert _statuses(out) == [200, 200, 200]
    # The HEAD answer is the GET answer's head: Content-Length 2, and no body before the next.
    assert b"Content-Length: 2\r\n\r\nHTTP/1.1 200" in out and out.endswith(b"\r\n\r\nc")
    assert b"Connection: close" in out.rpartition(b"HTTP/1.1")[2] and transport.closed
    await _until(lambda: not host.open)


async def test_driver_refuses_with_503_when_the_host_does_not_admit_it() -> None:
    host = FakeHost(_echo_path, full=True)
    _, transport = _driven(host, _request("GET /a HTTP/1.1\nHost: h\n"))
    assert _statuses(bytes(transport.written)) == [503] and transport.closed
    assert host.paths == [] and not host.open


async def test_driver_past_the_cap_reads_the_head_and_lets_the_router_answer_it() -> None:
    host = FakeHost(_echo_path, full=True, shed_room=1)
    conn, transport = _driven(host, b"POST /a/b HTTP/1.1\r\nHost: h\r\nContent-Length: 9")
    assert transport.written == bytearray() and conn in host.open  # the head is not complete
    conn.data_received(b"\r\n\r\n{}")  # its body is never waited for
    assert host.shed_heads == [["a", "b"]] and host.paths == []
    assert _statuses(bytes(transport.written)) == [503] and transport.closed
    await _until(lambda: not host.open)


def _client_path(request: Request, conn: Exchange, channel: str) -> AnyReply:
    return http.response(200, request.client.encode(), keep_alive=request.keep_alive)


async def test_driver_counts_each_proxied_request_for_the_client_it_forwards() -> None:
    host = FakeHost(_client_path)
    host.trusted_proxies = TrustedProxies.parse("10.0.0.0/8")
    host.full_clients = {"198.51.100.3"}
    data = b"".join(
        _request(f"GET /{n} HTTP/1.1\nHost: h\nX-Forwarded-For: 6.6.6.6, 198.51.100.{n}\n")
        for n in (1, 2, 3)
    )
    _, transport = _driven(host, data, peer="10.0.0.2")
    out = bytes(transport.written)
    # Counted for its client from the head to the answer, for nobody between requests, and
    # refused with the cap's 503 when that client holds all it may.
    assert host.claims == ["198.51.100.1", "", "198.51.100.2", "", "198.51.100.3"]
    assert _statuses(out) == [200, 200, 503] and transport.closed
    assert out.count(b"\r\n\r\n198.51.100.") == 2 and b"6.6.6.6" not in out
    assert b"server is at its connection limit" in out.rpartition(b"HTTP/1.1")[2]


async def test_driver_takes_a_direct_peer_as_the_client_whatever_it_claims() -> None:
    host = FakeHost(_client_path)
    host.trusted_proxies = TrustedProxies.parse("10.0.0.0/8")
    request = _request("GET /a HTTP/1.1\nHost: h\nX-Forwarded-For: 198.51.100.1\n")
    conn, transport = _driven(host, request, peer="203.0.113.5")
    assert conn.client == "203.0.113.5" and host.claims == []
    assert bytes(transport.written).endswith(b"\r\n\r\n203.0.113.5")


async def test_driver_answers_a_handler_error_with_the_hosts_cors_headers_and_goes_on() -> None:
    def refuse(request: Request, conn: Exchange, channel: str) -> AnyReply:
        if channel == "bad":
            raise HttpError(409, "no")
        return _echo_path(request, conn, channel)

    host = FakeHost(refuse)
    data = _request("GET /bad HTTP/1.1\nHost: h\n") + _request("GET /ok HTTP/1.1\nHost: h\n")
    conn, transport = _driven(host, data)
    out = bytes(transport.written)
    assert _statuses(out) == [409, 200] and not transport.closed
    assert b"Access-Control-Allow-Origin: *" in out.split(b"HTTP/1.1 200")[0]
    assert b'{"error":"no","status":409}' in out and conn in host.open
    transport.close()
    await _until(lambda: not host.open)


async def test_driver_hands_the_socket_and_the_bytes_behind_the_request_to_a_taker() -> None:
    taken: list[tuple[asyncio.Transport, bytes]] = []

    def take(request: Request, conn: Exchange, channel: str) -> AnyReply:
        taken.append(conn.take_over())
        return None

    host = FakeHost(take)
    conn, transport = _driven(host, _request("GET /ws HTTP/1.1\nHost: h\n") + b"\x81\x00")
    assert taken == [(transport, b"\x81\x00")]
    assert transport.written == b"" and not transport.closed and conn not in host.open
    conn.data_received(b"GET /x HTTP/1.1\r\n\r\n")  # no longer its socket: ignored
    assert host.paths == [["ws"]]


async def test_driver_holds_a_pipelined_request_until_a_late_answer_is_written() -> None:
    late: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()

    def answer(request: Request, conn: Exchange, channel: str) -> AnyReply:
        return late if channel == "slow" else _echo_path(request, conn, channel)

    host = FakeHost(answer)
    data = _request("GET /slow HTTP/1.1\nHost: h\n") + _request("GET /fast HTTP/1.1\nHost: h\n")
    _, transport = _driven(host, data)
    assert transport.written == b"" and host.paths == [["slow"]]
    late.set_result(http.response(200, b"late"))
    await _until(lambda: transport.written.endswith(b"fast"))
    assert _statuses(bytes(transport.written)) == [200, 200]
    assert bytes(transport.written).index(b"late") < bytes(transport.written).index(b"fast")
    transport.close()


async def test_driver_of_a_stopping_host_closes_after_its_answer() -> None:
    host = FakeHost(_echo_path)
    host.stopping = True
    _, transport = _driven(host, _request("GET /a HTTP/1.1\nHost: h\n"))
    assert _statuses(bytes(transport.written)) == [200] and transport.closed
    assert b"Connection: close" in transport.written
    await _until(lambda: not host.open)
