"""HTTP/1.1 response bytes and request-target parsing (RFC 9110, RFC 9112).

h11 parses every request rawrt receives. Responses are built here instead of through h11's
send path because rawrt's connections change hands: a parked long poll or an open event
stream keeps no parser state at all (h11's costs about a kilobyte a connection), and the same
response bytes are shared by every poller a message wakes. The rules that h11 would otherwise
apply are few and written out below: a Content-Length on every finite body, `Connection:
close` when the connection will not be reused, and no body for 1xx, 204 and 304.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from urllib.parse import parse_qsl, unquote

from rawrt.errors import HttpError

__all__ = [
    "CONTINUE",
    "Headers",
    "error_response",
    "json_response",
    "response",
    "split_target",
]

Headers = Iterable[tuple[str, str]]

REASONS = {
    101: "Switching Protocols",
    200: "OK",
    204: "No Content",
    304: "Not Modified",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    415: "Unsupported Media Type",
    426: "Upgrade Required",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}

# RFC 9110 §10.1.1: sent before reading a body the client holds back for it.
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def response(
    status: int,
    body: bytes = b"",
    *,
    content_type: str | None = "application/json",
    headers: Headers = (),
    keep_alive: bool = True,
) -> bytes:
    """A whole response: status line, headers, Content-Length and body."""
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}", "Server: rawrt"]
    if content_type is not None and body:
        lines.append(f"Content-Type: {content_type}")
    lines.extend(f"{name}: {value}" for name, value in headers)
    if status >= 200 and status not in (204, 304):
        lines.append(f"Content-Length: {len(body)}")
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def json_response(
    status: int, value: object, *, headers: Headers = (), keep_alive: bool = True
) -> bytes:
    body = json.dumps(value, separators=(",", ":")).encode()
    return response(status, body, headers=headers, keep_alive=keep_alive)


def error_response(
    status: int, detail: str, *, headers: Headers = (), keep_alive: bool = False
) -> bytes:
    """The JSON error every refused request gets: `{"error": detail, "status": status}`."""
    return json_response(
        status, {"error": detail, "status": status}, headers=headers, keep_alive=keep_alive
    )


def split_target(target: bytes) -> tuple[list[str], dict[str, str]]:
    """(percent-decoded path segments, query parameters) of an origin-form request target.

    `/api/poll/a%2Fb?since=x` gives `(["api", "poll", "a/b"], {"since": "x"})`: segments are
    decoded one by one, so an encoded '/' stays inside a channel name.
    """
    text = target.decode("ascii", "replace")
    if text.startswith("/") and "%" not in text and "+" not in text:
        return _split_plain(text)  # nothing to decode: the common case, a re-poll's target
    return _split_decoding(_origin_form(text))


def _split_decoding(text: str) -> tuple[list[str], dict[str, str]]:
    path, _, query = text.partition("?")
    if not path.startswith("/"):
        raise HttpError(400, "request target must be a path")
    try:
        params = dict(parse_qsl(query, keep_blank_values=True, errors="strict"))
        segments = [unquote(s, errors="strict") for s in path[1:].split("/")]
    except UnicodeDecodeError:
        raise HttpError(400, "request target is not valid UTF-8") from None
    return segments, params


def _split_plain(text: str) -> tuple[list[str], dict[str, str]]:
    """`split_target` of an origin-form target without '%' or '+': what parse_qsl with
    keep_blank_values and unquote give, without their per-item calls (empty items skipped,
    a missing '=' an empty value, a later name winning)."""
    path, _, query = text.partition("?")
    params = {}
    for item in query.split("&"):
        if item:
            name, _, value = item.partition("=")
            params[name] = value
    return path[1:].split("/"), params


def _origin_form(text: str) -> str:
    """The path and query of an absolute-form target (`http://host/path?query`).

    RFC 9112 §3.2.2: "A server MUST accept the absolute-form in requests". It used to get
    400 here. An empty path is "/"; any other target comes back unchanged.
    """
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return text
    ends = [i for i in (rest.find("/"), rest.find("?")) if i >= 0]
    tail = rest[min(ends) :] if ends else ""
    return tail if tail.startswith("/") else "/" + tail
