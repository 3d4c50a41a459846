"""RESULTS.md: when, where, with what, how, and the tables."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from .report import Summary, tables, targets_table

__all__ = ["environment", "write_results"]

PY_LIBS = ("rawrt", "h11", "wsproto", "uvloop", "websockets", "aiohttp", "matplotlib")


def _version_of(cmd: list[str]) -> str:
    if shutil.which(cmd[0]) is None:
        return "not installed"
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    return (done.stdout or done.stderr).strip().splitlines()[0] if done.returncode == 0 else "?"


def _lib_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def _node_ws_version(root: Path) -> str:
    pkg = root / "bench/peers/node/node_modules/ws/package.json"
    try:
        return str(json.loads(pkg.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "not installed"


def environment(root: Path) -> dict[str, Any]:
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "python": platform.python_version(),
        "node": _version_of(["node", "--version"]),
        "gcc": _version_of(["gcc", "--version"]),
        "libs": {name: _lib_version(name) for name in PY_LIBS}
        | {"ws (node)": _node_ws_version(root)},
    }


def _header(env: dict[str, Any], command: str, chart_note: str) -> list[str]:
    libs = ", ".join(f"{k} {v}" for k, v in env["libs"].items())
    return [
        "<!-- Written by the bench harness (python -m bench); edits are overwritten.",
        f"     The chart needs matplotlib, a bench-only dependency: {chart_note} -->",
        "",
        "# rawrt benchmark results",
        "",
        f"- Date: {env['date']}",
        f"- Machine: {env['cores']} cores ({env['cpu']}), {env['memory_gib']} GiB, Linux",
        f"- Python {env['python']}, node {env['node']}, {env['gcc']}",
        f"- Libraries: {libs}",
        f"- Command: `{command}`",
    ]


METHOD = """\
## Method

Each server runs alone on CPU 0 (`taskset -c 0`), started fresh for every
job; the load generator (`bench/loadgen/loadgen.c`, C, epoll, one thread)
runs on CPU 1.  Server CPU is the server's utime+stime (all threads), read
by the load generator at the exact start and end of each measured phase from
`/proc/PID/task/*/schedstat` (ns; `/proc/PID/stat` has the same figure in
10 ms ticks), divided by the deliveries in it.  Idle memory is the server's VmRSS after all idle
connections are confirmed (and the server has gone quiet) minus VmRSS before
the first one was opened, divided by the connections.  Latency is receive
time minus the publish stamp (one clock, in one process).  Each cell is the
median over the repeats, servers run in alternating order; "worst" loss is
the largest over the repeats.  "server busy" is the server's CPU time over
the phase's wall time (100%: the server set the pace); "loadgen busy" is the
load generator's CPU time, less the time it spent polling instead of
sleeping (it polls during phases so that the server's writes need not wake
it, a loopback-only cost), over wall time.  "other load on server core" is CPU 0's busy
time not charged to the server (other processes, kernel threads), as a
share of the phase: high values mean a noisy run.  A latency row is
"sustained" when nothing was lost and the last message reached every
subscriber within 250 ms of being published; there, what had not arrived
2 s after publishing stopped counts as lost.

Limits: on loopback each server write also runs the receiving socket's TCP
input on the server's core (charged to the server, alike for every server,
less for one that coalesces writes), while the ACKs for the server's
sockets are processed on the load generator's core.  One-at-a-time
throughput includes the round trip to the last subscriber.  Peers whose
long-poll has no `?since=` (floor, aiohttp) or hands a message to one waiter
(node) lose messages by design; their poll figures are not a fan-out.  The
machine is shared: the notes say how busy it was."""


def write_results(
    path: Path,
    summary: Summary,
    env: dict[str, Any],
    command: str,
    burst: int,
    notes: list[str],
    chart: Path | None,
    chart_note: str,
) -> None:
    parts = ["\n".join(_header(env, command, chart_note)), METHOD]
    if "rawrt" in summary.servers:
        parts.append("## Targets (rawrt)\n\n" + targets_table(summary, burst))
    parts += [f"## {title}\n\n{md}" for title, md in tables(summary)]
    if chart is not None:
        parts.append(f"![results]({os.path.relpath(chart, path.parent)})")
    if notes:
        parts.append("## Notes\n\n" + "\n".join(f"- {n}" for n in notes))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(parts) + "\n")
    print(f"bench: wrote {path}", file=sys.stderr)
