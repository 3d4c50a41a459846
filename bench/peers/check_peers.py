"""Smoke-check the benchmark peers against the shared wire protocol.

For each peer: start it on a free port, attach a WebSocket subscriber, an SSE
subscriber and a long-poll subscriber to channel "ch", publish three messages
with POST /api/broadcast/ch, and check that every subscriber got all three,
in order. Also checks WS ping/pong and the bad-JSON error, HTTP keep-alive
with pipelining, a plain 404, and a clean exit on SIGTERM. Transports a peer
does not implement (it answers 404) are reported as n/a.

Everything talks to 127.0.0.1 only; every wait has a timeout and every loop
a bound; only the peer processes this script started are signalled.

Usage: python check_peers.py [PEER ...]     (default: all peers)
Exit status: 0 when every check passed or is n/a, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import re
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from websockets.asyncio.client import ClientConnection, connect

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"
CHANNEL = "ch"
COUNT = 3
STEP_TIMEOUT = 5.0  # any single wait
PEER_TIMEOUT = 60.0  # everything for one peer
POLL_SETTLE = 0.2  # time for a re-sent poll request to be parked server-side
COLUMNS = ("start", "broadcast", "ws", "ws-ctl", "sse", "poll", "pipeline", "404", "exit")


@dataclass
class Peer:
    name: str
    argv: list[str]
    requires: Path | None = None  # must exist before the peer can start


PEERS = [
    Peer("node", ["node", str(HERE / "node" / "server.js")], HERE / "node" / "node_modules"),
    Peer("websockets", [sys.executable, str(HERE / "websockets_peer.py")]),
    Peer("aiohttp", [sys.executable, str(HERE / "aiohttp_peer.py")]),
    Peer("floor", [sys.executable, str(HERE / "floor_peer.py")]),
]


class CheckFailed(Exception):
    pass


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def expected_data(i: int) -> dict[str, Any]:
    return {"seq": i, "text": f"hello {i}"}


async def until(predicate: Callable[[], bool], timeout: float = STEP_TIMEOUT) -> bool:
    """Wait (bounded) for a condition that background readers make true.
    A timeout is not raised: the per-transport verdicts name the laggard."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


# ---- raw HTTP/1.1 (for poll and pipelining: we need to see the wire) --------


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One Content-Length response; the peers answer these routes that way."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length)
    return status, headers, body


def raw_request(method: str, path: str, body: bytes = b"") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


# ---- subscribers ------------------------------------------------------------


@dataclass
class WsSub:
    conn: ClientConnection
    messages: list[dict[str, Any]] = field(default_factory=list)

    async def recv_until(self, kind: str) -> dict[str, Any]:
        for _ in range(10):
            raw = await asyncio.wait_for(self.conn.recv(), STEP_TIMEOUT)
            frame: dict[str, Any] = json.loads(raw)
            if frame.get("type") == kind:
                return frame
        raise CheckFailed(f"no {kind!r} frame")

    async def read(self) -> None:
        for _ in range(100):
            frame = json.loads(await self.conn.recv())
            if frame.get("type") == "message":
                self.messages.append(frame)


async def ws_subscribe(port: int) -> WsSub:
    conn = await connect(f"ws://{HOST}:{port}/ws", open_timeout=STEP_TIMEOUT)
    sub = WsSub(conn)
    await conn.send(json.dumps({"type": "subscribe", "channel": CHANNEL}))
    frame = await sub.recv_until("subscribed")
    expect(frame.get("channel") == CHANNEL, f"subscribed frame: {frame}")
    return sub


async def ws_control(sub: WsSub) -> None:
    await sub.conn.send(json.dumps({"type": "ping"}))
    pong = await sub.recv_until("pong")
    expect(isinstance(pong.get("timestamp"), int), f"pong frame: {pong}")
    await sub.conn.send("{not json")
    error = await sub.recv_until("error")
    expect(error.get("data") == "Invalid message format", f"error frame: {error}")


@dataclass
class SseSub:
    resp: aiohttp.ClientResponse
    events: list[dict[str, str]] = field(default_factory=list)

    async def read(self) -> None:
        event: dict[str, str] = {}
        for _ in range(1000):
            line = (await self.resp.content.readline()).decode()
            if not line:
                return  # stream closed
            line = line.rstrip("\n")
            if line == "":
                if event:
                    self.events.append(event)
                event = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                event[name] = value.removeprefix(" ")


async def sse_subscribe(session: aiohttp.ClientSession, port: int) -> SseSub | None:
    """None when the peer has no SSE (404)."""
    url = f"http://{HOST}:{port}/api/sse/subscribe/{CHANNEL}"
    resp = await session.get(url, timeout=aiohttp.ClientTimeout(sock_connect=STEP_TIMEOUT))
    if resp.status == 404:
        resp.release()
        return None
    expect(resp.status == 200, f"SSE status {resp.status}")
    ctype = resp.headers.get("Content-Type", "")
    expect(ctype.startswith("text/event-stream"), f"SSE content type {ctype!r}")
    expect(resp.headers.get("Cache-Control") == "no-cache", "SSE Cache-Control")
    return SseSub(resp)


