"""The client's sockets: one WebSocket (wsproto's client side) and HTTP publishes (h11).

Both run on asyncio streams. The server depends on wsproto and h11 already, so the client
adds no dependency; each does one narrow thing here (open, read text messages, answer pings,
close; post a JSON body and read the answer), which the sans-I/O protocol objects make short.

wsproto has no message-size limit (NOTES), so `WsConnection` counts bytes per message and
closes with 1009 past ClientConfig.max_message_bytes. A server that falls silent is pinged
after ping_interval_s and given up ping_timeout_s later, so a dead peer behind a lost route
is noticed even when no TCP error ever comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import AsyncGenerator, Sequence

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import ProtocolError

from rawrt.client.core import Endpoint
from rawrt.config import ClientConfig
from rawrt.errors import ClientError, Refused, Unreachable

__all__ = ["HttpPublisher", "WsConnection", "error_text"]

log = logging.getLogger("rawrt.client")

READ_BYTES = 64 * 1024  # one read; wsproto buffers what a frame has not used yet
CLOSE_WAIT_S = 2.0  # after our close frame, how long the server has to answer it
ABNORMAL = 1006  # RFC 6455 §7.4.1: the connection ended without a close frame
TOO_BIG = 1009
_TOO_BIG = ("", -1)  # what _assemble says of a message over the limit


def error_text(body: bytes) -> str:
    """The `error` of a rawrt JSON error body, or the body as text."""
    try:
        value = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()
    if isinstance(value, dict) and isinstance(value.get("error"), str):
        return str(value["error"])
    return body.decode("utf-8", "replace").strip()


async def _open_stream(
    endpoint: Endpoint, ssl_context: ssl.SSLContext | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        return await asyncio.open_connection(
            endpoint.host,
            endpoint.port,
            ssl=ssl_context,
            server_hostname=endpoint.host if ssl_context is not None else None,
        )
    except OSError as exc:
        raise Unreachable(f"cannot reach {endpoint.authority}: {exc}") from None


class WsConnection:
    """One open WebSocket to a rawrt server, after a successful handshake."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        ws: WSConnection,
        config: ClientConfig,
        early: list[Event],
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._ws = ws
        self._config = config
        self._early = early  # events that came with the handshake's answer
        self._parts: list[str] = []  # fragments of the text message in progress ...
        self._size = 0  # ... and its bytes so far, checked against max_message_bytes
        self.close_code: int | None = None
        self.close_reason = ""

    @classmethod
    async def open(
        cls, endpoint: Endpoint, ssl_context: ssl.SSLContext | None, config: ClientConfig
    ) -> WsConnection:
        """Connect and shake hands; Unreachable or Refused (the server's status and error)."""
        try:
            async with asyncio.timeout(config.connect_timeout_s):
                reader, writer = await _open_stream(endpoint, ssl_context)
                try:
                    ws = WSConnection(ConnectionType.CLIENT)
                    request = Request(host=endpoint.authority, target=endpoint.websocket_target)
                    writer.write(ws.send(request))
                    early = await _handshake(reader, ws, config.max_response_bytes)
                except BaseException:
                    writer.close()
                    raise
        except TimeoutError:
            raise Unreachable(
                f"{endpoint.authority} did not open a WebSocket within "
                f"{config.connect_timeout_s:g} s"
            ) from None
        return cls(reader, writer, ws, config, early)

    def send_text(self, text: str) -> None:
        """Write a text frame now; dropped once closing. The client writes little (auth,
        subscribe and unsubscribe frames), so there is no flow control on this side."""
        if self._ws.state is ConnectionState.OPEN and not self._writer.is_closing():
            self._writer.write(self._ws.send(TextMessage(text)))

    async def messages(self) -> AsyncGenerator[tuple[str, int], None]:
        """Each complete text message and its size in bytes, until the connection ends;
        `close_code` then says how (ABNORMAL without a close frame). ClientError for a
        message over max_message_bytes, after closing with 1009."""
        events: list[Event] = self._early
        while True:
            for event in events:
                if isinstance(event, (TextMessage, BytesMessage)):
                    message = self._assemble(event)
                    if message is _TOO_BIG:
                        await self.aclose(TOO_BIG, "message too big")
                        raise ClientError(
                            f"the server sent a message over {self._config.max_message_bytes}"
                            " bytes (ClientConfig.max_message_bytes)"
                        )
                    if message is not None:
                        yield message
                elif isinstance(event, Ping):
                    self._write(self._ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    self._on_close(event)
                    return
            data = await self._read()
            if data is None:
                return
            self._ws.receive_data(data)
            events = list(self._ws.events())

    def _assemble(self, event: TextMessage | BytesMessage) -> tuple[str, int] | None:
        """A text message once its last fragment is in; _TOO_BIG past the limit. Binary
        messages are counted and dropped: they are not part of rawrt's protocol."""
        data = event.data
        self._size += len(data.encode()) if isinstance(data, str) else len(data)
        if self._size > self._config.max_message_bytes:
            return _TOO_BIG
        if isinstance(data, str):
            self._parts.append(data)
        if not event.message_finished:
            return None
        text, size = "".join(self._parts), self._size
        self._parts, self._size = [], 0
        return (text, size) if isinstance(event, TextMessage) else None

    async def _read(self) -> bytes | None:
        """The next bytes; None once the connection is over (close_code says how)."""
        pinged = False
        for _ in range(2):  # one quiet interval, then one ping's worth of waiting
            timeout = self._config.ping_timeout_s if pinged else self._config.ping_interval_s
            try:
                async with asyncio.timeout(timeout):
                    data = await self._reader.read(READ_BYTES)
            except TimeoutError:
                if not pinged:
                    self._write(self._ws.send(Ping()))
                    pinged = True
                continue
            except OSError as exc:
                self._lost(str(exc) or type(exc).__name__)
                return None
            if not data:
                self._lost("the server closed the connection")
                return None
            return data
        self._writer.transport.abort()
        self._lost(f"no answer to a ping within {self._config.ping_timeout_s:g} s")
        return None

    def _lost(self, reason: str) -> None:
        self.close_code, self.close_reason = ABNORMAL, reason
        self._writer.close()

    def _on_close(self, event: CloseConnection) -> None:
        self.close_code, self.close_reason = event.code, event.reason or ""
        if self._ws.state is ConnectionState.REMOTE_CLOSING:
            self._write(self._ws.send(event.response()))
        self._writer.close()

    def _write(self, data: bytes) -> None:
        if not self._writer.is_closing():
            self._writer.write(data)

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Close the handshake politely (bounded wait for the server's answer), then TCP."""
        if self._ws.state is ConnectionState.OPEN and not self._writer.is_closing():
            self._writer.write(self._ws.send(CloseConnection(code, reason)))
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(CLOSE_WAIT_S):
                    for _ in range(1000):  # the server's close, then EOF
                        if not await self._reader.read(READ_BYTES):
                            break
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


async def _handshake(reader: asyncio.StreamReader, ws: WSConnection, max_body: int) -> list[Event]:
    """Read the answer to the upgrade; the events after it, or Refused with the server's
    status and error body."""
    reject: RejectConnection | None = None
    body = b""
    for _ in range(10_000):  # bounded by max_response_bytes as well: h11 caps the head
        data = await reader.read(READ_BYTES)
        try:
            ws.receive_data(data or None)
            events = list(ws.events())
        except ProtocolError as exc:
            raise Unreachable(f"not a WebSocket answer: {exc}") from None
        for i, event in enumerate(events):
            if isinstance(event, AcceptConnection):
                return events[i + 1 :]
            if isinstance(event, RejectConnection):
                reject = event
                if not event.has_body:
                    raise Refused(event.status_code, "the WebSocket upgrade was refused")
            elif isinstance(event, RejectData) and reject is not None:
                body += event.data
                if event.body_finished or len(body) > max_body:
                    raise Refused(reject.status_code, error_text(body[:max_body]))
        if not data:
            break
    if reject is not None:
        raise Refused(reject.status_code, error_text(body[:max_body]))
    raise Unreachable("the server closed the connection during the WebSocket handshake")


class _Stale(Exception):
    """A kept-alive connection was closed by the server before it answered anything."""


class HttpPublisher:
    """POSTs on one kept-alive HTTP/1.1 connection, one at a time (h11 client side)."""

    def __init__(
        self, endpoint: Endpoint, ssl_context: ssl.SSLContext | None, config: ClientConfig
    ) -> None:
        self._endpoint = endpoint
        self._ssl = ssl_context
        self._config = config
        self._lock = asyncio.Lock()
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter, h11.Connection] | None
        self._conn = None

    async def post(
        self, target: str, body: bytes, headers: Sequence[tuple[str, str]]
    ) -> tuple[int, bytes]:
        """(status, body) of one POST; Unreachable when there is no answer in time."""
        async with self._lock:
            try:
                async with asyncio.timeout(self._config.request_timeout_s):
                    try:
                        return await self._exchange(target, body, headers)
                    except _Stale:
                        # The keep-alive race: the server closed an idle connection as we
                        # reused it, and saw nothing of this request. Once, on a new one.
                        return await self._exchange(target, body, headers)
            except TimeoutError:
                self._drop()
                raise Unreachable(
                    f"no answer from {self._endpoint.authority} within "
                    f"{self._config.request_timeout_s:g} s"
                ) from None
            except (OSError, h11.ProtocolError, _Stale) as exc:
                self._drop()
                raise Unreachable(f"{self._endpoint.authority}: {exc}") from None

    async def _exchange(
        self, target: str, body: bytes, headers: Sequence[tuple[str, str]]
    ) -> tuple[int, bytes]:
        reused = self._conn is not None
        if self._conn is None:
            reader, writer = await _open_stream(self._endpoint, self._ssl)
            conn = h11.Connection(
                h11.CLIENT, max_incomplete_event_size=self._config.max_response_bytes
            )
            self._conn = (reader, writer, conn)
        reader, writer, conn = self._conn
        fields = [
            ("Host", self._endpoint.authority),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            *headers,
        ]
        try:
            data = conn.send(h11.Request(method="POST", target=target, headers=fields))
            writer.write(data + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
            await writer.drain()
            return await self._answer(reader, conn)
        except (OSError, _Stale) as exc:
            self._drop()
            if reused:
                raise _Stale(str(exc) or type(exc).__name__) from None
            raise OSError(str(exc) or type(exc).__name__) from None

    async def _answer(
        self, reader: asyncio.StreamReader, conn: h11.Connection
    ) -> tuple[int, bytes]:
        status = 0
        body = bytearray()
        for _ in range(100_000):  # bounded: every turn reads or consumes bytes
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(READ_BYTES)
                if not data and status == 0:
                    raise _Stale("closed before answering")
                conn.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > self._config.max_response_bytes:
                    raise h11.RemoteProtocolError("answer too large")
            elif isinstance(event, h11.EndOfMessage):
                self._keep_or_drop(conn)
                return status, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                raise OSError("the answer was cut short")
        raise h11.RemoteProtocolError("endless answer")

    def _keep_or_drop(self, conn: h11.Connection) -> None:
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        else:
            self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn[1].close()
            self._conn = None

    async def aclose(self) -> None:
        async with self._lock:
            self._drop()
