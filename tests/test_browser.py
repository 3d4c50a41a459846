"""rawrt.js in headless Chromium against a real rawrt: delivery, fallback, resume, reset.

Every test serves the page from the rawrt under test and publishes from Python over real
sockets; the page records what its client's `onMessage` and `onReset` saw, and each test
compares that with what the publishes answered: every message once, in order, with its id.

Blocking a transport uses Playwright's own interception: `page.route_web_socket` (closing a
WebSocket before the page sees the server, or passing it through) and `page.route` (aborting
SSE or poll requests); offline uses `context.set_offline`. The clients run with fast timings
(backoff 0.1 to 0.8 s, a WebSocket probe every second) so that each scenario takes seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import StartServer
from support.browser import ClientPage, chromium, open_client
from support.clients import request, ws_connect, ws_subscribe
from support.redis_server import RedisServer, free_port

import rawrt
from rawrt.tokens import issue_token

pytestmark = pytest.mark.browser

ROUTES = ("/api/broadcast/", "/api/publish/", "/api/sse/publish/")


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with chromium() as launched:
        yield launched


async def publish(
    port: int, channel: str, data: Any, route: str = "/api/publish/", key: str | None = None
) -> str:
    headers = [("Authorization", f"Bearer {key}")] if key else []
    answer = await request(port, "POST", route + channel, json.dumps(data), headers)
    assert answer.status == 200, answer.body
    message_id: str = answer.json()["id"]
    return message_id


def ids_and_data(got: list[list[Any]]) -> list[tuple[str, Any]]:
    return [(message_id, data) for data, message_id, _ in got]


@pytest.mark.parametrize("transport", ["websocket", "sse", "poll"])
async def test_every_route_reaches_the_page_once_in_order_on_each_transport_alone(
    server: rawrt.Server, browser: Any, transport: str
) -> None:
    page = await open_client(browser, server.url, "alone", transports=[transport])
    await page.wait_for_transport(transport)
    sent = []
    for n in range(9):
        route = ROUTES[n % 3]
        sent.append((await publish(server.port, "alone", {"n": n}, route), {"n": n}))
    await page.wait_for_count(len(sent))
    got = await page.received()
    assert ids_and_data(got) == sent
    timestamps = [timestamp for _, _, timestamp in got]
    if transport == "websocket":  # only the WebSocket envelope carries the timestamp
        assert all(isinstance(t, int) and t > 0 for t in timestamps)
    assert await page.value("window.resets") == []


async def block_websocket(page: Any, blocked: dict[str, bool]) -> None:
    """WebSockets are closed before reaching the server while `blocked["ws"]`."""

    def handler(ws: Any) -> Any:
        if blocked["ws"]:
            return ws.close(code=1011, reason="blocked by the test")
        ws.connect_to_server()
        return None

    await page.route_web_socket("**/ws", handler)


async def test_fallback_to_sse_then_poll_then_back_to_websocket_losing_nothing(
    server: rawrt.Server, browser: Any
) -> None:
    blocked = {"ws": True, "sse": True}

    async def before(page: Any) -> None:
        await block_websocket(page, blocked)

        async def sse(route: Any) -> None:
            await (route.abort() if blocked["sse"] else route.continue_())

        await page.route("**/api/sse/**", sse)

    sent = [(await publish(server.port, "fall", "before"), "before")]
    page = await open_client(browser, server.url, "fall", since=start_of(sent[0][0]), before=before)
    await page.wait_for_transport("poll")  # WebSocket and SSE both refused
    sent.append((await publish(server.port, "fall", "on poll"), "on poll"))
    await page.wait_for_count(2)

    blocked["sse"] = False  # SSE is not retried while poll works: poll stays until WS works
    blocked["ws"] = False
    await page.wait_for_transport("websocket")
    sent.append((await publish(server.port, "fall", "on ws"), "on ws"))
    await page.wait_for_count(3)
    assert ids_and_data(await page.received()) == sent


async def test_websocket_refused_runs_on_sse_and_returns_to_websocket(
    server: rawrt.Server, browser: Any
) -> None:
    blocked = {"ws": True}

    async def before(page: Any) -> None:
        await block_websocket(page, blocked)

    page = await open_client(browser, server.url, "sse-first", before=before)
    await page.wait_for_transport("sse")
    sent = [(await publish(server.port, "sse-first", n), n) for n in range(3)]
    await page.wait_for_count(3)
    blocked["ws"] = False
    # Published while the client switches: each arrives once, on one transport or the other.
    for n in range(3, 30):
        sent.append((await publish(server.port, "sse-first", n), n))
        if await page.value("window.rt.transport") == "websocket":
            break
        await asyncio.sleep(0.05)  # pacing the publishes, not ordering anything
    await page.wait_for_transport("websocket")
    sent.append((await publish(server.port, "sse-first", "after"), "after"))
    await page.wait_for_count(len(sent))
    assert ids_and_data(await page.received()) == sent
    states = await page.value("window.states")
    assert ["connected", "sse"] in [s[:2] for s in states]
    assert states[-1][:2] == ["connected", "websocket"]


async def test_a_websocket_that_never_answers_is_skipped_after_the_open_timeout(
    server: rawrt.Server, browser: Any
) -> None:
    async def before(page: Any) -> None:
        # Playwright answers the handshake itself and then relays nothing: an open socket
        # that never delivers a frame, like one stuck behind a broken proxy.
        await page.route_web_socket("**/ws", lambda ws: None)

    page = await open_client(browser, server.url, "silent", before=before, openTimeoutMs=1000)
    await page.wait_for_transport("sse")
    sent = (await publish(server.port, "silent", "via sse"), "via sse")
    await page.wait_for_count(1)
    assert ids_and_data(await page.received()) == [sent]


async def test_position_older_than_history_resets_once_then_live(
    start_server: StartServer, browser: Any
) -> None:
    server = await start_server(history_size=2)
    old = [await publish(server.port, "short", n) for n in range(5)]  # holds the last two
    head = old[-1]
    for transport in ("websocket", "sse", "poll"):
        page = await open_client(browser, server.url, "short", since=old[0], transports=[transport])
        await page.wait_until("window.resets.length >= 1")
        live = await publish(server.port, "short", transport)
        await page.wait_for_count(1)
        # The reset names where the history now starts over (the head): nothing before it is
        # replayed as if it followed the lost position, and the live message comes next.
        assert await page.value("window.resets") == [head]
        assert ids_and_data(await page.received()) == [(live, transport)]
        await page.page.close()
        head = live


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


async def wait_for_state(page: ClientPage, state: str) -> None:
    await page.wait_until(f"window.rt.state === {state!r}")


@pytest.mark.redis
@pytest.mark.parametrize("transport", ["websocket", "sse", "poll"])
async def test_server_restart_with_redis_loses_and_repeats_nothing(
    start_server: StartServer,
    redis_server: RedisServer,
    stack: contextlib.AsyncExitStack,
    browser: Any,
    transport: str,
) -> None:
    node = await start_server(redis_url=redis_server.url)
    other = await start_server(redis_url=redis_server.url)  # publishes while `node` is down
    port = node.port
    page = await open_client(browser, node.url, "restart", transports=[transport])
    await page.wait_for_transport(transport)
    sent = [(await publish(port, "restart", n), n) for n in range(3)]
    await page.wait_for_count(3)

    await node.stop()
    await wait_for_state(page, "disconnected")
    sent += [(await publish(other.port, "restart", n), n) for n in range(3, 8)]
    again = rawrt.Server(rawrt.Config(host="127.0.0.1", port=port, redis_url=redis_server.url))
    await again.start()
    stack.push_async_callback(again.stop)

    await page.wait_for_transport(transport)
    sent += [(await publish(port, "restart", n), n) for n in range(8, 10)]
    await page.wait_for_count(len(sent))
    assert ids_and_data(await page.received()) == sent
    assert await page.value("window.resets") == []


@pytest.mark.parametrize("transport", ["websocket", "sse", "poll"])
async def test_offline_for_a_while_then_every_message_once(
    server: rawrt.Server, browser: Any, transport: str
) -> None:
    page = await open_client(browser, server.url, "offline", transports=[transport])
    await page.wait_for_transport(transport)
    sent = [(await publish(server.port, "offline", n), n) for n in range(2)]
    await page.wait_for_count(2)

    await page.context.set_offline(True)
    await wait_for_state(page, "disconnected")  # the `offline` event marks the link dead
    sent += [(await publish(server.port, "offline", n), n) for n in range(2, 7)]
    await page.context.set_offline(False)  # `online`: reconnect at once, from the last id

    await page.wait_for_transport(transport)
    sent.append((await publish(server.port, "offline", "back"), "back"))
    await page.wait_for_count(len(sent))
    assert ids_and_data(await page.received()) == sent


async def test_a_server_going_away_is_retried_with_backoff_not_in_a_tight_loop(
    start_server: StartServer, browser: Any
) -> None:
    server = await start_server()
    port = server.port
    page = await open_client(
        browser, server.url, "away", transports=["websocket"], backoffMinMs=200, backoffMaxMs=600
    )
    await page.wait_for_transport("websocket")
    sent = [(await publish(port, "away", "before"), "before")]
    await page.wait_for_count(1)
    await server.stop()  # WebSockets get 1001; nothing listens on the port for a while
    await wait_for_state(page, "disconnected")
    await asyncio.sleep(2.0)  # the outage being measured, not an ordering wait
    states = await page.value("window.states")
    retries = [retry for state, _, retry in states if state == "disconnected"]
    # Every wait is a full-jitter backoff within its bounds, so two seconds hold at most ten
    # attempts (a tight loop would make hundreds).
    assert 2 <= len(retries) <= 2000 // 200 + 1
    assert all(200 <= retry <= 600 for retry in retries)
    again = rawrt.Server(rawrt.Config(host="127.0.0.1", port=port))
    await again.start()
    try:
        await page.wait_for_transport("websocket")
        sent.append((await publish(port, "away", "after"), "after"))
        await page.wait_for_count(2)
        # A new server run is a new epoch: the client is told (reset), then gets what is live.
        assert await page.value("window.resets") != []
        assert ids_and_data(await page.received())[-1] == sent[-1]
    finally:
        await again.stop()


async def test_the_demo_page_shows_state_and_transport_and_publishes(
    server: rawrt.Server, browser: Any
) -> None:
    page = await (await browser.new_context()).new_page()
    await page.goto(server.url + "/?channel=demo")
    await page.wait_for_function(
        "document.getElementById('state').textContent === 'connected'", timeout=15_000
    )
    assert await page.text_content("#transport") == "websocket"
    await page.fill("#data", '{"title": "from the page"}')
    await page.click("#publish")
    await page.wait_for_selector("#messages li.message", timeout=15_000)
    published = await page.get_attribute("#note", "data-last")
    from_python = await publish(server.port, "demo", {"title": "from Python"})
    await page.wait_for_function(
        "document.querySelectorAll('#messages li.message').length === 2", timeout=15_000
    )
    rows = await page.locator("#messages li .id").all_text_contents()
    assert rows == [from_python, published]  # newest first


def start_of(message_id: str) -> str:
    """The position before the first message of `message_id`'s channel lifetime."""
    return message_id.rpartition("-")[0] + "-0"


