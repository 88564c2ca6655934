"""Method-specific report material for ACM runs (``RUN_DIR/extras/``).

* ``compute_map_q<q>.png``: learners per patch (mean over the ACM layers) for
  the first test images, at a few budgets, so one can see where the model
  spends compute (ViT-like models with a square patch grid only);
* ``acm_learners.md``: mean learners per token of each layer at each budget,
  read back from the run's ``records.csv``;
* ``operating_point.json`` / ``acm_operating_point.md``: the cheapest ``q``
  within the tolerance of the full budget's accuracy *on validation*, scored on
  the test split (runs with validation records only).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from frugalnn.errors import UserError
from frugalnn.methods.acm.convert import ACMModel

__all__ = ["save_acm_compute_maps", "write_extras"]


def save_acm_compute_maps(
    model: ACMModel,
    dataset: Any,
    out_dir: Path,
    *,
    qs: Sequence[float] = (0.25, 0.5, 0.75),
    images: int = 8,
    device: str | torch.device = "cpu",
) -> list[Path]:
    """Write one compute-map PNG per budget in ``qs`` for the first ``images`` examples."""
    from torch.utils.data import default_collate

    from frugalnn.report.compute_maps import save_compute_maps
    from frugalnn.utils.batch import split_batch

    n = min(images, len(dataset))
    if n == 0:
        return []
    x, ys = split_batch(default_collate([dataset[i] for i in range(n)]))
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        return []  # not images (token dicts, sequences): no maps
    titles = [f"#{i} label {int(y)}" for i, y in enumerate(ys)]
    written = []
    model.eval()
    model.keep_counts(True)
    try:
        for q in qs:
            model.set_budget(q)
            with torch.inference_mode():
                model(x.to(device))
            counts = model.token_counts()
            try:
                path = save_compute_maps(
                    counts, x, out_dir / f"compute_map_q{q:g}.png", titles=titles,
                    label=f"learners per patch (q={q:g}, mean over layers)", vmin=1.0,
                    vmax=float(model.num_learners()),
                )
            except UserError:
                return written  # tokens are not a square patch grid (e.g. text)
            written.append(path)
    finally:
        model.keep_counts(False)
        model.set_budget(model.full_budget())
    return written


def learners_table(run_dir: Path) -> str:
    """Markdown table: mean learners per token per layer and budget (from records)."""
    from frugalnn.evaluation import budget_label, load_records

    rec = load_records(run_dir)
    cols = [c for c in rec.decision_columns if c.startswith("learners_per_token/")]
    if not cols:
        return ""
    lines = ["## Learners per token (mean over tokens and examples)", "",
             "| q | " + " | ".join(c.split("/", 1)[1] for c in cols) + " | MFLOPs/example |",
             "|---" * (len(cols) + 2) + "|"]
    for b in rec.budgets():
        mask = rec.rows_for(b)
        vals = [float(np.nanmean(rec.columns[c][mask])) for c in cols]
        flops = float(rec.columns["flops"][mask].mean()) / 1e6
        lines.append(f"| {budget_label(b)} | " + " | ".join(f"{v:.2f}" for v in vals)
                     + f" | {flops:.3f} |")
    return "\n".join(lines) + "\n"


def point_text(point: dict[str, Any]) -> str:
    """Markdown paragraph describing the operating point chosen on validation."""
    val, test = point["validation"], point["test"]
    ref = test.get("reference_flops")
    share = f" ({100 * test['flops'] / ref:.1f} % of full budget)" if ref else ""
    val_ref = val.get("reference_accuracy")
    test_ref = test.get("reference_accuracy")
    return (
        "## Operating point (chosen on validation, scored on test)\n\n"
        f"q = {point['label']}: the cheapest budget within {point['tolerance_points']:g} pt of "
        f"the full budget on validation ({100 * val['accuracy']:.2f} %"
        + (f" vs {100 * val_ref:.2f} %" if val_ref is not None else "") + "). Test: "
        f"{100 * test['accuracy']:.2f} %"
        + (f" vs {100 * test_ref:.2f} % at full budget" if test_ref is not None else "")
        + f", {test['flops'] / 1e6:.3f} MFLOPs/example{share}.\n"
    )


def write_extras(
    model: ACMModel, run_dir: Path, dataset: Any, *, device: str | torch.device = "cpu",
    images: int = 8, point: dict[str, Any] | None = None,
) -> list[Path]:
    """Compute maps, the learners table and (given ``point``) the operating point into
    ``run_dir/extras``; returns the files."""
    from frugalnn.evaluation import atomic_writer
    from frugalnn.utils.io import write_json_atomic

    out = Path(run_dir) / "extras"
    out.mkdir(parents=True, exist_ok=True)
    files = save_acm_compute_maps(model, dataset, out, images=images, device=device)
    table = learners_table(Path(run_dir)) if (Path(run_dir) / "records.csv").exists() else ""
    if table:
        with atomic_writer(out / "acm_learners.md") as fh:
            fh.write(table)
        files.append(out / "acm_learners.md")
    if point is not None:
        files.append(write_json_atomic(out / "operating_point.json", point))
        with atomic_writer(out / "acm_operating_point.md") as fh:
            fh.write(point_text(point))
        files.append(out / "acm_operating_point.md")
    return files
