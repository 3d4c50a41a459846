"""permessage-deflate end to end (`ws_compression=True`): compressed once, written to many.

Subscribers are the `websockets` library (which offers permessage-deflate by default) and
hand-made sockets that read the frames' first byte themselves, so a test can see RSV1 and
compare the bytes two subscribers were written.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import struct
import zlib
from typing import Any

import pytest
from support.clients import (
    HOST,
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_TEXT,
    TIMEOUT_S,
    RawWebSocket,
    SseClient,
    client_frame,
    event_json,
    ws_connect,
    ws_recv,
    ws_subscribe,
)
from support.controls import open_controls

import rawrt

Stack = contextlib.AsyncExitStack
RSV1 = 0x40
OFFER = "permessage-deflate; client_max_window_bits"  # what Chromium sends
ON = {"ws_compression": True}
BIG = {"text": "the quick brown fox jumps over the lazy dog " * 40}  # ~1.8 KB of JSON

COMPRESSING = pytest.mark.parametrize("server", [ON], indirect=True)


class DeflateSocket(RawWebSocket):
    """A raw WebSocket that may offer permessage-deflate and reads frames whole."""

    response: dict[str, str]

    @classmethod
    async def open(cls, port: int, offer: str | None = OFFER) -> DeflateSocket:
        ws = cls(await cls.open_socket(port))
        key = base64.b64encode(os.urandom(16))
        extension = f"Sec-WebSocket-Extensions: {offer}\r\n" if offer else ""
        await ws.send_raw(
            (
                f"GET /ws HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                f"Sec-WebSocket-Key: {key.decode()}\r\n{extension}\r\n"
            ).encode()
        )
        async with asyncio.timeout(TIMEOUT_S):
            status, ws.response = await ws._read_head()
        assert status == 101, status
        return ws

    async def raw_frame(self) -> bytes:
        """The next frame's bytes as written (header included)."""
        async with asyncio.timeout(TIMEOUT_S):
            head = await self._take(2)
            n = head[1] & 0x7F
            extended = await self._take({126: 2, 127: 8}.get(n, 0))
            n = struct.unpack("!H" if n == 126 else "!Q", extended)[0] if extended else n
            return head + extended + await self._take(n)

    async def message(self) -> tuple[bool, Any]:
        """(compressed, decoded JSON) of the next text frame."""
        frame = await self.raw_frame()
        assert frame[0] & 0x0F == OP_TEXT, frame[:2]
        payload = frame[2 + {126: 2, 127: 8}.get(frame[1] & 0x7F, 0) :]
        if frame[0] & RSV1:
            payload = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
        return bool(frame[0] & RSV1), json.loads(payload)

    async def join(self, channel: str) -> None:
        await self.send_json({"type": "subscribe", "channel": channel})
        compressed, frame = await self.message()
        assert frame["type"] == "subscribed" and not compressed

    async def close_code(self) -> int:
        """The code of the server's close frame (skipping anything before it)."""
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                frame = await self.raw_frame()
                if frame[0] & 0x0F == OP_CLOSE:
                    return int(struct.unpack("!H", frame[2:4])[0])


