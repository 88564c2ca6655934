"""Evaluation at budgets: per-example records of what was predicted and computed.

Every method in frugalnn ends up here. A model with a budget knob
(:class:`frugalnn.budget.Budgeted`) is evaluated once per knob value; a static
model once. Each evaluated example yields one row: its id (position in the
unshuffled loader), label, prediction, whether it was correct, its loss, and
the FLOPs spent on *that* example, plus one column per decision a dynamic
module recorded in the :class:`~frugalnn.cost.ledger.CostLedger` (exit index,
experts per token, ...). Frontiers, plots and difficulty rankings are derived
from these rows, never measured separately, so everything a report shows can
be regenerated from ``records.csv`` and ``summary.json``.

Costs per example are ``static + dynamic``: the part of the network outside
:class:`~frugalnn.cost.ledger.DynamicModule` subtrees is counted once per
budget with :func:`frugalnn.cost.count.static_flops_excluding_dynamic` and
charged to every example; dynamic modules charge the ledger with what they
really executed. FLOPs are real floating-point operations (``macs * 2``).

Wall-clock time is measured per batch (``time.perf_counter``, CUDA
synchronised), inside the same pass that produces the records, so it includes
the ledger's bookkeeping; :func:`time_budgets` measures clean latency per
budget (no ledger, warm-up, repeats, median) for the accuracy-vs-latency plot.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from frugalnn.budget import has_budget
from frugalnn.cost.ledger import CostLedger
from frugalnn.errors import UserError

__all__ = [
    "CORE_COLUMNS",
    "STATIC",
    "EvalRecords",
    "atomic_writer",
    "jsonable",
    "budget_label",
    "evaluate",
    "evaluate_into",
    "load_records",
    "load_summary",
    "time_budgets",
]

#: Budget value used for a model without a knob (written as "static" in tables).
STATIC = float("nan")

#: Columns every record has, in file order; decision columns follow.
CORE_COLUMNS = ("budget", "example_id", "label", "pred", "correct", "loss", "flops")

IGNORE_INDEX = -100  # language-model targets to leave out (padding), as in training

RECORDS_FILE = "records.csv"
SUMMARY_FILE = "summary.json"
BATCHES_FILE = "batches.csv"


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


def jsonable(obj: Any) -> Any:
    """Make ``obj`` strict JSON: NaN/inf become null, numpy scalars become Python."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


@contextmanager
def atomic_writer(path: str | os.PathLike[str], mode: str = "w") -> Iterator[Any]:
    """Open a temp file beside ``path``; move it into place only if the block succeeds.

    A reader never sees a half-written file, and a crash leaves the old one.
    ``mode`` is ``"w"`` (text, UTF-8) or ``"wb"``.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        kw: dict[str, Any] = {} if "b" in mode else {"newline": "", "encoding": "utf-8"}
        with os.fdopen(fd, mode, **kw) as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise


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
# Evaluation
# --------------------------------------------------------------------------------------


def _to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, dict):
        return {k: _to_device(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_device(v, device) for v in x)
    return x


def _batch_len(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return int(x.shape[0])
    if isinstance(x, dict):
        return _batch_len(next(iter(x.values())))
    if isinstance(x, (list, tuple)):
        return _batch_len(x[0])
    raise UserError(f"cannot tell the batch size of an input of type {type(x).__name__}")


def _take(x: Any, n: int) -> Any:
    if isinstance(x, torch.Tensor):
        return x[:n]
    if isinstance(x, dict):
        return {k: _take(v, n) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_take(v, n) for v in x)
    return x


def _cat(parts: list[Any]) -> Any:
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, dict):
        return {k: _cat([p[k] for p in parts]) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(_cat([p[i] for p in parts]) for i in range(len(first)))
    raise UserError(f"cannot concatenate inputs of type {type(first).__name__}")


def _split_batch(batch: Any) -> tuple[Any, torch.Tensor]:
    if isinstance(batch, (list, tuple)) and len(batch) == 2:
        return batch[0], batch[1]
    if isinstance(batch, dict) and "labels" in batch:
        x = {k: v for k, v in batch.items() if k != "labels"}
        return x, batch["labels"]
    raise UserError(
        "the data loader must yield (inputs, labels) pairs; got "
        f"{type(batch).__name__}"
    )


def _logits_of(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, dict) and isinstance(out.get("logits"), torch.Tensor):
        return out["logits"]
    if isinstance(out, (list, tuple)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise UserError(f"the model returned {type(out).__name__}; expected a logits tensor")


def _score(
    logits: torch.Tensor, y: torch.Tensor
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-example (label, pred, correct, loss) for classification or language modelling.

    Classification: ``logits (B, C)``, ``y (B,)``. Language modelling:
    ``logits (B, T, V)``, ``y (B, T)``; the loss is the mean token
    cross-entropy of the example, ``correct`` the fraction of its tokens
    predicted right, and ``label``/``pred`` are -1 (no single class). Targets
    equal to -100 (padding, as in ``frugalnn.train.fit``) are left out.
    """
    logits = logits.detach().float().cpu()
    y = y.detach().cpu().long()
    if logits.dim() == 2 and y.dim() == 1:
        loss = F.cross_entropy(logits, y, reduction="none")
        pred = logits.argmax(dim=1)
        return y.numpy(), pred.numpy(), (pred == y).double().numpy(), loss.double().numpy()
    if logits.dim() == 3 and y.dim() == 2 and logits.shape[:2] == y.shape:
        b, t, v = logits.shape
        valid = (y != IGNORE_INDEX).double()
        count = valid.sum(dim=1).clamp_min(1.0)
        loss = F.cross_entropy(logits.reshape(b * t, v), y.reshape(-1), reduction="none",
                               ignore_index=IGNORE_INDEX).reshape(b, t).double()
        pred = logits.argmax(dim=2)
        neg = np.full(b, -1, dtype=np.int64)
        correct = (((pred == y).double() * valid).sum(dim=1) / count).numpy()
        return neg, neg.copy(), correct, ((loss * valid).sum(dim=1) / count).numpy()
    raise UserError(
        f"cannot score logits of shape {tuple(logits.shape)} against labels of shape "
        f"{tuple(y.shape)}; expected (B, C) with (B,) or (B, T, V) with (B, T)"
    )


