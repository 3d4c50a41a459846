"""Access control over real sockets: publish keys, tokens, origins and CORS on every transport.

Each test runs a server with access options set, and a control subscriber on each transport
(a WebSocket, an SSE stream and a long poller, each holding a valid token) that watches one
channel throughout: after whatever the offender did, every control must get the next message
and nothing else, in order. The offender alone is affected.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from support.clients import (
    HOST,
    PollClient,
    Response,
    SseClient,
    event_json,
    request,
    ws_connect,
    ws_recv,
    ws_subscribe,
)
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

import rawrt
from rawrt.cli import parse_config

Stack = contextlib.AsyncExitStack
StartServer = Callable[..., Awaitable[rawrt.Server]]
WORKTREE = str(Path(rawrt.__file__).resolve().parent.parent)

SECRET = "integration-secret-0123456789abcdefgh"
KEY = "integration-publish-key-0123"
APP = "https://app.example.test"
FOREIGN = "https://evil.example.net"
WATCH = "chat:watch"
# Tokens on, a publish key, one allowed origin family, a public namespace; a fast sweep so
# that expiries are seen within a fraction of a second.
LOCKED: dict[str, Any] = {
    "jwt_secret": SECRET,
    "publish_key": KEY,
    "allowed_origins": f"{APP},https://*.example.test",
    "public_channels": "public:*",
    "sse_heartbeat_s": 0.4,
}


def token(
    sub: str = "alice",
    *,
    channels: tuple[str, ...] = ("chat:*",),
    publish: tuple[str, ...] = ("chat:*",),
    ttl_s: float = 600.0,
    secret: str = SECRET,
    **claims: Any,
) -> str:
    now = time.time()
    body = {"sub": sub, "iat": int(now), "exp": now + ttl_s, **claims}
    body.update(channels=list(channels), publish=list(publish))
    return jwt.encode(body, secret, algorithm="HS256")


def bearer(value: str) -> tuple[str, str]:
    return ("Authorization", f"Bearer {value}")


class Controls:
    """A WebSocket, an SSE stream and a long poller on WATCH, each with a valid token."""

    def __init__(self, server: rawrt.Server, ws: ClientConnection, sse: SseClient) -> None:
        self.server, self.ws, self.sse = server, ws, sse
        self.poll = PollClient(server.port, WATCH, headers=[bearer(token("poller"))])
        self.sent = 0

    async def check(self) -> None:
        """Publish the next message: every control gets it, and nothing else, next."""
        if self.poll.cursor is None:
            await self.poll.start_at_head()
        self.sent += 1
        message_id = await self.server.publish(WATCH, {"n": self.sent})
        frame = await ws_recv(self.ws)
        assert (frame["type"], frame["data"], frame["id"]) == (
            "message",
            {"n": self.sent},
            message_id,
        )
        event = await self.sse.next_event()
        assert event is not None
        assert (event_json(event), event.last_event_id) == ({"n": self.sent}, message_id)
        assert await self.poll.collect(1) == [{"n": self.sent}]
        assert self.poll.cursor == message_id


async def _controls(server: rawrt.Server, stack: Stack) -> Controls:
    ws = await stack.enter_async_context(ws_connect(server.port, f"/ws?token={token('ws')}"))
    await ws_subscribe(ws, WATCH)
    sse = await stack.enter_async_context(
        SseClient(server.port, f"/api/sse/subscribe/{WATCH}", [bearer(token("sse"))])
    )
    assert sse.status == 200
    assert event_json(await _next(sse))["type"] == "connected"
    controls = Controls(server, ws, sse)
    stack.push_async_callback(controls.poll.close)
    await controls.check()
    return controls


async def _next(sse: SseClient) -> Any:
    event = await sse.next_event()
    assert event is not None
    return event


@pytest.fixture
async def locked(start_server: StartServer) -> rawrt.Server:
    return await start_server(**LOCKED)


@pytest.fixture
async def controls(locked: rawrt.Server, stack: Stack) -> Controls:
    return await _controls(locked, stack)


def _assert_401(response: Response, *, invalid_token: bool) -> None:
    assert response.status == 401, (response.status, response.body)
    challenge = 'Bearer error="invalid_token"' if invalid_token else "Bearer"
    assert response.headers["www-authenticate"] == challenge
    assert response.json()["status"] == 401


def _assert_403(response: Response, channel: str) -> None:
    assert response.status == 403, (response.status, response.body)
    assert channel in response.json()["error"]


async def _publish(
    port: int, channel: str, *headers: tuple[str, str], target: str = ""
) -> Response:
    path = target or f"/api/publish/{channel}"
    return await request(
        port, "POST", path, '{"from":"offender"}', [("Content-Type", "application/json"), *headers]
    )


# --- §1 publishers: the API key --------------------------------------------------------------


async def test_http_publish_without_or_with_a_wrong_key_is_401_and_publishes_nothing(
    locked: rawrt.Server, controls: Controls
) -> None:
    for route in ("/api/broadcast/", "/api/publish/", "/api/sse/publish/"):
        _assert_401(await _publish(locked.port, WATCH, target=route + WATCH), invalid_token=False)
        wrong = await _publish(locked.port, WATCH, ("X-API-Key", KEY + "x"), target=route + WATCH)
        _assert_401(wrong, invalid_token=True)
    await controls.check()  # nothing reached them but the next real message


@pytest.mark.parametrize("header", [bearer(KEY), ("X-API-Key", KEY)], ids=["bearer", "x-api-key"])
async def test_http_publish_with_the_key_reaches_every_transport(
    locked: rawrt.Server, controls: Controls, header: tuple[str, str]
) -> None:
    response = await _publish(locked.port, WATCH, header)
    assert response.status == 200 and response.json()["published"] is True
    frame = await ws_recv(controls.ws)
    assert frame["data"] == {"from": "offender"}
    assert event_json(await _next(controls.sse)) == {"from": "offender"}
    assert await controls.poll.collect(1) == [{"from": "offender"}]
    await controls.check()


async def test_rotated_keys_both_publish(start_server: StartServer) -> None:
    server = await start_server(publish_key=f"{KEY},{KEY}-next")
    for key in (KEY, f"{KEY}-next"):
        assert (await _publish(server.port, "news", ("X-API-Key", key))).status == 200
    _assert_401(await _publish(server.port, "news"), invalid_token=False)
    # a key alone guards publishing, not reading
    async with SseClient(server.port, "/api/sse/subscribe/news") as sse:
        assert sse.status == 200


# --- §2 tokens: HTTP publish -----------------------------------------------------------------


async def test_http_publish_with_a_token_needs_its_publish_patterns(
    locked: rawrt.Server, controls: Controls
) -> None:
    narrow = token(publish=("chat:other",))
    _assert_403(await _publish(locked.port, WATCH, bearer(narrow)), WATCH)
    expired = token(ttl_s=-120)
    _assert_401(await _publish(locked.port, WATCH, bearer(expired)), invalid_token=True)
    forged = token(secret="some-other-secret-0123456789abcdefgh")
    _assert_401(await _publish(locked.port, WATCH, bearer(forged)), invalid_token=True)
    await controls.check()
    good = await _publish(locked.port, WATCH, bearer(token()))
    assert good.status == 200
    assert (await ws_recv(controls.ws))["data"] == {"from": "offender"}


async def test_cookie_token_counts_from_an_allowed_page_and_not_from_a_foreign_one(
    locked: rawrt.Server, controls: Controls
) -> None:
    cookie = ("Cookie", f"theme=dark; rawrt_token={token()}")
    foreign = await _publish(locked.port, WATCH, cookie, ("Origin", FOREIGN))
    _assert_401(foreign, invalid_token=False)  # the cookie of a cross-site request is ignored
    assert "access-control-allow-origin" not in foreign.headers
    await controls.check()
    allowed = await _publish(locked.port, WATCH, cookie, ("Origin", APP))
    assert allowed.status == 200
    assert allowed.headers["access-control-allow-origin"] == APP
    assert (await ws_recv(controls.ws))["data"] == {"from": "offender"}


# --- §2 tokens: subscribing over SSE and long polling ----------------------------------------


async def test_sse_subscribe_needs_a_token_that_covers_the_channel(
    locked: rawrt.Server, controls: Controls
) -> None:
    target = "/api/sse/subscribe/chat:room"
    _assert_401(await request(locked.port, "GET", target), invalid_token=False)
    _assert_401(
        await request(locked.port, "GET", target, headers=[bearer(token(ttl_s=-100))]),
        invalid_token=True,
    )
    _assert_403(
        await request(locked.port, "GET", target, headers=[bearer(token(channels=("news",)))]),
        "chat:room",
    )
    await controls.check()
    for how in ("query", "cookie"):
        credential = token(how)
        headers = [("Cookie", f"rawrt_token={credential}")] if how == "cookie" else []
        path = f"{target}?token={credential}" if how == "query" else target
        async with SseClient(locked.port, path, headers) as sse:
            assert sse.status == 200
            assert event_json(await _next(sse))["type"] == "connected"
            await locked.publish("chat:room", {"to": how})
            assert event_json(await _next(sse)) == {"to": how}
    await controls.check()


async def test_long_poll_needs_a_token_that_covers_the_channel(
    locked: rawrt.Server, controls: Controls
) -> None:
    target = "/api/poll/chat:room?timeout=0"
    _assert_401(await request(locked.port, "GET", target), invalid_token=False)
    _assert_401(
        await request(locked.port, "POST", target, headers=[bearer("junk")]), invalid_token=True
    )
    _assert_403(
        await request(locked.port, "GET", target, headers=[bearer(token(channels=("news",)))]),
        "chat:room",
    )
    await controls.check()
    poller = PollClient(locked.port, "chat:room", headers=[bearer(token())])
    async with poller:
        await poller.start_at_head()
        await locked.publish("chat:room", {"polled": True})
        assert await poller.collect(1) == [{"polled": True}]
    await controls.check()


async def test_public_channels_are_readable_without_a_token(
    locked: rawrt.Server, controls: Controls, stack: Stack
) -> None:
    sse = await stack.enter_async_context(SseClient(locked.port, "/api/sse/subscribe/public:news"))
    assert sse.status == 200
    poll = await request(locked.port, "GET", "/api/poll/public:news?timeout=0")
    assert poll.status == 200
    ws = await stack.enter_async_context(ws_connect(locked.port))
    await ws_subscribe(ws, "public:news")
    # ... but not writable without one
    _assert_401(await _publish(locked.port, "public:news"), invalid_token=False)
    await ws.send(json.dumps({"type": "publish", "channel": "public:news", "data": 1}))
    error = await ws_recv(ws)
    assert (error["type"], error["data"], error["channel"]) == (
        "error",
        "Unauthorized",
        "public:news",
    )
    await controls.check()


# --- §2 tokens: WebSocket --------------------------------------------------------------------


async def test_websocket_forbidden_subscribe_and_publish_get_error_frames_and_stay_open(
    locked: rawrt.Server, controls: Controls, stack: Stack
) -> None:
    credential = token(channels=("chat:mine",), publish=("chat:mine",))
    ws = await stack.enter_async_context(ws_connect(locked.port, f"/ws?token={credential}"))
    await ws.send(json.dumps({"type": "subscribe", "channel": WATCH}))
    refused = await ws_recv(ws)
    assert (refused["type"], refused["data"], refused["channel"]) == ("error", "Forbidden", WATCH)
    await ws.send(json.dumps({"type": "publish", "channel": WATCH, "data": "sneaky"}))
    refused = await ws_recv(ws)
    assert (refused["data"], refused["channel"]) == ("Forbidden", WATCH)
    await controls.check()  # "sneaky" was never published
    await ws_subscribe(ws, "chat:mine")  # the socket is still open and serving
    await ws.send(json.dumps({"type": "publish", "channel": "chat:mine", "data": "mine"}))
    assert (await ws_recv(ws))["data"] == "mine"


async def test_websocket_without_a_token_may_only_read_public_channels(
    locked: rawrt.Server, controls: Controls, stack: Stack
) -> None:
    ws = await stack.enter_async_context(ws_connect(locked.port))
    await ws.send(json.dumps({"type": "subscribe", "channel": WATCH}))
    refused = await ws_recv(ws)
    assert (refused["data"], refused["channel"]) == ("Unauthorized", WATCH)
    await ws_subscribe(ws, "public:lobby")
    await controls.check()


async def test_websocket_auth_frame_grants_and_then_refreshes(
    locked: rawrt.Server, controls: Controls, stack: Stack
) -> None:
    ws = await stack.enter_async_context(ws_connect(locked.port))
    await ws.send(json.dumps({"type": "auth", "token": token("frank", channels=("chat:*",))}))
    answer = await ws_recv(ws)
    assert (answer["type"], answer["sub"]) == ("authenticated", "frank")
    await ws_subscribe(ws, "chat:a")
    await ws_subscribe(ws, "chat:b")
    # a narrower refresh drops what it no longer covers, naming the channel
    await ws.send(json.dumps({"type": "auth", "token": token("frank", channels=("chat:a",))}))
    frames = [await ws_recv(ws), await ws_recv(ws)]
    assert {"type": "unsubscribed", "channel": "chat:b"} in frames
    assert any(f["type"] == "authenticated" for f in frames)
    await locked.publish("chat:b", "gone")
    await locked.publish("chat:a", "kept")
    assert (await ws_recv(ws))["data"] == "kept"
    await controls.check()


async def _closed_with(ws: ClientConnection, timeout_s: float = 5.0) -> int | None:
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(timeout_s):
            while True:
                await ws.recv()
    assert closed.value.rcvd is not None, "the server sent no close frame"
    return closed.value.rcvd.code


async def test_websocket_invalid_auth_frame_closes_with_4401(
    locked: rawrt.Server, controls: Controls
) -> None:
    async with ws_connect(locked.port) as ws:
        await ws.send(json.dumps({"type": "auth", "token": "not-a-token"}))
        assert await _closed_with(ws) == 4401
    async with ws_connect(locked.port) as ws:
        await ws.send(json.dumps({"type": "auth", "token": 42}))
        assert await _closed_with(ws) == 4401
    await controls.check()


async def test_websocket_upgrade_with_an_invalid_token_closes_with_4401(
    locked: rawrt.Server, controls: Controls
) -> None:
    async with ws_connect(locked.port, f"/ws?token={token(ttl_s=-100)}") as ws:
        assert await _closed_with(ws) == 4401
    await controls.check()


async def test_websocket_whose_token_expires_is_closed_4401_unless_refreshed(
    start_server: StartServer, stack: Stack
) -> None:
    server = await start_server(**LOCKED, jwt_leeway_s=0)
    controls = await _controls(server, stack)
    short = token("shortlived", ttl_s=2.0)  # long enough to refresh one socket in time
    lapsing = await stack.enter_async_context(ws_connect(server.port, f"/ws?token={short}"))
    refreshed = await stack.enter_async_context(ws_connect(server.port, f"/ws?token={short}"))
    for ws in (lapsing, refreshed):
        await ws_subscribe(ws, "chat:x")
    await refreshed.send(json.dumps({"type": "auth", "token": token("shortlived")}))
    assert (await ws_recv(refreshed))["type"] == "authenticated"
    assert await _closed_with(lapsing, timeout_s=8) == 4401
    await server.publish("chat:x", "after")
    assert (await ws_recv(refreshed))["data"] == "after"
    await controls.check()


async def test_sse_stream_whose_token_expires_ends(start_server: StartServer, stack: Stack) -> None:
    server = await start_server(**LOCKED, jwt_leeway_s=0)
    controls = await _controls(server, stack)
    short = token("shortlived", ttl_s=1.0)
    async with SseClient(server.port, "/api/sse/subscribe/chat:x", [bearer(short)]) as sse:
        assert sse.status == 200
        events = await sse.read_to_end(timeout_s=5)
        assert [event_json(e)["type"] for e in events] == ["connected"]
    await controls.check()


async def test_rs256_public_key_file_verifies_and_refuses_algorithm_confusion(
    start_server: StartServer, tmp_path: Path
) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "jwt.pem").write_bytes(pem)
    server = await start_server(jwt_public_key=str(tmp_path / "jwt.pem"), allowed_origins=APP)
    claims = {"sub": "rsa", "exp": time.time() + 60, "channels": ["*"]}
    good = jwt.encode(claims, private, algorithm="RS256")
    async with SseClient(server.port, f"/api/sse/subscribe/any?token={good}") as sse:
        assert sse.status == 200
    forged = _hs256_with_key(claims, pem)
    response = await request(server.port, "GET", f"/api/poll/any?timeout=0&token={forged}")
    _assert_401(response, invalid_token=True)


def _hs256_with_key(claims: dict[str, Any], key: bytes) -> str:
    """An HS256 token keyed with `key` (the PEM text: algorithm confusion), made by hand."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(claims).encode())
    return signing_input + "." + b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())


