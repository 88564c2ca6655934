"""The pruning recipe: one config, a model-level entry point and the run pipeline.

Python API::

    import frugalnn

    pruned = frugalnn.prune(model, frugalnn.PruneConfig(target="flops=2", epochs=1),
                            train_data=splits.train, val_data=splits.val)

:func:`prune` removes channels from a copy of ``model`` with torch-pruning
(:mod:`frugalnn.methods.prune.structure`) to the config's budget and, with
training data and ``epochs > 0``, fine-tunes the copy with distillation from
the original. :func:`run_prune` is the whole pipeline of ``frugalnn prune``:
that, then the checkpoint, the evaluation on the test and validation splits
(the original as the baseline), the per-layer channel table in
``extras/prune_model.md`` and, last, the report. This is the baseline a user
would otherwise try, so every other method can be put beside it on one plane.
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
from frugalnn.models.registry import example_batch
from frugalnn.utils.batch import take, to_device

__all__ = ["PruneConfig", "PruneRun", "parse_target", "prune", "prune_with_plan", "run_prune"]


def parse_target(target: str) -> tuple[str, float]:
    """``"flops=2"`` -> ``("flops", 2.0)``; ``"ratio=0.3"`` -> ``("ratio", 0.3)``."""
    kind, _, value = target.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if kind == "flops" and number > 1:
        return kind, number
    if kind == "ratio" and 0 < number < 1:
        return kind, number
    raise UserError(f"pruning target must be flops=X (X > 1, X-fold fewer FLOPs) or ratio=R "
                    f"(0 < R < 1, channels removed per layer), got {target!r}")


@dataclass
class PruneConfig:
    """Every knob of ``frugalnn prune``.

    ``target``: ``flops=X`` (prune until X times fewer MACs, in ``steps``
    increments up to ``max_ratio`` per layer) or ``ratio=R``. ``include`` /
    ``exclude``: fnmatch patterns on the layers whose output channels may go
    (e.g. ``blocks.*.conv1``: only the inner channels of residual blocks, the
    residual stream kept); the classifier always stays. ``importance``:
    ``l2`` or ``l1`` group magnitude. ``global_pruning``: rank channels across
    layers instead of per layer. ``round_to``: keep channel counts multiples
    of it. Fine-tuning: ``epochs`` of SGD (momentum 0.9, cosine) at ``lr`` with
    distillation (``alpha``, ``temperature``) from the unpruned model.
    """

    target: str = "flops=2"
    include: list[str] | None = None
    exclude: list[str] | None = None
    importance: str = "l2"
    global_pruning: bool = False
    steps: int = 100
    max_ratio: float = 0.9
    round_to: int | None = None
    epochs: int = 1
    lr: float = 0.01
    weight_decay: float = 5e-4
    alpha: float = 0.5
    temperature: float = 2.0
    batch_size: int = 64
    latency_batch_sizes: tuple[int, ...] = (1, 64)
    latency_repeats: int = 20
    seed: int = 0

    def validate(self) -> None:
        """Refuse impossible settings with one clear line (:class:`UserError`)."""
        parse_target(self.target)
        if self.importance not in ("l1", "l2"):
            raise UserError(f"unknown importance {self.importance!r}; use l1 or l2")
        if not 0 < self.max_ratio < 1:
            raise UserError(f"--max-ratio must be in (0, 1), got {self.max_ratio}")
        if self.epochs < 0:
            raise UserError(f"--epochs must be >= 0, got {self.epochs}")
        if self.lr <= 0:
            raise UserError(f"--lr must be positive, got {self.lr}")
        if not 0.0 <= self.alpha <= 1.0:
            raise UserError(f"--alpha must be in [0, 1], got {self.alpha}")
        for value, name in ((self.steps, "--steps"), (self.batch_size, "--batch-size"),
                            (self.latency_repeats, "--latency-repeats"),
                            (self.round_to or 1, "--round-to"),
                            *((s, "--latency-batch-sizes") for s in self.latency_batch_sizes)):
            if value < 1:
                raise UserError(f"{name} must be positive, got {value}")

    @property
    def label(self) -> str:
        """The run's method name: ``pruned flops=2``."""
        return f"pruned {self.target}"


@dataclass
class PruneRun:
    """What :func:`run_prune` produced."""

    out: Path
    model: nn.Module
    records: Any
    plan: dict[str, Any] = field(default_factory=dict)
    history: dict[str, Any] = field(default_factory=dict)


