"""The drain's pace (rawrt.drain), without a loop or a socket."""

from __future__ import annotations

import itertools

from rawrt.drain import DrainPace


def _drain(pace: DrainPace, open_count: int, ticks: list[float]) -> list[int]:
    """Close what the pace says at each tick; returns how many went at each."""
    closed = []
    for now in ticks:
        due = pace.quota(now, open_count)
        open_count -= due
        closed.append(due)
    return closed


def test_a_fixed_set_closes_evenly_tick_after_tick() -> None:
    ticks = [0.1 * k for k in range(1, 11)]
    assert _drain(DrainPace(start=0.0, window_s=1.0), 1000, ticks) == [100] * 10


def test_fractions_carry_over_so_few_connections_still_spread() -> None:
    closed = _drain(DrainPace(start=0.0, window_s=10.0), 3, [0.5 * k for k in range(1, 21)])
    assert sum(closed) == 3 and max(closed) == 1
    moments = [0.5 * (k + 1) for k, n in enumerate(closed) if n]
    assert moments[0] >= 2.5 and moments[-1] >= 8.5  # one in each third of the window
    assert all(b - a >= 2.5 for a, b in itertools.pairwise(moments))


def test_arrivals_during_the_window_go_within_it() -> None:
    pace = DrainPace(start=0.0, window_s=1.0)
    first = pace.quota(0.5, 100)
    assert first == 50
    assert pace.quota(0.75, 50 + 50) == 50  # 50 new: half of what is open is due now
    assert pace.quota(1.0, 50) == 50 and pace.over(1.0)


def test_at_or_past_the_end_everything_is_due_and_never_before_the_start() -> None:
    pace = DrainPace(start=5.0, window_s=2.0)
    assert pace.quota(4.0, 10) == 0 and pace.quota(5.0, 10) == 0
    assert not pace.over(6.9)
    assert pace.quota(9.0, 10) == 10
    assert DrainPace(start=0.0, window_s=0.0).quota(0.0, 7) == 7