async def test_all_channels_share_one_websocket(server: rawrt.Server, browser: Any) -> None:
    opened: list[str] = []

    async def before(page: Any) -> None:
        page.on("websocket", lambda ws: opened.append(ws.url))

    first = {name: await publish(server.port, name, name) for name in ("one", "two", "three")}
    page = await open_client(
        browser, server.url, "one", since=start_of(first["one"]), before=before
    )
    await page.wait_for_transport("websocket")
    await page.page.evaluate(
        """(since) => Object.entries(since).forEach(([name, position]) =>
             window.rt.subscribe(name, { since: position,
               onMessage: (data, meta) => window.got.push([data, meta.id, null]) }))""",
        {name: start_of(first[name]) for name in ("two", "three")},
    )
    await page.wait_for_count(3)
    later = {name: await publish(server.port, name, name + "!") for name in ("two", "one")}
    await page.wait_for_count(5)
    got = ids_and_data(await page.received())
    for name in ("one", "two", "three"):  # each channel once and in order
        expected = [(first[name], name)] + ([(later[name], name + "!")] if name in later else [])
        assert [item for item in got if item[1].rstrip("!") == name] == expected
    assert len(got) == 5
    assert opened == [server.url.replace("http", "ws") + "/ws"]


async def test_ids_compare_by_epoch_and_seq_of_any_size(server: rawrt.Server, browser: Any) -> None:
    page = await (await browser.new_context()).new_page()
    await page.goto(server.url + "/healthz")
    result = await page.evaluate(
        """async () => {
          const { parseId, seqAfter } = await import("/rawrt.js");
          const after = (a, b) => seqAfter(parseId(a)[1], parseId(b)[1]);
          return {
            parsed: [parseId("0esuy31-12"), parseId("a-b-007"), parseId("nope"), parseId("-3")],
            after: [after("e-10", "e-9"), after("e-9", "e-10"), after("e-5", "e-5"),
                    after("e-9007199254740993", "e-9007199254740992")],
          };
        }"""
    )
    assert result["parsed"] == [["0esuy31", "12"], ["a-b", "7"], None, None]
    assert result["after"] == [True, False, False, True]  # beyond 2**53 too


