"""Medians over repeats, the tables, the ratios and the targets.

Tables are Markdown, printed to the console as they are written to
RESULTS.md.  "n/a" means not measured: the server lacks the transport, or
the run failed (the console and the logs say why).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Summary", "summarize", "tables", "targets_table"]

NUMERIC = (
    "deliveries_per_s",
    "cpu_us",
    "p50_us",
    "p99_us",
    "lost",
    "duplicates",
    "loadgen_share",
    "server_share",
    "other_load",
    "bytes_per_conn",
    "ready",
    "drain_ms",
    "timeouts",
)
KB = 1024


@dataclass
class Summary:
    """Medians per (server, case), with the worst loss and the repeat count."""

    cells: dict[tuple[str, str], dict[str, Any]]
    servers: list[str]
    cases: list[str]

    def get(self, server: str, case: str, metric: str) -> Any:
        return self.cells.get((server, case), {}).get(metric)


def _median(values: Iterable[Any]) -> float | None:
    # The load generator writes -1 for "no value" (no deliveries to time).
    nums = [float(v) for v in values if isinstance(v, int | float) and v >= 0]
    return statistics.median(nums) if nums else None


def _aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    cell: dict[str, Any] = {"n": len(rows)}
    for metric in NUMERIC:
        cell[metric] = _median(r.get(metric) for r in rows)
    losses = [r["lost"] + r.get("duplicates", 0) for r in rows if "lost" in r]
    cell["lost_max"] = max(losses) if losses else None
    cell["aborted"] = any(r.get("aborted") for r in rows)
    if any("sustained" in r for r in rows):
        cell["sustained"] = sum(bool(r.get("sustained")) for r in rows)
    return cell


def summarize(records: Sequence[dict[str, Any]], servers: Sequence[str]) -> Summary:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    cases: list[str] = []
    for r in records:
        groups[(r["server"], r["case"])].append(r)
        if r["case"] not in cases:
            cases.append(r["case"])
    cells = {key: _aggregate(rows) for key, rows in groups.items()}
    return Summary(cells, list(servers), cases)


# --------------------------------------------------------------- formatting


def _num(v: float | None, fmt: str = "{:,.0f}", scale: float = 1.0) -> str:
    return "n/a" if v is None else fmt.format(v * scale)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 100:.0f}%"


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def _md(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _loss(cell: dict[str, Any]) -> str:
    """Worst loss, and whether waits were cut short (by a stall or the
    timeout: those phases' rates and latencies are less exact) or the phase
    was given up."""
    lost = cell.get("lost_max")
    text = "n/a" if lost is None else f"{lost:,.0f}"
    if cell.get("aborted"):
        return text + " (aborted)"
    cut = cell.get("timeouts")
    return text + (f" ({cut:.0f} waits cut)" if cut else "")


# ------------------------------------------------------------------- tables


def _fanout_table(s: Summary) -> str:
    rows = []
    for case in (c for c in s.cases if "-fanout" in c):
        for server in s.servers:
            cell = s.cells.get((server, case))
            if cell is None:
                continue
            rows.append(
                [
                    case,
                    server,
                    _num(cell["deliveries_per_s"]),
                    _num(cell["cpu_us"], "{:.2f}"),
                    _num(cell["p50_us"], "{:.1f}", 1e-3),
                    _num(cell["p99_us"], "{:.1f}", 1e-3),
                    _loss(cell),
                    _pct(cell["server_share"]),
                    _pct(cell["loadgen_share"]),
                    _pct(cell["other_load"]),
                ]
            )
    header = [
        "case",
        "server",
        "deliveries/s",
        "server CPU µs/delivery",
        "p50 ms",
        "p99 ms",
        "lost+dup (worst)",
        "server busy",
        "loadgen busy",
        "other load on server core",
    ]
    return _md(header, rows)


def _idle_table(s: Summary) -> str:
    rows = []
    for case in (c for c in s.cases if c.startswith("idle ")):
        for server in s.servers:
            cell = s.cells.get((server, case))
            if cell is None:
                continue
            per = cell["bytes_per_conn"]
            rows.append([case, server, _num(per), _num(per, "{:.2f}", 1 / KB), _num(cell["ready"])])
    return _md(["case", "server", "RSS bytes/connection", "KiB/connection", "connections"], rows)


def _latency_table(s: Summary) -> str:
    rows = []
    for case in (c for c in s.cases if c.startswith("latency ")):
        for server in s.servers:
            cell = s.cells.get((server, case))
            if cell is None:
                continue
            sustained = f"{cell.get('sustained', 0)}/{cell['n']}"
            rows.append(
                [
                    case,
                    server,
                    _num(cell["p50_us"], "{:.2f}", 1e-3),
                    _num(cell["p99_us"], "{:.2f}", 1e-3),
                    _loss(cell),
                    sustained,
                    _num(cell["drain_ms"], "{:.0f}"),
                    _pct(cell["loadgen_share"]),
                ]
            )
    header = [
        "case",
        "server",
        "p50 ms",
        "p99 ms",
        "lost+dup (worst)",
        "sustained",
        "drain ms",
        "loadgen busy",
    ]
    return _md(header, rows)


# (label, metric, True when higher is better)
RATIO_METRICS: dict[str, tuple[tuple[str, str, bool], ...]] = {
    "-fanout": (
        ("deliveries/s", "deliveries_per_s", True),
        ("CPU µs/delivery", "cpu_us", False),
        ("p99", "p99_us", False),
    ),
    "idle ": (("bytes/connection", "bytes_per_conn", False),),
    "latency ": (("p99", "p99_us", False),),
}


def _ratio_table(s: Summary, base: str = "rawrt") -> str:
    peers = [p for p in s.servers if p != base]
    rows = []
    for case in s.cases:
        for key, metrics in RATIO_METRICS.items():
            if key not in case:
                continue
            for label, metric, _higher in metrics:
                mine = s.get(base, case, metric)
                rows.append([case, label] + [_ratio(mine, s.get(p, case, metric)) for p in peers])
    return _md(["case", "metric"] + [f"{base} ÷ {p}" for p in peers], rows)


def tables(s: Summary) -> list[tuple[str, str]]:
    """(title, markdown) for each table that has rows."""
    out = [
        ("Fan-out (medians)", _fanout_table(s)),
        ("Idle memory (medians)", _idle_table(s)),
        ("Latency under load (medians)", _latency_table(s)),
    ]
    if "rawrt" in s.servers and len(s.servers) > 1:
        out.append(
            ("Ratios: rawrt ÷ peer (medians; >1 means rawrt has more of it)", _ratio_table(s))
        )
    return [(title, md) for title, md in out if md.count("\n") > 1]


# ------------------------------------------------------------------ targets


@dataclass(frozen=True)
class Target:
    text: str
    case: str
    metric: str
    check: Callable[[float, Summary], bool | None]
    fmt: str = "{:.2f}"


def _vs(peer: str, case: str, metric: str, factor: float, higher: bool) -> Callable[..., Any]:
    def check(mine: float, s: Summary) -> bool | None:
        ref = s.get(peer, case, metric)
        if ref is None:
            return None
        return bool(mine >= factor * ref if higher else mine <= factor * ref)

    return check


def _at_most(limit: float) -> Callable[..., Any]:
    return lambda mine, _s: mine <= limit


def _targets(burst: int, s: Summary) -> list[Target]:
    one, bursts = "ws-fanout one", f"ws-fanout burst{burst}"
    targets = [
        Target(
            "ws one-at-a-time: server CPU/delivery ≤ 1.15 x floor",
            one,
            "cpu_us",
            _vs("floor", one, "cpu_us", 1.15, False),
        ),
        Target(
            "ws one-at-a-time: deliveries/s ≥ 1.2 x node",
            one,
            "deliveries_per_s",
            _vs("node", one, "deliveries_per_s", 1.2, True),
            "{:,.0f}",
        ),
        Target(
            f"ws bursts of {burst}: server CPU/delivery ≤ 1.5 µs", bursts, "cpu_us", _at_most(1.5)
        ),
        Target("idle WebSocket ≤ 4 KiB", "idle ws", "bytes_per_conn", _at_most(4 * KB), "{:,.0f}"),
        Target("idle SSE ≤ 3 KiB", "idle sse", "bytes_per_conn", _at_most(3 * KB), "{:,.0f}"),
        Target(
            "idle parked poll ≤ 3 KiB", "idle poll", "bytes_per_conn", _at_most(3 * KB), "{:,.0f}"
        ),
    ]
    for case in (c for c in s.cases if c.startswith("latency ")):
        targets.append(
            Target(
                f"{case}: p99 ≤ node's",
                case,
                "p99_us",
                _vs("node", case, "p99_us", 1.0, False),
                "{:,.0f}",
            )
        )
    return targets


def _node_cannot_compare(s: Summary, t: Target) -> str | None:
    """Node's long-poll hands each message to one waiter: its p99 is over the
    few deliveries it made, not a fan-out, so there is nothing to compare.
    (On ws and sse a node that fell behind is compared as it is: its p99
    only leaves out what it never delivered.)"""
    if not t.case.startswith("latency poll"):
        return None
    lost = s.get("node", t.case, "lost_max")
    return f"n/a: node delivered each message to one poller (lost {lost:,.0f})" if lost else None


def _target_row(s: Summary, t: Target) -> list[str]:
    mine = s.get("rawrt", t.case, t.metric)
    floor, node = s.get("floor", t.case, t.metric), s.get("node", t.case, t.metric)
    cells = [
        t.text,
        _num(mine, t.fmt),
        _num(floor, t.fmt),
        _num(node, t.fmt),
        _ratio(mine, floor),
        _ratio(mine, node),
    ]
    if mine is None:
        return [*cells, "not measured"]
    why = _node_cannot_compare(s, t)
    if why:
        return [*cells, why]
    verdict = t.check(mine, s)
    return [*cells, "n/a" if verdict is None else ("met" if verdict else "**missed**")]


def _loss_row(s: Summary) -> list[str]:
    lossy = [c for c in s.cases if (s.get("rawrt", c, "lost_max") or 0) > 0]
    measured = [c for c in s.cases if s.get("rawrt", c, "lost_max") is not None]
    if not measured:
        return ["rawrt loses nothing, in every scenario", "n/a", "", "", "", "", "not measured"]
    verdict = "met" if not lossy else "**missed**: " + ", ".join(lossy)
    worst = max(s.get("rawrt", c, "lost_max") for c in measured)
    return [
        "rawrt loses nothing, in every scenario",
        f"worst {worst:,.0f}",
        "",
        "",
        "",
        "",
        verdict,
    ]


def targets_table(s: Summary, burst: int) -> str:
    rows = [_target_row(s, t) for t in _targets(burst, s)]
    rows.append(_loss_row(s))
    header = ["target", "rawrt", "floor", "node", "rawrt ÷ floor", "rawrt ÷ node", "verdict"]
    return _md(header, rows)
