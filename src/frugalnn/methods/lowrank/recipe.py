"""The low-rank recipe: one config per pipeline, one pipeline per run directory.

Python API::

    import frugalnn

    cheaper = frugalnn.lowrank(model, frugalnn.LowRankConfig(method="tucker",
                                                             target="flops=2"),
                               train_data=splits.train, val_data=splits.val)

:func:`lowrank` factorises a copy of ``model`` (the original is left as it
was) and, when the config asks for fine-tuning epochs and training data is
given, fine-tunes it with distillation from the original. :func:`run_lowrank`
is the whole pipeline of ``frugalnn lowrank compress``: compress, fine-tune,
save the checkpoint, evaluate on the test split (and the validation split,
where operating points are chosen), write the per-layer and whole-model
tables to ``extras/`` and, last, the run's report. :func:`run_nmf` is the
same for ``frugalnn lowrank nmf`` (NMF token mixing in place of attention,
trained on the training split). The CLI, the demo hook and the benchmark
scripts call these functions; nothing else composes the steps.
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
from frugalnn.models.registry import example_batch
from frugalnn.utils.rundir import prepare_run_dir, run_record

__all__ = [
    "LowRankConfig",
    "LowRankRun",
    "NMFConfig",
    "compare_into",
    "compress",
    "lowrank",
    "run_lowrank",
    "run_nmf",
]

METHODS = ("svd", "cp", "tucker", "tt", "svd-nl", "tucker-nl", "tt-nl")
OPTIMIZERS = ("sgd", "adamw")

#: What the config, the extras and the report say of a model compressed from random weights.
RANDOM_WEIGHTS_WARNING = (
    "WARNING: compressed from RANDOMLY INITIALISED weights (no trained checkpoint was given; "
    "--random-init). Ranks, costs and timings are those of the architecture; accuracies "
    "say nothing about compressing a trained model."
)


def _positive(value: int | None, name: str) -> None:
    if value is not None and value < 1:
        raise UserError(f"{name} must be positive, got {value}")


@dataclass
class LowRankConfig:
    """Every knob of ``frugalnn lowrank compress``, with the command's defaults.

    ``method``: ``svd`` (Linear and 1x1 conv), ``cp``, ``tucker``, ``tt`` (KxK
    convs); ``svd-nl``, ``tucker-nl``, ``tt-nl``: the same chains with a learnable
    nonlinearity between factors (:mod:`frugalnn.methods.lowrank.nonlinear`).
    ``target``: ``rank=R``, ``flops=X``, ``params=X``, ``model-flops=X``,
    ``model-params=X``, ``energy=E``, ``vbmf`` or ``latency=F`` (see
    :mod:`frugalnn.methods.lowrank.rank`).
    ``layer_targets``: ``"PATTERN:TARGET"`` overrides (first match wins).
    ``lr=None`` means 0.001 for ``cp`` (whose factors diverged at 0.01) and 0.01
    otherwise. ``latency_batch`` is the batch size of the layer timing table of
    a ``latency=F`` target; ``latency_batch_sizes`` / ``latency_repeats`` are
    those of the run's evaluation and comparison tables. ``layerwise_steps``:
    Adam steps (at ``layerwise_lr``) fitting each factorised layer to its original
    on training batches before fine-tuning; ``None`` means 200 for the nonlinear
    methods and 0 for the linear ones. ``data_aware`` (``svd`` only): ranks and factors
    from the layers' outputs on the first ``calibration_examples`` training examples
    (:mod:`frugalnn.methods.lowrank.calibrate`) instead of from the weights alone.
    ``gain_examples`` > 0 with a ``model-*`` target (any method): the allocation weighs
    each layer by its output gain measured on that many training examples (the first
    ones; :mod:`frugalnn.methods.lowrank.sensitivity`; opt-in, as it costs one forward
    pass per layer; ``docs/lowrank.md`` has what it gains on MiniLM, EfficientNet-Lite0
    and ResNet-56).
    """

    method: str = "tucker"
    target: str = "flops=2"
    depthwise: str = "separable"
    include: list[str] | None = None
    exclude: list[str] | None = None
    layer_targets: list[str] | None = None
    rank_multiple: int = 1
    finetune_epochs: int = 1
    layerwise_steps: int | None = None
    layerwise_lr: float = 1e-3
    lr: float | None = None
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    alpha: float = 0.5
    temperature: float = 2.0
    batch_size: int = 64
    latency_batch: int = 1
    latency_batch_sizes: tuple[int, ...] = (1, 64)
    latency_repeats: int = 20
    data_aware: bool = False
    calibration_examples: int = 512
    gain_examples: int = 0
    seed: int = 0

    def validate(self) -> None:
        """Refuse impossible settings with one clear line (:class:`UserError`)."""
        from frugalnn.methods.lowrank.rank import MODEL_KINDS, Criterion

        if self.method not in METHODS:
            raise UserError(f"unknown low-rank method {self.method!r}; use one of "
                            f"{', '.join(METHODS)}")
        kind = Criterion.parse(self.target).kind
        if self.depthwise not in ("separable", "kxk"):
            raise UserError(f"depthwise must be 'separable' or 'kxk', got {self.depthwise!r}")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"unknown optimizer {self.optimizer!r}; use sgd or adamw")
        if self.finetune_epochs < 0:
            raise UserError(f"--finetune-epochs must be >= 0, got {self.finetune_epochs}")
        if self.lr is not None and self.lr <= 0:
            raise UserError(f"--lr must be positive, got {self.lr}")
        if self.layerwise_steps is not None and self.layerwise_steps < 0:
            raise UserError(f"--layerwise-steps must be >= 0, got {self.layerwise_steps}")
        if self.layerwise_lr <= 0:
            raise UserError(f"--layerwise-lr must be positive, got {self.layerwise_lr}")
        if not 0.0 <= self.alpha <= 1.0:
            raise UserError(f"--alpha must be in [0, 1], got {self.alpha}")
        if self.data_aware and self.method != "svd":
            raise UserError(f"--data-aware works with --method svd, not {self.method!r}")
        if self.gain_examples < 0:
            raise UserError(f"--gain-examples must be >= 0, got {self.gain_examples}")
        if self.gain_examples > 0 and kind not in MODEL_KINDS:
            raise UserError("--gain-examples weighs a whole-model allocation: it needs a "
                            f"model-flops / model-params target, not {self.target!r}")
        for value, name in ((self.calibration_examples, "--calibration-examples"),
                            (self.rank_multiple, "--rank-multiple"),
                            (self.batch_size, "--batch-size"),
                            (self.latency_batch, "--latency-batch"),
                            (self.latency_repeats, "--latency-repeats")):
            _positive(value, name)
        for size in self.latency_batch_sizes:
            _positive(size, "--latency-batch-sizes")

    @property
    def finetune_lr(self) -> float:
        """The fine-tuning learning rate (``lr``, or the method's default)."""
        if self.lr is not None:
            return self.lr
        return 1e-3 if self.method == "cp" else 1e-2

    @property
    def layerwise(self) -> int:
        """Layer-wise distillation steps (``layerwise_steps``, or the method's default)."""
        from frugalnn.methods.lowrank.nonlinear import DEFAULT_LAYERWISE_STEPS, is_nonlinear

        if self.layerwise_steps is not None:
            return self.layerwise_steps
        return DEFAULT_LAYERWISE_STEPS if is_nonlinear(self.method) else 0

    @property
    def label(self) -> str:
        """The run's method name on the report: ``lowrank tt flops=2``."""
        return f"lowrank {self.method} {self.target}"


@dataclass
class NMFConfig:
    """Every knob of ``frugalnn lowrank nmf``: NMF token mixing in place of attention."""

    rank: int = 8
    steps: int = 6
    eval_steps: int | None = None
    heads: int = 1
    variant: str = "nmf"
    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 0.05
    batch_size: int = 64
    latency_batch_sizes: tuple[int, ...] = (1, 64)
    latency_repeats: int = 20
    data_aware: bool = False
    calibration_examples: int = 512
    seed: int = 0

    def validate(self) -> None:
        if self.variant not in ("nmf", "projective", "ntf"):
            raise UserError(f"unknown NMF variant {self.variant!r}; use nmf, projective or ntf")
        if self.epochs < 0:
            raise UserError(f"--epochs must be >= 0, got {self.epochs}")
        for value, name in ((self.rank, "--rank"), (self.steps, "--steps"),
                            (self.eval_steps, "--eval-steps"), (self.heads, "--heads"),
                            (self.batch_size, "--batch-size"),
                            (self.latency_repeats, "--latency-repeats")):
            _positive(value, name)
        for size in self.latency_batch_sizes:
            _positive(size, "--latency-batch-sizes")

    @property
    def label(self) -> str:
        return f"NMF mixing ({self.variant})"


@dataclass
class LowRankRun:
    """What :func:`run_lowrank` / :func:`run_nmf` produced: the run directory and its parts."""

    out: Path
    model: nn.Module
    records: Any
    plan: list[Any] = field(default_factory=list)
    history: dict[str, Any] = field(default_factory=dict)
    comparison: dict[str, Any] | None = None


# -- the steps ----------------------------------------------------------------------------


def compress(
    model: nn.Module, config: LowRankConfig, *, train_data: Dataset | None = None,
    val_data: Dataset | None = None, example: Any = None,
    device: str | torch.device = "cpu", threads: int | None = None, progress: bool = False,
) -> tuple[nn.Module, list[Any], dict[str, Any]]:
    """The factorised (and, with data and ``finetune_epochs``, fine-tuned) copy of
    ``model`` with its per-layer plan and its training history."""
    from frugalnn.methods.lowrank.pipeline import compress_and_finetune

    config.validate()
    if example is None:
        example = example_batch(model, train_data, val_data)
    tune = config.finetune_epochs > 0 and train_data is not None
    train_loader = (seeded_loader(train_data, config.batch_size, config.seed, shuffle=True)
                    if train_data is not None and (tune or config.layerwise) else None)
    val_loader = (seeded_loader(val_data, config.batch_size, config.seed, shuffle=False)
                  if tune and val_data is not None else None)

    def first_examples(n: int, batch_size: int, without_data: str) -> Any:
        """A loader of the first ``n`` training examples, in order (``without_data``: the
        error when there are none)."""
        if train_data is None:
            raise UserError(without_data)
        from torch.utils.data import Subset

        rows = range(min(n, len(train_data)))
        return seeded_loader(Subset(train_data, rows), batch_size, config.seed, shuffle=False)

    calibration = gain_data = None
    if config.data_aware:  # the calibration examples also give the gains
        calibration = first_examples(
            config.calibration_examples, config.batch_size,
            "--data-aware needs training data to calibrate on (pass --data / train_data=)")
    elif config.gain_examples > 0:
        gain_data = first_examples(
            config.gain_examples, config.gain_examples,
            "--gain-examples measures each layer on training examples; pass --data / "
            "train_data=")
    torch.manual_seed(config.seed)
    return compress_and_finetune(
        model.eval(), config.method, config.target, example, train_loader,
        finetune_epochs=config.finetune_epochs if tune else 0, lr=config.finetune_lr,
        optimizer=config.optimizer, weight_decay=config.weight_decay, alpha=config.alpha,
        temperature=config.temperature, depthwise=config.depthwise, include=config.include,
        exclude=config.exclude,
        latency={"batch_size": config.latency_batch, "device": str(device), "threads": threads},
        layer_targets=config.layer_targets, rank_multiple=config.rank_multiple,
        device=device, seed=config.seed, progress=progress, eval_loader=val_loader,
        layerwise={"steps": config.layerwise, "lr": config.layerwise_lr},
        calibration=calibration, gain_examples=config.gain_examples, gain_data=gain_data,
    )


def lowrank(
    model: nn.Module, config: LowRankConfig | None = None, *, train_data: Dataset | None = None,
    val_data: Dataset | None = None, example_input: Any = None,
    device: str | torch.device = "cpu", progress: bool = False,
) -> nn.Module:
    """A low-rank copy of ``model`` (the original is left as it was).

    The eligible layers are factorised with ``config.method`` to
    ``config.target``; with ``train_data`` and ``config.finetune_epochs > 0``
    the copy is fine-tuned with distillation from the original (``val_data``
    is scored after every epoch). ``example_input`` (one batch) sets the
    shapes the ranks are planned for; by default the first training or
    validation example, or a random input of the registry model's shape.
    The result has the ``rank_fraction`` knob and saves and loads like any
    frugalnn model.
    """
    config = config or LowRankConfig()
    model, _, _ = compress(model, config, train_data=train_data, val_data=val_data,
                           example=example_input, device=device, progress=progress)
    return model


def compare_into(
    out: str | Path, original: nn.Module, compressed: nn.Module, plan: list[Any],
    example: torch.Tensor, config: LowRankConfig, *, test_data: Dataset | None = None,
    label: str | None = None, device: str | torch.device = "cpu", threads: int | None = None,
    repeats: int | None = None,
) -> dict[str, Any]:
    """Measure ``original`` against ``compressed`` (parameters, FLOPs, latency at
    ``config.latency_batch_sizes``, peak memory, test accuracy; per layer too)
    and write ``extras/lowrank_model.md`` and ``extras/lowrank_layers.md``."""
    from frugalnn.methods.lowrank.pipeline import compare, write_extras

    sizes = tuple(config.latency_batch_sizes) or (1,)
    loader = (None if test_data is None
              else seeded_loader(test_data, 256, config.seed, shuffle=False))
    result = compare(original, compressed, plan, example, batch_sizes=sizes, device=device,
                     repeats=repeats or config.latency_repeats, threads=threads,
                     eval_loader=loader, layer_batch=sizes[-1])
    write_extras(out, plan, result, label or config.label, sizes)
    return result


def _warn_random_weights(out: Path) -> None:
    from frugalnn.utils.io import write_text_atomic

    write_text_atomic(out / "extras" / "lowrank_random_weights.md",
                      f"### {RANDOM_WEIGHTS_WARNING}\n")


def run_lowrank(
    model: nn.Module, config: LowRankConfig, splits: Any, out: str | Path, *,
    device: str = "cpu", threads: int | None = None, progress: bool = True,
    force: bool = False, random_init: bool = False, run_config: dict[str, Any] | None = None,
) -> LowRankRun:
    """Compress ``model`` into the run directory ``out``; the one ``lowrank compress`` pipeline.

    Writes ``config.json`` (``run_config``, the recipe config and the splits),
    ``checkpoint/``, the test records with the validation records under
    ``validation/``, ``extras/lowrank_model.md`` and ``extras/lowrank_layers.md``
    (the original against the compressed model, measured in this process) and,
    last, ``report/``. ``random_init`` says that ``model`` was never trained: the
    config, the method name and an extras note say so in capitals.
    """
    from frugalnn.cost.count import flops_per_example
    from frugalnn.evaluation import evaluate_into
    from frugalnn.evaluation.loop import top1_accuracy
    from frugalnn.report import write_run_report
    from frugalnn.train.checkpoint import data_signature, save_checkpoint
    from frugalnn.utils.batch import to_device
    from frugalnn.utils.io import write_json_atomic

    config.validate()
    out = prepare_run_dir(out, force)
    weights = RANDOM_WEIGHTS_WARNING if random_init else None
    record = run_record(config, splits, run_config, **({"weights": weights} if weights else {}))
    write_json_atomic(out / "config.json", record)
    original = model.to(device).eval()
    example = example_batch(original, splits.train)
    student, plan, history = compress(original, config, train_data=splits.train,
                                      val_data=splits.val, example=example, device=device,
                                      threads=threads, progress=progress)
    method = config.label + (" (RANDOM WEIGHTS)" if random_init else "")
    x = to_device(example, device)
    base_acc = top1_accuracy(original, splits.test, device=device)
    base_flops = flops_per_example(original, x)
    meta_data = {"data": data_signature(splits.info)}
    save_checkpoint(out / "checkpoint", student, {**meta_data, "method": method, "history": history,
                                                  "config": record})
    records = evaluate_into(
        student, splits.test, out, val_dataset=splits.val, method=method,
        batch_size=config.batch_size, threads=threads, device=device,
        latency_batch_sizes=config.latency_batch_sizes,
        latency_repeats=config.latency_repeats, baseline_flops=base_flops,
        baseline_accuracy=base_acc, config=record, force=True, progress=progress)
    result = compare_into(out, original, student, plan, x, config, test_data=splits.test,
                          label=method, device=device, threads=threads)
    if random_init:
        _warn_random_weights(out)
    write_run_report(out)
    return LowRankRun(out, student, records, plan, history, result)


def run_nmf(
    model: nn.Module, config: NMFConfig, splits: Any, out: str | Path, *,
    device: str = "cpu", threads: int | None = None, progress: bool = True,
    force: bool = False, run_config: dict[str, Any] | None = None,
    baseline_run: str | Path | None = None, report: bool = True,
) -> LowRankRun:
    """NMF token mixing in place of ``model``'s attention, trained on ``splits.train``
    for ``config.epochs``, saved, evaluated (test and validation) and reported.

    ``baseline_run`` (an evaluated run of the attention model) is what the
    evaluation compares with (the demo passes its softmax ViT);
    ``report=False`` skips ``out/report``."""
    from frugalnn.evaluation import evaluate_into
    from frugalnn.methods.lowrank.nmf import replace_attention
    from frugalnn.report import write_run_report
    from frugalnn.train import fit
    from frugalnn.train.checkpoint import data_signature, save_checkpoint
    from frugalnn.utils.io import write_json_atomic

    config.validate()
    out = prepare_run_dir(out, force)
    record = run_record(config, splits, run_config)
    write_json_atomic(out / "config.json", record)
    torch.manual_seed(config.seed)
    model = replace_attention(copy.deepcopy(model), rank=config.rank, steps=config.steps,
                              eval_steps=config.eval_steps, heads=config.heads,
                              variant=config.variant, seed=config.seed).to(device)
    history: dict[str, Any] = {}
    if config.epochs:
        res = fit(model, seeded_loader(splits.train, config.batch_size, config.seed, shuffle=True),
                  epochs=config.epochs, optimizer="adamw", lr=config.lr,
                  weight_decay=config.weight_decay, schedule="cosine", seed=config.seed,
                  progress=progress, device=device)
        history = {"train": res.history}
    model.eval()
    meta_data = {"data": data_signature(splits.info)}
    save_checkpoint(out / "checkpoint", model, {**meta_data,
                                                "method": config.label, "history": history,
                                                "config": record})
    records = evaluate_into(
        model, splits.test, out, val_dataset=splits.val, method=config.label,
        batch_size=config.batch_size, threads=threads, device=device,
        latency_batch_sizes=config.latency_batch_sizes,
        latency_repeats=config.latency_repeats, baseline_run=baseline_run, config=record,
        force=True, progress=progress)
    if report:
        write_run_report(out)
    return LowRankRun(out, model, records, [], history, None)
