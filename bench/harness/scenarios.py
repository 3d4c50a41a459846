"""Scenarios: what each measurement asks of the load generator, and the
records it yields.

One job = one fresh server process and one load generator run, so that no
scenario inherits another's connections, queues or heap.  A record is one
row of results: (server, repeat, case) and its metrics.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import loadgen, procs
from .servers import Server

__all__ = ["SCENARIOS", "SMOKE_SIZES", "Context", "Job", "Sizes", "jobs_for", "run_job"]

SERVER_CPU = 0
START_TIMEOUT_S = 30.0
# A rate phase "sustained" its load when the last message reached everyone
# within this long after it was published; a longer drain means a backlog
# grew while publishing.
DRAIN_OK_MS = 250.0
RATE_DRAIN_MS = 2000
# Server and load generator CPU are read to the ns (schedstat, getrusage);
# CPU 0's busy time only in 10 ms ticks, which say little about short phases.
MIN_SHARE_PHASE_S = 0.05
MIN_OTHER_LOAD_PHASE_S = 0.5
# Idle connections are held this long at most (the harness releases them as
# soon as it has read the server's RSS).
IDLE_HOLD_S = 300
LOADGEN_MAX_S = 300


@dataclass(frozen=True)
class Sizes:
    ws_subscribers: int = 5000
    sse_subscribers: int = 2000
    poll_subscribers: int = 2000
    messages: int = 20  # one at a time
    burst: int = 10
    # Bursts run 10x faster on a server that coalesces writes: more messages
    # keep that phase long enough to time (rawrt: ~0.2 s at 5,000).
    burst_messages: int = 50
    idle_connections: int = 15000
    rate_subscribers: int = 1000
    rates: tuple[int, ...] = (10000, 100000)
    rate_duration_s: float = 2.0
    size: int = 100
    settle_ms: int = 300  # quiet window before publishing (see loadgen.c)


SMOKE_SIZES = Sizes(
    burst_messages=20,
    ws_subscribers=50,
    sse_subscribers=50,
    poll_subscribers=50,
    messages=20,
    idle_connections=200,
    rate_subscribers=50,
    rates=(1000, 5000),
    rate_duration_s=0.5,
    settle_ms=200,
)


@dataclass(frozen=True)
class Job:
    scenario: str
    transport: str
    mode: str  # fanout | idle | rate

    @property
    def label(self) -> str:
        return f"{self.scenario}:{self.transport}"


SCENARIOS: dict[str, tuple[Job, ...]] = {
    "ws-fanout": (Job("ws-fanout", "ws", "fanout"),),
    "sse-fanout": (Job("sse-fanout", "sse", "fanout"),),
    "poll-fanout": (Job("poll-fanout", "poll", "fanout"),),
    "idle-memory": tuple(Job("idle-memory", t, "idle") for t in ("ws", "sse", "poll")),
    "latency": tuple(Job("latency", t, "rate") for t in ("ws", "sse", "poll")),
}
ALIASES = {"longpoll-fanout": "poll-fanout", "idle": "idle-memory", "rate": "latency"}


def jobs_for(names: list[str]) -> list[Job]:
    jobs: list[Job] = []
    for name in names:
        jobs.extend(SCENARIOS[ALIASES.get(name, name)])
    return jobs


@dataclass
class Context:
    root: Path
    binary: Path
    sizes: Sizes
    out: Path
    runs: int = 0

    def next_src_base(self) -> int:
        """A fresh pair of source addresses per run (127.0.0.2 and up), so a
        run never meets the previous run's sockets in TIME_WAIT."""
        self.runs += 1
        return 2 + (self.runs % 100) * 2


# ------------------------------------------------------------------ records


def _record(server: str, rep: int, case: str, job: Job, **metrics: Any) -> dict[str, Any]:
    return {
        "server": server,
        "repeat": rep,
        "case": case,
        "scenario": job.scenario,
        "transport": job.transport,
        **metrics,
    }


def _other_load(phase: dict[str, Any]) -> float | None:
    """Share of the server's core busy with anything but the server."""
    busy = float(phase["server_core_busy_s"])
    own, dur = float(phase["server_cpu_s"]), float(phase["duration_s"])
    if busy < 0 or own < 0 or dur < MIN_OTHER_LOAD_PHASE_S:
        return None
    return max(0.0, busy - own) / dur


def _share(seconds: float, duration_s: float) -> float | None:
    return seconds / duration_s if seconds >= 0 and duration_s >= MIN_SHARE_PHASE_S else None


def _phase_metrics(result: dict[str, Any], phase: dict[str, Any]) -> dict[str, Any]:
    long_enough = phase["duration_s"] >= MIN_SHARE_PHASE_S
    return {
        "deliveries_per_s": phase["deliveries_per_s"],
        "cpu_us": phase["server_cpu_us_per_delivery"],
        "p50_us": phase["lat_p50_us"],
        "p99_us": phase["lat_p99_us"],
        "lost": phase["lost"],
        "duplicates": phase["duplicates"],
        "timeouts": phase["timeouts"],
        "aborted": phase["aborted"],
        # Work only: the load generator polls instead of sleeping during a
        # phase (see SPIN_NS in loadgen.c) and subtracts that spin.
        "loadgen_share": phase["loadgen_busy_share"] if long_enough else None,
        "loadgen_cpu_share": phase["loadgen_cpu_share"],
        "server_share": _share(phase["server_cpu_s"], phase["duration_s"]),
        "other_load": _other_load(phase),
        "ready": result["ready"],
        "subscribers": result["subscribers"],
        "errors": result["errors"],
    }