def _deflated(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    return (compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


async def _raw(stack: Stack, server: rawrt.Server, offer: str | None = OFFER) -> DeflateSocket:
    return await stack.enter_async_context(await DeflateSocket.open(server.port, offer))


# --- negotiation ------------------------------------------------------------------------------


@COMPRESSING
async def test_browser_offer_gets_server_no_context_takeover(
    server: rawrt.Server, stack: Stack
) -> None:
    ws = await _raw(stack, server)
    assert ws.response["sec-websocket-extensions"] == (
        "permessage-deflate; server_no_context_takeover; client_max_window_bits=15"
    )


@pytest.mark.parametrize("server", [{}], indirect=True)
async def test_server_without_compression_answers_no_extension_and_rsv1_closes_1002(
    server: rawrt.Server, stack: Stack
) -> None:
    ws = await _raw(stack, server)
    assert "sec-websocket-extensions" not in ws.response
    await ws.send_raw(client_frame(_deflated(b'{"type":"ping"}'), RSV1 | OP_TEXT))
    assert await ws.close_code() == 1002


@COMPRESSING
async def test_unusable_offer_gets_a_plain_websocket(server: rawrt.Server, stack: Stack) -> None:
    ws = await _raw(stack, server, "permessage-deflate; server_max_window_bits")
    assert "sec-websocket-extensions" not in ws.response
    await ws.join("plain")
    await server.publish("plain", BIG)
    assert await ws.message() == (False, await _last(server, "plain"))


async def _last(server: rawrt.Server, channel: str) -> Any:
    """The envelope the server sent last on `channel` (what a plain subscriber reads)."""
    ch = server.hub.channel(channel)
    message = ch.log.after(ch.log.first_seq - 1)[-1]
    plain = message.frames[0]
    return json.loads(plain[4:] if plain[1] == 126 else plain[2:])


# --- fan-out: compressed once -----------------------------------------------------------------


@COMPRESSING
async def test_two_subscribers_get_byte_identical_compressed_frames(
    server: rawrt.Server, stack: Stack
) -> None:
    one, two = await _raw(stack, server), await _raw(stack, server)
    await one.join("news")
    await two.join("news")
    message_id = await server.publish("news", BIG)
    first, second = await one.raw_frame(), await two.raw_frame()
    assert first == second
    assert first[0] == 0x80 | RSV1 | OP_TEXT
    assert len(first) < len(json.dumps(BIG)) / 4  # it was really compressed
    ch = server.hub.channel("news")
    assert ch.log.after(ch.log.first_seq - 1)[-1].frames[2] == first  # built once, at publish
    payload = zlib.decompressobj(-15).decompress(first[4:] + b"\x00\x00\xff\xff")
    envelope = json.loads(payload)
    assert (envelope["data"], envelope["id"]) == (BIG, message_id)


@COMPRESSING
async def test_small_messages_go_uncompressed(server: rawrt.Server, stack: Stack) -> None:
    ws = await _raw(stack, server)
    await ws.join("tiny")
    await server.publish("tiny", {"n": 1})
    compressed, envelope = await ws.message()
    assert not compressed and envelope["data"] == {"n": 1}


@COMPRESSING
async def test_mixed_subscribers_all_get_every_message_in_order(
    server: rawrt.Server, stack: Stack
) -> None:
    deflating, plain = await _raw(stack, server), await _raw(stack, server, offer=None)
    assert "sec-websocket-extensions" not in plain.response
    library = await stack.enter_async_context(ws_connect(server.port))
    sse = await stack.enter_async_context(SseClient(server.port, "/api/sse/subscribe/mix"))
    await sse.next_event()  # connected
    for raw in (deflating, plain):
        await raw.join("mix")
    await ws_subscribe(library, "mix")
    sent = [BIG | {"n": n} if n % 2 else {"n": n} for n in range(12)]
    for data in sent:
        await server.publish("mix", data)
    for raw, compresses in ((deflating, True), (plain, False)):
        got = [await raw.message() for _ in sent]
        assert [envelope["data"] for _, envelope in got] == sent
        expected = [compresses and n % 2 == 1 for n in range(12)]
        assert [compressed for compressed, _ in got] == expected
    assert [(await ws_recv(library))["data"] for _ in sent] == sent
    assert [event_json(await sse.next_event()) for _ in sent] == sent  # type: ignore[arg-type]


@COMPRESSING
async def test_websockets_client_receives_and_publishes_compressed(
    server: rawrt.Server, stack: Stack
) -> None:
    client = await stack.enter_async_context(ws_connect(server.port))
    assert [e.name for e in client.protocol.extensions] == ["permessage-deflate"]
    watcher = await _raw(stack, server)
    await watcher.join("chat")
    await ws_subscribe(client, "chat")
    # The client compresses its publish (websockets does so for every message it sends).
    await client.send(json.dumps({"type": "publish", "channel": "chat", "data": BIG}))
    assert (await ws_recv(client))["data"] == BIG
    compressed, envelope = await watcher.message()
    assert compressed and envelope["data"] == BIG
    # And again on the same connection: the client kept its compression context.
    await client.send(json.dumps({"type": "publish", "channel": "chat", "data": BIG | {"n": 2}}))
    assert (await ws_recv(client))["data"] == BIG | {"n": 2}


# --- what a client may not send ---------------------------------------------------------------


@COMPRESSING
@pytest.mark.parametrize(
    "frames",
    [
        [client_frame(b"", RSV1 | OP_PING)],
        [client_frame(b'{"type":', OP_TEXT, fin=False), client_frame(b'"ping"}', RSV1 | OP_CONT)],
    ],
    ids=["rsv1-on-ping", "rsv1-on-continuation"],
)
async def test_misplaced_rsv1_closes_1002_and_others_are_served(
    server: rawrt.Server, stack: Stack, frames: list[bytes]
) -> None:
    controls = await open_controls(server, stack)
    ws = await _raw(stack, server)
    await ws.send_raw(b"".join(frames))
    assert await ws.close_code() == 1002
    await controls.check()


@pytest.mark.parametrize("server", [ON | {"max_message_bytes": 64 * 1024}], indirect=True)
async def test_decompression_bomb_closes_1009_and_a_bystander_gets_the_next_message(
    server: rawrt.Server, stack: Stack
) -> None:
    controls = await open_controls(server, stack)
    bomb = _deflated(bytes(1 << 20))  # 1 MiB of zeros in about 1 KiB
    assert len(bomb) < 2048
    ws = await _raw(stack, server)
    await ws.send_raw(client_frame(bomb, RSV1 | OP_BINARY))
    assert await ws.close_code() == 1009
    await controls.check()