@dataclass
class PollSub:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    messages: list[Any] = field(default_factory=list)
    parked: bool = False
    unavailable: bool = False
    error: str = ""

    async def run(self, path: str) -> None:
        """Poll again right after every answer, on one keep-alive connection."""
        for _ in range(COUNT + 5):
            self.writer.write(raw_request("GET", path))
            await self.writer.drain()
            settle = asyncio.create_task(self.mark_parked())
            status, headers, body = await read_response(self.reader)
            settle.cancel()
            self.parked = False
            if status == 404:
                self.unavailable = True
                return
            if status != 200 or not headers.get("content-type", "").startswith("application/json"):
                self.error = f"poll answered {status} {headers.get('content-type')}"
                return
            answer = json.loads(body)
            self.messages.extend(answer["messages"])
            if len(self.messages) >= COUNT:
                return

    async def mark_parked(self) -> None:
        await asyncio.sleep(POLL_SETTLE)
        self.parked = True


# ---- the checks ---------------------------------------------------------------


def check_ws_messages(sub: WsSub) -> None:
    got = [m.get("data") for m in sub.messages]
    expect(got == [expected_data(i) for i in range(1, COUNT + 1)], f"WS got {got}")
    for m in sub.messages:
        expect(m.get("channel") == CHANNEL, f"WS channel in {m}")
        expect(isinstance(m.get("timestamp"), int), f"WS timestamp in {m}")
        expect(isinstance(m.get("id"), str), f"WS id in {m}")


def check_sse_events(sub: SseSub) -> None:
    expect(
        bool(sub.events) and sub.events[0].get("data") == '{"type":"connected"}',
        f"SSE first event {sub.events[:1]}",
    )
    got = [json.loads(e["data"]) for e in sub.events[1:] if "data" in e]
    expect(got == [expected_data(i) for i in range(1, COUNT + 1)], f"SSE got {got}")
    expect(all("id" in e for e in sub.events[1:]), "SSE event without id")


async def check_pipeline(port: int) -> None:
    """Two publishes and a 404 in ONE write on ONE connection: answered in order."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(
            raw_request("POST", "/api/publish/pipe", b'{"n":1}')
            + raw_request("POST", "/api/publish/pipe", b'{"n":2}')
            + raw_request("POST", "/no/such/route", b"{}")
        )
        await writer.drain()
        answers = [await asyncio.wait_for(read_response(reader), STEP_TIMEOUT) for _ in range(3)]
    finally:
        writer.close()
    statuses = [a[0] for a in answers]
    expect(statuses == [200, 200, 404], f"pipelined statuses {statuses}")
    ids = [json.loads(a[2])["id"] for a in answers[:2]]
    expect(ids[0] != ids[1], f"pipelined ids {ids}")
    expect(all(json.loads(a[2]).get("published") is True for a in answers[:2]), "publish ack")


async def check_404(port: int) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(f"GET /no/such/route HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        await writer.drain()
        status, _, _ = await asyncio.wait_for(read_response(reader), STEP_TIMEOUT)
    finally:
        writer.close()
    expect(status == 404, f"unknown route answered {status}")


async def publish_all(
    session: aiohttp.ClientSession, port: int, ready: Callable[[int], bool]
) -> None:
    """Publish one message at a time, each once every subscriber is ready for it."""
    url = f"http://{HOST}:{port}/api/broadcast/{CHANNEL}"
    for i in range(1, COUNT + 1):
        await until(functools.partial(ready, i - 1))
        async with session.post(url, json=expected_data(i)) as resp:
            expect(resp.status == 200, f"broadcast answered {resp.status}")
            ack = await resp.json(content_type=None)
            expect(ack.get("sent") is True and isinstance(ack.get("id"), str), f"ack {ack}")
    await until(lambda: ready(COUNT))


async def run_transports(port: int, results: dict[str, str]) -> None:
    """WS + SSE + poll subscribers, three broadcasts, then per-transport verdicts."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=STEP_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        ws = await ws_subscribe(port)
        await ws_control(ws)
        results["ws-ctl"] = "ok"
        sse = await sse_subscribe(session, port)
        reader, writer = await asyncio.open_connection(HOST, port)
        poll = PollSub(reader, writer)
        tasks = [
            asyncio.create_task(ws.read()),
            asyncio.create_task(poll.run(f"/api/poll/{CHANNEL}")),
        ]
        if sse is not None:
            tasks.append(asyncio.create_task(sse.read()))
            await until(lambda: len(sse.events) >= 1)
        await until(lambda: poll.parked or poll.unavailable or bool(poll.error))

        def ready(n: int) -> bool:
            ok = len(ws.messages) >= n
            ok = ok and (sse is None or len(sse.events) >= n + 1)
            return ok and (
                poll.unavailable
                or bool(poll.error)
                or (len(poll.messages) >= n and (poll.parked or n == COUNT))
            )

        try:
            await publish_all(session, port, ready)
        finally:
            for task in tasks:
                task.cancel()
            await ws.conn.close()
            writer.close()
            if sse is not None:
                sse.resp.close()

        results["ws"] = verdict(lambda: check_ws_messages(ws))
        results["sse"] = "n/a" if sse is None else verdict(lambda: check_sse_events(sse))
        if poll.unavailable:
            results["poll"] = "n/a"
        elif poll.error:
            results["poll"] = f"FAIL: {poll.error}"
        else:
            want = [expected_data(i) for i in range(1, COUNT + 1)]
            results["poll"] = "ok" if poll.messages == want else f"FAIL: poll got {poll.messages}"


