"""The int8 recipe: one config, one entry point, one pipeline per run directory.

Python API::

    import frugalnn

    q = frugalnn.quantize(model, frugalnn.QuantConfig(mode="static"),
                          calibration_data=splits.train, val_data=splits.val)

:func:`quantize` returns an int8 copy of ``model`` (the original is left as
it was): ``dynamic`` (int8 Linear weights, activations quantised per batch),
``static`` (calibrated on ``calibration_data``: per-channel int8 weights, int8
activations between layers) or ``weight_only`` (int8 Linear weights, float
activations); see :mod:`frugalnn.methods.quant.convert`. With ``qat_epochs``
and ``train_data``, the static model is fine-tuned with fake quantisation and
distillation from the float model; ``qat_if_drop_pt`` makes that fine-tuning
conditional on the post-training model losing more than that many points of
validation accuracy (so the decision is taken on held-out data).
:func:`run_quant` is the whole pipeline of ``frugalnn quant``: quantise, save
the checkpoint, evaluate on the test and validation splits, write
``extras/quant_model.md`` (float against int8: parameters and FLOPs by
precision, size in bytes, latency on the int8 runtime, accuracy) and, last,
the run's report. The CLI, the demo hook and the benchmark scripts call these
functions.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from frugalnn.errors import UserError
from frugalnn.methods.quant.convert import BACKENDS, MODES, OBSERVERS

__all__ = ["QuantConfig", "QuantRun", "accuracy", "calibrate", "compare_into", "quantize",
           "quantize_with_info", "run_quant"]


@dataclass
class QuantConfig:
    """Every knob of ``frugalnn quant``, with the command's defaults.

    ``mode``: ``dynamic``, ``static`` or ``weight_only``. ``backend``: the
    quantised engine (``x86``, ``fbgemm``, ``onednn``, ``qnnpack``).
    ``observer`` (static): activation range observer, ``histogram`` (minimises
    the quantisation error), ``minmax`` or ``moving_average``; ``per_channel``:
    one weight scale per output channel. ``reduce_range``: activations in 7
    bits (``True``) or 8 (``False``); ``None`` picks 8 bits unless an x86 / fbgemm
    engine runs on a CPU without VNNI, whose 16-bit intermediate sums would
    saturate. ``calibration_size``: training
    examples (a seeded random subset) run through the observers.
    ``qat_epochs``: quantisation-aware fine-tuning epochs (static mode) with
    distillation weight ``alpha`` at ``temperature``; ``qat_if_drop_pt``: only
    fine-tune when post-training quantisation loses more than this many points
    of validation accuracy (``None``: always, when ``qat_epochs > 0``).
    ``embeddings``: ``"uint8"`` stores every ``nn.Embedding`` table in 8 bits
    per value (per-row float16 scale and offset), in any mode; ``None`` keeps
    them float.
    """

    mode: str = "dynamic"
    backend: str = "x86"
    observer: str = "histogram"
    per_channel: bool = True
    reduce_range: bool | None = None
    calibration_size: int = 512
    qat_epochs: int = 0
    qat_if_drop_pt: float | None = None
    lr: float = 1e-4
    alpha: float = 0.5
    temperature: float = 2.0
    batch_size: int = 64
    latency_batch_sizes: tuple[int, ...] = (1, 64)
    latency_repeats: int = 20
    embeddings: str | None = None
    seed: int = 0

    def validate(self) -> None:
        """Refuse impossible settings with one clear line (:class:`UserError`)."""
        from frugalnn.methods.quant.convert import check_backend

        if self.mode not in MODES:
            raise UserError(f"unknown quantisation mode {self.mode!r}; use one of "
                            f"{', '.join(MODES)}")
        if self.backend not in BACKENDS:
            raise UserError(f"unknown int8 backend {self.backend!r}; use one of "
                            f"{', '.join(BACKENDS)}")
        check_backend(self.backend)
        if self.observer not in OBSERVERS:
            raise UserError(f"unknown observer {self.observer!r}; use one of "
                            f"{', '.join(OBSERVERS)}")
        if self.embeddings not in (None, "uint8"):
            raise UserError(f"embeddings must be 'uint8' or unset, got {self.embeddings!r}")
        for value, name in ((self.calibration_size, "--calibration-size"),
                            (self.batch_size, "--batch-size"),
                            (self.latency_repeats, "--latency-repeats")):
            if value < 1:
                raise UserError(f"{name} must be positive, got {value}")
        for size in self.latency_batch_sizes:
            if size < 1:
                raise UserError(f"--latency-batch-sizes must be positive, got {size}")
        if self.qat_epochs < 0:
            raise UserError(f"--qat-epochs must be >= 0, got {self.qat_epochs}")
        if self.qat_epochs and self.mode != "static":
            raise UserError("quantisation-aware fine-tuning (--qat-epochs) needs mode static")
        if self.lr <= 0:
            raise UserError(f"--lr must be positive, got {self.lr}")
        if not 0.0 <= self.alpha <= 1.0:
            raise UserError(f"--alpha must be in [0, 1], got {self.alpha}")

    @property
    def label(self) -> str:
        """The run's method name on the report: ``int8 static (x86)``."""
        qat = f" + QAT {self.qat_epochs} ep" if self.qat_epochs else ""
        emb = " + uint8 embeddings" if self.embeddings else ""
        return f"int8 {self.mode.replace('_', '-')} ({self.backend}){qat}{emb}"


