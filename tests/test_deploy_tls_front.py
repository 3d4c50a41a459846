"""deploy/nginx-tls.conf in front of a rawrt node that trusts it, end to end over real sockets.

nginx (started here from the template, with a certificate made in tmp_path) terminates TLS
and proxies to one rawrt node on loopback, which runs with `trusted_proxies` naming nginx's
address and `max_connections_per_ip=1`. Clients connect to nginx from several loopback source
addresses; rawrt must see each one's own address (the right-most untrusted hop of the
X-Forwarded-For nginx appends), not nginx's, and not what a client forges.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from support.certs import Cert, make_cert
from support.clients import read_response, ws_recv, ws_subscribe
from test_deploy_files import DEPLOY, render
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

import rawrt

pytestmark = pytest.mark.nginx

HOST = "127.0.0.1"
TIMEOUT_S = 5.0
StartServer = Callable[..., Awaitable[rawrt.Server]]


def _nginx() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if found is None:
        if os.environ.get("RAWRT_REQUIRE_NGINX") == "1":
            pytest.fail("nginx is not installed, and RAWRT_REQUIRE_NGINX=1")
        pytest.skip("nginx is not installed")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


async def _listening(port: int, proc: subprocess.Popen[bytes]) -> bool:
    for _ in range(200):  # bounded: 200 tries of at most 50 ms
        if proc.poll() is not None:
            return False
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection(HOST, port)
            writer.close()
            return True
        await asyncio.sleep(0.05)
    return False


@contextlib.asynccontextmanager
async def nginx_front(node_port: int, folder: Path, cert: Cert) -> AsyncIterator[int]:
    """nginx-tls.conf rendered for one node, run in the foreground as our child."""
    nginx = _nginx()
    folder.mkdir()
    (folder / "logs").mkdir()
    (folder / "tmp").mkdir()
    for _ in range(3):  # a port taken between picking and binding: pick another
        port = _free_port()
        text = render((DEPLOY / "nginx-tls.conf").read_text(), str(folder), f"{HOST}:{port}", cert)
        text = text.replace("server 127.0.0.1:8001;\n        server 127.0.0.1:8002;",
                            f"server {HOST}:{node_port};")  # fmt: skip
        conf = folder / "nginx.conf"
        conf.write_text(text)
        proc = subprocess.Popen(
            [nginx, "-p", str(folder), "-c", str(conf), "-e", str(folder / "logs/error.log"),
             "-g", "daemon off;"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        if await _listening(port, proc):
            break
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    else:
        raise AssertionError((folder / "logs/error.log").read_text())
    try:
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)  # fast shutdown of our own child, by its pid
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def wss(port: int, source: str, tls: ssl.SSLContext, **options: Any) -> connect:
    return connect(
        f"wss://{HOST}:{port}/ws", ssl=tls, local_addr=(source, 0), ping_interval=None,
        open_timeout=TIMEOUT_S, close_timeout=2, **options,
    )  # fmt: skip


async def https(
    port: int, method: str, target: str, source: str, tls: ssl.SSLContext, body: bytes = b""
) -> Any:
    async with asyncio.timeout(TIMEOUT_S):
        reader, writer = await asyncio.open_connection(HOST, port, ssl=tls, local_addr=(source, 0))
        head = f"{method} {target} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n"
        writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        response = await read_response(reader, method)
    await _closed(writer)
    return response


async def _closed(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        await asyncio.wait_for(writer.wait_closed(), TIMEOUT_S)


async def test_tls_front_passes_each_clients_own_address_to_a_node_that_trusts_it(
    start_server: StartServer, tmp_path: Path, stack: contextlib.AsyncExitStack
) -> None:
    node = await start_server(trusted_proxies=HOST, max_connections_per_ip=1)
    cert = make_cert(tmp_path)
    tls = cert.client_context()
    port = await stack.enter_async_context(nginx_front(node.port, tmp_path / "nginx", cert))

    first = await stack.enter_async_context(wss(port, "127.0.0.2", tls))
    await ws_subscribe(first, "front")
    # The same client again: its one allowed connection is taken, and rawrt says so through
    # nginx. Were nginx's address counted, every client would share one allowance instead.
    with pytest.raises(InvalidStatus) as refused:
        await stack.enter_async_context(wss(port, "127.0.0.2", tls))
    assert refused.value.response.status_code == 503
    # Another client, even one that forges the first one's address, has its own allowance.
    forger = await stack.enter_async_context(
        wss(port, "127.0.0.3", tls, additional_headers={"X-Forwarded-For": "127.0.0.2"})
    )
    await ws_subscribe(forger, "front")
    # Plain requests from many clients share nginx's pooled connections to the node; each
    # is counted for its own client only while it lasts.
    for n in range(4, 10):
        reply = await https(port, "POST", "/api/publish/front", f"127.0.0.{n}", tls, b'{"n":1}')
        assert reply.status == 200, reply.body
    for ws in (first, forger):
        got = [(await ws_recv(ws))["data"] for _ in range(6)]
        assert got == [{"n": 1}] * 6
    # An event stream over TLS through the front (unbuffered), from a fresh address.
    async with asyncio.timeout(TIMEOUT_S):
        reader, writer = await asyncio.open_connection(
            HOST, port, ssl=tls, local_addr=("127.0.0.10", 0)
        )
        writer.write(f"GET /api/sse/subscribe/front HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head
        await reader.readuntil(b'"connected"')
        reply = await https(port, "POST", "/api/publish/front", "127.0.0.4", tls, b'"sse"')
        assert reply.status == 200
        assert b'data: "sse"' in await reader.readuntil(b'"sse"\n')
    writer.transport.abort()  # an open stream: nginx would not answer a TLS close_notify