@contextmanager
def _threads(n: int | None) -> Iterator[int]:
    old = torch.get_num_threads()
    if n is not None:
        if n < 1:
            raise UserError(f"threads must be at least 1, got {n}")
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _resolve_budgets(model: nn.Module, budgets: Sequence[float] | None) -> list[float]:
    if not has_budget(model):
        if budgets:
            raise UserError(
                f"{type(model).__name__} has no budget knob; drop --budgets (a static model "
                "is evaluated once)"
            )
        return [STATIC]
    values = list(budgets) if budgets else list(model.budget_values())  # type: ignore[union-attr]
    if not values:
        raise UserError("no budgets to evaluate; pass at least one value with --budgets")
    return [float(v) for v in values]


def _model_name(model: nn.Module) -> str:
    spec = getattr(model, "frugalnn_spec", None)
    if isinstance(spec, dict) and spec.get("name"):
        return str(spec["name"])
    return type(model).__name__


def _static_flops(model: nn.Module, example: Any) -> float:
    from frugalnn.cost.count import static_flops_excluding_dynamic

    with torch.inference_mode():
        return float(static_flops_excluding_dynamic(model, example))


def _first_inputs(loader: Iterable[Any], n: int) -> Any:
    for batch in loader:
        x, _ = _split_batch(batch)
        return _take(x, n)
    raise UserError("the data loader is empty; check the dataset split and --limit")


