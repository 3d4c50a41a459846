"""Idle memory of a TLS connection next to a plain one: `python -m bench.tls_memory [N]`.

Starts `python -m rawrt` twice, plain and with `--tls-cert/--tls-key` (a throwaway
certificate made in a temporary folder), and holds N idle connections of each transport on
it: WebSocket subscribers (subscribed to one channel) and SSE streams. The figure is the
server's VmRSS once all N are confirmed open, minus VmRSS before, divided by N. A warm-up of
a few connections first loads what the first one would otherwise be charged with.

Each connection is confirmed by the server's own answer (`subscribed`, or the stream's first
event), every wait is bounded, and the client runs in this process, never the server's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.certs import make_cert  # the tests' throwaway certificates

HOST = "127.0.0.1"
WAIT_S = 60.0
WARM_UP = 50
# Clients spread over source addresses so no one address runs short of ports.
SOURCES = [f"127.0.0.{n}" for n in range(2, 10)]


def _rss(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    assert match, text
    return int(match.group(1)) * 1024


@contextlib.contextmanager
def _rawrt(*args: str) -> Iterator[tuple[int, int]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAWRT_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rawrt", "--port", "0", "--max-connections", "19000", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stderr is not None
        for _ in range(50):
            line = proc.stderr.readline()
            found = re.search(r"listening on https?://[0-9.]+:(\d+)", line)
            if found:
                break
        else:
            raise AssertionError("rawrt did not say where it listens")
        yield proc.pid, int(found.group(1))
    finally:
        proc.terminate()
        proc.wait(15)


async def _open(
    port: int, n: int, tls: ssl.SSLContext | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    source = SOURCES[n % len(SOURCES)]
    return await asyncio.open_connection(HOST, port, ssl=tls, local_addr=(source, 0))


async def _websocket(port: int, n: int, tls: ssl.SSLContext | None) -> asyncio.StreamWriter:
    """An upgraded, subscribed WebSocket, written by hand to keep the client light."""
    reader, writer = await _open(port, n, tls)
    writer.write(
        f"GET /ws HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    payload = b'{"type":"subscribe","channel":"idle"}'
    mask = b"\x00\x00\x00\x00"  # a zero mask leaves the payload as it is
    writer.write(bytes([0x81, 0x80 | len(payload)]) + mask + payload)
    frame = await reader.read(256)
    assert b'"subscribed"' in frame, frame
    return writer


async def _stream(port: int, n: int, tls: ssl.SSLContext | None) -> asyncio.StreamWriter:
    reader, writer = await _open(port, n, tls)
    writer.write(f"GET /api/sse/subscribe/idle HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    await reader.readuntil(b'"connected"')  # the stream's first event
    return writer


async def _hold(
    kind: str, port: int, count: int, tls: ssl.SSLContext | None
) -> list[asyncio.StreamWriter]:
    opener = _websocket if kind == "websocket" else _stream
    gate = asyncio.Semaphore(100)  # handshakes in flight at once

    async def one(n: int) -> asyncio.StreamWriter:
        async with gate:
            return await opener(port, n, tls)

    async with asyncio.timeout(WAIT_S):
        return list(await asyncio.gather(*(one(n) for n in range(count))))


async def _close(writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.close()
    await asyncio.sleep(0)


async def measure(
    kind: str, count: int, tls_files: tuple[str, str] | None, client: ssl.SSLContext | None
) -> float:
    args = ("--tls-cert", tls_files[0], "--tls-key", tls_files[1]) if tls_files else ()
    with _rawrt(*args) as (pid, port):
        await _close(await _hold(kind, port, WARM_UP, client))
        await asyncio.sleep(0.5)  # let the warm-up's closes reach the server
        before = _rss(pid)
        held = await _hold(kind, port, count, client)
        await asyncio.sleep(0.5)
        after = _rss(pid)
        await _close(held)
    return (after - before) / count


async def main(count: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        cert = make_cert(Path(folder))
        client = cert.client_context()
        files = (str(cert.cert), str(cert.key))
        print(f"idle connections: {count} of each; server RSS after minus before, per connection")
        for kind in ("websocket", "sse"):
            plain = await measure(kind, count, None, None)
            tls = await measure(kind, count, files, client)
            print(f"{kind:9}  plain {plain / 1024:6.2f} KiB   TLS {tls / 1024:6.2f} KiB   "
                  f"TLS costs {(tls - plain) / 1024:+.2f} KiB")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000))
