"""WebSocket fan-out with permessage-deflate on and off: rawrt and `websockets` (issue 11, §3).

    python -m bench.compression [--subscribers 500] [--messages 200] [--smoke]

For each server (rawrt, compressing each message once for every subscriber; the `websockets`
peer, whose broadcast() compresses per connection with its context kept), compression off
and on, and JSON messages of about 100 B, 1 KiB and 16 KiB:

- the server runs pinned to CPU 0 (as the main harness does), this process on CPU 1;
- `--subscribers` raw-socket WebSocket clients (asyncio protocols here) subscribe to one
  channel, offering permessage-deflate as a browser does when compression is on; the
  server's RSS is read before they connect and once they are subscribed and idle;
- `--messages` messages are published over HTTP, one at a time: the next goes out once every
  subscriber has the last one (a closed loop), so nothing is lost to buffering;
- each subscriber counts the bytes and frames it reads; every one must get every message,
  and subscriber 0 inflates every frame (with or without context, as negotiated) and checks
  the message's data.

Reported: server CPU per delivery (µs, from /proc/PID/task/*/schedstat over the publishing
window), bytes on the wire per delivery (frame headers included), compressed ratio, idle RSS
per subscriber, and publish-to-last-delivery time. The section goes into bench/COMPRESSION.md
between its markers, with a chart (bench/compression.png) when matplotlib is present.
`--smoke` runs a tiny version of everything and writes to bench/out/compression/ instead:
its figures mean nothing. Every process is started here and stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import struct
import sys
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.harness.procs import Proc, free_port, machine_busy, rss_bytes, start, wait_listening

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "compression"
BEGIN = "<!-- begin: python -m bench.compression -->"
END = "<!-- end: python -m bench.compression -->"
CHANNEL = "bench"
OFFER = "permessage-deflate; client_max_window_bits"  # what Chromium sends
START_BOUND_S = 20.0
DELIVERY_BOUND_S = 30.0  # every subscriber must have a message within this
SIZES = {"100 B": 100, "1 KiB": 1024, "16 KiB": 16 * 1024}
SERVERS = ("rawrt", "websockets")
# fmt: off
_WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
          "juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo",
          "sierra", "tango", "uniform", "victor", "whiskey", "xray", "yankee", "zulu"]
# fmt: on


# --- the messages -----------------------------------------------------------------------------


def payload(size: int, n: int) -> dict[str, Any]:
    """A JSON object of about `size` bytes that looks like application data (records with
    repeated keys and free text), different for every `n`, compressible as such data is."""
    rng = random.Random(n)
    items: list[dict[str, Any]] = []
    data: dict[str, Any] = {"n": n, "items": items}
    while len(_compact(data)) < size - 40:
        items.append(
            {
                "id": rng.randrange(10**6),
                "user": rng.choice(_WORDS),
                "score": round(rng.random() * 100, 2),
                "text": " ".join(rng.choice(_WORDS) for _ in range(rng.randrange(2, 8))),
            }
        )
    if not items:
        data["text"] = " ".join(rng.choice(_WORDS) for _ in range(max(1, size // 12)))
    return data


# --- the servers ------------------------------------------------------------------------------


def _argv(server: str, port: int, compression: bool) -> list[str]:
    if server == "rawrt":
        flags = ["--ws-compression"] if compression else []
        base = [sys.executable, "-m", "rawrt", "--host", "127.0.0.1", "--port", str(port)]
        return base + flags + ["--log-level", "warning"]
    return [sys.executable, str(ROOT / "bench/peers/websockets_peer.py"), "--port", str(port)]


def _start_server(server: str, compression: bool) -> tuple[Proc, int]:
    port = free_port()
    os.environ["PEER_COMPRESSION"] = "deflate" if compression else ""  # websockets peer only
    log = OUT / "logs" / f"{server}-{'on' if compression else 'off'}.log"
    proc = start(_argv(server, port, compression), 0, log, ROOT)
    if not wait_listening(proc, port, START_BOUND_S):
        proc.stop()
        raise RuntimeError(f"{server} did not listen:\n{proc.log_tail()}")
    return proc, port


# --- the subscribers --------------------------------------------------------------------------


class Subscriber(asyncio.Protocol):
    """A WebSocket client reading frames whole and counting them; `check` inflates and
    decodes each message (subscriber 0 only)."""

    def __init__(self, check: bool) -> None:
        self.check = check
        self.transport: asyncio.Transport | None = None
        self.head: bytes | None = None  # the 101 response head, once read
        self.buffer = bytearray()
        self.bytes = 0  # after the handshake
        self.messages = 0
        self.compressed = 0
        self.seen: list[int] = []  # `n` of each message (when checking)
        self.inflater: Any = None
        self.takeover = True
        self.ready = asyncio.get_running_loop().create_future()
        self.progress = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.bytes += len(data)
        if self.head is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            self.head = bytes(self.buffer[:end])
            del self.buffer[: end + 4]
            self.takeover = b"server_no_context_takeover" not in self.head.lower()
        self._frames()

    def _frames(self) -> None:
        buf = self.buffer
        pos = 0
        while len(buf) - pos >= 2:
            first, n = buf[pos], buf[pos + 1] & 0x7F
            start = pos + 2 + {126: 2, 127: 8}.get(n, 0)
            if len(buf) < start:
                break
            if n == 126:
                n = struct.unpack_from("!H", buf, pos + 2)[0]
            elif n == 127:
                n = struct.unpack_from("!Q", buf, pos + 2)[0]
            if len(buf) - start < n:
                break
            self._frame(first, buf[start : start + n])
            pos = start + n
        del buf[:pos]

    def _frame(self, first: int, body: bytearray) -> None:
        if (first & 0x0F) == 0x9 and self.transport is not None:
            self.transport.write(_client_frame(bytes(body), 0xA))  # keepalive: answer pings
        if (first & 0x0F) != 0x1:
            return
        compressed = bool(first & 0x40)
        data = bytes(body)
        if self.check and compressed:  # every compressed frame: the context may carry over
            if self.inflater is None or not self.takeover:
                self.inflater = zlib.decompressobj(-15)
            data = self.inflater.decompress(data + b"\x00\x00\xff\xff")
        if not self.ready.done():
            self.ready.set_result(None)  # the `subscribed` answer
            return
        self.messages += 1
        self.compressed += compressed
        if self.check:
            self.seen.append(json.loads(data)["data"]["n"])
        self.progress.set()


def _client_frame(body: bytes, opcode: int = 0x1) -> bytes:
    """A masked final frame of fewer than 126 bytes (a subscribe, a pong)."""
    mask = os.urandom(4)
    return (
        bytes((0x80 | opcode, 0x80 | len(body)))
        + mask
        + bytes(b ^ mask[i % 4] for i, b in enumerate(body))
    )


async def _subscribe(port: int, compression: bool, check: bool) -> Subscriber:
    loop = asyncio.get_running_loop()
    transport, sub = await loop.create_connection(lambda: Subscriber(check), "127.0.0.1", port)
    sub.transport = transport
    key = base64.b64encode(os.urandom(16)).decode()
    extension = f"Sec-WebSocket-Extensions: {OFFER}\r\n" if compression else ""
    transport.write(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"{extension}\r\n"
        ).encode()
    )
    transport.write(_client_frame(json.dumps({"type": "subscribe", "channel": CHANNEL}).encode()))
    async with asyncio.timeout(START_BOUND_S):
        await sub.ready
    return sub


async def _publish(port: int, data: dict[str, Any]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        body = _compact(data)
        writer.write(
            f"POST /api/publish/{CHANNEL} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            f"\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        status = (await reader.readline()).split()
        assert status[1] == b"200", status
    finally:
        writer.close()


async def _drive(
    port: int, pid: int, args: argparse.Namespace, size: int, compression: bool
) -> dict[str, Any]:
    rss_before = rss_bytes(pid) or 0
    subs = [await _subscribe(port, compression, n == 0) for n in range(args.subscribers)]
    await asyncio.sleep(1.0)  # let the server settle before reading its memory
    rss_idle = rss_bytes(pid) or 0
    negotiated = subs[0].head is not None and b"permessage-deflate" in subs[0].head.lower()
    for sub in subs:
        sub.bytes = 0
    messages = [payload(size, n) for n in range(args.messages)]
    latencies: list[float] = []
    cpu_before, t_before = _schedstat_s(pid), time.monotonic()
    for n, data in enumerate(messages, 1):
        sent = time.monotonic()
        await _publish(port, data)
        async with asyncio.timeout(DELIVERY_BOUND_S):
            for sub in subs:
                while sub.messages < n:
                    sub.progress.clear()
                    await sub.progress.wait()
        latencies.append(time.monotonic() - sent)
    cpu = _schedstat_s(pid) - cpu_before
    elapsed = time.monotonic() - t_before
    assert all(sub.messages == args.messages for sub in subs), "a subscriber missed messages"
    assert subs[0].seen == list(range(args.messages)), "subscriber 0 read wrong data"
    deliveries = args.subscribers * args.messages
    wire = sum(sub.bytes for sub in subs)
    for sub in subs:
        if sub.transport is not None:
            sub.transport.close()
    latencies.sort()
    return {
        "negotiated": negotiated,
        "payload_bytes": len(_compact(messages[0])),
        "cpu_us_per_delivery": cpu / deliveries * 1e6,
        "server_cpu_share": cpu / elapsed,
        "wire_bytes_per_delivery": wire / deliveries,
        "compressed_share": sum(sub.compressed for sub in subs) / deliveries,
        "idle_rss_per_subscriber": (rss_idle - rss_before) / args.subscribers,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "max_ms": latencies[-1] * 1000,
    }


def _compact(data: object) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def _schedstat_s(pid: int) -> float:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread may end between listing and reading
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def run_one(server: str, compression: bool, size: int, args: argparse.Namespace) -> dict[str, Any]:
    proc, port = _start_server(server, compression)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            result: dict[str, Any] = runner.run(_drive(port, proc.pid, args, size, compression))
            return result
    finally:
        proc.stop()


def _loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


# --- the report -------------------------------------------------------------------------------


def section(rows: list[dict[str, Any]], argv: Sequence[str], args: argparse.Namespace) -> str:
    lines = [
        BEGIN,
        "## Fan-out with and without permessage-deflate (`python -m bench.compression`)",
        "",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; command: "
        f"`python -m bench.compression {' '.join(argv)}`; {args.subscribers} WebSocket "
        f"subscribers of one channel, {args.messages} messages each published over HTTP one "
        "at a time (the next once every subscriber has the last); medians over "
        f"{args.repeats} repeat(s).",
        "- The server is pinned to CPU 0, the subscribers (Python, raw sockets, in one process) "
        "to CPU 1. CPU is the server's, from /proc/PID/task/*/schedstat over the publishing "
        "window, divided by deliveries; wire bytes are what subscribers read after the "
        "handshake, frame headers included. Compression on: subscribers offer what a browser "
        f"offers (`{OFFER}`). rawrt compresses each message once (server_no_context_takeover) "
        "and leaves payloads under 256 bytes uncompressed; `websockets` compresses per "
        "connection with its context kept (its default settings).",
        "- The machine (2 cores) was shared with other work while this ran; the last column "
        "says how busy its cores were in the second before each run.",
        "",
        "| server | message | compression | CPU µs/delivery | wire bytes/delivery | "
        "compressed | idle RSS/subscriber | publish → last ms (p50, max) | cores busy before |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['server']} | {row['label']} ({row['payload_bytes']:,} B data) | "
            f"{'on' if row['compression'] else 'off'}"
            f"{'' if row['negotiated'] == row['compression'] else ' (not negotiated!)'} | "
            f"{row['cpu_us_per_delivery']:.1f} | {row['wire_bytes_per_delivery']:,.0f} | "
            f"{row['compressed_share']:.0%} | {row['idle_rss_per_subscriber'] / 1024:.1f} KiB | "
            f"{row['p50_ms']:.1f}, {row['max_ms']:.1f} | "
            f"{' + '.join(f'{v:.0%}' for v in row['machine_busy_before'])} |"
        )
    lines += ["", *_summary(rows), "", END]
    return "\n".join(lines)


def _summary(rows: list[dict[str, Any]]) -> list[str]:
    """Per server and size, what compression changed (on ÷ off)."""
    out = []
    by = {(r["server"], r["label"], r["compression"]): r for r in rows}
    for server in SERVERS:
        for label in SIZES:
            on, off = by.get((server, label, True)), by.get((server, label, False))
            if on and off:
                cpu = on["cpu_us_per_delivery"] / off["cpu_us_per_delivery"]
                wire = on["wire_bytes_per_delivery"] / off["wire_bytes_per_delivery"]
                out.append(
                    f"- {server}, {label}: compression on / off = {cpu:.2f} times the CPU per "
                    f"delivery, {wire:.2f} times the bytes on the wire."
                )
    return out


def chart(rows: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    labels = list(SIZES)
    width = 0.2
    for i, (server, compression) in enumerate((s, c) for s in SERVERS for c in (False, True)):
        by = {
            r["label"]: r for r in rows if r["server"] == server and r["compression"] is compression
        }
        xs = [j + (i - 1.5) * width for j in range(len(labels))]
        name = f"{server}, deflate {'on' if compression else 'off'}"
        for ax, key in zip(axes, ("cpu_us_per_delivery", "wire_bytes_per_delivery"), strict=True):
            ax.bar(xs, [by[x][key] if x in by else 0 for x in labels], width, label=name)
    for ax, title in zip(
        axes, ("server CPU per delivery (µs)", "bytes on the wire per delivery"), strict=True
    ):
        ax.set_xticks(range(len(labels)), labels)
        ax.set_title(title)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_section(path: Path, text: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace a section of `path` (or start the file), leaving the rest alone."""
    old = path.read_text() if path.exists() else "# WebSocket compression\n"
    if begin in old and end in old:
        new = old[: old.index(begin)] + text + old[old.index(end) + len(end) :]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(new)