def evaluate(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    budgets: Sequence[float] | None = None,
    method: str = "",
    device: str | torch.device = "cpu",
    threads: int | None = None,
    example_input: Any = None,
    progress: bool = True,
    baseline_flops: float | None = None,
    baseline_accuracy: float | None = None,
    model_name: str | None = None,
    max_batches: int | None = None,
) -> EvalRecords:
    """Evaluate ``model`` on every batch of ``loader`` at each budget.

    ``budgets`` defaults to ``model.budget_values()`` for a budgeted model; a
    static model is evaluated once (budget NaN, label ``"static"``). The loader
    must not shuffle: example ids are positions in it. ``example_input`` (a
    small batch) is what the static FLOPs are counted on; by default the first
    examples of the loader. ``baseline_flops``/``baseline_accuracy`` describe
    the model the method is compared with (default: this model at its full
    budget, or the static model itself). The knob is set back to its full
    value afterwards, even on error.
    """
    device = torch.device(device)
    values = _resolve_budgets(model, budgets)
    model.to(device)
    if example_input is None:
        example_input = _first_inputs(loader, 8)
    example_input = _to_device(example_input, device)

    cols: dict[str, list[np.ndarray]] = {c: [] for c in CORE_COLUMNS}
    decisions: dict[str, list[tuple[int, np.ndarray]]] = {}
    batch_times: list[tuple[float, int, float]] = []
    static_per_budget: dict[float | str, float] = {}
    n_rows = 0

    try:
        total = None
        if max_batches is not None:
            total = max_batches * len(values)
        else:
            try:
                total = len(loader) * len(values)  # type: ignore[arg-type]
            except TypeError:
                total = None
        bar = tqdm(total=total, desc=f"evaluate {method or _model_name(model)}", unit="batch",
                   disable=not progress, leave=False)
        with _threads(threads) as used_threads, _eval_mode(model), bar:
            for b in values:
                if not math.isnan(b):
                    model.set_budget(b)  # type: ignore[attr-defined]
                static = _static_flops(model, example_input)
                static_per_budget[_budget_key(b)] = static
                bar.set_postfix(budget=budget_label(b))
                example_id = 0
                for i, batch in enumerate(loader):
                    if max_batches is not None and i >= max_batches:
                        break
                    x, y = _split_batch(batch)
                    bs = _batch_len(x)
                    x = _to_device(x, device)
                    ledger = CostLedger(bs)
                    with torch.inference_mode():
                        _sync(device)
                        t0 = time.perf_counter()
                        with ledger:
                            out = model(x)
                        _sync(device)
                        seconds = time.perf_counter() - t0
                    label, pred, correct, loss = _score(_logits_of(out), y)
                    batch_times.append((b, bs, seconds))
                    cols["budget"].append(np.full(bs, b, dtype=np.float64))
                    cols["example_id"].append(np.arange(example_id, example_id + bs))
                    cols["label"].append(label)
                    cols["pred"].append(pred)
                    cols["correct"].append(correct)
                    cols["loss"].append(loss)
                    cols["flops"].append(static + ledger.flops.numpy())
                    for name, vals in ledger.decisions.items():
                        decisions.setdefault(name, []).append((n_rows, vals.numpy().copy()))
                    example_id += bs
                    n_rows += bs
                    bar.update(1)
    finally:
        if has_budget(model):
            model.set_budget(model.full_budget())  # type: ignore[attr-defined]

    if n_rows == 0:
        raise UserError("the data loader yielded no examples; check the dataset and --limit")
    columns: dict[str, np.ndarray] = {c: np.concatenate(v) for c, v in cols.items()}
    for name, parts in decisions.items():
        col = np.full(n_rows, np.nan)
        for start, vals in parts:
            col[start : start + len(vals)] = vals
        key = name if name not in CORE_COLUMNS else f"decision_{name}"
        columns[key] = col

    records = EvalRecords(columns, batch_times)
    budget_name = getattr(model, "budget_name", None) if has_budget(model) else None
    baseline_source = "given" if baseline_flops is not None else "self"
    if baseline_flops is None or baseline_accuracy is None:
        full = model.full_budget() if has_budget(model) else STATIC  # type: ignore[attr-defined]
        ref = [r for r in records.per_budget_summary(1.0) if _same_budget(
            _budget_from_key(r["budget"]), float(full))]
        if ref:
            baseline_flops = ref[0]["flops"] if baseline_flops is None else baseline_flops
            if baseline_accuracy is None:
                baseline_accuracy = ref[0]["accuracy"]
    records.meta = {
        "method": method or ("baseline" if not has_budget(model) else type(model).__name__),
        "model": model_name or _model_name(model),
        "budget_name": budget_name or "static",
        "baseline_flops": baseline_flops,
        "baseline_accuracy": baseline_accuracy,
        "baseline_source": baseline_source,
        "static_flops_per_example": static_per_budget,
        "examples": int(n_rows // len(values)),
        "batch_size": max(bs for _, bs, _ in batch_times),
        "threads": used_threads,
        "device": str(device),
        "machine": _machine(device),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "transforms": list(getattr(model, "frugalnn_transforms", []) or []),
    }
    return records


def _machine(device: torch.device) -> dict[str, Any]:
    from frugalnn.cost.machine import describe_machine

    return dict(describe_machine(device))


# --------------------------------------------------------------------------------------
# Latency per budget
# --------------------------------------------------------------------------------------


def _real_batches(source: Any, batch_size: int, count: int) -> list[Any]:
    """Up to ``count`` batches of exactly ``batch_size`` real inputs from ``source``.

    ``source`` is a data loader (re-batched as needed) or a single input batch
    (sliced into consecutive windows).
    """
    if isinstance(source, (torch.Tensor, dict)):
        n = _batch_len(source)
        if n < batch_size:
            raise UserError(f"need at least {batch_size} examples to time batch size {batch_size}")
        out = []
        for start in range(0, n - batch_size + 1, batch_size):
            out.append(_slice(source, start, start + batch_size))
            if len(out) >= count:
                break
        return out
    out: list[Any] = []
    pending: list[Any] = []
    have = 0
    for batch in source:
        x, _ = _split_batch(batch)
        pending.append(x)
        have += _batch_len(x)
        while have >= batch_size:
            joined = _cat(pending)
            out.append(_take(joined, batch_size))
            rest = _slice(joined, batch_size, have)
            pending = [rest] if have > batch_size else []
            have -= batch_size
            if len(out) >= count:
                return out
    if not out:
        raise UserError(f"the data has fewer than {batch_size} examples; lower the batch size")
    return out


def _slice(x: Any, start: int, stop: int) -> Any:
    if isinstance(x, torch.Tensor):
        return x[start:stop]
    if isinstance(x, dict):
        return {k: _slice(v, start, stop) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_slice(v, start, stop) for v in x)
    return x


def time_budgets(
    model: nn.Module,
    loader_or_batch: Any,
    budgets: Sequence[float] | None = None,
    batch_sizes: Sequence[int] = (1, 64),
    *,
    warmup: int = 3,
    repeats: int = 20,
    threads: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Measured forward latency of ``model`` per budget and batch size.

    Each timed call runs the model (in ``inference_mode``, no ledger) on a
    *different* real batch, cycling through ``repeats`` batches drawn from
    the data, because a dynamic model's time depends on its input. Returns
    rows ``{budget, label, batch_size, median_ms, p10_ms, p90_ms, mean_ms,
    std_ms, per_example_ms, threads, device, repeats}`` ready for
    ``EvalRecords.latency``. The knob is restored to full afterwards.
    """
    from frugalnn.cost.latency import measure_latency

    device = torch.device(device)
    values = _resolve_budgets(model, budgets)
    model.to(device)
    rows: list[dict[str, Any]] = []
    jobs = [(b, bs) for b in values for bs in batch_sizes]
    try:
        with _eval_mode(model), torch.inference_mode():
            for b, bs in tqdm(jobs, desc="latency", unit="setting", disable=not progress,
                              leave=False):
                if bs < 1:
                    raise UserError(f"batch sizes must be positive, got {bs}")
                if not math.isnan(b):
                    model.set_budget(b)  # type: ignore[attr-defined]
                batches = [_to_device(x, device) for x in
                           _real_batches(loader_or_batch, bs, max(repeats, 1))]
                cursor = {"i": 0}

                def step(_batches: list[Any] = batches, _c: dict[str, int] = cursor) -> Any:
                    x = _batches[_c["i"] % len(_batches)]
                    _c["i"] += 1
                    return model(x)

                rec = measure_latency(step, warmup=warmup, repeats=repeats, threads=threads,
                                      device=device, batch_size=bs).to_dict(with_times=False)
                median = float(rec["median_ms"])
                rows.append({
                    **{k: v for k, v in rec.items() if k != "batch_size"},
                    "budget": _budget_key(b),
                    "label": budget_label(b),
                    "batch_size": bs,
                    "distinct_batches": len(batches),
                    "per_example_ms": median / bs,
                })
    finally:
        if has_budget(model):
            model.set_budget(model.full_budget())  # type: ignore[attr-defined]
    return rows


# --------------------------------------------------------------------------------------
# One call from a model to a complete run directory
# --------------------------------------------------------------------------------------


def evaluate_into(
    model: nn.Module,
    dataset: Any,
    run_dir: str | os.PathLike[str],
    *,
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
    report: bool = True,
    force: bool = False,
    progress: bool = True,
) -> EvalRecords:
    """Evaluate ``model`` on ``dataset``, time it per budget, and write a run directory.

    Writes ``records.csv``, ``batches.csv``, ``summary.json`` (with ``config``
    under ``"config"``), ``config.json`` when the directory has none yet (a
    training run keeps its own), and ``report/`` for this run alone. Latency is
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
    if report:
        from frugalnn.report import write_report

        write_report([run_dir], run_dir / "report", title=f"{records.meta['method']} "
                     f"({records.meta['model']})", force=True)
    return records
