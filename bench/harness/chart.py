"""results.png: four panels of medians, one bar per server.

matplotlib is a bench-only dependency (pip install matplotlib), never one
of rawrt's; without it the chart is skipped with a message.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .report import Summary

__all__ = ["write_chart"]

PANELS = (
    ("Fan-out throughput (deliveries/s, log)", "-fanout", "deliveries_per_s", 1.0, True),
    ("Server CPU per delivery (µs, log)", "-fanout", "cpu_us", 1.0, True),
    ("Idle memory per connection (KiB)", "idle ", "bytes_per_conn", 1 / 1024, False),
    ("p99 latency under load (ms, log)", "latency ", "p99_us", 1e-3, True),
)


def _panel(ax: Any, s: Summary, title: str, key: str, metric: str, scale: float, log: bool) -> None:
    cases = [c for c in s.cases if key in c]
    width = 0.8 / max(1, len(s.servers))
    for i, server in enumerate(s.servers):
        values = [s.get(server, c, metric) for c in cases]
        xs = [j + i * width for j in range(len(cases))]
        bars = ax.bar(xs, [0 if v is None else v * scale for v in values], width, label=server)
        # Hatched: the server lost messages there, so the bar flatters it.
        for bar, case in zip(bars, cases, strict=True):
            if s.get(server, case, "lost_max"):
                bar.set_hatch("///")
                bar.set_alpha(0.6)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([j + width * (len(s.servers) - 1) / 2 for j in range(len(cases))])
    ax.set_xticklabels(cases, rotation=30, ha="right", fontsize=8)
    if log:
        ax.set_yscale("log")
    ax.grid(axis="y", alpha=0.3)


def write_chart(s: Summary, path: Path, subtitle: Sequence[str] = ()) -> str | None:
    """Writes the chart; returns None, or why it was skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib): no chart"
    fig, axes = plt.subplots(2, 2, figsize=(14, 9))
    for ax, panel in zip(axes.flat, PANELS, strict=True):
        _panel(ax, s, *panel)
    axes.flat[0].legend(fontsize=8)
    parts = [*subtitle, "medians", "hatched = lost messages"]
    fig.suptitle("rawrt and peers: " + " · ".join(parts), fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