# --- §3 origins and CORS ---------------------------------------------------------------------


async def test_websocket_upgrade_from_a_foreign_origin_is_403(
    locked: rawrt.Server, controls: Controls
) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with ws_connect(locked.port, origin=FOREIGN):
            pass
    assert refused.value.response.status_code == 403
    for origin in (APP, "https://docs.example.test"):
        async with ws_connect(locked.port, origin=origin) as ws:
            await ws_subscribe(ws, "public:x")
    await controls.check()


async def test_cors_echoes_an_allowed_origin_on_every_route_and_nothing_for_a_foreign_one(
    locked: rawrt.Server, controls: Controls
) -> None:
    routes = [
        ("GET", "/healthz", []),
        ("GET", "/api/poll/public:x?timeout=0", []),
        ("POST", f"/api/publish/{WATCH}", [("X-API-Key", KEY)]),
        ("GET", "/api/poll/chat:x?timeout=0", []),  # a 401 carries CORS too
        ("GET", "/nowhere", []),
    ]
    for method, target, extra in routes:
        body = "1" if method == "POST" else None
        mine = await request(locked.port, method, target, body, [("Origin", APP), *extra])
        assert mine.headers["access-control-allow-origin"] == APP, target
        assert mine.headers["access-control-allow-credentials"] == "true"
        assert mine.headers["vary"] == "Origin"
        theirs = await request(locked.port, method, target, body, [("Origin", FOREIGN), *extra])
        assert not any(h.startswith("access-control-") for h in theirs.headers), target
    async with SseClient(locked.port, "/api/sse/subscribe/public:x", [("Origin", APP)]) as sse:
        assert sse.headers["access-control-allow-origin"] == APP
    # the two publishes above (a key needs no page): every control got both
    assert [(await ws_recv(controls.ws))["data"] for _ in range(2)] == [1, 1]
    assert [event_json(await _next(controls.sse)) for _ in range(2)] == [1, 1]
    assert await controls.poll.collect(2) == [1, 1]
    await controls.check()


