"""Offline "all heads" evaluation: run every exit once, then sweep thresholds for free.

Real inference (``EarlyExitModel.forward``) is what the wall-clock numbers
come from, but sweeping twenty thresholds over a test set with it costs twenty
passes. Here the model runs once with every head evaluated on every example;
the outputs of all exits and the per-example cost of stopping at each exit are
kept in an :class:`ExitTrace`. Any policy and threshold is then a few tensor
operations (:func:`simulate`), and :func:`sweep` writes the same
:class:`~frugalnn.evaluation.EvalRecords` rows that :func:`frugalnn.evaluation.evaluate`
produces from the real path (tests check that the two agree exactly on
predictions, exit indices and costs).

The cost model is the real path's: stopping at exit ``i`` costs the embedding,
the blocks up to head ``i`` and heads ``0..i``; the final exit at the full
budget costs exactly the backbone (no head can fire, so none is evaluated).
Limit: blocks holding their own dynamic modules (e.g. mixture-of-experts) are
charged here at their static cost only.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from frugalnn.errors import UserError
from frugalnn.methods.early_exit import policies
from frugalnn.methods.early_exit.model import EarlyExitModel
from frugalnn.utils.batch import split_batch, to_device


@dataclass
class ExitTrace:
    """Outputs of every exit on every example, and what stopping at each exit costs.

    ``logits``: ``(num_exits, N, C)`` float32; ``labels``: ``(N,)``;
    ``exit_flops``: ``(num_exits, N)`` float64 FLOPs of stopping at each exit
    with every earlier head evaluated; ``backbone_flops``: ``(N,)`` the plain
    backbone's cost (the full-budget cost); ``backbone_logits``: ``(N, C)`` the
    plain backbone's outputs when they differ from the last exit's (a final
    ensemble), else ``None``.
    """

    logits: torch.Tensor
    labels: torch.Tensor
    exit_flops: torch.Tensor
    backbone_flops: torch.Tensor
    backbone_logits: torch.Tensor | None = None

    @property
    def plain_logits(self) -> torch.Tensor:
        """The backbone's own outputs (what the full budget returns)."""
        return self.logits[-1] if self.backbone_logits is None else self.backbone_logits

    @property
    def num_exits(self) -> int:
        return int(self.logits.shape[0])

    @property
    def num_internal(self) -> int:
        return self.num_exits - 1

    def head_accuracy(self) -> list[float]:
        """Accuracy of each exit if every example stopped there."""
        preds = self.logits.argmax(dim=2)
        return [float((p == self.labels).double().mean()) for p in preds]


@dataclass
class SimResult:
    """Per-example outcome of one policy/threshold: chosen exit, logits, cost."""

    exit_index: torch.Tensor
    logits: torch.Tensor
    flops: torch.Tensor

    @property
    def pred(self) -> torch.Tensor:
        return self.logits.argmax(dim=1)


