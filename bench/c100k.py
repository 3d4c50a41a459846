"""C100K on one machine: 100,000 subscribers on `--workers 6` through Redis (issue 11, §1).

    python -m bench.c100k [--sizes 10000,50000,100000] [--workers 6] [--rates 10,2,1]
                          [--steady-s 15] [--smoke]

For each size this starts a private redis-server (no persistence) and `rawrt --workers N
--redis URL`, then load generator processes (bench/loadgen, `--mode listen`), each at most
`PER_LOADGEN` connections and each from its own loopback source address (127.0.0.X: 28,232
ephemeral ports apiece): about 60 % WebSocket, 30 % SSE and 10 % parked long polls, one
transport group after the other, so that the RSS of all workers (summed from /proc) before
and after each group gives each transport's memory per connection. Then, from this process
over one keep-alive HTTP connection:

- one message to the channel they all follow: when the publish was answered, and when the
  last subscriber had it (each load generator prints `ALL k` once every one of its
  subscribers has message k; latencies are receive time minus the CLOCK_MONOTONIC stamp "t"
  the publish carries, one clock for every process on this machine), p50 and p99 over all
  subscribers from the load generators' merged histograms, and nothing lost or doubled;
- a steady rate (`--rates`: messages/s for each size, for `--steady-s` s) with its latency
  percentiles and the CPU of every worker, summed from /proc/PID/task/*/schedstat; a
  publish answered 503 is counted and the rate goes on.

Lost means: a subscriber connected to the end lacks a message whose publish was answered.

Writes bench/C100K.md, bench/c100k-raw.json (its figures) and, with matplotlib,
bench/c100k.png. Every process is started here
and stopped by its PID on every way out (try/finally); every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import loadgen
from bench.harness.procs import Proc, free_port, rss_bytes

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "c100k"
CHANNEL = "c100k"
# The notes written by hand under the tables, kept when the tables are rewritten.
BEGIN, END = "<!-- begin: notes -->", "<!-- end: notes -->"
PER_LOADGEN = 15_000  # connections per load generator process (it may hold 20,000 files)
MIX = (("ws", 0.6), ("sse", 0.3), ("poll", 0.1))
START_BOUND_S = 30.0  # rawrt and its workers must be up within this
READY_BOUND_S = 240.0  # a transport group must be connected and confirmed within this
DELIVERY_BOUND_S = 30.0  # every subscriber must have a message within this of its publish
REQUEST_BOUND_S = 10.0  # any one publish must be answered within this
DATA_BYTES = 100  # size of each message's data JSON
PROFILE = OUT / "worker.prof"  # --profile: cProfile of one rawrt process


# --- processes --------------------------------------------------------------------------------


def _start(argv: Sequence[str], log: Path, **kwargs: Any) -> Proc:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        popen = subprocess.Popen(
            list(argv), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, **kwargs
        )
    return Proc(popen, log)


def _wait_for(proc: Proc, text: str, count: int) -> None:
    deadline = time.monotonic() + START_BOUND_S
    while time.monotonic() < deadline and proc.alive():
        if proc.log_path.read_text(errors="replace").count(text) >= count:
            return
        time.sleep(0.05)
    raise RuntimeError(f"{proc.log_path.name}: no {count} x {text!r}:\n{proc.log_tail()}")


def _redis(workdir: Path) -> tuple[Proc, str]:
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(workdir)]  # fmt: skip
    proc = _start(argv, OUT / "logs" / "redis.log", stdin=subprocess.DEVNULL)
    _wait_for(proc, "Ready to accept connections", 1)
    return proc, f"redis://127.0.0.1:{port}/0"


def _rawrt(
    url: str, port: int, workers: int, size: int, extra: Sequence[str], profile: bool
) -> Proc:
    # Each worker gets its share of `size` and some room (SO_REUSEPORT spreads connections
    # evenly, not exactly), under the 20,000 files a process may hold here.
    per_worker = min(19_500, int(size / workers * 1.2) + 1000)
    python = [sys.executable, "-m", "cProfile", "-o", str(PROFILE)] if profile else [sys.executable]
    argv = [*python, "-m", "rawrt", "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(workers), "--redis", url,
            "--max-connections", str(per_worker), *extra]  # fmt: skip
    proc = _start(argv, OUT / "logs" / f"rawrt-{size}.log", stdin=subprocess.DEVNULL)
    _wait_for(proc, "listening on", workers)
    _wait_for(proc, "connected to Redis", workers)
    return proc


def _workers(supervisor: int, workers: int) -> list[int]:
    """The worker PIDs: the supervisor's children (it started them), or itself alone."""
    if workers == 1:
        return [supervisor]
    path = Path(f"/proc/{supervisor}/task/{supervisor}/children")
    return [int(pid) for pid in path.read_text().split()]