def verdict(check: Callable[[], None]) -> str:
    try:
        check()
    except CheckFailed as exc:
        return f"FAIL: {exc}"
    return "ok"


async def guarded(results: dict[str, str], column: str, coro: Any) -> None:
    try:
        await asyncio.wait_for(coro, PEER_TIMEOUT)
        results.setdefault(column, "ok")
    except Exception as exc:
        results[column] = f"FAIL: {type(exc).__name__}: {exc}"


# ---- peer processes -----------------------------------------------------------


async def start(peer: Peer, log: Any) -> tuple[asyncio.subprocess.Process, int]:
    if peer.requires is not None and not peer.requires.exists():
        raise CheckFailed(f"{peer.requires} missing (run npm ci in {peer.requires.parent})")
    proc = await asyncio.create_subprocess_exec(
        *peer.argv,
        "--host",
        HOST,
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=log,
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), STEP_TIMEOUT * 2)
    except TimeoutError:
        await stop(proc)
        raise CheckFailed("no 'listening on' line") from None
    match = re.fullmatch(r"listening on http://([^:]+):(\d+)\n", line.decode())
    if not match:
        await stop(proc)
        raise CheckFailed(f"unexpected first line {line!r}")
    return proc, int(match.group(2))


async def stop(proc: asyncio.subprocess.Process) -> int:
    """SIGTERM our own child, escalate to SIGKILL after a bound; its exit code."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), STEP_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return -signal.SIGKILL
    return proc.returncode if proc.returncode is not None else -1


async def check_peer(peer: Peer) -> dict[str, str]:
    results: dict[str, str] = {}
    with tempfile.TemporaryFile() as log:
        try:
            proc, port = await start(peer, log)
        except (CheckFailed, OSError) as exc:
            return {"start": f"FAIL: {exc}"}
        results["start"] = "ok"
        try:
            await guarded(results, "broadcast", run_transports(port, results))
            await guarded(results, "pipeline", check_pipeline(port))
            await guarded(results, "404", check_404(port))
        finally:
            code = await stop(proc)
        results["exit"] = "ok" if code == 0 else f"FAIL: exit code {code}"
        log.seek(0)
        stderr = log.read().decode(errors="replace").strip()
        if stderr:
            results["stderr"] = stderr[-2000:]
    return results


# ---- report -----------------------------------------------------------------


def short(value: str) -> str:
    return "FAIL" if value.startswith("FAIL") else value


def print_table(all_results: dict[str, dict[str, str]]) -> bool:
    widths = [max(len("peer"), *(len(n) for n in all_results))] + [max(len(c), 4) for c in COLUMNS]
    header = ["peer", *COLUMNS, "result"]
    print("  ".join(h.ljust(w) for h, w in zip(header, [*widths, 6], strict=True)))
    all_ok = True
    for name, results in all_results.items():
        cells = [short(results.get(c, "-")) for c in COLUMNS]
        ok = all(c in ("ok", "n/a") for c in cells)
        all_ok = all_ok and ok
        row = [name, *cells, "PASS" if ok else "FAIL"]
        print("  ".join(v.ljust(w) for v, w in zip(row, [*widths, 6], strict=True)))
    for name, results in all_results.items():
        for column, value in results.items():
            if value.startswith("FAIL") or column == "stderr":
                print(f"\n[{name}] {column}: {value}")
    return all_ok


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("peers", nargs="*", help="peer names (default: all)")
    args = parser.parse_args()
    chosen = [p for p in PEERS if not args.peers or p.name in args.peers]
    if not chosen:
        parser.error(f"unknown peer; choose from {[p.name for p in PEERS]}")
    all_results = {}
    for peer in chosen:
        all_results[peer.name] = await check_peer(peer)
    return 0 if print_table(all_results) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
