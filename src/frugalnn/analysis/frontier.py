"""Cost–accuracy frontiers over budgets, derived from saved evaluation summaries.

A method evaluated at several budgets gives one point per budget: mean cost
per example (FLOPs, or measured latency) and accuracy. Only the points on the
**Pareto frontier** matter to a user, i.e. those that no other budget beats on
both axes. From the frontier we answer the two questions papers report:

* *accuracy at a fraction of the baseline's cost* (25/50/75/100 %): the
  best accuracy among points whose cost is **at most** that fraction of the
  baseline cost. We deliberately take the best real point under the cost and
  do **not** interpolate between points: the answer is an accuracy you can get
  by setting the knob, not an estimate between two settings. ``None`` when no
  budget is that cheap.
* *the cost of keeping accuracy within 0.5 / 1 point of the baseline*: the
  cheapest point whose accuracy is at least ``baseline - tolerance`` (points
  are percentage points, accuracies are stored as fractions), with the saving
  ``1 - cost / baseline_cost``.

Everything takes the per-budget rows of ``summary.json`` (see
:mod:`frugalnn.evaluation`), so it runs without models.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from frugalnn.errors import UserError

__all__ = [
    "DEFAULT_FRACTIONS",
    "DEFAULT_TOLERANCES",
    "Point",
    "accuracy_at_fraction",
    "cost_within",
    "frontier_summary",
    "latency_points",
    "pareto_frontier",
    "points_from_summary",
]

DEFAULT_FRACTIONS = (0.25, 0.5, 0.75, 1.0)
#: Accuracy tolerances in percentage points.
DEFAULT_TOLERANCES = (0.5, 1.0)

_REL = 1e-9  # relative slack so that a point exactly at a cost bound counts as under it


@dataclass(frozen=True)
class Point:
    """One evaluated budget on the plane: ``cost`` per example and ``accuracy`` (0..1)."""

    cost: float
    accuracy: float
    budget: float | str
    label: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def points_from_summary(summary: Mapping[str, Any], cost: str = "flops") -> list[Point]:
    """Points of a run's ``summary.json``; ``cost`` is a per-budget key (``flops``, ``macs``)."""
    rows = summary.get("budgets")
    if not rows:
        raise UserError("the summary has no per-budget rows; re-run `frugalnn evaluate`")
    out = []
    for row in rows:
        value = row.get(cost)
        if value is None or row.get("accuracy") is None:
            continue
        out.append(Point(float(value), float(row["accuracy"]), row.get("budget"),
                         str(row.get("label", row.get("budget")))))
    return out


def latency_points(summary: Mapping[str, Any], batch_size: int) -> list[Point]:
    """Accuracy against measured per-example latency (ms) at one timed batch size.

    Latency rows come from :func:`frugalnn.evaluation.time_budgets`; accuracy is
    joined by budget from the per-budget rows. Empty if that batch size was
    not timed.
    """
    acc = {_key(r.get("budget")): r.get("accuracy") for r in summary.get("budgets") or []}
    out = []
    for row in summary.get("latency") or []:
        if int(row.get("batch_size", -1)) != batch_size:
            continue
        a = acc.get(_key(row.get("budget")))
        if a is None or row.get("per_example_ms") is None:
            continue
        out.append(Point(float(row["per_example_ms"]), float(a), row.get("budget"),
                         str(row.get("label", row.get("budget")))))
    return out


def _key(budget: Any) -> Any:
    if budget is None or budget == "static":
        return "static"
    return round(float(budget), 12)


def pareto_frontier(points: Iterable[Point]) -> list[Point]:
    """The points no other point beats (cheaper-or-equal *and* more accurate), by cost.

    A point is kept when its accuracy is strictly higher than that of every
    cheaper point; among equal costs only the most accurate survives.
    """
    ordered = sorted(
        (p for p in points if math.isfinite(p.cost) and math.isfinite(p.accuracy)),
        key=lambda p: (p.cost, -p.accuracy),
    )
    frontier: list[Point] = []
    best = -math.inf
    for p in ordered:
        if p.accuracy > best:
            frontier.append(p)
            best = p.accuracy
    return frontier


def accuracy_at_fraction(
    points: Iterable[Point], baseline_cost: float, fraction: float
) -> Point | None:
    """Best point whose cost is at most ``fraction * baseline_cost`` (no interpolation)."""
    if not baseline_cost or baseline_cost <= 0:
        raise UserError("the baseline cost must be positive to compare against it")
    bound = fraction * baseline_cost * (1 + _REL)
    under = [p for p in pareto_frontier(points) if p.cost <= bound]
    return under[-1] if under else None


def cost_within(
    points: Iterable[Point], baseline_accuracy: float, tolerance_points: float
) -> Point | None:
    """Cheapest point with accuracy >= ``baseline_accuracy - tolerance_points / 100``."""
    floor = baseline_accuracy - tolerance_points / 100.0 - 1e-12
    ok = [p for p in pareto_frontier(points) if p.accuracy >= floor]
    return ok[0] if ok else None


def frontier_summary(
    summary: Mapping[str, Any],
    *,
    baseline_flops: float | None = None,
    baseline_accuracy: float | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    tolerances: Sequence[float] = DEFAULT_TOLERANCES,
    cost: str = "flops",
) -> dict[str, Any]:
    """Frontier, accuracy at cost fractions and cost within tolerances for one run.

    The baseline defaults to the one recorded in the summary (the model the
    method started from, or the run itself at full budget). Returns
    ``{"baseline": {...}, "frontier": [...], "at_fraction": [...],
    "within": [...]}``; each ``at_fraction`` row has ``fraction`` and the
    chosen point (or ``None``); each ``within`` row has ``tolerance_points``,
    the point, and ``saving`` (fraction of the baseline cost saved).
    """
    base_cost = baseline_flops if baseline_flops is not None else summary.get("baseline_flops")
    base_acc = (baseline_accuracy if baseline_accuracy is not None
                else summary.get("baseline_accuracy"))
    points = points_from_summary(summary, cost)
    frontier = pareto_frontier(points)
    result: dict[str, Any] = {
        "baseline": {"cost": base_cost, "accuracy": base_acc, "unit": cost},
        "frontier": [p.to_dict() for p in frontier],
        "at_fraction": [],
        "within": [],
    }
    if base_cost:
        for f in fractions:
            p = accuracy_at_fraction(points, float(base_cost), f)
            result["at_fraction"].append({
                "fraction": f,
                "point": p.to_dict() if p else None,
            })
    if base_acc is not None:
        for tol in tolerances:
            p = cost_within(points, float(base_acc), tol)
            saving = (1.0 - p.cost / float(base_cost)) if (p and base_cost) else None
            result["within"].append({
                "tolerance_points": tol,
                "point": p.to_dict() if p else None,
                "saving": saving,
            })
    return result