@dataclass
class QuantRun:
    """What :func:`run_quant` produced: the run directory and its parts."""

    out: Path
    model: nn.Module
    records: Any
    info: dict[str, Any] = field(default_factory=dict)
    comparison: dict[str, Any] | None = None


# -- the steps ----------------------------------------------------------------------------


def _check_cpu(device: str | torch.device) -> None:
    if torch.device(device).type != "cpu":
        raise UserError(f"int8 models run on the CPU quantised kernels; got device {device!r} "
                        "(pass --device cpu)")


def _loader(data: Any, batch_size: int, seed: int, shuffle: bool, limit: int | None) -> Any:
    from torch.utils.data import Dataset

    from frugalnn.data.splits import random_subset, seeded_loader

    if isinstance(data, Dataset) and limit is not None and len(data) > limit:
        data = random_subset(data, limit, seed)
    return seeded_loader(data, batch_size, seed, shuffle=shuffle)


def calibrate(model: nn.Module, data: Any, *, batch_size: int = 64, limit: int | None = 512,
              seed: int = 0) -> int:
    """Run up to ``limit`` examples of ``data`` (a seeded random subset) through the
    observers of a prepared ``model``; return how many. No data: one clear line."""
    from frugalnn.utils.batch import batch_len, inputs_of

    if data is None or (hasattr(data, "__len__") and len(data) == 0):
        raise UserError("static int8 quantisation needs calibration data; pass a non-empty "
                        "calibration_data (the training split)")
    seen = 0
    model.eval()
    with torch.no_grad():
        for batch in _loader(data, batch_size, seed, False, limit):
            x = inputs_of(batch)
            model(x)
            seen += batch_len(x)
            if limit is not None and seen >= limit:
                break
    if seen == 0:
        raise UserError("static int8 quantisation needs calibration data; the data gave no "
                        "batches")
    return seen


def accuracy(model: nn.Module, data: Any, batch_size: int = 256) -> float | None:
    """Top-1 accuracy in percent of ``model`` on ``(x, y)`` data (``None`` when empty), on
    the device of the model's parameters."""
    from frugalnn.evaluation.loop import top1_accuracy

    if data is None or len(data) == 0:
        return None
    # A float model may sit on a GPU; an int8 one (no float parameters) runs on the CPU.
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return 100.0 * top1_accuracy(model, data, batch_size=batch_size, device=device)


