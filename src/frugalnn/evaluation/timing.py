"""Clean latency per budget: no ledger, warm-up, repeats, median, distinct real batches."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from frugalnn.budget import has_budget
from frugalnn.errors import UserError
from frugalnn.evaluation.loop import _eval_mode, _resolve_budgets
from frugalnn.evaluation.records import _budget_key, budget_label
from frugalnn.utils.batch import (
    batch_len,
    call_model,
    cat,
    inputs_of,
    slice_batch,
    take,
    to_device,
)


def _real_batches(source: Any, batch_size: int, count: int) -> list[Any]:
    """Up to ``count`` batches of exactly ``batch_size`` real inputs from ``source``.

    ``source`` is a data loader (re-batched as needed) or a single input batch
    (sliced into consecutive windows).
    """
    if isinstance(source, (torch.Tensor, dict)):
        n = batch_len(source)
        if n < batch_size:
            raise UserError(f"need at least {batch_size} examples to time batch size {batch_size}")
        out = []
        for start in range(0, n - batch_size + 1, batch_size):
            out.append(slice_batch(source, start, start + batch_size))
            if len(out) >= count:
                break
        return out
    out: list[Any] = []
    pending: list[Any] = []
    have = 0
    for batch in source:
        x = inputs_of(batch)
        pending.append(x)
        have += batch_len(x)
        while have >= batch_size:
            joined = cat(pending)
            out.append(take(joined, batch_size))
            rest = slice_batch(joined, batch_size, have)
            pending = [rest] if have > batch_size else []
            have -= batch_size
            if len(out) >= count:
                return out
    if not out:
        raise UserError(f"the data has fewer than {batch_size} examples; lower the batch size")
    return out


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
    reference: nn.Module | None = None,
    rounds: int = 2,
) -> list[dict[str, Any]]:
    """Measured forward latency of ``model`` per budget and batch size.

    With a ``reference`` model (the baseline), each setting is timed in
    ``rounds`` interleaved rounds, reference then model, on the same batches,
    and the row gets ``interleaved = {"rounds", "model_ms", "reference_ms",
    "speedup"}``: the reference's fastest round median over the model's, a
    speed-up measured in one run under one load (the ``median_ms`` fields stay
    those of the model's last round).

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
    if reference is not None:
        if rounds < 1:
            raise UserError(f"rounds must be at least 1, got {rounds}")
        reference.to(device).eval()
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
                batches = [to_device(x, device) for x in
                           _real_batches(loader_or_batch, bs, max(repeats, 1))]
                cursor = {"i": 0}

                def stepper(fn: Any, _batches: list[Any] = batches,
                            _c: dict[str, int] = cursor) -> Any:
                    def step() -> Any:
                        x = _batches[_c["i"] % len(_batches)]
                        _c["i"] += 1
                        return call_model(fn, x)

                    return step

                def timed(fn: Any, _c: dict[str, int] = cursor, _bs: int = bs) -> dict[str, Any]:
                    _c["i"] = 0  # every timing sees the same batches in the same order
                    return measure_latency(stepper(fn), warmup=warmup, repeats=repeats,
                                           threads=threads, device=device,
                                           batch_size=_bs).to_dict(with_times=False)

                model_ms: list[float] = []
                reference_ms: list[float] = []
                for _ in range(rounds if reference is not None else 1):
                    if reference is not None:
                        reference_ms.append(float(timed(reference)["median_ms"]))
                    rec = timed(model)
                    model_ms.append(float(rec["median_ms"]))
                median = float(rec["median_ms"])
                row = {
                    **{k: v for k, v in rec.items() if k != "batch_size"},
                    "budget": _budget_key(b),
                    "label": budget_label(b),
                    "batch_size": bs,
                    "distinct_batches": len(batches),
                    "per_example_ms": median / bs,
                }
                if reference is not None:
                    row["interleaved"] = {"rounds": len(model_ms), "model_ms": model_ms,
                                          "reference_ms": reference_ms,
                                          "speedup": min(reference_ms) / min(model_ms)}
                rows.append(row)
    finally:
        if has_budget(model):
            model.set_budget(model.full_budget())  # type: ignore[attr-defined]
    return rows
