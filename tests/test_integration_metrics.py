"""GET /metrics, read by prometheus-client's parser, moves by what clients did.

Each test takes a scrape, acts through real clients on real sockets (publishes over HTTP and
WebSocket, WebSocket, SSE and long-poll subscribers, refused requests, resumes from lost or
foreign positions, a subscriber that stops reading), and checks the next scrape moved by
exactly the amounts those actions account for. Then who may read it: the metrics key and the
listener of its own.
"""

from __future__ import annotations

import asyncio
import json
import platform
import time
from typing import Any

import pytest
from support.clients import (
    PollClient,
    RawWebSocket,
    SseClient,
    event_json,
    request,
    ws_connect,
    ws_recv,
    ws_subscribe,
)
from support.scrape import Figures, scrape

import rawrt
from rawrt.tokens import issue_token

BOUND_S = 10.0
SECRET = "metrics-test-secret-0123456789abcdef"
METRICS_KEY = "scraper-key-0123456789"


def delta(after: Figures, before: Figures, name: str, **labels: str) -> float:
    return after.get_value(name, **labels) - before.get_value(name, **labels)


async def publish(port: int, channel: str, value: object, route: str = "publish") -> str:
    response = await request(port, "POST", f"/api/{route}/{channel}", json.dumps(value))
    assert response.status == 200, response.body
    message_id: str = response.json()["id"]
    return message_id


async def test_publishes_and_deliveries_move_by_what_was_sent(server: rawrt.Server) -> None:
    port = server.port
    async with ws_connect(port) as ws1, ws_connect(port) as ws2:
        for ws in (ws1, ws2):
            await ws_subscribe(ws, "m")
        async with SseClient(port, "/api/sse/subscribe/m") as sse:
            await sse.next_event()  # connected
            before = await scrape(port)
            assert before.get_value("rawrt_subscriptions", transport="websocket") == 2
            assert before.get_value("rawrt_subscriptions", transport="sse") == 1
            assert before.get_value("rawrt_connections", transport="websocket") == 2
            assert before.get_value("rawrt_connections", transport="sse") == 1
            for i in range(3):
                await publish(port, "m", {"n": i}, "publish" if i else "broadcast")
            texts = []
            for ws in (ws1, ws2):
                async with asyncio.timeout(BOUND_S):
                    texts += [await ws.recv() for _ in range(3)]
            events = await sse.events(3)
            after = await scrape(port)
    assert [event_json(e)["n"] for e in events] == [0, 1, 2]
    assert delta(after, before, "rawrt_messages_published_total", route="publish") == 2
    assert delta(after, before, "rawrt_messages_published_total", route="broadcast") == 1
    assert delta(after, before, "rawrt_publish_latency_seconds_count", route="publish") == 2
    assert delta(after, before, "rawrt_deliveries_total", transport="websocket") == 6
    assert delta(after, before, "rawrt_deliveries_total", transport="sse") == 3
    # A server frame of a text under 126 bytes is 2 bytes of header and the text.
    ws_bytes = sum(len(str(t).encode()) + 2 for t in texts)
    assert delta(after, before, "rawrt_delivered_bytes_total", transport="websocket") == ws_bytes
    assert delta(after, before, "rawrt_delivered_bytes_total", transport="sse") > 0
    assert after.get_value("rawrt_channels") >= 1


async def test_websocket_publish_and_long_poll_delivery_are_counted(server: rawrt.Server) -> None:
    port = server.port
    async with PollClient(port, "lp") as poller, ws_connect(port) as ws:
        await poller.start_at_head()
        parked = await poller.poll_sent(timeout=BOUND_S)
        before = await scrape(port)
        assert before.get_value("rawrt_subscriptions", transport="longpoll") == 1
        assert before.get_value("rawrt_connections", transport="longpoll") == 1
        await ws.send(json.dumps({"type": "publish", "channel": "lp", "data": {"k": 1}}))
        body = await asyncio.wait_for(parked, BOUND_S)
        assert body["messages"] == [{"k": 1}]
        after = await scrape(port)
    assert delta(after, before, "rawrt_messages_published_total", route="websocket") == 1
    assert delta(after, before, "rawrt_publish_latency_seconds_count", route="websocket") == 1
    assert delta(after, before, "rawrt_deliveries_total", transport="longpoll") == 1
    assert delta(after, before, "rawrt_delivered_bytes_total", transport="longpoll") > 0
    assert after.get_value("rawrt_subscriptions", transport="longpoll") == 0


async def test_refusals_are_counted_by_status(server: rawrt.Server) -> None:
    port = server.port
    before = await scrape(port)
    assert (await request(port, "GET", "/no/such/route")).status == 404
    assert (await request(port, "POST", "/api/publish/x", "not json")).status == 400
    assert (await request(port, "POST", "/api/publish/x", "not json")).status == 400
    async with ws_connect(port) as ws:
        await ws.send("{")
        assert (await ws_recv(ws))["type"] == "error"
    after = await scrape(port)
    assert delta(after, before, "rawrt_refusals_total", transport="http", code="404") == 1
    assert delta(after, before, "rawrt_refusals_total", transport="http", code="400") == 2
    assert delta(after, before, "rawrt_refusals_total", transport="websocket", code="400") == 1