def _qat(prepared: nn.Module, teacher: nn.Module, data: Any, config: QuantConfig,
         progress: bool) -> list[float]:
    """Fine-tune a fake-quantised model: ``(1 - alpha) * CE + alpha * KD(teacher)``."""
    import torch.nn.functional as F

    from frugalnn.train.distill import kd_loss
    from frugalnn.utils.batch import logits_of, split_batch

    torch.manual_seed(config.seed)
    opt = torch.optim.SGD(prepared.parameters(), lr=config.lr, momentum=0.9)
    losses: list[float] = []
    for epoch in range(config.qat_epochs):
        prepared.train()
        total, n = 0.0, 0
        for batch in _loader(data, config.batch_size, config.seed + epoch, True, None):
            x, y = split_batch(batch)
            out = logits_of(prepared(x))
            with torch.no_grad():
                target = logits_of(teacher(x))
            loss = ((1 - config.alpha) * F.cross_entropy(out, y)
                    + config.alpha * kd_loss(out, target, config.temperature))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(y)
            n += len(y)
        losses.append(total / max(n, 1))
        if progress:
            print(f"  QAT epoch {epoch + 1}/{config.qat_epochs}: loss {losses[-1]:.4f}")
    return losses


def _static(model: nn.Module, config: QuantConfig, calibration_data: Any, qat: bool,
            train_data: Any, teacher: nn.Module, progress: bool) -> tuple[nn.Module, list[str],
                                                                          dict[str, Any]]:
    from frugalnn.methods.quant.convert import (
        convert_static,
        prepare_static,
        quantize_embeddings,
        resolve_reduce_range,
    )

    work = copy.deepcopy(model)
    if config.embeddings == "uint8":
        work = quantize_embeddings(work)
    prepared, targets = prepare_static(
        work, backend=config.backend, observer=config.observer, per_channel=config.per_channel,
        qat=qat, reduce_range=resolve_reduce_range(config.reduce_range, config.backend))
    info: dict[str, Any] = {"targets": targets}
    info["calibration_examples"] = calibrate(prepared, calibration_data,
                                             batch_size=config.batch_size,
                                             limit=config.calibration_size, seed=config.seed)
    if qat:
        info["qat_loss"] = _qat(prepared, teacher, train_data, config, progress)
    return convert_static(prepared), targets, info