@torch.inference_mode()
def collect_trace(
    model: EarlyExitModel,
    loader: Iterable[Any],
    *,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> ExitTrace:
    """Run every exit on every example of ``loader`` (in order) once."""
    if not isinstance(model, EarlyExitModel):
        raise UserError("collect_trace needs an EarlyExitModel (see attach_heads)")
    device = torch.device(device)
    was_training = model.training
    model.eval().to(device)
    logits, labels, costs, base, plain = [], [], [], [], []
    try:
        for batch in tqdm(loader, desc="all exits", unit="batch", disable=not progress,
                          leave=False):
            x, y = split_batch(batch)
            x = to_device(x, device)
            n = int(y.shape[0])
            feats, final = model.head_features(x)
            outs = model.outputs_from_features(feats, final)
            logits.append(torch.stack([o.float().cpu() for o in outs]))
            plain.append(final.float().cpu())
            labels.append(y.cpu().long())
            per_exit = torch.tensor(model.exit_costs(x), dtype=torch.float64)
            costs.append(per_exit[:, None].expand(-1, n))
            base.append(torch.full((n,), model.stage_costs(x).backbone(), dtype=torch.float64))
    finally:
        model.train(was_training)
    if not labels:
        raise UserError("the data loader yielded no examples; check the dataset and --limit")
    backbone_logits = torch.cat(plain) if model.final_ensemble is not None else None
    return ExitTrace(torch.cat(logits, 1), torch.cat(labels), torch.cat(costs, 1),
                     torch.cat(base), backbone_logits)


def simulate(trace: ExitTrace, policy: str, threshold: float) -> SimResult:
    """Where each example would exit under ``policy`` at ``threshold``, and at what cost.

    Uses the same decision function as the real batched path.
    """
    policies.check_policy(policy)
    threshold = policies.check_threshold(policy, threshold, trace.num_internal)
    n = trace.labels.shape[0]
    last = trace.num_internal
    if threshold == policies.full_budget(policy, trace.num_internal):
        return SimResult(torch.full((n,), last, dtype=torch.long), trace.plain_logits.clone(),
                         trace.backbone_flops.clone())
    exit_index = torch.full((n,), last, dtype=torch.long)
    undecided = torch.ones(n, dtype=torch.bool)
    memory = None
    for i in range(last):
        exits, memory = policies.exit_mask(
            policy, threshold, F.log_softmax(trace.logits[i], dim=1), memory
        )
        newly = exits & undecided
        exit_index[newly] = i
        undecided &= ~exits
    rows = torch.arange(n)
    return SimResult(exit_index, trace.logits[exit_index, rows],
                     trace.exit_flops[exit_index, rows])


def sweep(
    trace: ExitTrace,
    policy: str,
    budgets: Sequence[float] | None = None,
    *,
    method: str = "early_exit",
    model_name: str = "",
    meta: dict[str, Any] | None = None,
):
    """:class:`~frugalnn.evaluation.EvalRecords` for every threshold, from one trace."""
    from frugalnn.evaluation import CORE_COLUMNS, EvalRecords

    values = list(budgets) if budgets else policies.budget_values(policy, trace.num_internal)
    cols: dict[str, list[np.ndarray]] = {c: [] for c in CORE_COLUMNS}
    cols["exit_index"] = []
    n = int(trace.labels.shape[0])
    y = trace.labels
    for b in values:
        r = simulate(trace, policy, b)
        loss = F.cross_entropy(r.logits, y, reduction="none").double()
        pred = r.pred
        cols["budget"].append(np.full(n, float(b)))
        cols["example_id"].append(np.arange(n))
        cols["label"].append(y.numpy())
        cols["pred"].append(pred.numpy())
        cols["correct"].append((pred == y).double().numpy())
        cols["loss"].append(loss.numpy())
        cols["flops"].append(r.flops.numpy())
        cols["exit_index"].append(r.exit_index.double().numpy())
    columns = {k: np.concatenate(v) for k, v in cols.items()}
    full = policies.full_budget(policy, trace.num_internal)
    base_acc = float((trace.plain_logits.argmax(1) == y).double().mean())
    from frugalnn.cost.machine import describe_machine

    records = EvalRecords(columns, [])
    records.meta = {
        "method": method,
        "model": model_name,
        "budget_name": "patience" if policy == "patience" else "threshold",
        "policy": policy,
        "full_budget": full,
        "baseline_flops": float(trace.backbone_flops.mean()),
        "baseline_accuracy": base_acc,
        "static_flops_per_example": {},
        "examples": n,
        "offline": True,
        "head_accuracy": trace.head_accuracy(),
        "machine": dict(describe_machine()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(meta or {}),
    }
    return records


def accuracy_at_flops(
    trace: ExitTrace,
    policy: str,
    fractions: Sequence[float],
    budgets: Sequence[float] | None = None,
) -> dict[float, dict[str, float]]:
    """Best accuracy whose mean cost is at most ``fraction`` of the backbone's, per fraction.

    Sweeps the thresholds (``budgets`` or a fine default grid) on the trace;
    returns ``{fraction: {"accuracy", "flops_ratio", "threshold"}}`` (accuracy
    NaN when no threshold is that cheap).
    """
    base = float(trace.backbone_flops.mean())
    points = _points(trace, policy, budgets)
    out = {}
    for f in fractions:
        ok = [p for p in points if p[1] <= f * base * (1 + 1e-12)]
        if ok:
            best = max(ok, key=lambda p: (p[2], -p[1]))
            out[f] = {"threshold": best[0], "flops_ratio": best[1] / base, "accuracy": best[2]}
        else:
            out[f] = {"threshold": float("nan"), "flops_ratio": float("nan"),
                      "accuracy": float("nan")}
    return out


def saving_within(
    trace: ExitTrace, policy: str, points_drop: Sequence[float],
    budgets: Sequence[float] | None = None,
    reference_accuracy: float | None = None,
) -> dict[float, dict[str, float]]:
    """Largest mean FLOPs saving whose accuracy stays within ``drop`` of the backbone.

    ``reference_accuracy`` replaces the traced backbone's own accuracy as the
    yardstick (e.g. a backbone fine-tuned without heads, when the traced one
    was trained jointly with them). When no operating point reaches
    ``reference - drop`` the entry has ``flops_saving`` NaN and threshold NaN.
    """
    base = float(trace.backbone_flops.mean())
    base_acc = float((trace.plain_logits.argmax(1) == trace.labels).double().mean())
    if reference_accuracy is not None:
        base_acc = float(reference_accuracy)
    points = _points(trace, policy, budgets)
    out = {}
    for d in points_drop:
        ok = [p for p in points if p[2] >= base_acc - d - 1e-12]
        if not ok:  # only possible with an outside reference
            out[d] = {"threshold": float("nan"), "flops_saving": float("nan"),
                      "accuracy": float("nan")}
            continue
        best = min(ok, key=lambda p: p[1])  # the full budget is in ``ok`` without a reference
        out[d] = {"threshold": best[0], "flops_saving": 1.0 - best[1] / base,
                  "accuracy": best[2]}
    return out


#: Fractions of the backbone's FLOPs and accuracy drops (points) of the summary figures.
FRACTIONS = (0.25, 0.5, 0.75)
DROPS = (0.005, 0.01)


def score(trace: ExitTrace, policy: str, threshold: float) -> dict[str, float]:
    """Accuracy and mean cost (as a fraction of the backbone's) of one threshold on a trace.

    A NaN threshold (no operating point was chosen) scores NaN.
    """
    if threshold != threshold:
        return {"accuracy": float("nan"), "flops_ratio": float("nan")}
    r = simulate(trace, policy, threshold)
    return {"accuracy": float((r.pred == trace.labels).double().mean()),
            "flops_ratio": float(r.flops.mean()) / float(trace.backbone_flops.mean())}


def oracle_bound(trace: ExitTrace) -> dict[str, float]:
    """The most any exit policy could save with these heads: every example stops at the
    first exit whose prediction is its label (an example no exit gets right stops at the
    first exit: it is wrong wherever it stops), at the cost :func:`simulate` charges
    there (every earlier head evaluated).

    Returns ``accuracy`` (examples some exit gets right: at least the backbone's) and
    ``flops_ratio`` (mean cost as a fraction of the backbone's): no exit policy reaches
    that accuracy for less (costs grow exit by exit, so the first right exit is the
    cheapest right one).
    """
    correct = trace.logits.argmax(dim=2) == trace.labels
    right = correct.any(dim=0)
    first = torch.where(right, correct.double().argmax(dim=0), torch.zeros_like(trace.labels))
    # The cost of stopping at each exit as :func:`simulate` charges it (heads on the way).
    flops = trace.exit_flops[first, torch.arange(trace.labels.shape[0])]
    return {"accuracy": float(right.double().mean()),
            "flops_ratio": float(flops.mean()) / float(trace.backbone_flops.mean())}


def operating_points(
    trace: ExitTrace,
    policy: str,
    *,
    val_trace: ExitTrace | None = None,
    fractions: Sequence[float] = FRACTIONS,
    drops: Sequence[float] = DROPS,
    budgets: Sequence[float] | None = None,
    reference_accuracy: float | None = None,
) -> dict[str, Any]:
    """Thresholds chosen on ``val_trace`` and scored on ``trace`` (the test split).

    For each fraction ``f``: the threshold with the best validation accuracy
    whose validation cost is at most ``f`` of the backbone's; for each drop
    ``d``: the cheapest threshold whose validation accuracy stays within ``d``
    of the backbone's validation accuracy (or of ``reference_accuracy``). The
    rows hold the test figures (``accuracy``, ``flops_ratio``,
    ``flops_saving``) and the validation ones (``val_*``) that chose them.
    Without ``val_trace`` the thresholds are chosen on ``trace`` itself and
    ``chosen_on`` says ``"test (oracle)"``: an optimistic reading.
    """
    chooser = trace if val_trace is None else val_trace
    grid = budgets or fine_grid(policy, trace.num_internal)
    at = accuracy_at_flops(chooser, policy, fractions, grid)
    sv = saving_within(chooser, policy, drops, grid, reference_accuracy=reference_accuracy)
    out_at: dict[float, dict[str, float]] = {}
    out_sv: dict[float, dict[str, float]] = {}
    for f, row in at.items():
        test = score(trace, policy, row["threshold"])
        out_at[f] = {"threshold": row["threshold"], **test,
                     "val_accuracy": row["accuracy"], "val_flops_ratio": row["flops_ratio"]}
    for d, row in sv.items():
        test = score(trace, policy, row["threshold"])
        out_sv[d] = {"threshold": row["threshold"], "accuracy": test["accuracy"],
                     "flops_saving": 1.0 - test["flops_ratio"],
                     "val_accuracy": row["accuracy"], "val_flops_saving": row["flops_saving"]}
    backbone = float((trace.plain_logits.argmax(1) == trace.labels).double().mean())
    return {
        "chosen_on": "validation" if val_trace is not None else "test (oracle)",
        "examples": int(trace.labels.shape[0]),
        "val_examples": int(val_trace.labels.shape[0]) if val_trace is not None else 0,
        "backbone_accuracy": backbone,
        "accuracy_at_flops": out_at,
        "saving_within": out_sv,
    }


def fine_grid(policy: str, num_internal: int) -> list[float]:
    """A dense threshold grid for frontier searches (cheapest first)."""
    if policy == "patience":
        return policies.budget_values(policy, num_internal)
    q = 1.0 - np.logspace(0, -5, 200)  # dense near 1
    grid = np.unique(np.concatenate([np.linspace(0, 1, 101), q, [1.0]]))
    vals = [float(v) for v in grid]
    return vals if policy == "maxprob" else [1.0 - v for v in vals]


def _points(trace: ExitTrace, policy: str, budgets: Sequence[float] | None):
    values = budgets or fine_grid(policy, trace.num_internal)
    pts = []
    for b in values:
        r = simulate(trace, policy, b)
        pts.append((float(b), float(r.flops.mean()),
                    float((r.pred == trace.labels).double().mean())))
    return pts


@torch.no_grad()
def trace_from_features(model: EarlyExitModel, cache: Any, example_input: Any) -> ExitTrace:
    """An :class:`ExitTrace` from cached head features (``training.FeatureCache``).

    The same computation as :func:`collect_trace` without re-running the
    backbone: several head variants (SDN, ZTW) on one frozen backbone share
    one pass. ``example_input`` (one batch shaped like the data) sizes the costs.
    """
    was_training = model.training
    model.eval()
    try:
        outs = []
        for start in range(0, len(cache), 1024):
            feats = [f[start : start + 1024].float() for f in cache.feats]
            final = cache.final_logits[start : start + 1024].float()
            outs.append(torch.stack([o.float()
                                     for o in model.outputs_from_features(feats, final)]))
        logits = torch.cat(outs, 1)
    finally:
        model.train(was_training)
    n = len(cache)
    per_exit = torch.tensor(model.exit_costs(example_input), dtype=torch.float64)
    base = torch.full((n,), model.stage_costs(example_input).backbone(), dtype=torch.float64)
    plain = cache.final_logits.float().clone() if model.final_ensemble is not None else None
    return ExitTrace(logits, cache.labels.clone(), per_exit[:, None].expand(-1, n).clone(), base,
                     plain)
