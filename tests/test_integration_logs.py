"""Log lines of a real rawrt process: JSON or text, the opt-in access log (its client address
from the trusted-proxy rules, its path without the query), and never a credential."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from support.clients import SseClient, request, ws_connect
from websockets.exceptions import ConnectionClosed

from rawrt.tokens import issue_token

SECRET = "log-test-secret-0123456789abcdefghijk"
KEY = "log-test-publish-key-0123456789"
WRONG_KEY = "log-test-wrong-key-9876543210"
PROXY_CLIENT = "203.0.113.7"


def _token(sub: str, channels: list[str]) -> str:
    return issue_token(SECRET, sub=sub, channels=channels, publish=[], now=time.time(), ttl_s=600)


async def _exercise(port: int) -> list[str]:
    """Requests that carry every kind of credential, good and bad; returns those used."""
    token = _token("alice", ["room:*"])
    bad_token = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    ok = await request(port, "POST", "/api/publish/room:1", b"1", [("X-API-Key", KEY)])
    assert ok.status == 200
    refused = await request(
        port, "POST", "/api/publish/room:1", b"1", [("Authorization", f"Bearer {WRONG_KEY}")]
    )
    assert refused.status == 401
    polled = await request(port, "GET", f"/api/poll/room:1?timeout=0&token={token}")
    assert polled.status == 200
    assert (await request(port, "GET", f"/api/history/room:1?token={bad_token}")).status == 401
    forwarded = await request(port, "GET", "/healthz", headers=[("X-Forwarded-For", PROXY_CLIENT)])
    assert forwarded.status == 200
    async with SseClient(port, f"/api/sse/subscribe/room:1?token={token}") as sse:
        await sse.next_event()
    async with ws_connect(port, f"/ws?token={token}") as ws:
        await ws.send(json.dumps({"type": "auth", "token": bad_token}))
        with contextlib.suppress(ConnectionClosed):
            async with asyncio.timeout(5):
                while True:
                    await ws.recv()
    return [SECRET, KEY, WRONG_KEY, token, bad_token]


@pytest.mark.asyncio(loop_factories=["asyncio"])
async def test_json_access_log_names_each_request_and_no_credential(
    spawn_rawrt: Any, tmp_path: Path
) -> None:
    config = tmp_path / "rawrt.toml"
    config.write_text('log_format = "json"\naccess_log = true\ntrusted_proxies = "127.0.0.1"\n')
    env = {"RAWRT_JWT_SECRET": SECRET, "RAWRT_PUBLISH_KEY": KEY, "RAWRT_ALLOWED_ORIGINS": ""}
    child = spawn_rawrt("--config", str(config), "--port", "0", env=env)
    credentials = await _exercise(child.port)
    assert await child.stopped() == 0

    lines = [json.loads(line) for line in child.lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    access = [line for line in lines if line["logger"] == "rawrt.access"]
    seen = {(a["method"], a["path"], a["status"]) for a in access}
    assert {
        ("POST", "/api/publish/room:1", 200),
        ("POST", "/api/publish/room:1", 401),
        ("GET", "/api/poll/room:1", 200),
        ("GET", "/api/history/room:1", 401),
        ("GET", "/api/sse/subscribe/room:1", 200),
        ("GET", "/ws", 101),
    } <= seen, seen
    for a in access:
        assert "?" not in a["path"]
        assert a["duration_ms"] >= 0 and a["bytes"] >= 0
    published = next(a for a in access if a["status"] == 200 and a["method"] == "POST")
    assert published["bytes"] > 0 and published["client"] == "127.0.0.1"
    assert any(a["path"] == "/healthz" and a["client"] == PROXY_CLIENT for a in access)
    everything = "\n".join(child.lines)
    for secret in credentials:
        assert secret not in everything


@pytest.mark.asyncio(loop_factories=["asyncio"])
async def test_text_access_log_is_one_line_per_request_and_off_by_default(
    spawn_rawrt: Any,
) -> None:
    quiet = spawn_rawrt("--port", "0")
    assert (await request(quiet.port, "GET", "/healthz?token=abc")).status == 200
    loud = spawn_rawrt("--port", "0", "--access-log", "on")
    assert (await request(loud.port, "GET", "/healthz?token=abc")).status == 200
    assert await quiet.stopped() == 0 and await loud.stopped() == 0
    assert not any("/healthz" in line for line in quiet.lines)
    hits = [line for line in loud.lines if "/healthz" in line]
    assert len(hits) == 1 and " GET /healthz 200 " in hits[0] and "127.0.0.1" in hits[0]
    assert "token" not in hits[0]