def prune_with_plan(
    model: nn.Module, config: PruneConfig, *, train_data: Dataset | None = None,
    val_data: Dataset | None = None, example_input: Any = None,
    device: str | torch.device = "cpu", progress: bool = False,
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """The pruned (and fine-tuned) copy of ``model``, its plan and its training history."""
    from frugalnn.methods.prune.structure import prune_channels
    from frugalnn.train import DistillConfig, fit
    from frugalnn.train.distill import frozen_copy

    config.validate()
    kind, value = parse_target(config.target)
    teacher = model.to(device).eval()
    example = to_device(example_input if example_input is not None
                        else example_batch(model, train_data, val_data), device)
    torch.manual_seed(config.seed)
    student = copy.deepcopy(teacher)
    plan = prune_channels(student, take(example, 1), importance=config.importance,
                          steps=config.steps, max_ratio=config.max_ratio,
                          global_pruning=config.global_pruning, round_to=config.round_to,
                          include=config.include, exclude=config.exclude, **{kind: value})
    history: dict[str, Any] = {}
    if train_data is not None and len(train_data) > 0 and config.epochs > 0:
        val_loader = (None if val_data is None or len(val_data) == 0 else
                      seeded_loader(val_data, config.batch_size, config.seed, shuffle=False))
        res = fit(student, seeded_loader(train_data, config.batch_size, config.seed),
                  epochs=config.epochs, optimizer="sgd", lr=config.lr,
                  weight_decay=config.weight_decay, schedule="cosine", seed=config.seed,
                  teacher=frozen_copy(teacher, device),
                  distill=DistillConfig(alpha=config.alpha, temperature=config.temperature),
                  eval_loader=val_loader, progress=progress, device=device)
        history = {"train": res.history}
    return student.eval(), plan, history


def prune(
    model: nn.Module, config: PruneConfig | None = None, *,
    train_data: Dataset | None = None, val_data: Dataset | None = None,
    example_input: Any = None, device: str | torch.device = "cpu",
    progress: bool = False,
) -> nn.Module:
    """A channel-pruned copy of ``model`` (the original is left as it was), in eval mode.

    Pruned to ``config.target`` with torch-pruning and, with ``train_data``
    and ``config.epochs > 0``, fine-tuned with distillation from ``model``.
    ``example_input`` (one batch) is traced for the dependency graph; by
    default the first training or validation example. It saves and loads like
    any frugalnn model (the ``"prune"`` transformation rebuilds the structure).
    """
    pruned, _, _ = prune_with_plan(model, config or PruneConfig(), train_data=train_data,
                                   val_data=val_data, example_input=example_input,
                                   device=device, progress=progress)
    return pruned


def _write_extras(out: Path, plan: dict[str, Any], totals: dict[str, Any], label: str) -> None:
    from frugalnn.utils.io import write_json_atomic, write_text_atomic

    lines = [f"# {label}", "", "| | original | pruned |", "|---|---:|---:|"]
    for key, name in (("params", "parameters"), ("flops", "FLOPs / example"),
                      ("accuracy", "test accuracy")):
        fmt = "{:.4f}" if key == "accuracy" else "{:,.0f}"
        lines.append(f"| {name} | {fmt.format(totals['original_' + key])} | "
                     f"{fmt.format(totals['pruned_' + key])} |")
    lines += ["", f"FLOPs ratio {totals['flops_ratio']:.2f}x (target {totals['target']}), "
              f"{plan['steps']} torch-pruning steps.", "",
              "| layer | channels before | channels after |", "|---|---:|---:|"]
    after = plan["channels_after"]
    for name, before in plan["channels_before"].items():
        lines.append(f"| {name} | {before} | {after.get(name, '-')} |")
    write_text_atomic(out / "extras" / "prune_model.md", "\n".join(lines) + "\n")
    write_json_atomic(out / "extras" / "prune_model.json", {"totals": totals, "plan": plan})


def run_prune(
    model: nn.Module, config: PruneConfig, splits: Any, out: str | Path, *,
    device: str = "cpu", threads: int | None = None, progress: bool = True,
    force: bool = False, run_config: dict[str, Any] | None = None, report: bool = True,
) -> PruneRun:
    """Prune ``model`` into the run directory ``out``; the one ``frugalnn prune`` pipeline.

    Writes ``config.json``, ``checkpoint/``, the test records with the
    validation records under ``validation/`` (the unpruned model as the
    baseline, its speed-up timed against it in the same rounds),
    ``extras/prune_model.md`` / ``.json`` and, unless ``report=False``, ``report/``.
    """
    from frugalnn.cost.count import flops_per_example
    from frugalnn.evaluation import evaluate_into
    from frugalnn.report import write_run_report
    from frugalnn.train.checkpoint import data_signature, save_checkpoint
    from frugalnn.utils.io import write_json_atomic
    from frugalnn.utils.rundir import prepare_run_dir, run_record

    config.validate()
    out = prepare_run_dir(out, force)
    record = run_record(config, splits, run_config)
    write_json_atomic(out / "config.json", record)
    original = model.to(device).eval()
    example = to_device(example_batch(original, splits.train, splits.test), device)
    student, plan, history = prune_with_plan(original, config, train_data=splits.train,
                                             val_data=splits.val, example_input=example,
                                             device=device, progress=progress)
    meta_data = {"data": data_signature(splits.info)}
    save_checkpoint(out / "checkpoint", student, {**meta_data,
                                                  "method": config.label, "history": history,
                                                  "config": record})
    base_flops = flops_per_example(original, example)
    base_acc = top1_accuracy(original, splits.test, batch_size=config.batch_size, device=device)
    records = evaluate_into(
        student, splits.test, out, val_dataset=splits.val, reference_model=original,
        method=config.label,
        batch_size=config.batch_size, threads=threads, device=device,
        latency_batch_sizes=config.latency_batch_sizes, latency_repeats=config.latency_repeats,
        baseline_flops=base_flops, baseline_accuracy=base_acc, config=record, force=True,
        progress=progress)
    row = records.summary()["budgets"][0]
    totals = {
        "target": config.target,
        "original_params": sum(p.numel() for p in original.parameters()),
        "pruned_params": sum(p.numel() for p in student.parameters()),
        "original_flops": base_flops, "pruned_flops": flops_per_example(student, example),
        "original_accuracy": base_acc, "pruned_accuracy": row["accuracy"],
    }
    totals["flops_ratio"] = totals["original_flops"] / totals["pruned_flops"]
    _write_extras(out, plan, totals, config.label)
    if report:
        write_run_report(out)
    return PruneRun(out, student, records, plan, history)
