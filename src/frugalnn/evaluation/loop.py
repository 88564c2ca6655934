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

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from frugalnn.budget import has_budget
from frugalnn.cost.bits import model_bytes, params_by_precision
from frugalnn.cost.ledger import CostLedger
from frugalnn.errors import UserError
from frugalnn.evaluation.fingerprint import ExampleFingerprint
from frugalnn.evaluation.records import (
    CORE_COLUMNS,
    IGNORE_INDEX,
    STATIC,
    EvalRecords,
    _budget_from_key,
    _budget_key,
    _same_budget,
    budget_label,
)
from frugalnn.utils.batch import (
    batch_len,
    call_model,
    inputs_of,
    logits_of,
    split_batch,
    take,
    to_device,
)


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
        x = inputs_of(batch)
        return take(x, n)
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
    the model the method is compared with (``baseline_source: "given"``).
    Without them, a budgeted model is compared with itself at its full budget
    (``"self"``); a static model records **no** baseline (``"none"``: savings
    unknown), since comparing a compressed model with itself would show a 0 %
    saving. The summary's ``fingerprint`` (count and sha256 of labels and input
    bytes, see :mod:`frugalnn.evaluation.fingerprint`) identifies the examples.
    ``method`` defaults to the last transformation recorded on the model, else
    ``"baseline"`` for a static model. The knob is set back to its full value
    afterwards, even on error.
    """
    device = torch.device(device)
    values = _resolve_budgets(model, budgets)
    model.to(device)
    if example_input is None:
        example_input = _first_inputs(loader, 8)
    example_input = to_device(example_input, device)

    cols: dict[str, list[np.ndarray]] = {c: [] for c in CORE_COLUMNS}
    decisions: dict[str, list[tuple[int, np.ndarray]]] = {}
    batch_times: list[tuple[float, int, float]] = []
    static_per_budget: dict[float | str, float] = {}
    fingerprint = ExampleFingerprint()
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
            for bi, b in enumerate(values):
                if not math.isnan(b):
                    model.set_budget(b)  # type: ignore[attr-defined]
                static = _static_flops(model, example_input)
                static_per_budget[_budget_key(b)] = static
                bar.set_postfix(budget=budget_label(b))
                example_id = 0
                for i, batch in enumerate(loader):
                    if max_batches is not None and i >= max_batches:
                        break
                    x, y = split_batch(batch)
                    bs = batch_len(x)
                    if bi == 0:  # the same examples at every budget
                        fingerprint.update(x, y)
                    x = to_device(x, device)
                    ledger = CostLedger(bs)
                    with torch.inference_mode():
                        _sync(device)
                        t0 = time.perf_counter()
                        with ledger:
                            out = call_model(model, x)
                        _sync(device)
                        seconds = time.perf_counter() - t0
                    label, pred, correct, loss = _score(logits_of(out), y)
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
    baseline_flops, baseline_accuracy, baseline_source = _baseline(
        model, records, baseline_flops, baseline_accuracy)
    records.meta = {
        "method": method or _default_method(model),
        "model": model_name or _model_name(model),
        "budget_name": budget_name or "static",
        "baseline_flops": baseline_flops,
        "baseline_accuracy": baseline_accuracy,
        "baseline_source": baseline_source,
        "static_flops_per_example": static_per_budget,
        "examples": int(n_rows // len(values)),
        "fingerprint": fingerprint.to_dict(),
        "batch_size": max(bs for _, bs, _ in batch_times),
        "threads": used_threads,
        "device": str(device),
        "machine": _machine(device),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "transforms": list(getattr(model, "frugalnn_transforms", []) or []),
        # What the model stores (one size for every budget): the report's size axis.
        "model_bytes": model_bytes(model),
        "params_by_precision": params_by_precision(model),
    }
    return records


def _default_method(model: nn.Module) -> str:
    """The last transformation recorded on the model, else ``baseline`` (static) or its type."""
    transforms = list(getattr(model, "frugalnn_transforms", []) or [])
    if transforms and isinstance(transforms[-1], dict) and transforms[-1].get("name"):
        return str(transforms[-1]["name"])
    return "baseline" if not has_budget(model) else type(model).__name__


def _baseline(
    model: nn.Module, records: EvalRecords, flops: float | None, accuracy: float | None
) -> tuple[float | None, float | None, str]:
    """``(flops, accuracy, source)`` of the reference the savings are measured against.

    Given numbers win (``"given"``; a missing accuracy stays unknown). A budgeted
    model without them is compared with itself at its full budget (``"self"``);
    a static model gets no baseline (``"none"``).
    """
    if flops is not None or accuracy is not None:
        return flops, accuracy, "given"
    if not has_budget(model):
        return None, None, "none"
    full = float(model.full_budget())  # type: ignore[attr-defined]
    for row in records.per_budget_summary(1.0):
        if _same_budget(_budget_from_key(row["budget"]), full):
            return row["flops"], row["accuracy"], "self"
    return None, None, "none"


def _machine(device: torch.device) -> dict[str, Any]:
    from frugalnn.cost.machine import describe_machine

    return dict(describe_machine(device))


@torch.no_grad()
def loader_accuracy(model: nn.Module, loader: Iterable[Any],
                    device: str | torch.device = "cpu") -> float:
    """Share of labels whose top logit is right over ``loader``'s ``(inputs, labels)``
    batches, in eval mode (restored after): one label per example for a classifier, one
    per position for a language model (next-token accuracy); inputs may be dicts."""
    was = model.training
    model.eval()
    correct = total = 0
    try:
        for batch in loader:
            x, y = split_batch(batch)
            pred = logits_of(call_model(model, to_device(x, device))).argmax(-1).cpu()
            correct += int((pred == y).sum())
            total += int(y.numel())
    finally:
        model.train(was)
    return correct / max(1, total)


def top1_accuracy(model: nn.Module, data: Any, *, batch_size: int = 256,
                  device: str | torch.device = "cpu") -> float:
    """Share of examples of ``data`` (a dataset, in order) whose top logit is the label:
    a quick score for choosing on validation data (no ledger, no records)."""
    from frugalnn.data.splits import seeded_loader

    return loader_accuracy(model, seeded_loader(data, batch_size, 0, shuffle=False), device)