def _fanout_records(
    server: str, rep: int, job: Job, result: dict[str, Any]
) -> list[dict[str, Any]]:
    rows = []
    for phase in result["phases"]:
        kind = "one" if phase["burst"] == 1 else f"burst{phase['burst']}"
        case = f"{job.transport}-fanout {kind}"
        rows.append(_record(server, rep, case, job, **_phase_metrics(result, phase)))
    return rows


def _rate_records(server: str, rep: int, job: Job, result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for phase in result["phases"]:
        case = f"latency {job.transport} @{phase['rate'] / 1000:g}k/s"
        metrics = _phase_metrics(result, phase)
        metrics["sustained"] = bool(
            phase["lost"] == 0
            and not phase["timeouts"]
            and not phase["aborted"]
            and phase["drain_ms"] <= DRAIN_OK_MS
        )
        metrics["drain_ms"] = phase["drain_ms"]
        rows.append(_record(server, rep, case, job, **metrics))
    return rows


# ---------------------------------------------------------------- loadgen args


def _common_args(ctx: Context, job: Job, port: int, pid: int) -> list[str]:
    return [
        "--port",
        str(port),
        "--transport",
        job.transport,
        "--server-pid",
        str(pid),
        "--server-cpu",
        str(SERVER_CPU),
        "--src-base",
        str(ctx.next_src_base()),
        "--size",
        str(ctx.sizes.size),
        "--max-s",
        str(LOADGEN_MAX_S),
        "--settle-ms",
        str(ctx.sizes.settle_ms),
    ]


def _fanout_args(sizes: Sizes, job: Job) -> list[str]:
    subs = {
        "ws": sizes.ws_subscribers,
        "sse": sizes.sse_subscribers,
        "poll": sizes.poll_subscribers,
    }[job.transport]
    # Poll peers without a backlog lose messages published while a poller is
    # between two requests, so their bursts never complete: give up on a
    # burst sooner once deliveries stop (late arrivals still count).
    stall_ms = 500 if job.transport == "poll" else 1000
    return [
        "--mode",
        "fanout",
        "--subscribers",
        str(subs),
        "--messages",
        f"{sizes.messages},{sizes.burst_messages}",
        "--bursts",
        f"1,{sizes.burst}",
        "--timeout-ms",
        "10000",
        "--stall-ms",
        str(stall_ms),
    ]


def _rate_args(sizes: Sizes) -> list[str]:
    return [
        "--mode",
        "rate",
        "--subscribers",
        str(sizes.rate_subscribers),
        "--rates",
        ",".join(str(r) for r in sizes.rates),
        "--duration",
        str(sizes.rate_duration_s),
        # Messages not delivered within 2 s after publishing stops count as
        # lost: the server could not sustain the rate.
        "--timeout-ms",
        str(RATE_DRAIN_MS),
    ]


# ------------------------------------------------------------------- running


def _run_idle(
    ctx: Context, server: str, rep: int, job: Job, proc: procs.Proc, args: list[str], log: Path
) -> list[dict[str, Any]]:
    rss_before = procs.rss_bytes(proc.pid)
    args += [
        "--mode",
        "idle",
        "--subscribers",
        str(ctx.sizes.idle_connections),
        "--hold",
        str(IDLE_HOLD_S),
    ]
    result, rss_after = loadgen.run_idle(
        ctx.binary, args, log, LOADGEN_MAX_S, lambda _n: procs.rss_bytes(proc.pid)
    )
    ready = result["ready"] - result["closed_after_ready"]
    per_conn = None
    if rss_before is not None and rss_after is not None and ready > 0:
        per_conn = (rss_after - rss_before) / ready
    return [
        _record(
            server,
            rep,
            f"idle {job.transport}",
            job,
            bytes_per_conn=per_conn,
            rss_before=rss_before,
            rss_after=rss_after,
            ready=ready,
            subscribers=result["subscribers"],
            errors=result["errors"],
        )
    ]


def _measure(
    ctx: Context, spec: Server, rep: int, job: Job, proc: procs.Proc, port: int, log: Path
) -> list[dict[str, Any]]:
    server = spec.name
    args = _common_args(ctx, job, port, proc.pid) + spec.loadgen_args(ctx.root)
    if job.mode == "idle":
        return _run_idle(ctx, server, rep, job, proc, args, log)
    extra = _fanout_args(ctx.sizes, job) if job.mode == "fanout" else _rate_args(ctx.sizes)
    result = loadgen.run(ctx.binary, args + extra, log, LOADGEN_MAX_S + 30)
    if job.mode == "fanout":
        return _fanout_records(server, rep, job, result)
    return _rate_records(server, rep, job, result)


def run_job(ctx: Context, spec: Server, rep: int, job: Job) -> list[dict[str, Any]]:
    """Starts a fresh server on CPU 0, measures one job, stops the server."""
    port = procs.free_port()
    stem = f"{spec.name}-{job.scenario}-{job.transport}-r{rep}"
    log = ctx.out / "logs" / f"{stem}.loadgen.log"
    proc = procs.start(
        spec.argv(ctx.root, port), SERVER_CPU, ctx.out / "logs" / f"{stem}.log", ctx.root
    )
    try:
        if not procs.wait_listening(proc, port, START_TIMEOUT_S):
            tail = proc.log_tail()
            raise loadgen.LoadgenError(f"{spec.name} did not start listening:\n{tail}")
        return _measure(ctx, spec, rep, job, proc, port, log)
    finally:
        proc.stop()
        time.sleep(0.2)  # let the kernel retire the closed sockets
