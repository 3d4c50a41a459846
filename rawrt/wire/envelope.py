"""The JSON messages of rawrt's wire protocol (the reference design's, extended).

Client to server, as WebSocket text frames:

    {"type": "subscribe",   "channel": C, "since": ID?}
    {"type": "unsubscribe", "channel": C}
    {"type": "publish",     "channel": C, "data": ANY, "ref": R?}   R: see `published`
    {"type": "ping"}
    {"type": "auth",        "token": T}                  a token, first or to refresh one

Server to client:

    {"type": "message",    "channel": C, "data": ANY, "timestamp": MS, "id": ID}
    {"type": "subscribed", "channel": C, "id": ID}     ID: the channel's latest message
    {"type": "unsubscribed", "channel": C}
    {"type": "reset",      "channel": C, "id": ID}     the requested position is gone
    {"type": "pong",       "timestamp": MS}
    {"type": "error",      "data": "Invalid message format", "reason": TEXT}
    {"type": "error",      "data": "Unauthorized"|"Forbidden", "reason": TEXT, "channel": C}
    {"type": "authenticated", "sub": S, "exp": SECONDS}   an auth frame was accepted
    {"type": "published",  "channel": C, "id": ID, "ref": R}  the publish that carried `ref`
    {"type": "join"|"leave", "channel": C, "user": S|null, "transport": "ws"|"sse"}
                                                   presence events, with --presence-events

A publish frame may carry a `ref` (a short string or a non-negative integer the client picks):
the server then answers it with `published` and the message's id once it has one, and any error
frame about that publish carries the same `ref`, so a client can await its own publishes over
the socket as it would over HTTP. Without a `ref` a publish is answered only when it fails, as in
the reference design.

Message data is kept as canonical JSON text (compact, no raw control characters), produced
once per publish. Everything that carries it (a WebSocket envelope, an SSE `data:` line, a
long-poll body) splices that text in, so no message is serialised twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from rawrt.errors import BadMessage
from rawrt.wire import names

__all__ = [
    "INVALID_FORMAT",
    "Auth",
    "Ping",
    "Publish",
    "Subscribe",
    "Unsubscribe",
    "authenticated",
    "canonical_json",
    "error",
    "message",
    "parse_client_message",
    "parse_data",
    "poll_body",
    "pong",
    "presence_event",
    "published",
    "reset",
    "subscribed",
    "unsubscribed",
]

INVALID_FORMAT = "Invalid message format"  # the reference's wording; clients may match on it


@dataclass(frozen=True, slots=True)
class Subscribe:
    channel: str
    since: str | None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    channel: str


@dataclass(frozen=True, slots=True)
class Publish:
    channel: str
    data: str  # canonical JSON text
    ref: str | None = None  # the client's `ref`, as JSON text, when it wants an answer


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Auth:
    token: str | None  # None when the frame holds no token string: an invalid auth frame


ClientMessage = Subscribe | Unsubscribe | Publish | Ping | Auth


def _reject_constant(name: str) -> Any:
    # Python reads NaN and Infinity, but they are not JSON and browsers would choke on them.
    raise ValueError(f"{name} is not JSON")


def parse_data(raw: bytes | str) -> Any:
    """A JSON document from a client, or BadMessage."""
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadMessage(f"not JSON: {exc}") from None
    except RecursionError:
        raise BadMessage("JSON nested too deeply") from None


def canonical_json(value: Any) -> str:
    """Compact JSON whose text has no raw CR or LF, so it fits one SSE `data:` line."""
    # allow_nan=False: NaN and Infinity are not JSON (parse_data refuses them too), so a value
    # holding one raises ValueError here instead of reaching clients as text they cannot parse.
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        text.encode()  # a lone surrogate (from a "\\ud800" escape) cannot be UTF-8 ...
    except UnicodeEncodeError:
        text = json.dumps(value, separators=(",", ":"), allow_nan=False)  # ... so keep it escaped
    except RecursionError:
        raise BadMessage("JSON nested too deeply") from None
    return text


def parse_client_message(text: str, max_channel_bytes: int) -> ClientMessage:
    """The command in one client text frame, or BadMessage saying what is wrong."""
    obj = parse_data(text)
    if not isinstance(obj, dict):
        raise BadMessage("a message must be a JSON object")
    kind = obj.get("type")
    if kind == "ping":
        return Ping()
    if kind == "auth":
        token = obj.get("token")
        return Auth(token if isinstance(token, str) and token else None)
    if kind == "publish":
        ref = _ref(obj.get("ref"))
        try:
            return Publish(_channel(obj, max_channel_bytes), canonical_json(obj.get("data")), ref)
        except BadMessage as exc:
            exc.ref = ref  # the refusal answers that publish
            raise
    channel = _channel(obj, max_channel_bytes)
    if kind == "subscribe":
        since = obj.get("since")
        if since is not None and not isinstance(since, str):
            raise BadMessage("'since' must be a string id")
        return Subscribe(channel, since)
    if kind == "unsubscribe":
        return Unsubscribe(channel)
    raise BadMessage(f"unknown type {kind!r}")


def _channel(obj: dict[str, Any], max_bytes: int) -> str:
    channel = obj.get("channel")
    if not isinstance(channel, str) or not channel:
        raise BadMessage("'channel' must be a non-empty string")
    problem = names.channel_problem(channel, max_bytes)
    if problem is not None:
        raise BadMessage(problem)
    return channel


# A ref is echoed back, so it is kept small: a client needs only to tell its publishes apart.
_MAX_REF_CHARS = 64


def _ref(value: Any) -> str | None:
    """The JSON text of a publish's `ref`, or None when it has none."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53:
        return str(value)
    if isinstance(value, str) and len(value) <= _MAX_REF_CHARS:
        return _q(value)
    raise BadMessage(f"'ref' must be a string of at most {_MAX_REF_CHARS} characters or an integer")


