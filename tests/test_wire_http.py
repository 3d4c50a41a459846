"""rawrt.wire.http: request targets split safely; response bytes parse with h11's client."""

from __future__ import annotations

from urllib.parse import quote, urlencode

import h11
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from support import CORE, QUIET_PATCH_WRITER

from rawrt.errors import HttpError
from rawrt.wire import http

pytestmark = QUIET_PATCH_WRITER


def test_encoded_slash_stays_inside_a_segment() -> None:
    assert http.split_target(b"/api/poll/a%2Fb?since=x") == (["api", "poll", "a/b"], {"since": "x"})


def test_split_target_decodes_utf8_segments_and_blank_parameters() -> None:
    target = b"/api/sse/subscribe/caf%C3%A9?lastEventId=&timeout=5"
    assert http.split_target(target) == (
        ["api", "sse", "subscribe", "café"],
        {"lastEventId": "", "timeout": "5"},
    )


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"http://example.com/api/poll/a%2Fb?since=x", (["api", "poll", "a/b"], {"since": "x"})),
        (b"HTTPS://h:8000/healthz", (["healthz"], {})),
        (b"http://h", ([""], {})),
        (b"http://h?x=1", ([""], {"x": "1"})),
        (b"/a://b", (["a:", "", "b"], {})),
    ],
)
def test_absolute_form_target_is_read_as_its_path_and_query(
    target: bytes, expected: tuple[list[str], dict[str, str]]
) -> None:
    # RFC 9112 §3.2.2: "A server MUST accept the absolute-form in requests".
    assert http.split_target(target) == expected


@pytest.mark.parametrize("target", [b"", b"*", b"api/x", b"/a/%ff", b"/a?x=%c3", b"/a/%C3%28"])
def test_split_target_refuses_with_400(target: bytes) -> None:
    with pytest.raises(HttpError) as caught:
        http.split_target(target)
    assert caught.value.status == 400


@CORE
@given(
    target=st.binary(max_size=60)
    | st.binary(max_size=60).map(lambda b: b"/" + b)
    | st.binary(max_size=60).map(lambda b: b"http://" + b)
)
def test_split_target_answers_or_raises_http_error_on_any_bytes(target: bytes) -> None:
    try:
        segments, _ = http.split_target(target)
    except HttpError as exc:
        assert exc.status == 400
        return
    if target.startswith(b"/"):
        assert len(segments) == target.split(b"?")[0].count(b"/")
    else:
        assert target.lower().startswith((b"http://", b"https://"))


no_surrogates = st.text(st.characters(exclude_categories=("Cs",)))


@CORE
@given(
    segments=st.lists(no_surrogates, min_size=1, max_size=5),
    params=st.dictionaries(no_surrogates, no_surrogates, max_size=4),
)
def test_percent_encoded_segments_and_query_round_trip(
    segments: list[str], params: dict[str, str]
) -> None:
    target = "/" + "/".join(quote(s, safe="") for s in segments)
    if params:
        target += "?" + urlencode(params)
    assert http.split_target(target.encode("ascii")) == (segments, params)


def _parse_response(data: bytes, method: bytes = b"GET") -> tuple[h11.Response, bytes]:
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(data)
    response = client.next_event()
    assert isinstance(response, h11.Response)
    body = b""
    while True:
        event = client.next_event()
        if isinstance(event, h11.EndOfMessage):
            break
        assert isinstance(event, h11.Data), event
        body += event.data
    return response, body


@CORE
@given(
    status=st.sampled_from([200, 204, 400, 404, 405, 413, 414, 426, 431, 503, 299]),
    body=st.binary(max_size=200),
    keep_alive=st.booleans(),
    headers=st.lists(st.tuples(st.sampled_from(["X-A", "Allow"]), st.text("abc ,"))),
)
def test_response_bytes_parse_with_h11_as_they_were_built(
    status: int, body: bytes, keep_alive: bool, headers: list[tuple[str, str]]
) -> None:
    if status == 204:
        body = b""
    data = http.response(status, body, headers=headers, keep_alive=keep_alive)
    response, received = _parse_response(data)
    assert response.status_code == status
    assert received == body
    names = [k for k, _ in response.headers]
    if keep_alive:
        assert b"connection" not in names
    else:
        assert (b"connection", b"close") in response.headers
    assert (b"content-length" in names) is (status != 204)
    assert (b"content-type" in names) is bool(body)


def test_error_response_is_json_and_closes_by_default() -> None:
    data = http.error_response(431, "too many headers", headers=[("X-Why", "limit")])
    response, body = _parse_response(data)
    assert response.status_code == 431
    assert (b"connection", b"close") in response.headers
    assert (b"x-why", b"limit") in response.headers
    assert body == b'{"error":"too many headers","status":431}'


def test_continue_is_an_interim_response() -> None:
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="POST", target="/", headers=[("Host", "x"),
                ("Expect", "100-continue"), ("Content-Length", "1")]))  # fmt: skip
    client.receive_data(http.CONTINUE)
    assert isinstance(client.next_event(), h11.InformationalResponse)


@CORE
@given(st.text("/?&=ab:é\x7f#;", max_size=40).map(lambda t: "/" + t))
@example("/api/poll/c?since=x-1&since=x-2&&timeout=&flag")
@example("/a?b=c=d")
def test_a_target_with_nothing_to_decode_splits_as_the_decoding_path_splits_it(
    text: str,
) -> None:
    target = text.encode("utf-8")
    decoded = target.decode("ascii", "replace")
    assert http.split_target(target) == http._split_decoding(decoded)
