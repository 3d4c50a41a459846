"""The multi-node scenario (issue: many nodes): the Redis hop, and --workers 2 against one.

    python -m bench.multinode [--ws-subscribers 4000] [--poll-subscribers 2000] [--repeats 3]

Each repeat starts a private redis-server (no persistence) and, in alternating order:

- *one*: `rawrt --redis URL`, one process;
- *workers2*: `rawrt --workers 2 --redis URL`, two processes on one SO_REUSEPORT port;

and drives each with the C load generator: N WebSocket subscribers, then N long pollers,
messages published one at a time (each waits until every subscriber has the previous one):
deliveries per second and latency. Nothing is pinned: two workers need both cores, so the load
generator shares them, and its CPU share is reported beside the figures.

The Redis hop is measured at a light load (50 messages/s to 10 subscribers) as the
publish-to-receive latency of `rawrt --redis` against `rawrt` alone, one process each.

Writes bench/MULTINODE.md. Every process is started here and stopped by its PID.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import shards
from bench.harness import loadgen
from bench.harness.procs import Proc, free_port

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "multinode"


def _start(argv: Sequence[str], log: Path) -> Proc:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        popen = subprocess.Popen(
            list(argv), cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    return Proc(popen, log)


def _wait_for(proc: Proc, text: str, count: int, timeout_s: float) -> None:
    """Until `text` appears `count` times in the process's log (bounded)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.alive():
        if proc.log_path.read_text(errors="replace").count(text) >= count:
            return
        time.sleep(0.05)
    raise RuntimeError(f"{proc.log_path.name}: no {count} x {text!r}:\n{proc.log_tail()}")


def _redis(workdir: Path) -> tuple[Proc, str]:
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(workdir)]  # fmt: skip
    proc = _start(argv, OUT / "logs" / "redis.log")
    _wait_for(proc, "Ready to accept connections", 1, 10)
    return proc, f"redis://127.0.0.1:{port}/0"


def _rawrt(name: str, port: int, extra: Sequence[str]) -> Proc:
    argv = [sys.executable, "-m", "rawrt", "--host", "127.0.0.1", "--port", str(port), *extra]
    proc = _start(argv, OUT / "logs" / f"{name}.log")
    workers = 2 if "--workers" in extra else 1
    _wait_for(proc, "listening on", workers, 20)
    if "--redis" in extra:
        _wait_for(proc, "connected to Redis", workers, 20)
    return proc


def _drive(
    binary: Path, port: int, transport: str, args: Sequence[str], name: str
) -> dict[str, Any]:
    log = OUT / "logs" / f"loadgen-{name}-{transport}.log"
    # Unpinned, unlike the main bench: two workers need both cores.
    cmd = [str(binary), "--port", str(port), "--transport", transport, *args]
    with log.open("wb") as err:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, timeout=600, check=False)
    lines = [ln for ln in done.stdout.decode().splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"loadgen failed ({done.returncode}); see {log}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _fanout(
    binary: Path, name: str, extra: Sequence[str], transport: str, subs: int, msgs: int
) -> dict[str, Any]:
    port = free_port()
    server = _rawrt(name, port, extra)
    try:
        args = ["--mode", "fanout", "--subscribers", str(subs), "--messages", str(msgs),
                "--bursts", "1", "--timeout-ms", "10000"]  # fmt: skip
        return _drive(binary, port, transport, args, name)
    finally:
        server.stop()


def _hop(binary: Path, name: str, extra: Sequence[str]) -> dict[str, Any]:
    port = free_port()
    server = _rawrt(name, port, extra)
    try:
        args = ["--mode", "rate", "--subscribers", "10", "--rates", "500",
                "--duration", "5", "--timeout-ms", "2000"]  # fmt: skip
        return _drive(binary, port, "ws", args, name)
    finally:
        server.stop()


# The fan-outs: (transport, subscribers flag default, messages). WebSocket delivery is so cheap
# for rawrt that the load generator is the bottleneck on two shared cores; a long poll costs
# the server far more per delivery, so it shows what a second worker adds.
TRANSPORTS = ("ws", "poll")


def run(subs: dict[str, int], msgs: dict[str, int], repeats: int) -> dict[str, Any]:
    binary = loadgen.build(ROOT)
    results: dict[str, Any] = {"fanout": {}, "alone": [], "redis": []}
    with tempfile.TemporaryDirectory() as workdir:
        redis, url = _redis(Path(workdir))
        try:
            for rep in range(repeats):
                _fanouts(binary, url, rep, subs, msgs, results["fanout"])
                hops = [("alone", []), ("redis", ["--redis", url])]
                for name, extra in hops if rep % 2 == 0 else hops[::-1]:
                    results[name].append(_hop(binary, name, extra))
        finally:
            redis.stop()
    return results


