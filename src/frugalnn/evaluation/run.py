"""One call from a model to a complete run directory (records, latency, config).

With a validation set, the same budgets are evaluated on it too and saved
under ``RUN/validation/``: operating points are chosen on those records and
only scored on the test records (see :mod:`frugalnn.analysis.frontier`).
"""

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
from frugalnn.evaluation.fingerprint import same_examples
from frugalnn.evaluation.loop import evaluate
from frugalnn.evaluation.records import (
    BATCHES_FILE,
    RECORDS_FILE,
    SUMMARY_FILE,
    VALIDATION_DIR,
    EvalRecords,
    load_summary,
)
from frugalnn.evaluation.timing import time_budgets
from frugalnn.utils.io import atomic_writer, jsonable

__all__ = ["baseline_from_run", "evaluate_into", "load_validation_summary"]


def load_validation_summary(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The summary of a run's validation records, or ``None`` when it has none."""
    path = Path(run_dir) / VALIDATION_DIR
    if not (path / SUMMARY_FILE).is_file():
        return None
    return load_summary(path)


def baseline_from_run(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The reference numbers of an evaluated static (baseline) run.

    Returns ``{"run", "flops", "accuracy", "summary", "validation"}``: its
    FLOPs and accuracy per example on the test records, its summary, and the
    summary of its validation records (``None`` if it has none). A run with
    several budgets is refused: the baseline is one model.
    """
    summary = load_summary(run_dir)
    rows = summary.get("budgets") or []
    if len(rows) != 1:
        raise UserError(f"baseline run {run_dir} has {len(rows)} budgets; pass the run of a "
                        "static (untransformed) model")
    return {"run": str(run_dir), "flops": rows[0].get("flops"),
            "accuracy": rows[0].get("accuracy"), "summary": summary,
            "validation": load_validation_summary(run_dir)}


def _validation_baseline(
    base: dict[str, Any] | None, flops: float | None
) -> tuple[float | None, float | None]:
    """Baseline numbers for the validation records.

    From the baseline run's own validation records when it has them; else the
    given FLOPs (a cost, nearly the same on any examples) and no accuracy: a
    test accuracy must not become the validation reference.
    """
    if base is not None and base["validation"]:
        rows = base["validation"].get("budgets") or [{}]
        return rows[0].get("flops"), rows[0].get("accuracy")
    return flops, None


def _drop_stale_validation(run_dir: Path) -> None:
    """Remove validation records an earlier evaluation of ``run_dir`` left behind."""
    for name in (RECORDS_FILE, SUMMARY_FILE, BATCHES_FILE):
        (run_dir / VALIDATION_DIR / name).unlink(missing_ok=True)


def evaluate_into(
    model: nn.Module,
    dataset: Any,
    run_dir: str | os.PathLike[str],
    *,
    val_dataset: Any = None,
    reference_model: nn.Module | None = None,
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
    baseline_run: str | os.PathLike[str] | None = None,
    split: str = "test",
    config: dict[str, Any] | None = None,
    force: bool = False,
    progress: bool = True,
) -> EvalRecords:
    """Evaluate ``model`` on ``dataset``, time it per budget, and write a run directory.

    With ``reference_model`` (the baseline), every latency row also holds a speed-up
    measured against it in interleaved rounds on the same batches
    (:func:`~frugalnn.evaluation.timing.time_budgets`).

    With ``val_dataset``, the same budgets are also evaluated on it and saved
    under ``validation/``: that is where operating points are chosen. Without
    it, validation records an earlier evaluation left in ``run_dir`` are removed.

    The baseline is ``baseline_flops``/``baseline_accuracy``, or the evaluated
    static run ``baseline_run`` (its test numbers, and its validation records
    for the validation baseline); a ``baseline_run`` evaluated on other test
    examples is refused. Without either, see :func:`evaluate` (a static model
    records no baseline). ``split`` names the evaluated split in the summary.

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
    base = baseline_from_run(baseline_run) if baseline_run is not None else None
    if base is not None:
        baseline_flops = base["flops"] if baseline_flops is None else baseline_flops
        baseline_accuracy = base["accuracy"] if baseline_accuracy is None else baseline_accuracy
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    records = evaluate(model, loader, budgets=budgets, method=method, device=device,
                       threads=threads, progress=progress, baseline_flops=baseline_flops,
                       baseline_accuracy=baseline_accuracy)
    records.meta["split"] = split
    if base is not None:
        if same_examples(records.meta, base["summary"]) is False:
            raise UserError(f"baseline run {baseline_run} was evaluated on other examples than "
                            "this run; evaluate both with the same --data, --split, limit "
                            "and --seed")
        records.meta["baseline_run"] = str(baseline_run)
    if val_dataset is not None:
        # The operating points (thresholds, budgets) are chosen on these records;
        # the test records above only score them (see frugalnn.analysis.frontier).
        val_flops, val_acc = _validation_baseline(base, baseline_flops)
        val_loader = DataLoader(val_dataset, batch_size=batch_size, shuffle=False)
        swept = (budgets or records.budgets()) if has_budget(model) else None
        val_records = evaluate(model, val_loader, budgets=swept, method=method, device=device,
                               threads=threads, progress=progress, baseline_flops=val_flops,
                               baseline_accuracy=val_acc)
        val_records.meta["split"] = "validation"
        if (base is not None and base["validation"] is not None
                and same_examples(val_records.meta, base["validation"]) is False):
            raise UserError(f"baseline run {baseline_run} has validation records on other "
                            "examples than this run; evaluate both with the same "
                            "--val-fraction, --val-limit and --seed")
        val_records.save(run_dir / VALIDATION_DIR, force=force)
        records.meta["validation"] = {"dir": VALIDATION_DIR,
                                      "examples": val_records.meta["examples"],
                                      "fingerprint": val_records.meta["fingerprint"]}
    else:
        _drop_stale_validation(run_dir)
    n = records.meta["examples"]
    sizes = [bs for bs in latency_batch_sizes if bs <= n]
    if sizes:
        swept = None if not has_budget(model) else records.budgets()
        records.latency = time_budgets(model, loader, swept, sizes, warmup=latency_warmup,
                                       repeats=latency_repeats, threads=threads, device=device,
                                       progress=progress, reference=reference_model)
    if config is not None:
        records.meta["config"] = jsonable(config)
    records.save(run_dir, force=force)
    if config is not None and not (run_dir / "config.json").exists():
        with atomic_writer(run_dir / "config.json") as fh:
            json.dump(jsonable(config), fh, indent=2)
            fh.write("\n")
    return records