async def test_preflight_answers_an_allowed_origin_only(locked: rawrt.Server) -> None:
    ask = [
        ("Access-Control-Request-Method", "POST"),
        ("Access-Control-Request-Headers", "x-api-key"),
    ]
    mine = await request(locked.port, "OPTIONS", "/api/publish/x", headers=[("Origin", APP), *ask])
    assert mine.status == 204
    assert mine.headers["access-control-allow-origin"] == APP
    assert "POST" in mine.headers["access-control-allow-methods"]
    allowed = mine.headers["access-control-allow-headers"].lower()
    for name in ("authorization", "content-type", "last-event-id", "x-api-key"):
        assert name in allowed
    theirs = await request(
        locked.port, "OPTIONS", "/api/publish/x", headers=[("Origin", FOREIGN), *ask]
    )
    assert not any(h.startswith("access-control-") for h in theirs.headers)


async def test_open_server_keeps_answering_any_page_without_credentials(
    server: rawrt.Server,
) -> None:
    response = await request(server.port, "GET", "/healthz", headers=[("Origin", FOREIGN)])
    assert response.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in response.headers
    async with ws_connect(server.port, origin=FOREIGN) as ws:
        await ws_subscribe(ws, "anything")
        # an auth frame means nothing here: an error frame, and the socket stays open
        await ws.send(json.dumps({"type": "auth", "token": "whatever"}))
        assert (await ws_recv(ws))["type"] == "error"
        assert (await _publish(server.port, "anything")).status == 200
        assert (await ws_recv(ws))["data"] == {"from": "offender"}


