"""One call from a model to a complete run directory (records, latency, config)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from frugalnn.budget import has_budget
from frugalnn.errors import UserError
from frugalnn.evaluation.loop import evaluate
from frugalnn.evaluation.records import RECORDS_FILE, VALIDATION_DIR, EvalRecords
from frugalnn.evaluation.timing import time_budgets
from frugalnn.utils.io import atomic_writer, jsonable


def evaluate_into(
    model: nn.Module,
    dataset: Any,
    run_dir: str | os.PathLike[str],
    *,
    val_dataset: Any = None,
    method: str = "",
    batch_size: int = 64,
    budgets: Sequence[float] | None = None,
    threads: int | None = None,
    device: str | torch.device = "cpu",
    latency_batch_sizes: Sequence[int] = (1, 64),
    latency_warmup: int = 3,
    latency_repeats: int = 20,
    baseline_flops: float | None = None,
    baseline_accuracy: float | None = None,
    config: dict[str, Any] | None = None,
    force: bool = False,
    progress: bool = True,
) -> EvalRecords:
    """Evaluate ``model`` on ``dataset``, time it per budget, and write a run directory.

    With ``val_dataset``, the same budgets are also evaluated on it and saved
    under ``validation/``: that is where operating points are chosen.

    Writes ``records.csv``, ``batches.csv``, ``summary.json`` (with ``config``
    under ``"config"``), ``config.json`` when the directory has none yet (a
    training run keeps its own). It writes no report: a command writes the run's
    report (``frugalnn.report.write_run_report``) once the run's extras exist. Latency is
    timed at each of ``latency_batch_sizes`` not larger than the dataset (none
    when empty). Used by ``frugalnn evaluate`` and by the demo's method hooks.
    """
    from torch.utils.data import DataLoader

    if batch_size < 1:
        raise UserError(f"batch size must be positive, got {batch_size}")
    run_dir = Path(run_dir)
    if (run_dir / RECORDS_FILE).exists() and not force:
        raise UserError(f"{run_dir} already holds evaluation records; pass --force to "
                        "overwrite them or choose another --out")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    records = evaluate(model, loader, budgets=budgets, method=method, device=device,
                       threads=threads, progress=progress, baseline_flops=baseline_flops,
                       baseline_accuracy=baseline_accuracy)
    if val_dataset is not None:
        # The operating points (thresholds, budgets) are chosen on these records;
        # the test records above only score them (see frugalnn.analysis.frontier).
        val_loader = DataLoader(val_dataset, batch_size=batch_size, shuffle=False)
        val_records = evaluate(model, val_loader, budgets=budgets or records.budgets()
                               if has_budget(model) else None, method=method, device=device,
                               threads=threads, progress=progress,
                               baseline_flops=baseline_flops,
                               baseline_accuracy=baseline_accuracy)
        val_records.meta["split"] = "validation"
        val_records.save(run_dir / VALIDATION_DIR, force=force)
        records.meta["validation"] = {"dir": VALIDATION_DIR,
                                      "examples": val_records.meta["examples"]}
    n = records.meta["examples"]
    sizes = [bs for bs in latency_batch_sizes if bs <= n]
    if sizes:
        swept = None if not has_budget(model) else records.budgets()
        records.latency = time_budgets(model, loader, swept, sizes, warmup=latency_warmup,
                                       repeats=latency_repeats, threads=threads, device=device,
                                       progress=progress)
    if config is not None:
        records.meta["config"] = jsonable(config)
    records.save(run_dir, force=force)
    if config is not None and not (run_dir / "config.json").exists():
        with atomic_writer(run_dir / "config.json") as fh:
            json.dump(jsonable(config), fh, indent=2)
            fh.write("\n")
    return records
