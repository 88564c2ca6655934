"""Method-specific report pieces for early exits (``RUN_DIR/extras/``).

The shared report plots the cost–accuracy plane from ``records.csv``; this
adds what only early exits have: each exit's accuracy and cost on its own,
the accuracy at fixed fractions of the backbone's FLOPs, the FLOPs saved
within 0.5 / 1 point of the backbone, and where examples leave the network.
All numbers come from one :class:`~frugalnn.methods.early_exit.offline.ExitTrace`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from frugalnn.methods.early_exit.offline import (
    ExitTrace,
    accuracy_at_flops,
    fine_grid,
    saving_within,
    simulate,
)

FRACTIONS = (0.25, 0.5, 0.75)
DROPS = (0.005, 0.01)


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def summary_numbers(trace: ExitTrace, policy: str) -> dict:
    """Accuracy at 25/50/75 % of the backbone's FLOPs and savings within 0.5/1 point."""
    grid = fine_grid(policy, trace.num_internal)
    return {
        "accuracy_at_flops": accuracy_at_flops(trace, policy, FRACTIONS, grid),
        "saving_within": saving_within(trace, policy, DROPS, grid),
        "head_accuracy": trace.head_accuracy(),
        "exit_flops": trace.exit_flops[:, 0].tolist(),
        "backbone_flops": float(trace.backbone_flops.mean()),
    }


def write_extras(
    trace: ExitTrace, policy: str, out_dir: str | os.PathLike, title: str = ""
) -> dict:
    """Write ``early_exit.md`` and ``exits.png`` into ``out_dir``; return the numbers."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    nums = summary_numbers(trace, policy)
    base = nums["backbone_flops"]
    base_acc = nums["head_accuracy"][-1]
    lines = [f"## Early exits{': ' + title if title else ''}", "",
             f"Backbone: {100 * base_acc:.2f} % accuracy at {base / 1e6:.3f} MFLOPs/example. "
             f"Policy `{policy}`, thresholds swept offline on the evaluation set.", "",
             "| exit | FLOPs to reach (M) | share of backbone | accuracy alone |",
             "|---|---|---|---|"]
    for i, (f, a) in enumerate(zip(nums["exit_flops"], nums["head_accuracy"])):
        label = "final" if i == trace.num_internal else str(i)
        lines.append(f"| {label} | {f / 1e6:.3f} | {100 * f / base:.1f} % | {100 * a:.2f} % |")
    lines += ["", "| FLOPs budget | best accuracy | threshold |", "|---|---|---|"]
    for frac, row in nums["accuracy_at_flops"].items():
        lines.append(f"| {100 * frac:.0f} % | {100 * row['accuracy']:.2f} % | "
                     f"{row['threshold']:.4g} |")
    lines += ["", "| accuracy within | FLOPs saved | accuracy | threshold |", "|---|---|---|---|"]
    for drop, row in nums["saving_within"].items():
        lines.append(f"| {100 * drop:.1f} pt | {100 * row['flops_saving']:.1f} % | "
                     f"{100 * row['accuracy']:.2f} % | {row['threshold']:.4g} |")
    _atomic_write(out / "early_exit.md", "\n".join(lines) + "\n")
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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