# --- start-up, logs and the command line -----------------------------------------------------


async def test_open_server_on_a_reachable_address_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="rawrt")
    async with rawrt.Server(rawrt.Config(host="0.0.0.0", port=0)):
        pass
    async with rawrt.Server(rawrt.Config(host=HOST, port=0)):
        pass
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "access control is off" in warnings[0]


async def test_credentials_and_query_strings_never_reach_the_log(
    locked: rawrt.Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="rawrt")
    secret_token = token("logged?")
    await request(locked.port, "GET", f"/api/poll/chat:x?timeout=0&token={secret_token}")
    await request(locked.port, "GET", "/api/poll/chat:x?timeout=0&token=junk-credential")
    await _publish(locked.port, "x", ("X-API-Key", "wrong-key-credential"))
    async with ws_connect(locked.port) as ws:
        await ws.send(json.dumps({"type": "auth", "token": "junk-credential"}))
        await _closed_with(ws)
    text = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (secret_token, "junk-credential", "wrong-key-credential", KEY, SECRET, "token="):
        assert secret not in text


def _rawrt(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rawrt", *args],
        capture_output=True,
        text=True,
        timeout=20,
        env={**({} if env is None else env), "PATH": "/usr/bin:/bin", "PYTHONPATH": WORKTREE},
        check=False,
    )


