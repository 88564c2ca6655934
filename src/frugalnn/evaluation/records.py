"""Evaluation records: per-example rows, their summary, and reading them back."""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from frugalnn.errors import UserError
from frugalnn.utils.io import atomic_writer, jsonable

#: Budget value used for a model without a knob (written as "static" in tables).
STATIC = float("nan")

#: Columns every record has, in file order; decision columns follow.
CORE_COLUMNS = ("budget", "example_id", "label", "pred", "correct", "loss", "flops")

IGNORE_INDEX = -100  # language-model targets to leave out (padding), as in training

RECORDS_FILE = "records.csv"
SUMMARY_FILE = "summary.json"
BATCHES_FILE = "batches.csv"
#: Subdirectory of a run holding the records of its validation split.
VALIDATION_DIR = "validation"


def budget_label(value: float) -> str:
    """Human label of a budget value: ``"static"`` for NaN, else a short number."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "static"
    return f"{value:g}"


def _budget_key(value: float) -> float | str:
    # JSON cannot hold NaN portably; the static budget is stored as the string "static".
    return "static" if math.isnan(value) else float(value)


def _budget_from_key(key: Any) -> float:
    if key is None or key == "static":
        return STATIC
    return float(key)


# --------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------


@dataclass
class EvalRecords:
    """Per-example rows of one evaluation, plus per-batch times and metadata.

    ``columns`` maps a column name to a 1-D numpy array (one entry per row);
    ``batch_times`` holds one ``(budget, batch_size, seconds)`` triple per
    evaluated batch; ``meta`` is what ``summary.json`` stores besides the
    per-budget rows (method, model, budget name, baseline cost, machine, ...);
    ``latency`` the rows of :func:`time_budgets`, if it was run.
    """

    columns: dict[str, np.ndarray]
    batch_times: list[tuple[float, int, float]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    latency: list[dict[str, Any]] = field(default_factory=list)

    # -- basic views ------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.columns["budget"])

    @property
    def decision_columns(self) -> list[str]:
        return [c for c in self.columns if c not in CORE_COLUMNS]

    def budgets(self) -> list[float]:
        """Distinct budgets in evaluation order (NaN for a static model)."""
        seen: list[float] = []
        for b in self.columns["budget"]:
            b = float(b)
            if not any(_same_budget(b, s) for s in seen):
                seen.append(b)
        return seen

    def rows_for(self, budget: float) -> np.ndarray:
        """Boolean mask of the rows evaluated at ``budget``."""
        col = self.columns["budget"].astype(np.float64)
        if math.isnan(budget):
            return np.isnan(col)
        return np.isclose(col, budget, rtol=1e-12, atol=0.0)

    @property
    def baseline_flops(self) -> float | None:
        return self.meta.get("baseline_flops")

    # -- summaries ----------------------------------------------------------------------
    def per_budget_summary(self, baseline_flops: float | None = None) -> list[dict[str, Any]]:
        """One row per budget: accuracy, loss, cost and speed, cheapest budget first.

        ``accuracy`` is a fraction (0..1); ``flops``/``macs`` are means per
        example; ``flops_ratio`` is ``flops / baseline_flops`` and
        ``flops_saving`` its complement (both ``None`` without a baseline);
        ``time_per_example_ms`` and ``throughput`` come from the per-batch
        wall-clock of this evaluation. ``decisions`` maps each decision
        column to its mean over the examples that recorded it (NaN-aware).
        """
        base = baseline_flops if baseline_flops is not None else self.baseline_flops
        out = []
        for b in self.budgets():
            mask = self.rows_for(b)
            n = int(mask.sum())
            flops = float(self.columns["flops"][mask].mean()) if n else float("nan")
            times = [(bs, s) for (bb, bs, s) in self.batch_times if _same_budget(bb, b)]
            total_s = sum(s for _, s in times)
            total_n = sum(bs for bs, _ in times)
            row: dict[str, Any] = {
                "budget": _budget_key(b),
                "label": budget_label(b),
                "examples": n,
                "accuracy": float(self.columns["correct"][mask].mean()) if n else float("nan"),
                "loss": float(self.columns["loss"][mask].mean()) if n else float("nan"),
                "flops": flops,
                "macs": flops / 2.0,
                "flops_ratio": (flops / base) if base else None,
                "flops_saving": (1.0 - flops / base) if base else None,
                "batches": len(times),
                "mean_batch_time_s": (total_s / len(times)) if times else None,
                "time_per_example_ms": (1e3 * total_s / total_n) if total_n else None,
                "throughput": (total_n / total_s) if total_s > 0 else None,
            }
            means = {}
            for name in self.decision_columns:
                vals = self.columns[name][mask].astype(np.float64)
                vals = vals[~np.isnan(vals)]
                means[name] = float(vals.mean()) if vals.size else None
            row["decisions"] = means
            out.append(row)
        out.sort(key=lambda r: (r["flops"], _sort_budget(r["budget"])))
        return out

    def summary(self) -> dict[str, Any]:
        """What ``summary.json`` holds: metadata, per-budget rows and latency rows."""
        return {
            **self.meta,
            "budgets": self.per_budget_summary(),
            "latency": self.latency,
        }

    # -- persistence ---------------------------------------------------------------------
    def save(self, run_dir: str | os.PathLike[str], *, force: bool = False) -> Path:
        """Write ``records.csv``, ``batches.csv`` and ``summary.json`` into ``run_dir``.

        The directory may exist (a run directory also holds the checkpoint),
        but existing records are only replaced with ``force=True``. Each file
        is written atomically.
        """
        run_dir = Path(run_dir)
        if (run_dir / RECORDS_FILE).exists() and not force:
            raise UserError(
                f"{run_dir / RECORDS_FILE} already exists; pass --force (force=True) to "
                "overwrite it or choose another run directory"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        names = list(self.columns)
        with atomic_writer(run_dir / RECORDS_FILE) as fh:
            writer = csv.writer(fh)
            writer.writerow(names)
            cols = [self.columns[n] for n in names]
            for i in range(len(self)):
                writer.writerow([_fmt(c[i]) for c in cols])
        with atomic_writer(run_dir / BATCHES_FILE) as fh:
            writer = csv.writer(fh)
            writer.writerow(["budget", "batch_size", "seconds"])
            for b, bs, s in self.batch_times:
                writer.writerow([_fmt(b), bs, repr(float(s))])
        with atomic_writer(run_dir / SUMMARY_FILE) as fh:
            json.dump(jsonable(self.summary()), fh, indent=2)
            fh.write("\n")
        return run_dir


def _sort_budget(key: Any) -> float:
    return -math.inf if key == "static" else float(key)


def _same_budget(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)


def _fmt(v: Any) -> str:
    if isinstance(v, (np.integer, int)):
        return str(int(v))
    f = float(v)
    if math.isnan(f):
        return "nan"
    if f.is_integer() and abs(f) < 2**53:
        return str(int(f))
    return repr(f)


def load_summary(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``summary.json`` of a run directory (``UserError`` if missing/corrupt)."""
    path = Path(run_dir) / SUMMARY_FILE
    if not path.is_file():
        raise UserError(
            f"{path} not found; run `frugalnn evaluate` for that run first "
            "(a run directory holds records.csv and summary.json)"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); re-run `frugalnn evaluate`") from None


