"""Publish throughput through Redis with one shard and with three (issue 10, section 3).

    python -m bench.shards [--nodes 3] [--channels 300] [--publishers 96] [--duration 8]

For each shard count (1, then 3; alternating over repeats) this starts that many private
redis-servers (no persistence) and `--nodes` rawrt processes, each given every Redis URL.
Then, from this process (asyncio on uvloop, raw sockets):

- one SSE subscriber per channel per node, so every publish is fanned out by Redis to every
  node, as in a cluster where each channel has readers everywhere;
- `--publishers` keep-alive HTTP connections, spread over the nodes, each publishing to a
  random channel, one request at a time (a closed loop: the next goes out when the answer
  is in), so many publishes are in flight at once and each node pipelines them to Redis.

Measured over `--duration` seconds after a warm-up: publishes answered 200 per second, the
503s, deliveries per second, and the CPU of every process from /proc/PID/task/*/schedstat:
each Redis (share of one core, idle and loaded, and the µs a publish adds), the rawrt nodes
together, and this load client. Nothing is pinned.

The section it writes goes into bench/MULTINODE.md between its own markers; the rest of that
file is `python -m bench.multinode`'s. Every process is started here and stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.harness.procs import Proc, free_port, machine_busy

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "shards"
BEGIN, END = "<!-- begin: python -m bench.shards -->", "<!-- end: python -m bench.shards -->"
_CONTENT_LENGTH = re.compile(rb"content-length: *(\d+)", re.IGNORECASE)
START_BOUND_S = 20.0  # a process must be up within this
REQUEST_BOUND_S = 10.0  # any one publish must be answered within this


def _start(argv: Sequence[str], log: Path) -> Proc:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        popen = subprocess.Popen(
            list(argv), cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    return Proc(popen, log)


def _wait_for(proc: Proc, text: str, count: int) -> None:
    """Until `text` appears `count` times in the process's log (bounded)."""
    deadline = time.monotonic() + START_BOUND_S
    while time.monotonic() < deadline and proc.alive():
        if proc.log_path.read_text(errors="replace").count(text) >= count:
            return
        time.sleep(0.05)
    raise RuntimeError(f"{proc.log_path.name}: no {count} x {text!r}:\n{proc.log_tail()}")


def _redis(workdir: Path, n: int) -> tuple[Proc, str]:
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(workdir)]  # fmt: skip
    proc = _start(argv, OUT / "logs" / f"redis{n}.log")
    _wait_for(proc, "Ready to accept connections", 1)
    return proc, f"redis://127.0.0.1:{port}/0"


def _node(n: int, urls: list[str]) -> tuple[Proc, int]:
    port = free_port()
    argv = [sys.executable, "-m", "rawrt", "--host", "127.0.0.1", "--port", str(port),
            "--redis", ",".join(urls)]  # fmt: skip
    proc = _start(argv, OUT / "logs" / f"node{n}.log")
    _wait_for(proc, "listening on", 1)
    _wait_for(proc, "connected to Redis", len(urls))  # one line per shard
    return proc, port


# --- the load, from this process ------------------------------------------------------------


class _Subscriber(asyncio.Protocol):
    """One SSE stream, counting `data:` lines (a split one is found across reads)."""

    PATTERN = b"data: "

    def __init__(self, counts: list[int]) -> None:
        self.counts = counts  # [0]: every data line seen by every subscriber
        self.tail = b""
        self.seen = 0
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.tail + data
        found = buf.count(self.PATTERN)
        self.tail = buf[-(len(self.PATTERN) - 1) :]
        self.seen += found
        self.counts[0] += found


async def _subscribe(port: int, channel: str, counts: list[int]) -> _Subscriber:
    loop = asyncio.get_running_loop()
    transport, sub = await loop.create_connection(lambda: _Subscriber(counts), "127.0.0.1", port)
    head = f"GET /api/sse/subscribe/{channel} HTTP/1.1\r\nHost: b\r\n\r\n"
    transport.write(head.encode())
    return sub