def _cpu_ns(pids: Sequence[int]) -> int:
    """CPU time of every thread of `pids`, from schedstat (ns, no 10 ms ticks)."""
    total = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return total


def _rss(pids: Sequence[int]) -> int:
    return sum(rss_bytes(pid) or 0 for pid in pids)


@dataclass
class _Loadgen:
    """One `loadgen --mode listen` process; its stdout is read line by line, bounded."""

    transport: str
    count: int
    popen: subprocess.Popen[bytes]
    ready: int = 0
    all_k: set[int] = field(default_factory=set)
    buffer: bytes = b""
    result: dict[str, Any] | None = None

    def read_lines(self, timeout_s: float) -> list[str]:
        assert self.popen.stdout is not None
        fd = self.popen.stdout.fileno()
        if not select.select([fd], [], [], timeout_s)[0]:
            return []
        chunk = os.read(fd, 65536)
        if not chunk:
            raise RuntimeError(f"a {self.transport} load generator exited early")
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        out = [line.decode(errors="replace") for line in lines]
        for line in out:
            if line.startswith("READY "):
                self.ready = int(line.split()[1])
            elif line.startswith("ALL "):
                self.all_k.add(int(line.split()[1]))
        return out


def _loadgen(binary: Path, port: int, transport: str, count: int, src: int, messages: int,
             size: int) -> _Loadgen:  # fmt: skip
    log = OUT / "logs" / f"loadgen-{size}-{transport}-{src}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    argv = [str(binary), "--port", str(port), "--transport", transport, "--mode", "listen",
            "--subscribers", str(count), "--channel", CHANNEL, "--messages", str(messages),
            "--src-base", str(src), "--per-src", str(PER_LOADGEN),
            "--ready-timeout", str(int(READY_BOUND_S)), "--settle-ms", "300",
            "--hold", "900", "--max-s", "1200"]  # fmt: skip
    with log.open("wb") as err:
        popen = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
    return _Loadgen(transport, count, popen)


def _stop_loadgen(lg: _Loadgen) -> None:
    """Close its stdin (the cue to report and let go), read its JSON; kill if it hangs."""
    if lg.popen.poll() is None and lg.popen.stdin is not None:
        lg.popen.stdin.close()
    deadline = time.monotonic() + 60
    while lg.result is None and time.monotonic() < deadline:
        try:
            lines = lg.read_lines(1.0)
        except RuntimeError:
            break
        for line in lines:
            if line.startswith("{"):
                lg.result = json.loads(line)
    if lg.popen.poll() is None:
        try:
            lg.popen.wait(10)
        except subprocess.TimeoutExpired:
            lg.popen.kill()
            lg.popen.wait()


def _kill(lg: _Loadgen) -> None:
    if lg.popen.poll() is None:
        lg.popen.kill()
        lg.popen.wait()


# --- the publisher: one keep-alive HTTP connection -------------------------------------------


class _Refused(RuntimeError):
    """A publish answered 503: Redis could not take it in time."""