# --- idle memory ------------------------------------------------------------------------------

IDLE_BEGIN = "<!-- begin: python -m bench.compression --idle -->"
IDLE_END = "<!-- end: python -m bench.compression --idle -->"


async def _idle(port: int, pid: int, count: int, compression: bool) -> dict[str, float]:
    """rawrt's RSS per idle subscriber, then after each sent one compressed message (which
    makes its inflater): what compression costs a connection that waits, and one that talks."""
    rss_before = rss_bytes(pid) or 0
    subs = [await _subscribe(port, compression, False) for _ in range(count)]
    await asyncio.sleep(1.0)
    idle = ((rss_bytes(pid) or 0) - rss_before) / count
    negotiated = subs[0].head is not None and b"permessage-deflate" in subs[0].head.lower()
    ping = json.dumps({"type": "ping", "pad": "x" * 300}).encode()
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = (compressor.compress(ping) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
    for sub in subs:
        assert sub.transport is not None
        sub.transport.write(
            _client_frame(body, 0x41) if negotiated else _client_frame(b'{"type":"ping"}')
        )
    await asyncio.sleep(2.0)
    talked = ((rss_bytes(pid) or 0) - rss_before) / count
    for sub in subs:
        if sub.transport is not None:
            sub.transport.close()
    return {"negotiated": negotiated, "idle": idle, "after_one_message": talked}


def idle_section(rows: list[dict[str, Any]], count: int) -> str:
    lines = [
        IDLE_BEGIN,
        "## Idle memory per WebSocket with permessage-deflate (`python -m bench.compression "
        f"--idle {count}`)",
        "",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; rawrt's VmRSS growth "
        f"divided by {count} subscribed WebSockets, once they are idle, and again after each "
        "sent one message (compressed when negotiated: that makes its inflater). The machine "
        "was shared with other work.",
        "",
        "| compression | negotiated | idle, per connection | after one client message |",
        "|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {'on' if row['compression'] else 'off'} | {'yes' if row['negotiated'] else 'no'} "
            f"| {row['idle']:,.0f} B | {row['after_one_message']:,.0f} B |"
        )
    return "\n".join([*lines, "", IDLE_END])


def run_idle(count: int) -> str:
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rows = []
    for compression in (False, True):
        proc, port = _start_server("rawrt", compression)
        try:
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                row = runner.run(_idle(port, proc.pid, count, compression))
        finally:
            proc.stop()
        rows.append(row | {"compression": compression})
        print(f"compression idle: {json.dumps(rows[-1])}", flush=True)
    return idle_section(rows, count)


def _median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    runs = sorted(runs, key=lambda r: r["cpu_us_per_delivery"])
    return runs[len(runs) // 2]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compression", description=__doc__)
    parser.add_argument("--subscribers", type=int, default=500)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--smoke", action="store_true", help="a tiny run; writes nothing kept")
    parser.add_argument(
        "--idle", type=int, metavar="N", help="measure only rawrt's idle memory, N sockets"
    )
    args = parser.parse_args(argv)
    given = list(sys.argv[1:] if argv is None else argv)
    if args.smoke:
        args.subscribers, args.messages, args.repeats = 5, 3, 1
    out_md = OUT / "COMPRESSION.md" if args.smoke else ROOT / "bench" / "COMPRESSION.md"
    out_png = OUT / "compression.png" if args.smoke else ROOT / "bench" / "compression.png"
    OUT.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {1})  # the server has CPU 0
    if args.idle or args.smoke:
        text = run_idle(args.idle or 5)
        write_section(out_md, text, IDLE_BEGIN, IDLE_END)
        if args.idle:
            print(text)
            return 0
    rows = []
    for server in args.servers.split(","):
        for label, size in SIZES.items():
            for compression in (False, True):
                runs = []
                for _ in range(args.repeats):
                    busy = machine_busy([0, 1])
                    result = run_one(server, compression, size, args)
                    runs.append(result | {"machine_busy_before": busy})
                row = _median_row(runs) | {
                    "server": server,
                    "label": label,
                    "compression": compression,
                }
                rows.append(row)
                print(f"compression: {json.dumps(row)}", flush=True)
    (OUT / "raw.json").write_text(json.dumps(rows, indent=1))
    text = section(rows, given, args)
    if chart(rows, out_png):
        text = text.replace(END, f"![CPU and bytes per delivery]({out_png.name})\n\n{END}")
    write_section(out_md, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
