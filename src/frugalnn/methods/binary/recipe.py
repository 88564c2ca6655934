"""The binary recipe: one config, a model-level entry point and the run pipeline.

Python API::

    import frugalnn

    small = frugalnn.binarize(model, frugalnn.BinaryConfig(epochs=3),
                              train_data=splits.train, val_data=splits.val)

:func:`binarize` swaps a copy of ``model``'s Conv2d / Linear layers (all but
the first and the last by default) for binary ones, sets their input
thresholds on one training batch, trains the copy with the straight-through
estimator and distillation from the original, and packs the signs one bit
each. :func:`run_binarize` is the whole pipeline of ``frugalnn binary``: that,
then the checkpoint, the evaluation on the test and validation splits, the
per-layer table (bytes, binary operations, the packed kernel's measured time
against the float layer) in ``extras/binary_model.md`` and, last, the report.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from frugalnn.data.splits import seeded_loader
from frugalnn.errors import UserError
from frugalnn.evaluation.loop import top1_accuracy

__all__ = ["BinaryConfig", "BinaryRun", "binarize", "run_binarize"]


@dataclass
class BinaryConfig:
    """Every knob of ``frugalnn binary``.

    ``activations``: binarise the layers' inputs too (XNOR; the packed kernel
    runs) or only the weights. ``word_bits``: the packing word (8, 16, 32, 64);
    every binarised layer's width (in_features, or in_channels x kh x kw) must
    be a multiple of it. ``kernel``: ``auto``, ``c`` or ``numpy``
    (:mod:`frugalnn.methods.binary.kernel`). ``include`` / ``exclude``: fnmatch
    patterns on layer names; ``keep_first_last`` keeps the first and the last
    eligible layer float. Training: ``epochs`` of AdamW at ``lr`` with
    distillation (``alpha``, ``temperature``) from the float model.
    ``layer_repeats``: calls per layer in the layer timing table (0: untimed),
    at ``layer_threads`` threads on ``layer_batch`` test examples.
    """

    activations: bool = True
    word_bits: int = 64
    kernel: str = "auto"
    include: list[str] | None = None
    exclude: list[str] | None = None
    keep_first_last: bool = True
    epochs: int = 3
    lr: float = 1e-3
    weight_decay: float = 0.0
    alpha: float = 0.5
    temperature: float = 2.0
    batch_size: int = 64
    pack: bool = True
    latency_batch_sizes: tuple[int, ...] = (1, 64)
    latency_repeats: int = 20
    layer_repeats: int = 20
    layer_threads: int = 1
    layer_batch: int = 64
    seed: int = 0

    def validate(self) -> None:
        """Refuse impossible settings with one clear line (:class:`UserError`)."""
        from frugalnn.methods.binary.kernel import KERNELS, WORD_BITS

        if self.word_bits not in WORD_BITS:
            raise UserError(f"--word-bits must be one of {sorted(WORD_BITS)}, got "
                            f"{self.word_bits}")
        if self.kernel not in KERNELS:
            raise UserError(f"unknown binary kernel {self.kernel!r}; use one of "
                            f"{', '.join(KERNELS)}")
        if self.epochs < 0:
            raise UserError(f"--epochs must be >= 0, got {self.epochs}")
        if self.lr <= 0:
            raise UserError(f"--lr must be positive, got {self.lr}")
        if not 0.0 <= self.alpha <= 1.0:
            raise UserError(f"--alpha must be in [0, 1], got {self.alpha}")
        if self.layer_repeats < 0:
            raise UserError(f"--layer-repeats must be >= 0, got {self.layer_repeats}")
        for value, name in ((self.batch_size, "--batch-size"),
                            (self.latency_repeats, "--latency-repeats"),
                            (self.layer_threads, "--layer-threads"),
                            (self.layer_batch, "--layer-batch"),
                            *((s, "--latency-batch-sizes") for s in self.latency_batch_sizes)):
            if value < 1:
                raise UserError(f"{name} must be positive, got {value}")

    @property
    def label(self) -> str:
        """The run's method name: ``binary xnor`` or ``binary weights``."""
        return "binary xnor" if self.activations else "binary weights"


@dataclass
class BinaryRun:
    """What :func:`run_binarize` produced."""

    out: Path
    model: nn.Module
    records: Any
    layers: list[dict[str, Any]] = field(default_factory=list)
    totals: dict[str, Any] = field(default_factory=dict)


