"""The steps of the low-rank recipe: compress, fine-tune, compare, write extras.

:mod:`frugalnn.methods.lowrank.recipe` composes them into the one pipeline
that the CLI, the demo hook and the benchmark scripts run; benchmarks that
measure one step alone call the step:

* :func:`compress_and_finetune` copies the trained model, factorises the copy
  (:func:`frugalnn.methods.lowrank.compress.compress_model`) and fine-tunes it with
  :func:`frugalnn.train.fit`, distilling from the original (Kim et al. used
  one fine-tuning pass after Tucker-2; distillation recovers faster);
* :func:`compare` measures what the research reports: parameter and FLOP
  compression, wall-clock latency at several batch sizes, peak memory, and
  accuracy, per layer (latency of each dense layer vs its chain at the
  layer's own input shape) and for the whole model;
* :func:`write_extras` writes both tables to ``RUN_DIR/extras`` for the report.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from frugalnn.cost.count import flops_per_example
from frugalnn.cost.latency import measure_latency
from frugalnn.cost.memory import peak_memory
from frugalnn.evaluation.loop import loader_accuracy
from frugalnn.methods.lowrank.compress import LayerPlan, compress_model, plan_markdown, plan_totals
from frugalnn.utils.batch import call_model, expand_batch, take, to_device


def compress_and_finetune(
    teacher: nn.Module, method: str, target: str, example_input: torch.Tensor,
    train_loader: Iterable[Any] | None = None, *, finetune_epochs: int = 0,
    lr: float = 0.01, optimizer: str = "sgd", weight_decay: float = 5e-4, alpha: float = 0.5,
    temperature: float = 2.0, depthwise: str = "separable", include: list[str] | None = None,
    exclude: list[str] | None = None, latency: dict[str, Any] | None = None,
    layer_targets: list[str] | None = None, rank_multiple: int = 1,
    device: str | torch.device = "cpu", seed: int = 0, progress: bool = True,
    eval_loader: Iterable[Any] | None = None, layerwise: dict[str, Any] | None = None,
    calibration: Iterable[Any] | None = None, gain_examples: int = 0,
    gain_data: Iterable[Any] | None = None,
) -> tuple[nn.Module, list[LayerPlan], dict[str, Any]]:
    """A factorised, fine-tuned copy of ``teacher`` with its plan and training history.

    ``teacher`` itself is left as it was; ``eval_loader`` (a validation split)
    is scored after every fine-tuning epoch into the history. ``layerwise``
    (options of :func:`frugalnn.methods.lowrank.nonlinear.distill_layers`, e.g.
    ``{"steps": 200}``) first fits each factorised layer to its original on
    ``train_loader`` batches. ``calibration`` (batches of inputs) makes the SVD
    data-aware (:mod:`frugalnn.methods.lowrank.calibrate`); ``gain_examples`` of
    ``gain_data`` (default: ``calibration``) measure the layers' output gains for a
    ``model-*`` target.
    """
    teacher = teacher.to(device).eval()
    student = copy.deepcopy(teacher)
    student, plan = compress_model(student, method, target, to_device(example_input, device),
                                   include=include, exclude=exclude, depthwise=depthwise,
                                   latency=latency, layer_targets=layer_targets,
                                   rank_multiple=rank_multiple, calibration=calibration,
                                   gain_examples=gain_examples, gain_data=gain_data)
    history: dict[str, Any] = {}
    if layerwise and layerwise.get("steps", 1) > 0 and train_loader is not None:
        from frugalnn.methods.lowrank.nonlinear import distill_layers

        history["layerwise"] = distill_layers(teacher, student, train_loader, device=device,
                                              **layerwise)
    if finetune_epochs > 0 and train_loader is not None:
        history["finetune"] = distill_finetune(
            student, teacher, train_loader, epochs=finetune_epochs, optimizer=optimizer, lr=lr,
            weight_decay=weight_decay, alpha=alpha, temperature=temperature, seed=seed,
            progress=progress, device=device, eval_loader=eval_loader)
    return student.eval(), plan, history


def distill_finetune(
    student: nn.Module, teacher: nn.Module, train_loader: Iterable[Any], *, epochs: int,
    optimizer: str = "sgd", lr: float = 0.01, weight_decay: float = 5e-4, alpha: float = 0.5,
    temperature: float = 2.0, seed: int = 0, progress: bool = False,
    device: str | torch.device = "cpu", eval_loader: Iterable[Any] | None = None,
) -> list[dict[str, Any]]:
    """Fine-tune ``student`` in place for ``epochs`` (cosine schedule) with distillation
    from the frozen ``teacher``; the training history. The low-rank fine-tuning, and the
    same-training control of a benchmark (the dense model given the same epochs)."""
    from frugalnn.train import fit
    from frugalnn.train.distill import DistillConfig

    frozen = [p for p in teacher.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        result = fit(student, train_loader, epochs=epochs, optimizer=optimizer, lr=lr,
                     weight_decay=weight_decay, schedule="cosine", teacher=teacher.eval(),
                     distill=DistillConfig(alpha=alpha, temperature=temperature), seed=seed,
                     progress=progress, device=device, eval_loader=eval_loader)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return result.history


def _time(fn: nn.Module, x: torch.Tensor, warmup: int, repeats: int,
          threads: int | None) -> float:
    return measure_latency(fn, x, warmup=warmup, repeats=repeats, threads=threads,
                           device=x.device).median_ms


def layer_latencies(original: nn.Module, compressed: nn.Module, plan: list[LayerPlan],
                    batch_size: int, device: str | torch.device = "cpu", warmup: int = 2,
                    repeats: int = 10, threads: int | None = None) -> None:
    """Time each factorised layer against its dense original; store in ``plan[i].extra``."""
    for row in plan:
        if row.ranks is None:
            continue
        dense = original.get_submodule(row.name).eval()
        chain = compressed.get_submodule(row.name).eval()
        w, hw = dense.weight, row.extra["input_hw"]
        if isinstance(dense, nn.Linear):
            x = torch.randn(batch_size, hw[0], w.shape[1], device=device)
        elif row.kind == "capsule":  # (B, in_caps, in_dim) poses
            x = torch.randn(batch_size, dense.in_caps, dense.in_dim, device=device)
        else:
            x = torch.randn(batch_size, w.shape[1], *hw, device=device)
        row.extra["dense_ms"] = _time(dense, x, warmup, repeats, threads)
        row.extra["lowrank_ms"] = _time(chain, x, warmup, repeats, threads)
        row.extra["latency_batch"] = batch_size


def compare(original: nn.Module, compressed: nn.Module, plan: list[LayerPlan],
            example: Any, *, batch_sizes: Sequence[int] = (1, 64),
            device: str | torch.device = "cpu", warmup: int = 3, repeats: int = 20,
            threads: int | None = None, eval_loader: Iterable[Any] | None = None,
            layer_batch: int | None = None) -> dict[str, Any]:
    """Whole-model (and per-layer) cost, time, memory and accuracy: original vs compressed."""
    original.to(device).eval()
    compressed.to(device).eval()
    one = to_device(take(example, 1), device)
    out: dict[str, Any] = {"models": {}}
    for tag, model in (("original", original), ("compressed", compressed)):
        row: dict[str, Any] = {
            "params": sum(p.numel() for p in model.parameters()),
            "flops": round(flops_per_example(model, one)),  # batch 1; dict inputs as keywords
        }
        for b in batch_sizes:
            row[f"peak_bytes_b{b}"] = peak_memory(partial(call_model, model),
                                                  expand_batch(one, b), device=device).peak_bytes
        if eval_loader is not None:
            row["accuracy"] = loader_accuracy(model, eval_loader, device)
        out["models"][tag] = row
    # Time the two models alternately, twice each, and keep each one's better
    # median: a shared, loaded CPU otherwise favours whichever ran second.
    for b in batch_sizes:
        xb = expand_batch(one, b)
        for _round in range(2):
            for tag, model in (("original", original), ("compressed", compressed)):
                rec = measure_latency(partial(call_model, model), xb, warmup=warmup,
                                      repeats=repeats, threads=threads, device=device,
                                      batch_size=b)
                row = out["models"][tag]
                if rec.median_ms < row.get(f"latency_ms_b{b}", float("inf")):
                    row[f"latency_ms_b{b}"] = rec.median_ms
                    row[f"latency_p10_ms_b{b}"] = rec.p10_ms
                    row[f"latency_p90_ms_b{b}"] = rec.p90_ms
                    row[f"loadavg_b{b}"] = rec.loadavg_before
    o, c = out["models"]["original"], out["models"]["compressed"]
    out["params_ratio"] = o["params"] / c["params"]
    out["flops_ratio"] = o["flops"] / c["flops"]
    for b in batch_sizes:
        out[f"speedup_b{b}"] = o[f"latency_ms_b{b}"] / c[f"latency_ms_b{b}"]
        out[f"memory_ratio_b{b}"] = o[f"peak_bytes_b{b}"] / max(c[f"peak_bytes_b{b}"], 1)
    out["layers"] = plan_totals(plan)
    if layer_batch:
        layer_latencies(original, compressed, plan, layer_batch, device, 2, max(3, repeats // 2),
                        threads)
    return out


def model_markdown(result: dict[str, Any], batch_sizes: Sequence[int] = (1, 64)) -> str:
    """The whole-model comparison as a Markdown table."""
    o, c = result["models"]["original"], result["models"]["compressed"]
    rows = [("parameters", f"{o['params']:,}", f"{c['params']:,}",
             f"{result['params_ratio']:.2f}x fewer"),
            ("FLOPs / example", f"{o['flops']:,}", f"{c['flops']:,}",
             f"{result['flops_ratio']:.2f}x fewer")]
    for b in batch_sizes:
        rows.append((f"latency batch {b} (median ms)", f"{o[f'latency_ms_b{b}']:.3f}",
                     f"{c[f'latency_ms_b{b}']:.3f}", f"{result[f'speedup_b{b}']:.2f}x speed-up"))
        rows.append((f"peak memory batch {b} (MiB)", f"{o[f'peak_bytes_b{b}'] / 2**20:.2f}",
                     f"{c[f'peak_bytes_b{b}'] / 2**20:.2f}",
                     f"{result[f'memory_ratio_b{b}']:.2f}x less"))
    if "accuracy" in o:
        rows.append(("accuracy (%)", f"{100 * o['accuracy']:.2f}", f"{100 * c['accuracy']:.2f}",
                     f"{100 * (c['accuracy'] - o['accuracy']):+.2f} pt"))
    lines = ["| | original | low-rank | change |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {d} | {e} |" for a, b, d, e in rows]
    return "\n".join(lines) + "\n"


def write_extras(run_dir: str | Path, plan: list[LayerPlan], result: dict[str, Any] | None,
                 title: str, batch_sizes: Sequence[int] = (1, 64)) -> list[Path]:
    """``extras/lowrank_model.md`` and ``extras/lowrank_layers.md`` for the report."""
    from frugalnn.evaluation import atomic_writer

    extras = Path(run_dir) / "extras"
    extras.mkdir(parents=True, exist_ok=True)
    written = []
    if result is not None:
        path = extras / "lowrank_model.md"
        with atomic_writer(path) as fh:
            fh.write(f"### {title}: whole model\n\n{model_markdown(result, batch_sizes)}")
        written.append(path)
    path = extras / "lowrank_layers.md"
    batch = next((p.extra.get("latency_batch") for p in plan if "latency_batch" in p.extra), None)
    note = f" (layer latency at batch {batch})" if batch else ""
    with atomic_writer(path) as fh:
        fh.write(f"### {title}: per layer{note}\n\n{plan_markdown(plan)}")
    written.append(path)
    return written
