"""rawrt.client and the CLI against a server with tokens and a publish key (rawrt.access).

The client sends its token as the WebSocket's first frame and as `Authorization: Bearer` on
publishes, a key as `X-API-Key`. A token that expires closes the socket with 4401: with a
getter the client reconnects with a fresh one and loses nothing; with a fixed token it stops
with Refused. Tokens are issued by rawrt.tokens with the server's own secret.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

import pytest

import rawrt
import rawrt.client
from rawrt.client import ClientConfig, Message, Refused
from rawrt.tokens import issue_token

SECRET = "s" * 40
KEY = "k" * 24
STEP_S = 10.0
FAST = ClientConfig(backoff_min_s=0.02, backoff_max_s=0.2)
LOCKED = {
    "jwt_secret": SECRET,
    "publish_key": KEY,
    "allowed_origins": "",
    "jwt_leeway_s": 0.0,
    "sse_heartbeat_s": 0.5,  # the sweep that closes expired sockets runs a few times per beat
}


def token(ttl_s: float = 3600.0, channels: tuple[str, ...] = ("news", "chat:*")) -> str:
    return issue_token(
        SECRET, sub="alice", channels=channels, publish=["news"], now=time.time(), ttl_s=ttl_s
    )


async def take(sub: rawrt.client.Subscription, count: int) -> list[rawrt.client.Event]:
    async with asyncio.timeout(STEP_S):
        return [await anext(sub) for _ in range(count)]


@pytest.mark.parametrize("server", [LOCKED], indirect=True)
async def test_a_token_subscribes_and_publishes_and_a_forbidden_channel_ends_alone(
    server: rawrt.Server,
) -> None:
    async with rawrt.client.connect(server.url, token=token(), config=FAST) as client:
        news, secret = client.subscribe("news"), client.subscribe("secret")
        with pytest.raises(Refused) as caught:
            await asyncio.wait_for(secret.ready(), STEP_S)
        assert caught.value.status == 403 and caught.value.channel == "secret"
        await asyncio.wait_for(news.ready(), STEP_S)
        sent = await client.publish("news", {"signed": True})  # Authorization: Bearer
        with pytest.raises(Refused) as refused:
            await client.publish("chat:room", 1)  # the token may not publish there
        assert refused.value.status == 403
        (message,) = await take(news, 1)
    assert isinstance(message, Message) and message.id == sent


@pytest.mark.parametrize("server", [LOCKED], indirect=True)
async def test_without_a_token_a_subscription_is_refused_and_a_key_publishes(
    server: rawrt.Server,
) -> None:
    async with rawrt.client.connect(server.url, key=KEY) as client:
        sub = client.subscribe("news")
        with pytest.raises(Refused) as caught:
            await asyncio.wait_for(anext(sub), STEP_S)
        assert caught.value.status == 401
        assert (await client.publish("news", 1)).endswith("-1")  # X-API-Key
    async with rawrt.client.connect(server.url) as anonymous:
        with pytest.raises(Refused) as caught:
            await anonymous.publish("news", 2)
        assert caught.value.status == 401


async def publish_until(
    server: rawrt.Server, sub: rawrt.client.Subscription, done: Any, limit: int = 10_000
) -> tuple[list[str], list[str]]:
    """Publish one message at a time, each received before the next, until `done()` (or
    `limit` messages)."""
    sent: list[str] = []
    got: list[str] = []
    deadline = time.monotonic() + 15.0
    for n in range(limit):
        if done() or time.monotonic() > deadline:
            break
        sent.append(await server.publish("news", n))
        got += [event.id for event in await take(sub, 1)]
        await asyncio.sleep(0.02)  # pacing only: each message was received already
    return sent, got


@pytest.mark.parametrize("server", [LOCKED], indirect=True)
async def test_a_getters_token_is_refreshed_in_band_before_it_expires(
    server: rawrt.Server,
) -> None:
    issued: list[str] = []

    async def fresh() -> str:
        issued.append(token(ttl_s=3.0))  # replaced halfway through its life
        return issued[-1]

    async with rawrt.client.connect(server.url, token=fresh, config=FAST) as client:
        sub = client.subscribe("news")
        await asyncio.wait_for(sub.ready(), STEP_S)
        sent, got = await publish_until(server, sub, lambda: len(issued) >= 3)
        assert len(issued) >= 3 and client.connections == 1  # no socket closed for it
    assert got == sent


@pytest.mark.parametrize("server", [LOCKED], indirect=True)
async def test_a_refused_refresh_reconnects_with_the_getters_next_token_losing_nothing(
    server: rawrt.Server,
) -> None:
    issued: list[str] = []

    def fresh() -> str:  # a plain function works as well as a coroutine
        issued.append("not-a-token" if len(issued) == 1 else token(ttl_s=3.0))
        return issued[-1]

    async with rawrt.client.connect(server.url, token=fresh, config=FAST) as client:
        sub = client.subscribe("news")
        await asyncio.wait_for(sub.ready(), STEP_S)
        sent, got = await publish_until(server, sub, lambda: client.connections >= 2)
        sent2, got2 = await publish_until(server, sub, lambda: False, limit=5)
        assert client.connections == 2 and issued[1] == "not-a-token"
    assert got + got2 == sent + sent2


@pytest.mark.parametrize("server", [LOCKED], indirect=True)
async def test_a_fixed_token_that_expires_stops_the_client_with_4401(
    server: rawrt.Server,
) -> None:
    async with rawrt.client.connect(server.url, token=token(ttl_s=1.0), config=FAST) as client:
        sub = client.subscribe("news")
        with pytest.raises(Refused) as caught:
            async with asyncio.timeout(STEP_S):
                async for _ in sub:
                    pass
        with pytest.raises(Refused):  # the client as a whole is done: it says so at once
            client.subscribe("other")
    assert caught.value.status == 4401 and "expired" in caught.value.detail


async def test_a_token_for_a_server_without_tokens_does_no_harm(server: rawrt.Server) -> None:
    async with rawrt.client.connect(server.url, token=token()) as client:
        sub = client.subscribe("news")
        await asyncio.wait_for(sub.ready(), STEP_S)  # the refused auth frame is not news's
        sent = await client.publish("news", 1)
        assert [e.id for e in await take(sub, 1)] == [sent]


async def _run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAWRT_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rawrt", *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**base, **(env or {})},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), STEP_S)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("server", [LOCKED], indirect=True)
async def test_cli_passes_tokens_and_keys(server: rawrt.Server) -> None:
    url = server.url
    code, out, err = await _run("pub", "news", "1", "--url", url, "--key", KEY)
    assert code == 0, err
    first = out.strip()
    code, out, err = await _run("pub", "news", "2", "--url", url, env={"RAWRT_TOKEN": token()})
    assert code == 0, err
    code, _, err = await _run("pub", "news", "3", "--url", url)
    assert code == 1 and "401" in err
    since = first.rpartition("-")[0] + "-0"
    code, out, err = await _run("sub", "news", "--url", url, "--since", since, "--count", "2",
                                "--token", token())  # fmt: skip
    assert code == 0, err
    assert next(json.loads(line)["id"] for line in out.splitlines()) == first
    code, out, err = await _run("sub", "news", "--url", url, "--count", "1")
    assert code == 1 and "401" in err and out == ""