def binarize(
    model: nn.Module, config: BinaryConfig | None = None, *,
    train_data: Dataset | None = None, val_data: Dataset | None = None,
    device: str | torch.device = "cpu", progress: bool = False,
) -> nn.Module:
    """A binary copy of ``model`` (the original is left as it was), in eval mode.

    With ``train_data`` the thresholds are set on its first batch and, for
    ``config.epochs > 0``, the copy is trained with distillation from
    ``model`` (``val_data`` is scored after every epoch). With ``config.pack``
    the signs are packed one bit each. It saves and loads like any frugalnn
    model (the ``"binary"`` transformation rebuilds the packed layers).
    """
    from frugalnn.methods.binary.convert import (
        binarize_layers,
        calibrate_thresholds,
        eligible_layers,
        pack_model,
    )
    from frugalnn.train import DistillConfig, fit
    from frugalnn.train.distill import frozen_copy

    config = config or BinaryConfig()
    config.validate()
    teacher = model.to(device).eval()
    names = eligible_layers(teacher, include=config.include, exclude=config.exclude,
                            keep_first_last=config.keep_first_last)
    torch.manual_seed(config.seed)
    student = binarize_layers(copy.deepcopy(teacher), names, activations=config.activations,
                              word_bits=config.word_bits, kernel=config.kernel).to(device)
    if train_data is not None and len(train_data) > 0:
        loader = seeded_loader(train_data, config.batch_size, config.seed, shuffle=True)
        calibrate_thresholds(student, next(iter(loader)), device)
        if config.epochs > 0:
            val_loader = (None if val_data is None or len(val_data) == 0 else
                          seeded_loader(val_data, config.batch_size, config.seed, shuffle=False))
            fit(student, loader, epochs=config.epochs, optimizer="adamw", lr=config.lr,
                weight_decay=config.weight_decay, schedule="cosine", seed=config.seed,
                teacher=frozen_copy(teacher, device),
                distill=DistillConfig(alpha=config.alpha, temperature=config.temperature),
                eval_loader=val_loader, progress=progress, device=device)
    if config.pack:
        pack_model(student)
    return student.eval()


def run_binarize(
    model: nn.Module, config: BinaryConfig, splits: Any, out: str | Path, *,
    device: str = "cpu", threads: int | None = None, progress: bool = True,
    force: bool = False, run_config: dict[str, Any] | None = None, report: bool = True,
) -> BinaryRun:
    """Binarise ``model`` into the run directory ``out``; the one ``frugalnn binary`` pipeline.

    Writes ``config.json``, ``checkpoint/`` (packed), the test records with the
    validation records under ``validation/`` (float ``model`` as the baseline, its
    speed-up timed against it in the same rounds),
    ``extras/binary_model.md`` and, unless ``report=False``, ``report/``.
    """
    from frugalnn.cost.count import flops_per_example
    from frugalnn.evaluation import evaluate_into
    from frugalnn.methods.binary.kernel import resolve_kernel
    from frugalnn.methods.binary.measure import layer_table, model_bytes, write_extras
    from frugalnn.report import write_run_report
    from frugalnn.train.checkpoint import data_signature, save_checkpoint
    from frugalnn.utils.batch import batch_len, example_inputs, take, to_device
    from frugalnn.utils.io import write_json_atomic
    from frugalnn.utils.rundir import prepare_run_dir, run_record

    config.validate()
    out = prepare_run_dir(out, force)
    record = run_record(config, splits, run_config)
    write_json_atomic(out / "config.json", record)
    original = model.to(device).eval()
    student = binarize(original, config, train_data=splits.train, val_data=splits.val,
                       device=device, progress=progress)
    meta_data = {"data": data_signature(splits.info)}
    save_checkpoint(out / "checkpoint", student, {**meta_data,
                                                  "method": config.label, "config": record})
    x = to_device(example_inputs(splits.test, config.layer_batch), device)
    base_flops = flops_per_example(original, take(x, 1))
    base_acc = top1_accuracy(original, splits.test, batch_size=config.batch_size, device=device)
    records = evaluate_into(
        student, splits.test, out, val_dataset=splits.val, reference_model=original,
        method=config.label,
        batch_size=config.batch_size, threads=threads, device=device,
        latency_batch_sizes=config.latency_batch_sizes, latency_repeats=config.latency_repeats,
        baseline_flops=base_flops, baseline_accuracy=base_acc, config=record, force=True,
        progress=progress)
    rows = layer_table(original, student, x, repeats=config.layer_repeats,
                       threads=config.layer_threads)
    binary_float_flops = base_flops - sum(r["float_flops"] for r in rows)
    totals = {
        "float_bytes": model_bytes(original), "binary_bytes": model_bytes(student),
        "float_flops": base_flops, "binary_float_flops": binary_float_flops,
        "bops": sum(r["bops"] for r in rows), "float_accuracy": base_acc,
        "binary_accuracy": float(records.summary()["budgets"][0]["accuracy"]),
        "kernel": resolve_kernel(config.kernel, config.word_bits),
        "repeats": config.layer_repeats, "threads": config.layer_threads,
        "batch": batch_len(x),
    }
    write_extras(out, rows, totals, config.label)
    write_json_atomic(out / "extras" / "binary_model.json", {"totals": totals, "layers": rows})
    if report:
        write_run_report(out)
    return BinaryRun(out, student, records, rows, totals)