class _Publisher:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=REQUEST_BOUND_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def publish(self, k: int, channel: str = CHANNEL) -> tuple[int, float]:
        """Publish message k now; (its t stamp in ns, seconds until the answer was in)."""
        t = time.monotonic_ns()  # CLOCK_MONOTONIC, as the load generators read it
        head = json.dumps({"t": t, "k": k, "pad": ""}, separators=(",", ":"))
        data = head[:-2] + "x" * max(0, DATA_BYTES - len(head)) + '"}'
        body = data.encode()
        self.sock.sendall(
            b"POST /api/publish/%s HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (channel.encode(), len(body), body)
        )
        status = self._read_answer()
        elapsed = (time.monotonic_ns() - t) / 1e9
        if status == 503:
            raise _Refused(f"publish {k} answered 503")
        if status != 200:
            raise RuntimeError(f"publish {k} answered {status}")
        return t, elapsed

    def _read_answer(self) -> int:
        while b"\r\n\r\n" not in self.buffer:
            self._recv()
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            self._recv()
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
        self.buffer = rest[length:]
        return int(head.split()[1])

    def _recv(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise RuntimeError("the publish connection closed")
        self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


# --- one size ---------------------------------------------------------------------------------


def _groups(size: int) -> list[tuple[str, list[int]]]:
    """Per transport, the connection count of each of its load generators."""
    out = []
    for transport, share in MIX:
        total = round(size * share)
        n = -(-total // PER_LOADGEN)
        out.append((transport, [total // n + (1 if i < total % n else 0) for i in range(n)]))
    return out


def _wait_all(lgs: Sequence[_Loadgen], k: int, bound_s: float) -> float | None:
    """Seconds until every load generator printed `ALL k`; None past the bound."""
    start = time.monotonic()
    while time.monotonic() - start < bound_s:
        waiting = [lg for lg in lgs if k not in lg.all_k]
        if not waiting:
            return time.monotonic() - start
        fds = {lg.popen.stdout.fileno(): lg for lg in waiting if lg.popen.stdout is not None}
        ready, _, _ = select.select(list(fds), [], [], 0.2)
        for fd in ready:
            fds[fd].read_lines(0)
    return None


def _connect_groups(
    binary: Path, port: int, size: int, messages: int, pids: Sequence[int]
) -> tuple[list[_Loadgen], dict[str, Any]]:
    lgs: list[_Loadgen] = []
    memory: dict[str, Any] = {"base_rss": _rss(pids), "groups": {}}
    src = 2
    for transport, counts in _groups(size):
        before, started = _rss(pids), time.monotonic()
        group = []
        for count in counts:
            group.append(_loadgen(binary, port, transport, count, src, messages, size))
            src += 1
        lgs += group
        deadline = started + READY_BOUND_S
        while any(lg.ready == 0 for lg in group) and time.monotonic() < deadline:
            for lg in group:
                if lg.ready == 0:
                    lg.read_lines(0.1)
        if any(lg.ready == 0 for lg in group):
            raise RuntimeError(f"{transport}: not all load generators ready")
        took = time.monotonic() - started
        time.sleep(1.0)  # let the workers' RSS settle after the last handshakes
        after = _rss(pids)
        ready = sum(lg.ready for lg in group)
        memory["groups"][transport] = {
            "asked": sum(counts),
            "ready": ready,
            "connect_s": took,
            "rss_added": after - before,
            "bytes_per_conn": (after - before) / max(1, ready),
        }
        print(f"c100k {size}: {ready:,} {transport} ready in {took:.1f} s, "
              f"{(after - before) / max(1, ready):,.0f} B each", flush=True)  # fmt: skip
    memory["total_rss"] = _rss(pids)
    return lgs, memory


def _merge_hist(lgs: Sequence[_Loadgen], phase: int) -> list[tuple[int, int]]:
    buckets: dict[int, int] = {}
    for lg in lgs:
        assert lg.result is not None
        phases = lg.result["phases"]
        if phase < len(phases):
            for value, count in phases[phase].get("hist", []):
                buckets[value] = buckets.get(value, 0) + count
    return sorted(buckets.items())


def _pct_ms(hist: list[tuple[int, int]], q: float) -> float:
    total = sum(c for _, c in hist)
    if not total:
        return float("nan")
    rank, seen = int(q * total), 0
    for value, count in hist:
        seen += count
        if seen > rank:
            return value / 1e6
    return hist[-1][0] / 1e6


def run_size(
    binary: Path,
    size: int,
    workers: int,
    rate: float,
    steady_s: float,
    extra: Sequence[str],
    profile: bool = False,
) -> dict[str, Any]:
    steady = max(1, int(rate * steady_s))
    messages = 1 + steady
    out: dict[str, Any] = {"size": size, "workers": workers}
    with tempfile.TemporaryDirectory() as workdir:
        redis, url = _redis(Path(workdir))
        procs: list[Proc] = [redis]
        lgs: list[_Loadgen] = []
        try:
            port = free_port()
            server = _rawrt(url, port, workers, size, extra, profile)
            procs.append(server)
            pids = _workers(server.pid, workers)
            lgs, out["memory"] = _connect_groups(binary, port, size, messages, pids)
            out["subscribers"] = sum(lg.ready for lg in lgs)
            time.sleep(2.0)  # idle: the last polls parked, the last acks written
            publisher = _Publisher(port)
            try:
                # The worker that serves this connection opens its Redis connection for
                # publishes on its first one: not what a publish costs.
                publisher.publish(-1, "c100k-warm-up")
                cpu0 = _cpu_ns(pids)
                _, answer_s = publisher.publish(0)
                last_s = _wait_all(lgs, 0, DELIVERY_BOUND_S)
                # From the publish: its answer, then the load generators' last `ALL 0`.
                all_s = None if last_s is None else answer_s + last_s
                out["first"] = {"answer_s": answer_s, "all_s": all_s,
                                "cpu_s": (_cpu_ns(pids) - cpu0) / 1e9}  # fmt: skip
                print(f"c100k {size}: answered in {answer_s * 1000:.0f} ms, all had it "
                      f"within {all_s} s", flush=True)  # fmt: skip
                time.sleep(1.0)
                out["steady"] = _steady(publisher, lgs, pids, rate, steady)
            finally:
                publisher.close()
            for lg in lgs:
                _stop_loadgen(lg)
            _results(lgs, out)
        finally:
            for lg in lgs:
                _kill(lg)
            for proc in reversed(procs):
                proc.stop()
    return out


def _steady(
    publisher: _Publisher, lgs: Sequence[_Loadgen], pids: Sequence[int], rate: float, n: int
) -> dict[str, Any]:
    """Publish k = 1..n at `rate`/s; a publish Redis could not take in time (503) is counted
    and the rate goes on (it may or may not have been published: not counted as lost)."""
    answers: list[float] = []
    refused: list[int] = []
    cpu0, start = _cpu_ns(pids), time.monotonic()
    for k in range(1, n + 1):
        due = start + (k - 1) / rate
        while time.monotonic() < due:
            for lg in lgs:
                lg.read_lines(0)
            time.sleep(min(0.01, max(0.0, due - time.monotonic())))
        try:
            answers.append(publisher.publish(k)[1])
        except _Refused:
            refused.append(k)
    sent = [k for k in range(1, n + 1) if k not in refused]
    if sent:
        _wait_all(lgs, sent[-1], DELIVERY_BOUND_S)
    wall = time.monotonic() - start
    cpu = (_cpu_ns(pids) - cpu0) / 1e9
    return {
        "messages": n,
        "rate": rate,
        "wall_s": wall,
        "cpu_s": cpu,
        "cpu_share": cpu / wall,
        "answer_p50_ms": statistics.median(answers) * 1000 if answers else float("nan"),
        "answer_max_ms": max(answers) * 1000 if answers else float("nan"),
        "refused": refused,
    }


def _results(lgs: Sequence[_Loadgen], out: dict[str, Any]) -> None:
    if any(lg.result is None for lg in lgs):
        raise RuntimeError("a load generator gave no result")
    first, steady = _merge_hist(lgs, 0), _merge_hist(lgs, 1)
    results = [lg.result for lg in lgs if lg.result is not None]
    out["first"].update(p50_ms=_pct_ms(first, 0.5), p99_ms=_pct_ms(first, 0.99),
                        max_ms=_pct_ms(first, 1.0))  # fmt: skip
    out["steady"].update(p50_ms=_pct_ms(steady, 0.5), p99_ms=_pct_ms(steady, 0.99),
                         max_ms=_pct_ms(steady, 1.0))  # fmt: skip
    # Lost: a subscriber still connected at the end lacks a message whose publish was
    # answered 200 (the load generators' "got" per message against their live count).
    refused = set(out["steady"]["refused"])
    out["lost"] = sum(
        max(0, int(r["alive"]) - int(got))
        for r in results
        for k, got in enumerate(r["got"])
        if k not in refused
    )
    out["duplicates"] = sum(int(r["duplicates"]) for r in results)
    out["errors"] = sum(int(r["errors"]) for r in results)
    out["closed"] = sum(int(r["closed_after_ready"]) for r in results)
    out["deliveries"] = sum(int(r["deliveries"]) for r in results)


# --- the report -------------------------------------------------------------------------------


def report(runs: list[dict[str, Any]], argv: Sequence[str], smoke: bool) -> str:
    lines = [
        "<!-- Written by python -m bench.c100k; edits are overwritten. -->",
        "# C100K on one machine",
        "",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; command: "
        f"`python -m bench.c100k {' '.join(argv)}`"
        + (" (a smoke run: figures mean nothing)" if smoke else ""),
        f"- Machine: {os.cpu_count()} cores, shared with other work while this ran (the "
        "figures are upper bounds of what the server needs). rawrt `--workers "
        f"{runs[0]['workers']} --redis` with a private redis-server; load generators "
        f"(bench/loadgen, C, epoll) of at most {PER_LOADGEN:,} connections each, one loopback "
        "source address apiece, unpinned.",
        "- Mix: 60 % WebSocket, 30 % SSE, 10 % parked long polls, all on one channel.",
        "",
        "## One message to everyone",
        "",
        "| subscribers | publish answered ms | last subscriber s | p50 ms | p99 ms | max ms "
        "| worker CPU s | CPU µs per delivery | lost | duplicates |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        f = r["first"]
        all_s = f"{f['all_s']:.2f}" if f["all_s"] is not None else "> bound"
        lines.append(
            f"| {r['subscribers']:,} | {f['answer_s'] * 1000:.0f} | {all_s} | "
            f"{f['p50_ms']:.0f} | {f['p99_ms']:.0f} | {f['max_ms']:.0f} | {f['cpu_s']:.2f} | "
            f"{f['cpu_s'] * 1e6 / max(1, r['subscribers']):.1f} | "
            f"{r['lost']} | {r['duplicates']} |"
        )
    lines += [
        "",
        "## A steady rate",
        "",
        "| subscribers | messages/s | deliveries/s | p50 ms | p99 ms | max ms "
        "| publish answered p50 / max ms | refused (503) | worker CPU (cores) "
        "| CPU µs per delivery |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        s = r["steady"]
        lines.append(
            f"| {r['subscribers']:,} | {s['rate']:g} | {s['rate'] * r['subscribers']:,.0f} | "
            f"{s['p50_ms']:.0f} | {s['p99_ms']:.0f} | {s['max_ms']:.0f} | "
            f"{s['answer_p50_ms']:.0f} / {s['answer_max_ms']:.0f} | {len(s['refused'])} | "
            f"{s['cpu_share']:.2f} | "
            f"{s['cpu_s'] * 1e6 / max(1, s['messages'] * r['subscribers']):.1f} |"
        )
    lines += [
        "",
        "## Memory: RSS of all workers, per connection by transport",
        "",
        "| subscribers | transport | connected | connect and confirm s | bytes each "
        "| all workers' RSS MiB |",
        "|---|---|---|---|---|---|",
    ]
    for r in runs:
        m = r["memory"]
        for transport, g in m["groups"].items():
            lines.append(
                f"| {r['subscribers']:,} | {transport} | {g['ready']:,} | {g['connect_s']:.1f} "
                f"| {g['bytes_per_conn']:,.0f} | {m['total_rss'] / 2**20:,.0f} |"
            )
        idle = (m["total_rss"] - m["base_rss"]) / max(1, r["subscribers"])
        lines.append(f"| {r['subscribers']:,} | all | {r['subscribers']:,} | | "
                     f"**{idle:,.0f}** | |")  # fmt: skip
    lines.append("")
    return "\n".join(lines)


def chart(runs: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    xs = [r["subscribers"] for r in runs]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("max_ms", "last")):
        ax.plot(xs, [r["first"][key] for r in runs], marker="o", label=f"{label} delivery")
    ax.plot(xs, [r["first"]["answer_s"] * 1000 for r in runs], marker="s", linestyle="--",
            label="publish answered")  # fmt: skip
    ax.set_xlabel("subscribers")
    ax.set_ylabel("ms after the publish")
    ax.set_title("One message to everyone (rawrt --workers, Redis)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _profile(binary: Path, size: int, rate: float, steady_s: float) -> int:
    import pstats

    OUT.mkdir(parents=True, exist_ok=True)
    run = run_size(binary, size, 1, rate, steady_s, [], profile=True)
    report_path = OUT / "profile.txt"
    with report_path.open("w") as text:
        text.write(json.dumps({k: run[k] for k in ("subscribers", "first", "steady")}) + "\n")
        stats = pstats.Stats(str(PROFILE), stream=text)
        stats.sort_stats("tottime").print_stats(30)
    print(report_path.read_text())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.c100k", description=__doc__)
    parser.add_argument("--sizes", default="10000,50000,100000")
    parser.add_argument("--workers", type=int, default=6)
    parser.add_argument(
        "--rates", default="10,2,1",
        help="messages/s of the steady phase, one per size (the last serves the rest)",
    )  # fmt: skip
    parser.add_argument("--steady-s", type=float, default=15.0)
    parser.add_argument("--smoke", action="store_true", help="2,000 subscribers, 2 workers")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--profile", action="store_true",
        help="one rawrt process (--workers 1) under cProfile, at the first size; writes "
        "the functions that took the most time to bench/out/c100k/profile.txt",
    )  # fmt: skip
    parser.add_argument(
        "--chart-from", type=Path, default=None,
        help="draw bench/c100k.png from a raw.json of an earlier run and stop",
    )  # fmt: skip
    parser.add_argument("--slice", type=int, default=None,
                        help="rawrt --fanout-slice-writes (default: rawrt's own)")  # fmt: skip
    args = parser.parse_args(argv)
    given = list(sys.argv[1:] if argv is None else argv)
    if args.smoke:
        sizes, workers, steady_s = [2000], 2, 2.0
        out = args.out or OUT / "C100K-smoke.md"
    else:
        sizes = [int(s) for s in args.sizes.split(",")]
        workers, steady_s = args.workers, args.steady_s
        out = args.out or ROOT / "bench" / "C100K.md"
    if args.chart_from is not None:
        drawn = chart(json.loads(args.chart_from.read_text()), ROOT / "bench" / "c100k.png")
        print("wrote bench/c100k.png" if drawn else "matplotlib is not installed: no chart")
        return 0 if drawn else 1
    binary = loadgen.build(ROOT)
    if args.profile:
        return _profile(binary, sizes[0], float(args.rates.split(",")[0]), steady_s)
    extra = [] if args.slice is None else ["--fanout-slice-writes", str(args.slice)]
    rates = [float(r) for r in args.rates.split(",")]
    runs = [
        run_size(binary, size, workers, rates[min(i, len(rates) - 1)], steady_s, extra)
        for i, size in enumerate(sizes)
    ]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "raw.json").write_text(json.dumps(runs, indent=1))
    if not args.smoke:
        (ROOT / "bench" / "c100k-raw.json").write_text(json.dumps(runs, indent=1) + "\n")
    text = report(runs, given, args.smoke)
    old = out.read_text() if out.exists() else ""
    if BEGIN in old and END in old:
        text += "\n" + old[old.index(BEGIN) : old.index(END) + len(END)] + "\n"
    out.write_text(text)
    if not args.smoke:
        chart(runs, ROOT / "bench" / "c100k.png")
    print(text)
    bad = [r["size"] for r in runs if r["lost"] or r["duplicates"] or r["first"]["all_s"] is None]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