SECRET = "a test secret of at least thirty-two bytes"
PUBLISH_KEY = "a-publish-key-for-tests"
TOKEN_TTL_S = 2.0  # each token the page gets runs out within the test, several times


@pytest.mark.parametrize("transport", ["websocket", "sse", "poll"])
async def test_with_tokens_an_expiring_token_is_refreshed_through_get_token(
    stack: contextlib.AsyncExitStack, browser: Any, transport: str
) -> None:
    port = free_port()  # the page's origin must be in the allow-list before the server starts
    config = rawrt.Config(
        host="127.0.0.1",
        port=port,
        jwt_secret=SECRET,
        jwt_leeway_s=0.0,
        publish_key=PUBLISH_KEY,
        allowed_origins=f"http://127.0.0.1:{port}",
        sse_heartbeat_s=0.5,  # the sweep that ends expired streams runs with the heartbeat
    )
    server = rawrt.Server(config)
    await server.start()
    stack.push_async_callback(server.stop)
    issued: list[str] = []

    def mint() -> str:  # the application's token endpoint, as the page's getToken calls it
        token = issue_token(
            SECRET, sub="page", channels=["tok"], publish=[], now=time.time(), ttl_s=TOKEN_TTL_S
        )
        issued.append(token)
        return token

    async def before(page: Any) -> None:
        await page.expose_function("mintToken", mint)

    page = await open_client(
        browser,
        server.url,
        "tok",
        transports=[transport],
        before=before,
        getTokenFrom="mintToken",
        refreshBeforeMs=500,
    )
    await page.wait_for_transport(transport)
    sent: list[tuple[str, Any]] = []
    # Publish steadily while three tokens in a row run out (bounded in count and time).
    for n in range(200):
        sent.append((await publish(port, "tok", n, key=PUBLISH_KEY), n))
        if len(issued) >= 4:
            break
        await asyncio.sleep(0.05)  # pacing the publishes across token lifetimes
    await page.wait_for_transport(transport)
    sent.append((await publish(port, "tok", "last", key=PUBLISH_KEY), "last"))
    await page.wait_for_count(len(sent))
    assert ids_and_data(await page.received()) == sent
    assert len(issued) >= 4 and await page.value("window.resets") == []


