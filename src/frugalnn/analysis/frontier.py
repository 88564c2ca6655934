"""Cost–accuracy frontiers over budgets, and operating points chosen on validation records.

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

**Where a point is chosen.** Picking the budget on the very records that then
score it flatters the method (the choice has seen the test labels). So when a
run has validation records (``RUN/validation/``, see
:func:`frugalnn.evaluation.evaluate_into`), :func:`frontier_summary` chooses
each budget on them (validation cost and accuracy, against the baseline's
validation numbers) and reports that budget's *test* accuracy and cost; rows
say ``chosen_on: "validation"``. Without validation records (or, for the
tolerance rows, without the baseline's validation accuracy) the budget is
chosen on the test records themselves: rows say ``chosen_on: "test"`` and
``oracle: true``. The test-chosen (oracle) rows are always kept under
``"oracle"`` for comparison.

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
    "VALIDATION",
    "TEST",
    "accuracy_at_fraction",
    "cost_within",
    "frontier_summary",
    "latency_points",
    "pareto_frontier",
    "points_from_summary",
    "size_points",
]

DEFAULT_FRACTIONS = (0.25, 0.5, 0.75, 1.0)
#: Accuracy tolerances in percentage points.
DEFAULT_TOLERANCES = (0.5, 1.0)

#: ``chosen_on`` values of a frontier row.
VALIDATION, TEST = "validation", "test"

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


def size_points(summary: Mapping[str, Any]) -> list[Point]:
    """Accuracy against the bytes the model stores (``summary["model_bytes"]``): one point
    per budget, all at the same size (the knob changes what runs, not what is stored).
    Empty for a run evaluated before the size was recorded."""
    size = summary.get("model_bytes")
    if size is None:
        return []
    return [Point(float(size), float(r["accuracy"]), r.get("budget"),
                  str(r.get("label", r.get("budget"))))
            for r in summary.get("budgets") or [] if r.get("accuracy") is not None]


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


def _matching(point: Point | None, points: Sequence[Point]) -> Point | None:
    """The point of ``points`` evaluated at the same budget as ``point``."""
    if point is None:
        return None
    key = _key(point.budget)
    return next((p for p in points if _key(p.budget) == key), None)


def _row(
    test_point: Point | None, chosen_on: str, val_point: Point | None = None
) -> dict[str, Any]:
    return {"point": test_point.to_dict() if test_point else None, "chosen_on": chosen_on,
            "oracle": chosen_on == TEST,
            "validation_point": val_point.to_dict() if val_point else None}


def _saving(point: dict[str, Any] | None, base_cost: float | None) -> float | None:
    return (1.0 - point["cost"] / float(base_cost)) if (point and base_cost) else None


def frontier_summary(
    summary: Mapping[str, Any],
    *,
    validation: Mapping[str, Any] | None = None,
    baseline_flops: float | None = None,
    baseline_accuracy: float | None = None,
    val_baseline_flops: float | None = None,
    val_baseline_accuracy: float | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    tolerances: Sequence[float] = DEFAULT_TOLERANCES,
    cost: str = "flops",
) -> dict[str, Any]:
    """Frontier, accuracy at cost fractions and cost within tolerances for one run.

    ``summary`` is the run's (test) summary, ``validation`` the summary of its
    validation records, if any. The baseline defaults to the one recorded in
    each summary (the model the method started from, or the run itself at full
    budget). Returns ``{"baseline", "validation_baseline", "chosen_on",
    "frontier", "at_fraction", "within", "oracle"}``: each ``at_fraction`` row
    has ``fraction``, each ``within`` row ``tolerance_points`` and ``saving``
    (share of the baseline's test cost saved), and both carry ``point`` (the
    chosen budget's *test* point, or ``None``), ``chosen_on`` (``"validation"``
    or ``"test"``), ``oracle`` (chosen on test) and ``validation_point``.
    ``oracle`` holds the same rows chosen on the test records.
    """
    base_cost = baseline_flops if baseline_flops is not None else summary.get("baseline_flops")
    base_acc = (baseline_accuracy if baseline_accuracy is not None
                else summary.get("baseline_accuracy"))
    points = points_from_summary(summary, cost)
    oracle_fraction: list[dict[str, Any]] = []
    oracle_within: list[dict[str, Any]] = []
    if base_cost:
        for f in fractions:
            oracle_fraction.append(
                {"fraction": f, **_row(accuracy_at_fraction(points, float(base_cost), f), TEST)})
    if base_acc is not None:
        for tol in tolerances:
            row = _row(cost_within(points, float(base_acc), tol), TEST)
            oracle_within.append({"tolerance_points": tol, **row,
                                  "saving": _saving(row["point"], base_cost)})
    result: dict[str, Any] = {
        "baseline": {"cost": base_cost, "accuracy": base_acc, "unit": cost},
        "validation_baseline": None,
        "chosen_on": TEST,
        "frontier": [p.to_dict() for p in pareto_frontier(points)],
        "at_fraction": oracle_fraction,
        "within": oracle_within,
        "oracle": {"at_fraction": oracle_fraction, "within": oracle_within},
    }
    if not validation or not validation.get("budgets"):
        return result
    val_points = points_from_summary(validation, cost)
    val_cost = next((c for c in (val_baseline_flops, validation.get("baseline_flops"), base_cost)
                     if c), None)
    val_acc = (val_baseline_accuracy if val_baseline_accuracy is not None
               else validation.get("baseline_accuracy"))
    result["validation_baseline"] = {"cost": val_cost, "accuracy": val_acc, "unit": cost,
                                     "examples": validation.get("examples")}
    result["chosen_on"] = VALIDATION
    if val_cost:
        result["at_fraction"] = []
        for f in fractions:
            v = accuracy_at_fraction(val_points, float(val_cost), f)
            result["at_fraction"].append(
                {"fraction": f, **_row(_matching(v, points), VALIDATION, v)})
    if val_acc is not None:
        result["within"] = []
        for tol in tolerances:
            v = cost_within(val_points, float(val_acc), tol)
            row = _row(_matching(v, points), VALIDATION, v)
            result["within"].append({"tolerance_points": tol, **row,
                                     "saving": _saving(row["point"], base_cost)})
    return result