def test_tokens_with_any_origin_refuse_to_start_and_say_why() -> None:
    done = _rawrt("--port", "0", "--jwt-secret", SECRET)
    assert done.returncode == 2
    assert "cookie" in done.stderr and "--allowed-origins" in done.stderr


def test_unreadable_public_key_file_refuses_to_start(tmp_path: Path) -> None:
    done = _rawrt(
        "--port", "0", "--jwt-public-key", str(tmp_path / "missing.pem"), "--allowed-origins", APP
    )
    assert done.returncode == 2 and "jwt_public_key" in done.stderr


def test_old_cors_origin_flag_still_sets_the_allowed_origins() -> None:
    assert parse_config(["--cors-origin", APP], {}).allowed_origins == APP
    assert parse_config([], {"RAWRT_CORS_ORIGIN": APP}).allowed_origins == APP


def test_rawrt_token_prints_a_token_and_rawrt_alone_still_serves(spawn_rawrt: Any) -> None:
    done = _rawrt(
        "token",
        "--sub",
        "dev",
        "--channels",
        "chat:*",
        "--ttl",
        "60",
        env={"RAWRT_JWT_SECRET": SECRET},
    )
    assert done.returncode == 0, done.stderr
    claims = jwt.decode(done.stdout.strip(), SECRET, algorithms=["HS256"])
    assert (claims["sub"], claims["channels"]) == ("dev", ["chat:*"])
    child = spawn_rawrt("--port", "0")
    assert child.port > 0