async def test_a_refused_token_asks_get_token_and_stays_on_websocket(
    stack: contextlib.AsyncExitStack, browser: Any
) -> None:
    port = free_port()
    config = rawrt.Config(
        host="127.0.0.1",
        port=port,
        jwt_secret=SECRET,
        jwt_leeway_s=0.0,
        publish_key=PUBLISH_KEY,
        allowed_origins=f"http://127.0.0.1:{port}",
    )
    server = rawrt.Server(config)
    await server.start()
    stack.push_async_callback(server.stop)
    expired = issue_token(
        SECRET, sub="page", channels=["tok"], publish=[], now=time.time() - 60, ttl_s=1
    )
    issued: list[str] = []

    def mint() -> str:
        issued.append(issue_token(SECRET, sub="page", channels=["tok"], publish=[],
                                  now=time.time(), ttl_s=600))  # fmt: skip
        return issued[-1]

    async def before(page: Any) -> None:
        await page.expose_function("mintToken", mint)

    page = await open_client(
        browser, server.url, "tok", before=before, token=expired, getTokenFrom="mintToken"
    )
    await page.wait_for_transport("websocket")  # 4401, a fresh token, the same transport again
    sent = (await publish(port, "tok", "hello", key=PUBLISH_KEY), "hello")
    await page.wait_for_count(1)
    assert ids_and_data(await page.received()) == [sent]
    assert len(issued) == 1
    assert [t for _, t, _ in await page.value("window.states") if t] == ["websocket"]