def _q(text: str) -> str:
    # canonical_json, not a bare json.dumps: a channel name may hold a lone surrogate (from a
    # "\\ud800" escape in a client's JSON), which must stay escaped to be encodable as UTF-8.
    return canonical_json(text)


def message(channel_json: str, data_json: str, timestamp_ms: int, message_id: str) -> str:
    """The envelope of a published message; `channel_json` is the channel already quoted."""
    return (
        f'{{"type":"message","channel":{channel_json},"data":{data_json},'
        f'"timestamp":{timestamp_ms},"id":"{message_id}"}}'
    )


def subscribed(channel: str, message_id: str) -> str:
    return f'{{"type":"subscribed","channel":{_q(channel)},"id":"{message_id}"}}'


def unsubscribed(channel: str) -> str:
    return f'{{"type":"unsubscribed","channel":{_q(channel)}}}'


def reset(channel: str, message_id: str) -> str:
    return f'{{"type":"reset","channel":{_q(channel)},"id":"{message_id}"}}'


def pong(timestamp_ms: int) -> str:
    return f'{{"type":"pong","timestamp":{timestamp_ms}}}'


def error(
    reason: str, data: str = INVALID_FORMAT, channel: str | None = None, ref: str | None = None
) -> str:
    """An error frame; `ref` (JSON text) names the publish it answers."""
    value = {"type": "error", "data": data, "reason": reason}
    if channel is not None:
        value["channel"] = channel
    text = canonical_json(value)
    return text if ref is None else f'{text[:-1]},"ref":{ref}}}'


def published(channel: str, message_id: str, ref: str) -> str:
    return f'{{"type":"published","channel":{_q(channel)},"id":"{message_id}","ref":{ref}}}'


def authenticated(sub: str, exp: float) -> str:
    exp_json = str(int(exp)) if exp == int(exp) else repr(exp)
    return f'{{"type":"authenticated","sub":{_q(sub)},"exp":{exp_json}}}'


def presence_event(kind: str, channel: str, user: str | None, transport: str) -> str:
    """A join or leave of a channel's subscriber (rawrt.presence_events): not a message, so
    it has no id; `user` is the token's `sub`, or null without a token."""
    user_json = "null" if user is None else _q(user)
    return (
        f'{{"type":"{kind}","channel":{_q(channel)},"user":{user_json},"transport":"{transport}"}}'
    )


def poll_body(data_items: list[bytes], ids: list[str], cursor: str, reset: bool = False) -> bytes:
    """`{"messages":[...],"ids":[...],"cursor":ID}` with each item's JSON spliced in as it is.

    `ids[i]` is the id of `messages[i]`, the one its publish answered, so a client can tell
    each message by it without reading an opaque cursor; clients that know only `messages`
    and `cursor` (the reference design's) ignore it. Ids are rawrt's own short ASCII
    (rawrt.wire.ids), which need no JSON escaping.
    """
    tail = b',"reset":true}' if reset else b"}"
    items = b",".join(data_items)
    quoted = ",".join(f'"{i}"' for i in ids).encode()
    return (
        b'{"messages":[' + items + b'],"ids":[' + quoted + b'],"cursor":"' + cursor.encode() + b'"'
    ) + tail
