"""The drain's schedule (rawrt.drain), without a loop or a socket."""

from __future__ import annotations

import pytest

from rawrt.drain import DrainPlan


def test_plan_hands_out_the_first_at_once_and_the_rest_evenly() -> None:
    plan = DrainPlan(list(range(10)), start=100.0, window_s=10.0)
    assert plan.due(100.0) == [0]
    assert plan.due(100.5) == []
    assert plan.due(104.0) == [1, 2, 3, 4]
    assert plan.next_due() == pytest.approx(105.0)
    assert plan.due(109.0) == [5, 6, 7, 8, 9]
    assert plan.done and plan.next_due() is None
    assert plan.due(200.0) == []


def test_plan_gives_each_tenth_of_the_window_a_tenth_of_the_items() -> None:
    plan = DrainPlan(list(range(1000)), start=0.0, window_s=1.0)
    per_tenth = [len(plan.due(0.1 * k + 0.0999)) for k in range(10)]
    assert per_tenth == [100] * 10


def test_plan_after_its_window_or_without_one_hands_out_everything() -> None:
    assert DrainPlan([1, 2, 3], start=0.0, window_s=0.0).due(0.0) == [1, 2, 3]
    late = DrainPlan([1, 2, 3], start=0.0, window_s=5.0)
    assert late.due(-1.0) == [1]  # a clock read just before the start still closes the first
    assert late.due(7.0) == [2, 3]
    assert DrainPlan([], start=0.0, window_s=5.0).due(1.0) == []