def _fanouts(
    binary: Path,
    url: str,
    rep: int,
    subs: dict[str, int],
    msgs: dict[str, int],
    into: dict[str, list[dict[str, Any]]],
) -> None:
    order = [("one", ["--redis", url]), ("workers2", ["--workers", "2", "--redis", url])]
    for transport in TRANSPORTS:
        for name, extra in order if rep % 2 == 0 else order[::-1]:
            row = _fanout(binary, name, extra, transport, subs[transport], msgs[transport])
            into.setdefault(f"{transport}/{name}", []).append(row)
            print(
                f"multinode: repeat {rep + 1} {transport} {name}: "
                f"{row['deliveries_per_s']:,.0f} deliveries/s",
                flush=True,
            )


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(float(r[key]) for r in rows)


def _fanout_rows(fanout: dict[str, list[dict[str, Any]]]) -> list[str]:
    lines = [
        "| transport | server | deliveries/s | p50 ms | p99 ms | lost | loadgen CPU share |",
        "|---|---|---|---|---|---|---|",
    ]
    for transport in TRANSPORTS:
        for name, label in (("one", "one process"), ("workers2", "--workers 2")):
            rows = fanout[f"{transport}/{name}"]
            lines.append(
                f"| {transport} | {label} | {_median(rows, 'deliveries_per_s'):,.0f} | "
                f"{_median(rows, 'lat_p50_us') / 1000:.1f} | "
                f"{_median(rows, 'lat_p99_us') / 1000:.1f} | "
                f"{max(int(r['lost']) + int(r['duplicates']) for r in rows)} | "
                f"{_median(rows, 'loadgen_cpu_share'):.0%} |"
            )
    return lines


def report(results: dict[str, Any], argv: Sequence[str]) -> str:
    fanout = results["fanout"]
    repeats = len(results["alone"])
    lines = [
        "<!-- Written by python -m bench.multinode; edits are overwritten. -->",
        "# rawrt across processes: the Redis hop and --workers",
        "",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"command: `python -m bench.multinode {' '.join(argv)}`",
        f"- Medians over {repeats} repeats, alternating order. Nothing is pinned: two workers "
        "need both cores, so the load generator shares them, and its CPU share (of one core) "
        "is shown: near 100% it, not the server, sets the pace.",
        "",
        "## Fan-out through Redis, one message at a time",
        "",
        *_fanout_rows(fanout),
        "",
    ]
    for transport in TRANSPORTS:
        ratio = _median(fanout[f"{transport}/workers2"], "deliveries_per_s") / _median(
            fanout[f"{transport}/one"], "deliveries_per_s"
        )
        lines.append(f"- **{transport}: --workers 2 ÷ one process = {ratio:.2f}** (aim: 1.6)")
    alone, redis = results["alone"], results["redis"]
    lines += [
        "",
        "## The Redis hop: 50 messages/s to 10 WebSocket subscribers",
        "",
        "| server | p50 µs | p99 µs | lost |",
        "|---|---|---|---|",
    ]
    for name, rows in (("rawrt alone", alone), ("rawrt --redis", redis)):
        lines.append(
            f"| {name} | {_median(rows, 'lat_p50_us'):,.0f} | {_median(rows, 'lat_p99_us'):,.0f} | "
            f"{max(int(r['lost']) for r in rows)} |"
        )
    hop50 = _median(redis, "lat_p50_us") - _median(alone, "lat_p50_us")
    hop99 = _median(redis, "lat_p99_us") - _median(alone, "lat_p99_us")
    lines += ["", f"The hop adds {hop50:,.0f} µs at p50 and {hop99:,.0f} µs at p99.", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.multinode", description=__doc__)
    parser.add_argument("--ws-subscribers", type=int, default=4000)
    parser.add_argument("--ws-messages", type=int, default=200)
    parser.add_argument("--poll-subscribers", type=int, default=2000)
    parser.add_argument("--poll-messages", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "MULTINODE.md")
    args = parser.parse_args(argv)
    given = list(sys.argv[1:] if argv is None else argv)
    subs = {"ws": args.ws_subscribers, "poll": args.poll_subscribers}
    msgs = {"ws": args.ws_messages, "poll": args.poll_messages}
    results = run(subs, msgs, args.repeats)
    (OUT / "raw.json").write_text(json.dumps(results, indent=1))
    text = report(results, given)
    # Keep the section python -m bench.shards wrote into the same file.
    old = args.out.read_text() if args.out.exists() else ""
    if shards.BEGIN in old and shards.END in old:
        text += "\n" + old[old.index(shards.BEGIN) : old.index(shards.END) + len(shards.END)]
    args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