async def test_the_token_cookie_serves_every_transport_without_a_token_option(
    stack: contextlib.AsyncExitStack, browser: Any
) -> None:
    port = free_port()
    config = rawrt.Config(
        host="127.0.0.1",
        port=port,
        jwt_secret=SECRET,
        publish_key=PUBLISH_KEY,
        allowed_origins=f"http://127.0.0.1:{port}",
    )
    server = rawrt.Server(config)
    await server.start()
    stack.push_async_callback(server.stop)
    token = issue_token(
        SECRET, sub="page", channels=["jar"], publish=[], now=time.time(), ttl_s=600
    )
    context = await browser.new_context()
    await context.add_cookies([{"name": "rawrt_token", "value": token, "url": server.url}])
    for transport in ("websocket", "sse", "poll"):
        page = await open_client(
            browser, server.url, "jar", context=context, transports=[transport]
        )
        await page.wait_for_transport(transport)
        sent = (await publish(port, "jar", transport, key=PUBLISH_KEY), transport)
        await page.wait_for_count(1)
        assert ids_and_data(await page.received()) == [sent]
        await page.page.close()


async def test_a_page_made_visible_finds_its_dead_websocket_and_resumes(
    server: rawrt.Server, browser: Any
) -> None:
    connections: list[Any] = []
    hole = {"on": False}

    def handler(ws: Any) -> None:
        upstream = ws.connect_to_server()
        first = not connections
        connections.append(ws)

        def down(message: Any) -> None:  # server to page; the first socket can go silent
            if not (first and hole["on"]):
                ws.send(message)

        upstream.on_message(down)

    async def before(page: Any) -> None:
        await page.route_web_socket("**/ws", handler)

    page = await open_client(browser, server.url, "wake", before=before, pingTimeoutMs=500)
    await page.wait_for_transport("websocket")
    sent = [(await publish(server.port, "wake", "seen"), "seen")]
    await page.wait_for_count(1)
    hole["on"] = True  # the socket looks open but delivers nothing (a laptop after sleep)
    sent.append((await publish(server.port, "wake", "lost in the hole"), "lost in the hole"))
    await page.value("document.dispatchEvent(new Event('visibilitychange'))")
    await page.wait_for_count(2)  # the ping went unanswered: a new socket, resumed
    assert len(connections) == 2
    assert ids_and_data(await page.received()) == sent


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_publish_goes_over_the_websocket_when_open_else_http_and_answers_the_id(
    server: rawrt.Server, browser: Any, transport: str
) -> None:
    page = await open_client(browser, server.url, "mine", transports=[transport])
    posts: list[str] = []
    page.page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    await page.wait_for_transport(transport)
    sent = []
    for n in range(3):
        sent.append((await page.value(f"window.rt.publish('mine', {{n: {n}}})"), {"n": n}))
    await page.wait_for_count(3)
    assert ids_and_data(await page.received()) == sent  # the ids the publishes resolved to
    assert len(posts) == (0 if transport == "websocket" else 3)
    # A refused publish rejects at once on either path (no channel: 400 or an error frame).
    refused = await page.value(
        "window.rt.publish('', 1).then(() => 'published', (e) => e.reason || String(e.status))"
    )
    assert refused == (
        "'channel' must be a non-empty string" if transport == "websocket" else "404"
    )


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_the_page_hears_others_join_and_leave_and_its_messages_run_on(
    start_server: StartServer, browser: Any, transport: str
) -> None:
    server = await start_server(presence_events=True)
    page = await open_client(browser, server.url, "room", transports=[transport])
    await page.value(
        "window.seen = [], ['join', 'leave'].forEach((kind) => window.rt.on(kind, (e) => "
        "window.seen.push([kind, e.channel, e.user, e.transport])))"
    )
    await page.wait_for_transport(transport)
    sent = [(await publish(server.port, "room", "before"), "before")]
    await page.wait_for_count(1)
    async with ws_connect(server.port) as other:
        await ws_subscribe(other, "room")
        await page.wait_until("window.seen.length >= 1")
    await page.wait_until("window.seen.length >= 2")
    sent.append((await publish(server.port, "room", "after"), "after"))
    await page.wait_for_count(2)
    assert await page.value("window.seen") == [
        ["join", "room", None, "ws"],
        ["leave", "room", None, "ws"],
    ]
    assert ids_and_data(await page.received()) == sent  # events are no messages
    assert await page.value("window.resets") == []
