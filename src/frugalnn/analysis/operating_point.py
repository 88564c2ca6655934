"""One operating point per run: the cheapest budget within a tolerance of the full
budget's accuracy, chosen on validation data and scored on the test records.

Shared by every method with a budget knob (MoE, ACM, ...), so that "the
operating point" means the same thing for all of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from frugalnn.errors import UserError

__all__ = ["choose_budget", "operating_point"]


def choose_budget(model: nn.Module, val_data: Any, tolerance_points: float, *,
                  batch_size: int = 64, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Evaluate every budget of ``model`` on ``val_data``; the cheapest one within
    ``tolerance_points`` of the full budget's accuracy (``chosen_on: validation``)."""
    from torch.utils.data import DataLoader, Dataset

    from frugalnn.analysis.frontier import cost_within, points_from_summary
    from frugalnn.evaluation import evaluate

    loader = (DataLoader(val_data, batch_size=batch_size, shuffle=False)
              if isinstance(val_data, Dataset) else val_data)
    summary = evaluate(model, loader, device=device, progress=False).summary()
    reference = summary["baseline_accuracy"]  # the model itself at full budget
    point = cost_within(points_from_summary(summary), reference, tolerance_points)
    model.set_budget(model.full_budget())  # type: ignore[operator]
    if point is None:
        raise UserError("no budget could be evaluated on the validation data")
    return {"budget": float(point.budget), "label": point.label,
            "tolerance_points": tolerance_points, "chosen_on": "validation",
            "validation": {"accuracy": point.accuracy, "flops": point.cost,
                           "reference_accuracy": reference}}


def operating_point(run_dir: str | Path, tolerance_points: float = 1.0) -> dict[str, Any] | None:
    """The operating point of an evaluated run: the cheapest budget within
    ``tolerance_points`` of the full budget's accuracy on ``RUN/validation``, scored on
    the run's test records (:func:`frugalnn.analysis.frontier.frontier_summary`);
    ``None`` when the run has no validation records."""
    from frugalnn.analysis.frontier import frontier_summary
    from frugalnn.evaluation import load_summary, load_validation_summary

    val = load_validation_summary(run_dir)
    if val is None:
        return None
    test = load_summary(run_dir)
    rows = frontier_summary(test, validation=val, fractions=(),
                            tolerances=(tolerance_points,))["within"]
    if not rows or rows[0]["point"] is None or rows[0]["chosen_on"] != "validation":
        return None
    chosen, seen = rows[0]["point"], rows[0]["validation_point"]
    return {
        "budget": chosen["budget"], "label": chosen["label"],
        "tolerance_points": tolerance_points, "chosen_on": "validation", "scored_on": "test",
        "validation": {"accuracy": seen["accuracy"], "flops": seen["cost"],
                       "reference_accuracy": val.get("baseline_accuracy")},
        "test": {"accuracy": chosen["accuracy"], "flops": chosen["cost"],
                 "reference_accuracy": test.get("baseline_accuracy"),
                 "reference_flops": test.get("baseline_flops")},
    }
