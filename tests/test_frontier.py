"""Frontier, accuracy-at-cost and cost-within-tolerance on hand-made points."""

from __future__ import annotations

import pytest

from frugalnn.analysis.frontier import (
    Point,
    accuracy_at_fraction,
    cost_within,
    frontier_summary,
    latency_points,
    pareto_frontier,
    points_from_summary,
)
from frugalnn.errors import UserError

# cost, accuracy: (30, .80) is dominated by (20, .85); (50, .90) ties cost with (50, .88).
PTS = [
    Point(10, 0.50, 0.1), Point(20, 0.85, 0.2), Point(30, 0.80, 0.3), Point(50, 0.88, 0.4),
    Point(50, 0.90, 0.5), Point(80, 0.913, 0.6), Point(100, 0.915, 0.7), Point(120, 0.91, 0.8),
]


def test_pareto_frontier_drops_dominated_points() -> None:
    front = pareto_frontier(PTS)
    assert [(p.cost, p.accuracy) for p in front] == [
        (10, 0.50), (20, 0.85), (50, 0.90), (80, 0.913), (100, 0.915)
    ]
    assert pareto_frontier([]) == []


def test_accuracy_at_fraction_takes_best_point_under_cost() -> None:
    assert accuracy_at_fraction(PTS, 100, 0.25).accuracy == 0.85  # cost 20 <= 25
    assert accuracy_at_fraction(PTS, 100, 0.5).accuracy == 0.90  # cost 50 exactly counts
    assert accuracy_at_fraction(PTS, 100, 0.75).accuracy == 0.90  # 80 > 75: no interpolation
    assert accuracy_at_fraction(PTS, 100, 1.0).accuracy == 0.915
    assert accuracy_at_fraction(PTS, 100, 0.05) is None
    with pytest.raises(UserError):
        accuracy_at_fraction(PTS, 0, 0.5)


def test_cost_within_tolerance() -> None:
    # baseline 91.5 %: within 0.5 pt needs >= 91.0 % -> cost 80; within 1 pt (>= 90.5 %) also 80.
    assert cost_within(PTS, 0.915, 0.5).cost == 80
    assert cost_within(PTS, 0.915, 2.0).cost == 50  # >= 89.5 %
    assert cost_within(PTS, 0.99, 1.0) is None


SUMMARY = {
    "method": "toy",
    "baseline_flops": 100.0,
    "baseline_accuracy": 0.915,
    "budgets": [
        {"budget": p.budget, "label": str(p.budget), "flops": p.cost, "accuracy": p.accuracy}
        for p in PTS
    ],
    "latency": [
        {"budget": 0.1, "batch_size": 1, "per_example_ms": 2.0},
        {"budget": 0.2, "batch_size": 1, "per_example_ms": 1.0},
        {"budget": 0.2, "batch_size": 64, "per_example_ms": 0.1},
    ],
}


def test_frontier_summary_from_saved_summary() -> None:
    res = frontier_summary(SUMMARY)
    assert res["baseline"] == {"cost": 100.0, "accuracy": 0.915, "unit": "flops"}
    assert [r["point"]["accuracy"] if r["point"] else None for r in res["at_fraction"]] == [
        0.85, 0.90, 0.90, 0.915
    ]
    within = {r["tolerance_points"]: r for r in res["within"]}
    assert within[0.5]["point"]["cost"] == 80 and within[0.5]["saving"] == pytest.approx(0.2)
    assert within[1.0]["saving"] == pytest.approx(0.2)
    # An explicit baseline (e.g. a separate baseline run) overrides the recorded one.
    res = frontier_summary(SUMMARY, baseline_flops=200.0, baseline_accuracy=0.905)
    assert res["at_fraction"][0]["point"]["cost"] == 50  # 25 % of 200
    assert {r["tolerance_points"]: r["point"]["cost"] for r in res["within"]} == {
        0.5: 50, 1.0: 50
    }


def test_latency_points_join_accuracy_by_budget() -> None:
    pts = latency_points(SUMMARY, 1)
    assert [(p.cost, p.accuracy) for p in pts] == [(2.0, 0.50), (1.0, 0.85)]
    assert [p.cost for p in pareto_frontier(pts)] == [1.0]
    assert latency_points(SUMMARY, 8) == []


def test_summary_without_rows_is_a_user_error() -> None:
    with pytest.raises(UserError):
        points_from_summary({"budgets": []})
