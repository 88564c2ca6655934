"""Method-specific report pieces for early exits (``RUN_DIR/extras/``).

The shared report plots the cost–accuracy plane from ``records.csv``; this
adds what only early exits have: each exit's accuracy and cost on its own,
the accuracy at fixed fractions of the backbone's FLOPs, the FLOPs saved
within 0.5 / 1 point of the backbone, and where examples leave the network.
All numbers come from one :class:`~frugalnn.methods.early_exit.offline.ExitTrace`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from frugalnn.methods.early_exit.offline import (
    DROPS,
    FRACTIONS,
    ExitTrace,
    fine_grid,
    operating_points,
    oracle_bound,
    simulate,
)
from frugalnn.utils.figures import save_figure
from frugalnn.utils.io import jsonable, write_json_atomic, write_text_atomic

__all__ = ["DROPS", "FRACTIONS", "summary_numbers", "write_extras"]


def summary_numbers(trace: ExitTrace, policy: str, val_trace: ExitTrace | None = None) -> dict:
    """Accuracy at 25/50/75 % of the backbone's FLOPs, savings within 0.5/1 point and the
    oracle bound (:func:`~frugalnn.methods.early_exit.offline.oracle_bound` on ``trace``).

    The thresholds are chosen on ``val_trace`` (the validation split) and
    scored on ``trace`` (the test split); without ``val_trace`` they are
    chosen on ``trace`` itself (``chosen_on: "test (oracle)"``).
    """
    points = operating_points(trace, policy, val_trace=val_trace)
    return {
        **points,
        "head_accuracy": trace.head_accuracy(),
        "oracle": oracle_bound(trace),
        "exit_flops": trace.exit_flops[:, 0].tolist(),
        "backbone_flops": float(trace.backbone_flops.mean()),
    }


def _pct(value: float, digits: int = 2) -> str:
    return "–" if value != value else f"{100 * value:.{digits}f} %"


def write_extras(
    trace: ExitTrace, policy: str, out_dir: str | os.PathLike, title: str = "",
    val_trace: ExitTrace | None = None,
) -> dict:
    """Write ``early_exit.md``, ``early_exit.json`` and ``exits.png`` into ``out_dir``.

    Returns the numbers (:func:`summary_numbers`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    nums = summary_numbers(trace, policy, val_trace)
    base = nums["backbone_flops"]
    base_acc = nums["backbone_accuracy"]
    if val_trace is not None:
        chosen = (f"Thresholds chosen on the validation split ({nums['val_examples']} "
                  f"examples) and scored on the test split ({nums['examples']} examples); "
                  "the validation figures are in parentheses.")
    else:
        chosen = (f"No validation split: thresholds chosen on the test split itself "
                  f"({nums['examples']} examples), an oracle (optimistic) reading.")
    lines = [f"## Early exits{': ' + title if title else ''}", "",
             f"Backbone: {100 * base_acc:.2f} % accuracy at {base / 1e6:.3f} MFLOPs/example. "
             f"Policy `{policy}`. {chosen}", "",
             "| exit | FLOPs to reach (M) | share of backbone | accuracy alone |",
             "|---|---|---|---|"]
    for i, (f, a) in enumerate(zip(nums["exit_flops"], nums["head_accuracy"])):
        label = "final" if i == trace.num_internal else str(i)
        lines.append(f"| {label} | {f / 1e6:.3f} | {100 * f / base:.1f} % | {100 * a:.2f} % |")
    oracle = nums["oracle"]
    lines += ["", f"Oracle with these heads (every example stops at the first exit that is "
              f"right): {_pct(oracle['accuracy'])} accuracy at {_pct(oracle['flops_ratio'], 1)} "
              "of the backbone's FLOPs: no exit policy reaches that accuracy for less. What the "
              "tables below lose against it is the policy's, the rest is the heads'."]
    val = val_trace is not None
    lines += ["", "| FLOPs budget | accuracy | FLOPs used | threshold |", "|---|---|---|---|"]
    for frac, row in nums["accuracy_at_flops"].items():
        acc, used = _pct(row["accuracy"]), _pct(row["flops_ratio"], 1)
        if val:
            acc += f" ({_pct(row['val_accuracy'])})"
            used += f" ({_pct(row['val_flops_ratio'], 1)})"
        lines.append(f"| {100 * frac:.0f} % | {acc} | {used} | {row['threshold']:.4g} |")
    lines += ["", "| accuracy within | FLOPs saved | accuracy | threshold |", "|---|---|---|---|"]
    for drop, row in nums["saving_within"].items():
        saved, acc = _pct(row["flops_saving"], 1), _pct(row["accuracy"])
        if val:
            saved += f" ({_pct(row['val_flops_saving'], 1)})"
            acc += f" ({_pct(row['val_accuracy'])})"
        lines.append(f"| {100 * drop:.1f} pt | {saved} | {acc} | {row['threshold']:.4g} |")
    write_text_atomic(out / "early_exit.md", "\n".join(lines) + "\n")
    write_json_atomic(out / "early_exit.json", jsonable(nums))
    _plot(trace, policy, out / "exits.png", nums)
    return nums


def _plot(trace: ExitTrace, policy: str, path: Path, nums: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = nums["backbone_flops"]
    grid = fine_grid(policy, trace.num_internal)
    pts = []
    for t in grid:
        r = simulate(trace, policy, t)
        pts.append((float(r.flops.mean()) / base,
                    float((r.pred == trace.labels).double().mean())))
    pts.sort()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot([p[0] for p in pts], [100 * p[1] for p in pts], "-", label=f"{policy} sweep")
    ax1.plot([f / base for f in nums["exit_flops"]], [100 * a for a in nums["head_accuracy"]],
             "o", label="each exit alone")
    ax1.set_xlabel("mean FLOPs / backbone FLOPs")
    ax1.set_ylabel("accuracy (%)")
    ax1.grid(alpha=0.3)
    ax1.legend()
    t_mid = nums["saving_within"][0.01]["threshold"]
    r = simulate(trace, policy, t_mid)
    counts = torch.bincount(r.exit_index, minlength=trace.num_exits)
    ax2.bar(range(trace.num_exits), counts.tolist())
    ax2.set_xlabel("exit index (last = final classifier)")
    ax2.set_ylabel("examples")
    ax2.set_title(f"where examples exit (threshold {t_mid:.4g}, within 1 pt)")
    fig.tight_layout()
    save_figure(fig, path)