@pytest.mark.parametrize(
    "server",
    [{"jwt_secret": SECRET, "allowed_origins": "", "publish_key": "k" * 16}],
    indirect=True,
)
async def test_auth_failures_are_counted(server: rawrt.Server) -> None:
    port = server.port
    before = await scrape(port)
    assert (await request(port, "GET", "/api/poll/secret?timeout=0")).status == 401
    assert (await request(port, "POST", "/api/publish/x", "1")).status == 401
    async with ws_connect(port, "/ws?token=not-a-token") as ws:
        async with asyncio.timeout(BOUND_S):
            await ws.wait_closed()
        assert ws.close_code == 4401
    token = issue_token(SECRET, sub="u", channels=["mine"], publish=[], now=time.time(), ttl_s=60)
    async with ws_connect(port, f"/ws?token={token}") as ws:
        await ws.send(json.dumps({"type": "subscribe", "channel": "other"}))
        assert (await ws_recv(ws))["data"] == "Forbidden"
    after = await scrape(port)
    assert delta(after, before, "rawrt_refusals_total", transport="http", code="401") == 2
    assert delta(after, before, "rawrt_refusals_total", transport="websocket", code="4401") == 1
    assert delta(after, before, "rawrt_refusals_total", transport="websocket", code="403") == 1


@pytest.mark.parametrize("server", [{"history_size": 2}], indirect=True)
async def test_resets_are_counted_by_cause(server: rawrt.Server, start_server: Any) -> None:
    port = server.port
    first = await publish(port, "r", 0)
    for i in range(1, 5):
        await publish(port, "r", i)
    other = await start_server()
    foreign = await publish(other.port, "r", "elsewhere")  # same channel, another epoch
    before = await scrape(port)
    async with PollClient(port, "r") as poller:
        assert (await poller.poll(since=first, timeout=0))["reset"] is True
        assert (await poller.poll(since=foreign, timeout=0))["reset"] is True
    async with ws_connect(port) as ws:
        await ws_subscribe(ws, "r", since=first)
        assert (await ws_recv(ws))["type"] == "reset"
    after = await scrape(port)
    assert delta(after, before, "rawrt_resets_total", cause="behind") == 2
    assert delta(after, before, "rawrt_resets_total", cause="epoch") == 1


FLOW = {"write_high_water": 16 * 1024, "write_low_water": 4 * 1024}


@pytest.mark.parametrize("server", [FLOW], indirect=True)
async def test_a_subscriber_that_stops_reading_is_counted_as_paused(
    server: rawrt.Server,
) -> None:
    port = server.port
    slow = await RawWebSocket.connect(port, rcvbuf=4096)
    try:
        await slow.send_json({"type": "subscribe", "channel": "slow"})
        assert (await slow.recv_json())["type"] == "subscribed"
        before = await scrape(port)
        payload = "p" * 16_000
        figures = before
        async with asyncio.timeout(BOUND_S):
            for i in range(400):  # about 6 MiB: past any loopback buffer
                await server.publish("slow", payload)
                if i % 50 == 49:
                    figures = await scrape(port)
                    if delta(figures, before, "rawrt_slow_subscriber_pauses_total") >= 1:
                        break
        assert delta(figures, before, "rawrt_slow_subscriber_pauses_total") >= 1
    finally:
        slow.close()


async def test_build_info_and_loop_lag_are_exported(server: rawrt.Server) -> None:
    figures = await scrape(server.port)
    labels = {"version": rawrt.__version__, "python": platform.python_version()}
    assert figures.get_value("rawrt_build_info", **labels) == 1
    assert figures.get_value("rawrt_event_loop_lag_seconds", -1.0) >= 0
    assert not any(name.startswith("rawrt_redis") for name in figures.names())  # no Redis


# --- who may read ---------------------------------------------------------------------------


@pytest.mark.parametrize("server", [{"metrics_key": METRICS_KEY}], indirect=True)
async def test_the_metrics_key_is_required_when_set(server: rawrt.Server) -> None:
    port = server.port
    bare = await request(port, "GET", "/metrics")
    assert bare.status == 401 and "error" in bare.json()
    assert bare.headers["www-authenticate"] == "Bearer"
    wrong = await request(port, "GET", "/metrics", headers=[("X-API-Key", "wrong" * 4)])
    assert wrong.status == 401
    assert "invalid_token" in wrong.headers["www-authenticate"]
    await scrape(port, [("Authorization", f"Bearer {METRICS_KEY}")])
    await scrape(port, [("X-API-Key", METRICS_KEY)])


@pytest.mark.parametrize("server", [{"metrics_host": "127.0.0.1"}], indirect=True)
async def test_a_metrics_listener_of_its_own_serves_metrics_only(server: rawrt.Server) -> None:
    assert server.metrics_port is not None and server.metrics_port != server.port
    assert (await request(server.port, "GET", "/metrics")).status == 404
    await publish(server.port, "x", 1)
    figures = await scrape(server.metrics_port)
    assert figures.get_value("rawrt_messages_published_total", route="publish") == 1
    assert (await request(server.metrics_port, "GET", "/healthz")).status == 404
    assert (await request(server.metrics_port, "POST", "/api/publish/x", "1")).status == 404


@pytest.mark.parametrize("server", [{"metrics": False}], indirect=True)
async def test_metrics_can_be_turned_off(server: rawrt.Server) -> None:
    assert (await request(server.port, "GET", "/metrics")).status == 404


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"metrics_port": 9100}, "metrics_port needs metrics_host"),
        ({"metrics_host": "127.0.0.1", "metrics_port": 70000}, "metrics_port must be in"),
        ({"metrics_key": "short"}, "metrics_key must be at least 16"),
        ({"metrics_key": "k" * 16, "publish_key": "k" * 16}, "must differ from every publish"),
        (
            {"metrics_host": "127.0.0.1", "workers": 2, "redis_url": "redis://127.0.0.1/0"},
            "needs a metrics_port all workers share",
        ),
    ],
)
def test_metrics_options_are_checked(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(rawrt.ConfigError, match=problem):
        rawrt.Config(**fields)


def test_the_metrics_key_stays_out_of_repr() -> None:
    assert METRICS_KEY not in repr(rawrt.Config(metrics_key=METRICS_KEY))
