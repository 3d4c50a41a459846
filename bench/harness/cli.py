"""python -m bench: run the scenarios against the servers, print and write
the results.

Order: for each repeat, the servers in turn (forward, then reversed, ...),
each running every selected job on a fresh process.  Alternating the order
spreads slow drifts of the machine evenly over the servers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import loadgen, procs, report, scenarios
from .chart import write_chart
from .results import environment, write_results
from .scenarios import SCENARIOS, SMOKE_SIZES, Context, Job, Sizes
from .servers import ALL_SERVERS, SERVERS, availability

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[2]
SMOKE_SERVERS = ("rawrt", "floor")
# Share of the server core used by others during a phase that makes it noisy.
OTHER_LOAD_WARN = 0.10
# Busy share of a CPU, with nothing of ours running, that makes a run noisy.
BUSY_WARN = 0.10


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _parser() -> argparse.ArgumentParser:
    d = Sizes()
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--servers",
        type=_csv,
        help=f"comma list of {', '.join(SERVERS)} (default: {','.join(ALL_SERVERS)}; "
        "with --smoke: rawrt,floor)",
    )
    p.add_argument(
        "--scenarios",
        type=_csv,
        default=list(SCENARIOS),
        help="comma list of " + ", ".join(SCENARIOS),
    )
    p.add_argument("--repeats", type=int, help="default 3; with --smoke 1")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes, 1 repeat, rawrt and floor only: ~30 s, for CI",
    )
    p.add_argument("--ws-subscribers", type=int, default=d.ws_subscribers)
    p.add_argument("--sse-subscribers", type=int, default=d.sse_subscribers)
    p.add_argument("--poll-subscribers", type=int, default=d.poll_subscribers)
    p.add_argument("--messages", type=int, default=d.messages, help="messages one at a time")
    p.add_argument(
        "--burst-messages", type=int, default=d.burst_messages, help="messages in the burst phase"
    )
    p.add_argument("--burst", type=int, default=d.burst, help="burst size of the second phase")
    p.add_argument("--idle-connections", type=int, default=d.idle_connections)
    p.add_argument("--rate-subscribers", type=int, default=d.rate_subscribers)
    p.add_argument(
        "--rates",
        type=_csv,
        default=[str(r) for r in d.rates],
        help="deliveries/s for the latency scenario",
    )
    p.add_argument("--rate-duration", type=float, default=d.rate_duration_s, help="seconds")
    p.add_argument("--size", type=int, default=d.size, help="bytes of message data")
    p.add_argument(
        "--results",
        type=Path,
        help="default bench/RESULTS.md (with --smoke: bench/out/smoke/RESULTS.md)",
    )
    p.add_argument("--chart", type=Path, help="default: results.png beside the results")
    p.add_argument("--out", type=Path, default=ROOT / "bench/out", help="raw data and logs")
    p.add_argument(
        "--from-raw",
        type=Path,
        help="measure nothing: rewrite the tables, "
        "RESULTS.md and chart from a raw-*.json of an earlier run",
    )
    return p


def _sizes(args: argparse.Namespace) -> Sizes:
    if args.smoke:
        return SMOKE_SIZES
    return Sizes(
        ws_subscribers=args.ws_subscribers,
        sse_subscribers=args.sse_subscribers,
        poll_subscribers=args.poll_subscribers,
        messages=args.messages,
        burst=args.burst,
        burst_messages=args.burst_messages,
        idle_connections=args.idle_connections,
        rate_subscribers=args.rate_subscribers,
        rates=tuple(int(r) for r in args.rates),
        rate_duration_s=args.rate_duration,
        size=args.size,
    )


def _resolve(args: argparse.Namespace) -> None:
    if args.servers is None:
        args.servers = list(SMOKE_SERVERS if args.smoke else ALL_SERVERS)
    if args.repeats is None:
        args.repeats = 1 if args.smoke else 3
    if args.results is None:
        args.results = ROOT / ("bench/out/smoke/RESULTS.md" if args.smoke else "bench/RESULTS.md")
    if args.chart is None:
        args.chart = args.results.with_name("results.png")
    unknown = [s for s in args.servers if s not in SERVERS]
    bad = [s for s in args.scenarios if s not in SCENARIOS and s not in scenarios.ALIASES]
    if unknown or bad:
        raise SystemExit(f"unknown servers {unknown} or scenarios {bad}")


def _usable_servers(names: list[str]) -> list[str]:
    usable = []
    for name in names:
        why = availability(name, ROOT)
        if why:
            print(f"bench: skipping {name}: {why}", flush=True)
        else:
            usable.append(name)
    return usable


def _describe(rows: list[dict[str, Any]]) -> str:
    parts = []
    for r in rows:
        if "bytes_per_conn" in r:
            per = r["bytes_per_conn"]
            parts.append(f"{r['ready']} conns, {per:,.0f} B/conn" if per is not None else "no RSS")
            continue
        parts.append(
            f"{r['case'].split()[-1]}: {r['deliveries_per_s']:,.0f}/s "
            f"{r['cpu_us']:.2f}µs p99 {r['p99_us'] / 1000:.1f}ms lost {r['lost']:,.0f}"
        )
    return " | ".join(parts)


@dataclass
class Run:
    """What one invocation gathers as it goes."""

    ctx: Context
    records: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)

    def job(self, server: str, rep: int, job: Job) -> None:
        started = time.monotonic()
        try:
            rows = scenarios.run_job(self.ctx, SERVERS[server], rep, job)
        except (loadgen.LoadgenError, OSError, ValueError, KeyError) as exc:
            self.failures.append(f"{server} {job.label} repeat {rep}: {exc}")
            print(f"  {server:<10} {job.label:<18} FAILED: {exc}", flush=True)
            return
        took = time.monotonic() - started
        print(f"  {server:<10} {job.label:<18} {took:5.1f}s  {_describe(rows)}", flush=True)
        self.records += rows

    def check_quiet(self) -> None:
        """Other people's work on the machine skews every figure: say so."""
        busy = procs.machine_busy([0, 1])
        text = ", ".join(f"CPU {i} {b:.0%}" for i, b in enumerate(busy))
        if max(busy) > BUSY_WARN:
            print(f"bench: WARNING: the machine is busy with other work ({text})", flush=True)
        self.busy.append(text)

    def all(self, servers: list[str], jobs: list[Job], repeats: int) -> None:
        for rep in range(repeats):
            self.check_quiet()
            order = servers if rep % 2 == 0 else servers[::-1]
            print(f"bench: repeat {rep + 1}/{repeats}: {', '.join(order)}", flush=True)
            for server in order:
                for job in jobs:
                    if job.transport in SERVERS[server].transports:
                        self.job(server, rep, job)


