"""Latency-aware rank selection: factorise a layer only where it is really faster.

Fewer FLOPs do not mean less time: a chain of three or four small kernels
pays per-call overhead and runs thin matrix products that use the hardware
badly, which is why factorised layers are often slower than the dense layer
they replace. So instead of trusting FLOPs, this module measures, on the
target device and at the batch size of interest:

1. the whole dense model's latency ``T`` (the target is ``fraction * T``);
2. for each eligible layer, the dense layer's latency and the latency of its
   chain at a ladder of candidate ranks (those giving 1.5x ... 8x fewer FLOPs),
   with :func:`frugalnn.cost.latency.measure_latency`.

Candidates not faster than the dense layer are dropped. A greedy search then
starts from the dense model and repeatedly takes the move (a layer to a
faster candidate) with the most milliseconds saved per unit of approximation
error (the spectral energy the ranks discard, a cheap proxy for accuracy),
until the predicted latency ``T - sum(savings)`` meets the target. The
prediction assumes layer times add up; the compressed model is then measured
for real and both numbers are reported. If even the fastest candidates cannot
meet the target, a ``UserError`` says which latency is reachable.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from frugalnn.cost.latency import measure_latency
from frugalnn.errors import UserError
from frugalnn.methods.lowrank import layers as L
from frugalnn.methods.lowrank.rank import discarded_energy_fn, ranks_for_ratio

RATIOS = (1.5, 2.0, 3.0, 4.0, 6.0, 8.0)


def _input_for(target: Any, batch_size: int, device: torch.device,
               dtype: torch.dtype) -> torch.Tensor:
    s = target.spec
    if isinstance(target.module, nn.Linear):
        return torch.randn(batch_size, target.hw[0], s.in_channels, device=device, dtype=dtype)
    return torch.randn(batch_size, s.in_channels, *target.hw, device=device, dtype=dtype)


def discarded_energy(method: str, weight: torch.Tensor, ranks: tuple[int, ...]) -> float:
    """Mean fraction of spectral energy the ranks drop on the method's unfoldings."""
    return discarded_energy_fn(method, weight)(ranks)


def latency_table(targets: list[Any], method: str, *, batch_size: int = 1,
                  device: str | torch.device = "cpu", warmup: int = 3, repeats: int = 10,
                  threads: int | None = None, depthwise: str = "separable",
                  ratios: tuple[float, ...] = RATIOS) -> dict[str, dict[str, Any]]:
    """Measured dense and candidate latencies (ms) per layer name."""
    dev = torch.device(device)
    table: dict[str, dict[str, Any]] = {}
    for t in targets:
        dtype = t.module.weight.dtype
        x = _input_for(t, batch_size, dev, dtype)
        dense = t.module.to(dev)
        dense_ms = measure_latency(dense, x, warmup=warmup, repeats=repeats, threads=threads,
                                   device=dev).median_ms
        cands = []
        seen = set()
        for ratio in ratios:
            ranks = ranks_for_ratio(method, t.spec, t.hw, "flops", ratio, depthwise)
            if ranks is None or ranks in seen:
                continue
            seen.add(ranks)
            opts = {"depthwise": depthwise} if method == "cp" else {}
            if isinstance(t.module, nn.Linear):
                chain = L.SVDLinear(t.spec.in_channels, t.spec.out_channels, ranks[0],
                                    t.spec.bias)
            else:
                chain = L.empty_like_conv(t.module, method, ranks, **opts)
            chain = chain.to(dev, dtype).eval()
            ms = measure_latency(chain, x, warmup=warmup, repeats=repeats, threads=threads,
                                 device=dev).median_ms
            cands.append({"ranks": ranks, "flops_ratio": ratio, "ms": ms,
                          "error": discarded_energy(method, t.module.weight, ranks)})
        table[t.name] = {"dense_ms": dense_ms, "candidates": cands}
    return table


def greedy_choice(table: dict[str, dict[str, Any]], model_ms: float, target_ms: float,
                  min_gain: float = 0.05) -> tuple[dict[str, dict[str, Any] | None], float]:
    """Pick per-layer candidates until the predicted latency meets ``target_ms``.

    A candidate must be at least ``min_gain`` (relative) faster than the dense
    layer. Returns the choice per layer (``None``: dense) and the predicted
    whole-model latency.
    """
    choice: dict[str, dict[str, Any] | None] = {name: None for name in table}
    predicted = model_ms
    while predicted > target_ms:
        best, best_score = None, -1.0
        for name, row in table.items():
            cur = choice[name]
            cur_ms = row["dense_ms"] if cur is None else cur["ms"]
            cur_err = 0.0 if cur is None else cur["error"]
            for cand in row["candidates"]:
                if cand["ms"] > row["dense_ms"] * (1 - min_gain) or cand["ms"] >= cur_ms:
                    continue
                score = (cur_ms - cand["ms"]) / (max(cand["error"] - cur_err, 0.0) + 1e-3)
                if score > best_score:
                    best, best_score = (name, cand, cur_ms), score
        if best is None:
            break
        name, cand, cur_ms = best
        predicted -= cur_ms - cand["ms"]
        choice[name] = cand
    return choice, predicted


def choose_ranks(model: nn.Module, targets: list[Any], method: str, fraction: float,
                 example_input: Any, *, batch_size: int = 1, device: str | torch.device = "cpu",
                 warmup: int = 3, repeats: int = 10, threads: int | None = None,
                 depthwise: str = "separable") -> dict[str, tuple[Any, str, dict[str, Any]]]:
    """Ranks per layer meeting ``fraction`` x the dense model's measured latency."""
    dev = torch.device(device)
    x = example_input[:1].expand(batch_size, *example_input.shape[1:]).contiguous().to(dev)
    model.to(dev).eval()
    model_ms = measure_latency(model, x, warmup=warmup, repeats=repeats, threads=threads,
                               device=dev).median_ms
    table = latency_table(targets, method, batch_size=batch_size, device=dev, warmup=warmup,
                          repeats=repeats, threads=threads, depthwise=depthwise)
    target_ms = fraction * model_ms
    choice, predicted = greedy_choice(table, model_ms, target_ms)
    if predicted > target_ms * 1.0001:
        raise UserError(
            f"latency target {fraction:g} x {model_ms:.3f} ms = {target_ms:.3f} ms is not "
            f"reachable with --method {method} on {dev} at batch {batch_size}: the fastest "
            f"factorised layers give about {predicted:.3f} ms ({predicted / model_ms:.2f} x); "
            "ask for latency >= that fraction"
        )
    out: dict[str, tuple[Any, str, dict[str, Any]]] = {}
    for name, row in table.items():
        cand = choice[name]
        extra = {"dense_ms": row["dense_ms"], "model_dense_ms": model_ms,
                 "predicted_model_ms": predicted,
                 "candidates": [{**c, "ranks": list(c["ranks"])} for c in row["candidates"]]}
        if cand is None:
            faster = any(c["ms"] < row["dense_ms"] for c in row["candidates"])
            reason = "not needed for the target" if faster else "no faster candidate"
            out[name] = (None, reason, extra)
        else:
            extra["lowrank_ms"] = cand["ms"]
            out[name] = (tuple(cand["ranks"]),
                         f"latency: {row['dense_ms']:.3f} -> {cand['ms']:.3f} ms", extra)
    return out