async def _publisher(
    port: int, channels: list[str], stop_at: float, tally: dict[str, int], seed: int
) -> None:
    rng = random.Random(seed)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    n = 0
    try:
        while time.monotonic() < stop_at:
            body = json.dumps({"n": n, "pad": "x" * 64}).encode()
            channel = rng.choice(channels)
            writer.write(
                f"POST /api/publish/{channel} HTTP/1.1\r\nHost: b\r\nContent-Type: "
                f"application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_BOUND_S)
            length = _CONTENT_LENGTH.search(head)
            await reader.readexactly(int(length.group(1)) if length else 0)
            status = head[9:12].decode()
            tally[status] = tally.get(status, 0) + 1
            n += 1
    finally:
        writer.close()


async def _drive(
    ports: list[int], channels: list[str], publishers: int, warmup_s: float, duration_s: float,
    pids: dict[str, int], idle_s: float = 3.0,
) -> dict[str, Any]:  # fmt: skip
    counts = [0]
    subs = [await _subscribe(port, channel, counts) for port in ports for channel in channels]
    deadline = time.monotonic() + START_BOUND_S
    while any(sub.seen == 0 for sub in subs):  # each stream opens with its "connected" event
        if time.monotonic() > deadline:
            raise RuntimeError("SSE subscribers did not all connect")
        await asyncio.sleep(0.05)
    # Redis's own work with nothing published (its timers, the nodes' pings): measured apart,
    # so that the cost of a publish is what it adds.
    idle_before = (_cpu(pids), time.monotonic())
    await asyncio.sleep(idle_s)
    idle = _shares(idle_before, (_cpu(pids), time.monotonic()))
    tally: dict[str, int] = {}
    start = time.monotonic()
    stop_at = start + warmup_s + duration_s
    tasks = [
        asyncio.create_task(_publisher(ports[i % len(ports)], channels, stop_at, tally, i))
        for i in range(publishers)
    ]
    await asyncio.sleep(warmup_s)
    before = ({k: v for k, v in tally.items()}, counts[0], _cpu(pids), time.monotonic())
    await asyncio.sleep(duration_s)
    after = ({k: v for k, v in tally.items()}, counts[0], _cpu(pids), time.monotonic())
    await asyncio.gather(*tasks)
    for sub in subs:
        if sub.transport is not None:
            sub.transport.close()
    elapsed = after[3] - before[3]
    ok = after[0].get("200", 0) - before[0].get("200", 0)
    refused = sum(after[0].values()) - sum(before[0].values()) - ok
    return {
        "publishes_per_s": ok / elapsed,
        "refused": refused,
        "deliveries_per_s": (after[1] - before[1]) / elapsed,
        "cpu_share": _shares(before[2:], after[2:]),
        "idle_cpu_share": idle,
        "publishes": ok,
    }


def _cpu(pids: dict[str, int]) -> dict[str, float]:
    """Seconds on a CPU of each process, all its threads, from /proc/PID/task/*/schedstat
    (nanoseconds; /proc/PID/stat counts in ticks of 10 ms, too coarse for an idle Redis)."""
    return {name: _schedstat_s(pid) for name, pid in pids.items()}


def _schedstat_s(pid: int) -> float:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread may end between the listing and the read
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def _shares(
    before: tuple[dict[str, float], float], after: tuple[dict[str, float], float]
) -> dict[str, float]:
    """Each process's CPU between two readings, as a share of one core."""
    elapsed = after[1] - before[1]
    return {name: (after[0][name] - before[0][name]) / elapsed for name in after[0]}


def run_one(shards: int, args: argparse.Namespace) -> dict[str, Any]:
    procs: list[Proc] = []
    with tempfile.TemporaryDirectory() as workdir:
        try:
            redis = [_redis(Path(workdir), n) for n in range(shards)]
            procs += [proc for proc, _ in redis]
            urls = [url for _, url in redis]
            nodes = [_node(n, urls) for n in range(args.nodes)]
            procs += [proc for proc, _ in nodes]
            pids = {f"redis{n}": proc.pid for n, (proc, _) in enumerate(redis)}
            pids |= {f"node{n}": proc.pid for n, (proc, _) in enumerate(nodes)}
            pids["client"] = os.getpid()
            channels = [f"ch{n}" for n in range(args.channels)]
            ports = [port for _, port in nodes]
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                return runner.run(
                    _drive(ports, channels, args.publishers, args.warmup, args.duration, pids)
                )
        finally:
            for proc in reversed(procs):
                proc.stop()


def _loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


# --- the report -----------------------------------------------------------------------------


def section(rows: dict[int, list[dict[str, Any]]], argv: Sequence[str], nodes: int) -> str:
    lines = [
        BEGIN,
        "## Publishes through Redis: one shard and three (`python -m bench.shards`)",
        "",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; command: "
        f"`python -m bench.shards {' '.join(argv)}`; {nodes} rawrt nodes, every one given "
        "every Redis; one SSE subscriber per channel per node; publishers are keep-alive HTTP "
        "connections, one request in flight each, spread over the nodes.",
        "- CPU is a share of one core over the measured window, from /proc/PID/task/*/schedstat; "
        "each Redis's idle CPU (its timers and the nodes' pings, nothing published) is "
        "measured over 3 s before the publishers start. "
        "Nothing is pinned; the machine has 2 cores, and the last column says how busy they "
        "were (with other work) in the second before the run started.",
        "",
        "| shards | publishes/s | 503s | deliveries/s | each Redis CPU, idle → loaded "
        "| Redis µs per publish, above idle | rawrt nodes CPU | load client CPU "
        "| cores busy before |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for shards, runs in sorted(rows.items()):
        best = max(runs, key=lambda r: r["publishes_per_s"])  # the best of the repeats
        cpu, idle = best["cpu_share"], best["idle_cpu_share"]
        redis = sorted(k for k in cpu if k.startswith("redis"))
        node_cpu = sum(v for k, v in cpu.items() if k.startswith("node"))
        added = sum(cpu[k] - idle[k] for k in redis) / best["publishes_per_s"] * 1e6
        lines.append(
            f"| {shards} | {best['publishes_per_s']:,.0f} | {best['refused']} | "
            f"{best['deliveries_per_s']:,.0f} | "
            f"{', '.join(f'{idle[k]:.1%} → {cpu[k]:.1%}' for k in redis)} | {added:.1f} | "
            f"{node_cpu:.0%} | {cpu['client']:.0%} | "
            f"{' + '.join(f'{v:.0%}' for v in best['machine_busy_before'])} |"
        )
    lines += ["", END]
    return "\n".join(lines)


def write_section(path: Path, text: str) -> None:
    """Replace this bench's section of `path` (or append it), leaving the rest alone."""
    old = path.read_text() if path.exists() else ""
    if BEGIN in old and END in old:
        new = old[: old.index(BEGIN)] + text + old[old.index(END) + len(END) :]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(new)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.shards", description=__doc__)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--channels", type=int, default=300)
    parser.add_argument("--publishers", type=int, default=96)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "MULTINODE.md")
    args = parser.parse_args(argv)
    given = list(sys.argv[1:] if argv is None else argv)
    rows: dict[int, list[dict[str, Any]]] = {1: [], 3: []}
    for rep in range(args.repeats):
        for shards in (1, 3) if rep % 2 == 0 else (3, 1):
            busy = machine_busy([0, 1])  # others' work on the machine, before we start
            row = run_one(shards, args) | {"machine_busy_before": busy}
            rows[shards].append(row)
            print(f"shards: repeat {rep + 1}, {shards} shard(s): {json.dumps(row)}", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "raw.json").write_text(json.dumps(rows, indent=1))
    text = section(rows, given, args.nodes)
    write_section(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