def load_records(run_dir: str | os.PathLike[str]) -> EvalRecords:
    """Read back what :meth:`EvalRecords.save` wrote."""
    run_dir = Path(run_dir)
    summary = load_summary(run_dir)
    path = run_dir / RECORDS_FILE
    if not path.is_file():
        raise UserError(f"{path} not found; re-run `frugalnn evaluate` for that run")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise UserError(f"{path} is empty; re-run `frugalnn evaluate`") from None
        missing = [c for c in CORE_COLUMNS if c not in header]
        if missing:
            raise UserError(f"{path} lacks columns {missing}; re-run `frugalnn evaluate`")
        try:
            data = np.array([[float(v) for v in row] for row in reader], dtype=np.float64)
        except ValueError as exc:
            raise UserError(f"{path} is corrupt ({exc}); re-run `frugalnn evaluate`") from None
    data = data.reshape(-1, len(header))
    columns: dict[str, np.ndarray] = {}
    for j, name in enumerate(header):
        col = data[:, j]
        if name in ("example_id", "label", "pred"):
            col = col.astype(np.int64)
        columns[name] = col
    batch_times: list[tuple[float, int, float]] = []
    bpath = run_dir / BATCHES_FILE
    if bpath.is_file():
        with bpath.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            next(reader, None)
            for b, bs, s in reader:
                batch_times.append((float(b), int(bs), float(s)))
    meta = {k: v for k, v in summary.items() if k not in ("budgets", "latency")}
    return EvalRecords(columns, batch_times, meta, list(summary.get("latency") or []))


# --------------------------------------------------------------------------------------