def quantize_with_info(
    model: nn.Module, config: QuantConfig, *, calibration_data: Any = None,
    train_data: Any = None, val_data: Any = None, progress: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """:func:`quantize`, also returning what was decided: the quantised subtrees, the
    calibration examples, the validation accuracies that chose (or skipped) QAT."""
    from frugalnn.methods.quant.convert import apply_int8, finish_int8, resolve_reduce_range

    config.validate()
    float_model = model.eval()
    history = list(getattr(model, "frugalnn_transforms", []))
    reduce = resolve_reduce_range(config.reduce_range, config.backend)
    if config.mode != "static":
        return apply_int8(copy.deepcopy(float_model), mode=config.mode, backend=config.backend,
                          reduce_range=reduce, embeddings=config.embeddings), {
            "mode": config.mode, "reduce_range": reduce}
    calib = calibration_data if calibration_data is not None else train_data
    qmodel, targets, info = _static(float_model, config, calib, False, None, float_model,
                                    progress)
    info.update({"mode": "static", "reduce_range": reduce})
    if config.qat_epochs:
        if train_data is None or len(train_data) == 0:
            raise UserError("quantisation-aware fine-tuning needs training data "
                            "(train_data); pass it or set qat_epochs=0")
        run_qat = True
        if config.qat_if_drop_pt is not None:
            if val_data is None or len(val_data) == 0:
                raise UserError("qat_if_drop_pt decides on validation accuracy; pass val_data")
            base, ptq = accuracy(float_model, val_data), accuracy(qmodel, val_data)
            info["validation"] = {"float": base, "ptq": ptq}
            run_qat = base - ptq > config.qat_if_drop_pt
        info["qat"] = run_qat
        if run_qat:
            qmodel, targets, qat_info = _static(float_model, config, calib, True, train_data,
                                                float_model, progress)
            info.update({k: v for k, v in qat_info.items() if k != "targets"})
    qmodel = finish_int8(qmodel, history, mode="static", backend=config.backend,
                         observer=config.observer, per_channel=config.per_channel,
                         targets=targets, reduce_range=reduce, embeddings=config.embeddings)
    return qmodel, info


def quantize(
    model: nn.Module, config: QuantConfig | None = None, *, calibration_data: Any = None,
    train_data: Any = None, val_data: Any = None, progress: bool = False,
) -> nn.Module:
    """An int8 copy of ``model`` (the original is left as it was).

    ``config.mode`` picks dynamic, static or weight-only int8 (see
    :class:`QuantConfig`); static mode calibrates on ``calibration_data``
    (default ``train_data``) and, with ``config.qat_epochs``, fine-tunes on
    ``train_data`` with fake quantisation and distillation from ``model``.
    The result runs on the CPU int8 kernels of ``config.backend``, is measured
    by :func:`frugalnn.measure` (parameters, bytes and FLOPs by precision) and
    saves and loads like any frugalnn model.
    """
    qmodel, _ = quantize_with_info(model, config or QuantConfig(),
                                   calibration_data=calibration_data, train_data=train_data,
                                   val_data=val_data, progress=progress)
    return qmodel


# -- measuring float against int8 ---------------------------------------------------------


def _batch_of(data: Any, size: int) -> Any:
    """``size`` inputs of ``data`` collated into one batch (repeating it if it is smaller):
    a tensor, or a dict of tensors for Hugging Face style examples."""
    from torch.utils.data import default_collate

    from frugalnn.utils.batch import inputs_of

    if data is None or len(data) == 0:
        raise UserError("no examples to measure the models on")
    return inputs_of(default_collate([data[i % len(data)] for i in range(size)]))


def _latency(model: nn.Module, x: Any, repeats: int, threads: int | None) -> Any:
    from functools import partial

    from frugalnn.cost.latency import measure_latency
    from frugalnn.utils.batch import batch_len, call_model

    return measure_latency(partial(call_model, model), x, warmup=3, repeats=repeats,
                           threads=threads, device="cpu", batch_size=batch_len(x))


def compare_into(
    out: str | Path, original: nn.Module, quantized: nn.Module, data: Any,
    config: QuantConfig, *, test_data: Any = None, val_data: Any = None,
    threads: int | None = None, label: str | None = None,
) -> dict[str, Any]:
    """Measure ``original`` against ``quantized`` and write ``extras/quant_model.md`` and
    ``extras/quant_model.json``: parameters and FLOPs per example by precision, model size
    in bytes, latency (median ms per batch) on the int8 runtime at each of
    ``config.latency_batch_sizes``, and test / validation accuracy."""
    from frugalnn.cost.count import format_bytes, format_count, measure
    from frugalnn.utils.io import write_json_atomic, write_text_atomic

    out = Path(out)
    x1 = _batch_of(data, 1)
    rows: dict[str, Any] = {}
    for name, model in (("float", original), ("int8", quantized)):
        cost = measure(model, x1, depth=0)
        row: dict[str, Any] = {
            "params": cost.params, "params_by_precision": cost.params_by_precision,
            "flops_per_example": cost.flops_per_example,
            "flops_by_precision": cost.flops_by_precision, "model_bytes": cost.model_bytes,
            "latency_ms": {}, "test_accuracy": accuracy(model, test_data),
            "validation_accuracy": accuracy(model, val_data)}
        for size in config.latency_batch_sizes:
            rec = _latency(model, _batch_of(data, size), config.latency_repeats, threads)
            row["latency_ms"][str(size)] = rec.median_ms
        rows[name] = row
    f, q = rows["float"], rows["int8"]
    result = {"label": label or config.label, "engine": torch.backends.quantized.engine,
              "threads": threads or torch.get_num_threads(), "float": f, "int8": q,
              "size_ratio": f["model_bytes"] / max(q["model_bytes"], 1),
              "speedup": {k: f["latency_ms"][k] / q["latency_ms"][k] for k in q["latency_ms"]}}
    write_json_atomic(out / "extras" / "quant_model.json", result)

    def acc(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    def prec(d: dict[str, Any], scale: float = 1.0) -> str:
        return ", ".join(f"{k} {format_count(v / scale)}" for k, v in sorted(d.items()) if v)

    lines = [f"## {result['label']}: float against int8",
             "",
             f"int8 engine: `{result['engine']}`; latency is the median of "
             f"{config.latency_repeats} timed calls on {result['threads']} thread(s), measured "
             "in this process on the runtime each model really runs on (PyTorch eager CPU "
             "kernels: float aten ops, int8 `quantized::` ops).",
             "",
             "| model | params (by precision) | FLOPs/example (by precision) | size | "
             + " | ".join(f"ms @ batch {k}" for k in f["latency_ms"])
             + " | test acc % | val acc % |",
             "|---|---|---|---|" + "---|" * len(f["latency_ms"]) + "---|---|"]
    for name, row in rows.items():
        lat = " | ".join(f"{v:.2f}" for v in row["latency_ms"].values())
        lines.append(f"| {name} | {prec(row['params_by_precision'])} | "
                     f"{prec(row['flops_by_precision'])} | {format_bytes(row['model_bytes'])} | "
                     f"{lat} | {acc(row['test_accuracy'])} | {acc(row['validation_accuracy'])} |")
    speed = ", ".join(f"{v:.2f}x at batch {k}" for k, v in result["speedup"].items())
    lines += ["", f"int8 is {result['size_ratio']:.2f}x smaller; faster: {speed}.", ""]
    write_text_atomic(out / "extras" / "quant_model.md", "\n".join(lines))
    return result


# -- the run ------------------------------------------------------------------------------


def run_quant(
    model: nn.Module, config: QuantConfig, splits: Any, out: str | Path, *,
    device: str = "cpu", threads: int | None = None, progress: bool = True,
    force: bool = False, run_config: dict[str, Any] | None = None,
    baseline_run: str | Path | None = None, report: bool = True,
) -> QuantRun:
    """Quantise ``model`` into the run directory ``out``; the one ``frugalnn quant`` pipeline.

    Calibrates on ``splits.train`` (static mode; a seeded random subset of
    ``config.calibration_size`` examples), fine-tunes on it when QAT is asked
    for (and, with ``qat_if_drop_pt``, chosen on ``splits.val``), then writes
    ``config.json``, ``checkpoint/``, the test records with the validation
    records under ``validation/``, ``extras/quant_model.md`` and, last,
    ``report/`` (``report=False`` skips it). ``baseline_run`` (an evaluated run
    of the float model) is what the evaluation compares with; without it, the
    float model's test accuracy and FLOPs measured here are.
    """
    from frugalnn.cost.count import flops_per_example
    from frugalnn.evaluation import evaluate_into
    from frugalnn.report import write_run_report
    from frugalnn.train.checkpoint import data_signature, save_checkpoint
    from frugalnn.utils.io import write_json_atomic
    from frugalnn.utils.rundir import prepare_run_dir, run_record

    config.validate()
    _check_cpu(device)
    out = prepare_run_dir(out, force)
    record = run_record(config, splits, run_config)
    write_json_atomic(out / "config.json", record)
    original = model.to("cpu").eval()
    qmodel, info = quantize_with_info(original, config, calibration_data=splits.train,
                                      train_data=splits.train, val_data=splits.val,
                                      progress=progress)
    record["quantisation"] = info
    write_json_atomic(out / "config.json", record)
    meta_data = {"data": data_signature(splits.info)}
    save_checkpoint(out / "checkpoint", qmodel, {**meta_data,
                                                 "method": config.label, "config": record})
    baseline: dict[str, Any] = {}
    if baseline_run is None:
        baseline = {"baseline_flops": flops_per_example(original, _batch_of(splits.test, 1)),
                    "baseline_accuracy": (accuracy(original, splits.test) or 0.0) / 100.0}
    records = evaluate_into(
        qmodel, splits.test, out, val_dataset=splits.val, method=config.label,
        batch_size=config.batch_size, threads=threads, device="cpu",
        latency_batch_sizes=config.latency_batch_sizes,
        latency_repeats=config.latency_repeats, baseline_run=baseline_run, config=record,
        force=True, progress=progress, **baseline)
    comparison = compare_into(out, original, qmodel, splits.test, config,
                              test_data=splits.test, val_data=splits.val, threads=threads)
    if report:
        write_run_report(out)
    return QuantRun(out, qmodel, records, info, comparison)
