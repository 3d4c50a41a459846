"""rawrt.client against a real rawrt server on 127.0.0.1, over real sockets.

The server runs in the test's loop (the `server` fixtures); publishes that are not the
client's own go through the independent HTTP client of tests/support. Waits are bounded and
wait on conditions; backoff is shortened so reconnects happen within the bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from support.clients import HttpClient
from wsproto.utilities import generate_accept_token

import rawrt
import rawrt.client
from rawrt.client import ClientConfig, ClientError, Message, Refused, Reset, Unreachable

FAST = ClientConfig(backoff_min_s=0.02, backoff_max_s=0.2)
STEP_S = 5.0  # bound on any single expected arrival


async def take(sub: rawrt.client.Subscription, count: int) -> list[rawrt.client.Event]:
    got = []
    async with asyncio.timeout(STEP_S):
        for _ in range(count):
            got.append(await anext(sub))
    return got


async def wait_until(condition: Any, timeout_s: float = STEP_S) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


async def publish_http(port: int, channel: str, data: object) -> str:
    async with HttpClient(port) as http:
        reply = await http.post_json(f"/api/broadcast/{channel}", data)
    return str(reply["id"])


@contextlib.asynccontextmanager
async def client_of(url: str, **options: Any) -> AsyncIterator[rawrt.client.Client]:
    async with asyncio.timeout(STEP_S), rawrt.client.connect(url, **options) as client:
        yield client


@pytest.mark.asyncio(loop_factories=["asyncio", "uvloop"])
async def test_several_channels_share_one_socket_and_publish_returns_the_id(
    server: rawrt.Server,
) -> None:
    async with client_of(server.url, config=FAST) as client:
        news, sport = client.subscribe("news"), client.subscribe("sport")
        async with asyncio.timeout(STEP_S):
            await news.ready()
            await sport.ready()
        first = await client.publish("news", {"title": "hello"})
        second = await publish_http(server.port, "sport", [1, 2])
        third = await client.publish("news", "two")
        got_news, got_sport = await take(news, 2), await take(sport, 1)
        assert len(server._sockets) == 1 and client.connections == 1
    assert [(m.id, m.data) for m in got_news if isinstance(m, Message)] == [
        (first, {"title": "hello"}),
        (third, "two"),
    ]
    (message,) = got_sport
    assert isinstance(message, Message)
    assert (message.channel, message.id, message.data) == ("sport", second, [1, 2])
    assert message.timestamp > 1_700_000_000_000  # milliseconds since the epoch


async def test_since_replays_what_came_after_it(server: rawrt.Server) -> None:
    ids = [await publish_http(server.port, "news", {"n": n}) for n in range(5)]
    async with client_of(server.url) as client:
        sub = client.subscribe("news", since=ids[1])
        got = await take(sub, 3)
    assert [event.id for event in got] == ids[2:]
    assert all(isinstance(event, Message) for event in got)


@pytest.mark.parametrize("server", [{"history_size": 3}], indirect=True)
async def test_a_position_older_than_the_history_is_a_reset_then_live_messages(
    server: rawrt.Server,
) -> None:
    ids = [await publish_http(server.port, "news", {"n": n}) for n in range(6)]
    async with client_of(server.url) as client:
        sub = client.subscribe("news", since=ids[0])
        (reset,) = await take(sub, 1)
        assert isinstance(reset, Reset) and reset.id == ids[-1]
        later = await client.publish("news", {"n": 6})
        (message,) = await take(sub, 1)
    assert isinstance(message, Message) and message.id == later and message.data == {"n": 6}


async def test_dropped_sockets_are_reconnected_and_resumed_exactly_once(
    server: rawrt.Server,
) -> None:
    """The same server (and hub) throughout: its history fills every gap."""
    async with client_of(server.url, config=FAST) as client:
        subs = [client.subscribe("a"), client.subscribe("b")]
        for sub in subs:
            await asyncio.wait_for(sub.ready(), STEP_S)
        sent: dict[str, list[str]] = {"a": [], "b": []}
        for round_ in range(4):
            for channel in sent:
                sent[channel].append(await publish_http(server.port, channel, round_))
            await wait_until(lambda: len(server._sockets) == 1)
            for ws in list(server._sockets.values()):
                ws.terminate()  # gone without a close frame, as a crashed route would be
            for channel in sent:  # published while the client is away
                sent[channel].append(await publish_http(server.port, channel, round_))
        got = {sub.channel: [e.id for e in await take(sub, len(sent[sub.channel]))] for sub in subs}
        assert client.connections >= 2
    assert got == sent


async def test_a_slow_reader_is_bounded_and_loses_nothing_while_other_channels_flow(
    server: rawrt.Server,
) -> None:
    config = ClientConfig(queue_size=4)
    async with client_of(server.url, config=config) as client:
        slow, fast = client.subscribe("slow"), client.subscribe("fast")
        await asyncio.wait_for(asyncio.gather(slow.ready(), fast.ready()), STEP_S)
        sent = []
        for n in range(30):
            sent.append(await publish_http(server.port, "slow", n))
            fast_id = await publish_http(server.port, "fast", n)
            (event,) = await take(fast, 1)  # the fast channel is not held up by the slow
            assert event.id == fast_id
        assert slow._feed.queued <= config.queue_size
        got = [event.id for event in await take(slow, 30)]
        assert client.connections == 1
    assert got == sent


@pytest.mark.parametrize("server", [{"history_size": 5}], indirect=True)
async def test_a_reader_slower_than_the_history_gets_a_reset_not_a_silent_gap(
    server: rawrt.Server,
) -> None:
    async with client_of(server.url, config=ClientConfig(queue_size=2)) as client:
        sub = client.subscribe("news")
        await asyncio.wait_for(sub.ready(), STEP_S)
        sent = [await publish_http(server.port, "news", n) for n in range(20)]
        first = await take(sub, 3)
        later = await client.publish("news", 20)
        rest = await take(sub, 1)
    assert [e.id for e in first[:2]] == sent[:2]
    assert isinstance(first[2], Reset) and first[2].id == sent[-1]
    assert [e.id for e in rest] == [later]


async def test_an_unreachable_server_fails_the_first_connect(unused_tcp_port: int) -> None:
    with pytest.raises(Unreachable):
        await rawrt.client.connect(f"http://127.0.0.1:{unused_tcp_port}").open()


async def test_a_refused_upgrade_carries_the_servers_status_and_error(
    server: rawrt.Server,
) -> None:
    with pytest.raises(Refused) as caught:
        await rawrt.client.connect(server.url + "/no/such/prefix").open()
    assert caught.value.status == 404 and caught.value.detail == "no such route"


async def test_a_refused_publish_carries_the_servers_status_and_error(
    server: rawrt.Server,
) -> None:
    async with client_of(server.url) as client:
        with pytest.raises(Refused) as caught:
            await client.publish("x" * 300, {"n": 1})
        assert caught.value.status == 400 and "longer than" in caught.value.detail
        assert (await client.publish("ok", 1)).endswith("-1")  # and the client carries on


async def test_a_subscription_the_server_refuses_ends_alone(server: rawrt.Server) -> None:
    async with client_of(server.url) as client:
        bad, good = client.subscribe("x" * 300), client.subscribe("fine")
        with pytest.raises(Refused) as caught:
            await asyncio.wait_for(anext(bad), STEP_S)
        assert caught.value.channel == "x" * 300 and "longer than" in caught.value.detail
        await asyncio.wait_for(good.ready(), STEP_S)
        sent = await client.publish("fine", 1)
        assert [e.id for e in await take(good, 1)] == [sent]


async def test_closing_the_client_ends_its_subscriptions(server: rawrt.Server) -> None:
    client = rawrt.client.connect(server.url)
    await client.open()
    sub = client.subscribe("news")
    waiting = asyncio.create_task(anext(sub))
    await asyncio.wait_for(sub.ready(), STEP_S)
    await client.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiting, STEP_S)
    await wait_until(lambda: not server._sockets)
    with pytest.raises(ClientError, match="closed"):
        await client.publish("news", 1)
    with pytest.raises(ClientError, match="closed"):
        client.subscribe("other")


async def test_a_silent_server_is_pinged_then_left_for_another_connection() -> None:
    """A peer that completes the handshake and then says nothing, not even to a ping."""
    accepted: list[asyncio.StreamWriter] = []

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + generate_accept_token(key) + b"\r\n\r\n"
        )
        accepted.append(writer)

    listener = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    config = ClientConfig(
        ping_interval_s=0.1, ping_timeout_s=0.1, backoff_min_s=0.01, backoff_max_s=0.05
    )
    try:
        async with client_of(f"http://127.0.0.1:{port}", config=config) as client:
            await wait_until(lambda: client.connections >= 3)
    finally:
        for writer in accepted:
            writer.close()
        listener.close()
        await listener.wait_closed()


async def test_a_message_over_the_clients_limit_ends_it_with_a_clienterror(
    server: rawrt.Server,
) -> None:
    config = ClientConfig(max_message_bytes=200)
    async with client_of(server.url, config=config) as client:
        sub = client.subscribe("news")
        await asyncio.wait_for(sub.ready(), STEP_S)
        await client.publish("news", "x" * 300)
        with pytest.raises(ClientError, match="over 200 bytes"):
            await asyncio.wait_for(anext(sub), STEP_S)
        await wait_until(lambda: not server._sockets)  # it closed (1009) and stayed away
        assert client.connections == 1


@pytest.mark.parametrize("server", [{"keepalive_timeout_s": 0.2}], indirect=True)
async def test_publish_survives_the_server_closing_its_idle_connection(
    server: rawrt.Server,
) -> None:
    client = rawrt.client.connect(server.url)  # publishing only: no WebSocket
    try:
        first = await client.publish("news", 1)
        await wait_until(lambda: not server._connections)  # the kept-alive one timed out
        second = await client.publish("news", 2)
    finally:
        await client.close()
    assert [first.rpartition("-")[2], second.rpartition("-")[2]] == ["1", "2"]


@pytest.mark.parametrize("server", [{"max_channels": 1}], indirect=True)
async def test_a_busy_channel_is_retried_alone_while_the_others_flow(
    server: rawrt.Server,
) -> None:
    config = ClientConfig(backoff_min_s=0.05, backoff_max_s=0.1)
    async with client_of(server.url, config=config) as client:
        first = client.subscribe("first")
        await asyncio.wait_for(first.ready(), STEP_S)
        started = asyncio.get_running_loop().time()
        second = client.subscribe("second")  # no channel slot left: "Server busy"
        sent = []
        for n in range(1000):  # bounded by the wait below
            sent.append(await client.publish("first", n))
            assert [e.id for e in await take(first, 1)] == sent[-1:]
            if second._busy_attempts >= 4:
                break
        elapsed = asyncio.get_running_loop().time() - started
        assert elapsed >= 3 * config.backoff_min_s  # backoff between retries, no tight loop
        assert not second._confirmed and client.connections == 1
        first.close()  # its channel goes idle, and may be evicted for the second
        await asyncio.wait_for(second.ready(), STEP_S)
        later = await client.publish("second", "at last")
        assert [e.id for e in await take(second, 1)] == [later]
        assert client.connections == 1


async def test_a_large_message_arrives_whole_across_many_reads(server: rawrt.Server) -> None:
    """wsproto hands over a frame in pieces as the reads bring it; the client joins them."""
    big = "é" * 300_000  # 600 kB of UTF-8: many 64 KiB reads, and characters cut between them
    async with client_of(server.url) as client:
        sub = client.subscribe("news")
        await asyncio.wait_for(sub.ready(), STEP_S)
        sent = await client.publish("news", big)
        (event,) = await take(sub, 1)
    assert isinstance(event, Message) and (event.id, event.data) == (sent, big)