def _notes(run: Run, servers: list[str]) -> list[str]:
    notes = [
        "With nothing of the bench running, before each repeat, the CPUs were busy: "
        + "; ".join(run.busy)
        + "."
    ]
    shares = [r["loadgen_share"] for r in run.records if r.get("loadgen_share") is not None]
    if shares:
        notes.append(
            f"Load generator busy share (CPU time minus its timed spin) during measured "
            f"phases: {min(shares):.0%} to {max(shares):.0%} of CPU 1. Below 100% it kept up; "
            f"where the server was also below ~90% busy, the round trip or the schedule set "
            f"the pace, not either side's CPU."
        )
    others = [r["other_load"] for r in run.records if r.get("other_load") is not None]
    if others:
        noisy = sum(o > OTHER_LOAD_WARN for o in others)
        notes.append(
            f"Other load on the server core during measured phases: median "
            f"{statistics.median(others):.0%}, max {max(others):.0%}; {noisy} of {len(others)} "
            f"phases above {OTHER_LOAD_WARN:.0%} (see the last column of the fan-out table)."
        )
    troubled = sorted(
        {
            f"{r['server']} {r['case']} r{r['repeat']} ({r['errors']} errors, "
            f"{r['ready']}/{r['subscribers']} ready)"
            for r in run.records
            if r.get("errors") or r.get("ready", 0) < r.get("subscribers", 0)
        }
    )
    if troubled:
        notes.append(
            "Connection or protocol errors (see bench/out/logs): " + "; ".join(troubled) + "."
        )
    skipped = [s for s in ALL_SERVERS if s not in servers]
    if skipped:
        notes.append("Not measured: " + ", ".join(skipped) + ".")
    notes += [f"Failed: {f}" for f in run.failures]
    return notes


def _save_raw(out: Path, run: Run, saved: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"raw-{time.strftime('%Y%m%d-%H%M%S')}.json"
    data = {**saved, "records": run.records, "failures": run.failures, "busy": run.busy}
    path.write_text(json.dumps(data, indent=1))
    return path


def _load_raw(path: Path) -> tuple[Run, dict[str, Any]]:
    """A finished run read back from its raw file, to rewrite the report."""
    data = json.loads(path.read_text())
    ctx = Context(
        ROOT, Path(), Sizes(**data["sizes"] | {"rates": tuple(data["sizes"]["rates"])}), path.parent
    )
    run = Run(ctx, data["records"], data["failures"], data["busy"])
    return run, data


def _report(args: argparse.Namespace, run: Run, saved: dict[str, Any], raw: Path) -> None:
    servers, env, burst = saved["servers"], saved["env"], saved["sizes"]["burst"]
    summary = report.summarize(run.records, servers)
    if "rawrt" in servers:
        print("\n## Targets (rawrt)\n\n" + report.targets_table(summary, burst))
    for title, md in report.tables(summary):
        print(f"\n## {title}\n\n{md}")
    skipped = write_chart(summary, args.chart, [env["date"], f"{env['cores']} cores"])
    chart_note = skipped or "installed with pip install matplotlib"
    if skipped:
        print(f"bench: {skipped}", file=sys.stderr)
    notes = [
        *_notes(run, servers),
        f"Raw data: {raw.name} (in the bench output folder, not committed).",
    ]
    chart = None if skipped else args.chart
    write_results(args.results, summary, env, saved["command"], burst, notes, chart, chart_note)


def _measure(args: argparse.Namespace, argv: list[str]) -> int:
    try:
        binary = loadgen.build(ROOT)
    except loadgen.LoadgenError as exc:
        print(f"bench: cannot build the load generator: {exc}", file=sys.stderr)
        return 2
    servers = _usable_servers(args.servers)
    if not servers:
        print("bench: no server to measure", file=sys.stderr)
        return 2
    run = Run(Context(ROOT, binary, _sizes(args), args.out))
    run.all(servers, scenarios.jobs_for(args.scenarios), args.repeats)
    saved = {
        "command": shlex.join(["python", "-m", "bench", *argv]),
        "servers": servers,
        "env": environment(ROOT),
        "sizes": dataclasses.asdict(run.ctx.sizes),
    }
    raw = _save_raw(args.out, run, saved)
    _report(args, run, saved, raw)
    return 1 if run.failures else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    _resolve(args)
    if args.from_raw:
        run, saved = _load_raw(args.from_raw)
        _report(args, run, saved, args.from_raw)
        return 0
    started = time.monotonic()
    status = _measure(args, argv)
    print(f"bench: done in {time.monotonic() - started:.0f} s", flush=True)
    return status
