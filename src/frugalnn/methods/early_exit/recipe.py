"""The early-exit recipe: one config, one entry point and one pipeline.

* :class:`EarlyExitConfig`: every knob of ``frugalnn early-exit train``, with
  its defaults (SDN heads by default; ``cascade`` + ``ensemble`` is
  Zero-Time-Waste, :meth:`EarlyExitConfig.ztw`);
* :func:`early_exit`: ``backbone -> EarlyExitModel`` (attach heads, train them
  as configured, fit the ensembles), the public
  ``frugalnn.early_exit(model, frugalnn.EarlyExitConfig(...), train_data=...)``;
* :func:`run_early_exit`: the whole run directory (config, checkpoint, records
  on the test split and on the validation split, extras whose thresholds are
  chosen on validation, report last). The CLI command, the demo hook and the
  benchmark scripts call these; none of them repeats the pipeline.

Where the data goes: heads (and the ZTW ensemble's hold-out) train on the
training split; the final ensemble is fitted on a seeded part
(``final_ensemble_holdout``) of the validation split; the rest of the
validation split chooses the operating points; the test split only scores them.
The validation split is held out only if the backbone was trained without it
(``frugalnn train`` with the same ``--val-fraction`` and ``--seed`` does that).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from frugalnn.errors import UserError
from frugalnn.methods.early_exit.model import EarlyExitModel, attach_heads
from frugalnn.methods.early_exit.policies import POLICIES
from frugalnn.utils.batch import split_batch, to_device
from frugalnn.utils.rundir import check_run_dir

__all__ = ["MODES", "EarlyExitConfig", "EarlyExitRun", "augmented_view", "early_exit",
           "run_early_exit", "train_from_caches", "validation_parts"]

#: How the exits are trained (``--mode``): heads on the frozen backbone, or jointly.
MODES = ("heads", "joint")
HEAD_KINDS = ("auto", "pool", "cls", "mean", "linear")


@dataclass
class EarlyExitConfig:
    """Every setting of an early-exit run; the defaults are those of ``frugalnn early-exit train``.

    Heads: ``positions`` (``"every"``, ``"every:K"`` or block indices), ``head``
    kind, ``pool_size``; on a model that is not a frugalnn staged model,
    ``exit_after`` names the exit points (a pattern like ``"layer1.*"`` or
    module names; ``None``: the blocks are found automatically, see
    :func:`frugalnn.models.adapters.staged.as_staged`). Variant: SDN by
    default; ``cascade`` feeds each head the previous head's logits and
    ``ensemble`` adds the geometric ensemble
    (both: Zero-Time-Waste); ``final_ensemble`` replaces the last exit by a
    weighted geometric mean of every exit, fitted on ``final_ensemble_holdout``
    of the validation split. Training: ``mode`` (``heads``: frozen backbone;
    ``joint``: backbone and heads, SDN losses, optional distillation
    ``kd_weight`` / ``kd_temperature`` and ``final_weight``), ``epochs``,
    ``lr`` (``None``: 2e-3 for heads, 0.01 joint), ``batch_size``,
    ``augment`` (joint mode), ``augment_passes`` (heads mode: extra
    crop-and-flip passes over the training images), the ZTW ensemble's
    ``ensemble_epochs`` and its training hold-out ``ensemble_holdout`` or
    cross-fitting ``ensemble_folds``. Evaluation: ``policy``, ``budgets``
    (thresholds swept; ``None``: the policy's), ``offline_sweep`` (one
    all-exits pass instead of real inference, no wall clock), latency settings.
    """

    positions: str | Sequence[int] = "every"
    exit_after: str | Sequence[str] | None = None
    head: str = "auto"
    pool_size: int = 4
    cascade: bool = False
    ensemble: bool = False
    final_ensemble: bool = False
    final_ensemble_holdout: float = 0.5
    policy: str = "maxprob"
    mode: str = "heads"
    epochs: int = 20
    lr: float | None = None
    batch_size: int = 128
    ensemble_epochs: int = 30
    ensemble_holdout: float = 0.2
    ensemble_folds: int = 0
    augment: bool = False
    augment_passes: int = 0
    kd_weight: float = 0.0
    kd_temperature: float = 2.0
    final_weight: float = 1.0
    budgets: Sequence[float] | None = None
    offline_sweep: bool = False
    latency_batch_sizes: Sequence[int] = field(default_factory=lambda: [1, 64])
    latency_repeats: int = 10
    method: str = ""
    seed: int = 0

    @classmethod
    def ztw(cls, **changes: Any) -> EarlyExitConfig:
        """Zero-Time-Waste: cascaded heads and the geometric ensemble."""
        return cls(**{"cascade": True, "ensemble": True, **changes})

    def validate(self) -> EarlyExitConfig:
        """Raise :class:`UserError` (one line) on a setting that cannot work; return self."""
        for name in ("epochs", "batch_size", "ensemble_epochs", "latency_repeats", "pool_size"):
            value = getattr(self, name)
            if value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.head not in HEAD_KINDS:
            raise UserError(f"unknown head {self.head!r}; use {', '.join(HEAD_KINDS)}")
        if self.policy not in POLICIES:
            raise UserError(f"unknown policy {self.policy!r}; use {', '.join(POLICIES)}")
        if self.mode not in MODES:
            raise UserError(f"unknown mode {self.mode!r}; use {', '.join(MODES)}")
        if self.lr is not None and self.lr <= 0:
            raise UserError(f"lr must be positive, got {self.lr}")
        if self.augment and self.mode != "joint":
            raise UserError("--augment applies to --mode joint; heads mode trains on cached "
                            "features of un-augmented images")
        if self.augment_passes < 0:
            raise UserError(f"--augment-passes must be >= 0, got {self.augment_passes}")
        if self.augment_passes and self.mode != "heads":
            raise UserError("--augment-passes applies to --mode heads (joint mode augments "
                            "with --augment)")
        if self.kd_weight and self.mode != "joint":
            raise UserError("--kd-weight applies to --mode joint (heads mode leaves the "
                            "backbone as it is)")
        if not 0.0 <= self.kd_weight <= 1.0:
            raise UserError(f"--kd-weight must lie in [0, 1], got {self.kd_weight}")
        if self.kd_temperature <= 0:
            raise UserError(f"--kd-temperature must be positive, got {self.kd_temperature}")
        if self.final_weight != 1.0 and self.mode != "joint":
            raise UserError("--final-weight applies to --mode joint (heads mode does not "
                            "train the final exit)")
        if self.final_weight <= 0:
            raise UserError(f"--final-weight must be positive, got {self.final_weight}")
        if self.ensemble_folds and (self.ensemble_folds < 2 or not self.ensemble
                                    or self.mode != "heads"):
            raise UserError(f"--ensemble-folds {self.ensemble_folds}: cross-fitting needs "
                            "--ensemble, --mode heads and at least 2 folds (0 turns it off)")
        if not 0.0 < self.final_ensemble_holdout < 1.0:
            raise UserError("--final-ensemble-holdout must lie in (0, 1), got "
                            f"{self.final_ensemble_holdout}")
        if not 0.0 <= self.ensemble_holdout < 1.0:
            raise UserError(f"--ensemble-holdout must lie in [0, 1), got "
                            f"{self.ensemble_holdout}")
        if any(int(b) < 1 for b in self.latency_batch_sizes):
            raise UserError("latency batch sizes must be positive, got "
                            f"{list(self.latency_batch_sizes)}")
        return self

    @property
    def learning_rate(self) -> float:
        """``lr``, or the mode's default (2e-3 heads, 0.01 joint)."""
        return self.lr if self.lr is not None else (2e-3 if self.mode == "heads" else 0.01)

    def method_name(self) -> str:
        """``method``, or a name from the variant (shown in reports)."""
        if self.method:
            return self.method
        name = "early-exit ZTW" if self.cascade else "early-exit SDN"
        return name + (" + final ensemble" if self.final_ensemble else "")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able settings."""
        d = asdict(self)
        for key in ("positions", "exit_after", "budgets", "latency_batch_sizes"):
            if d[key] is not None and not isinstance(d[key], str):
                d[key] = list(d[key])
        return d


@dataclass
class EarlyExitRun:
    """What :func:`run_early_exit` produced: the run directory and its contents."""

    out: Path
    model: EarlyExitModel
    records: Any  # frugalnn.evaluation.EvalRecords on the test split
    numbers: dict[str, Any]  # the extras' figures (report.summary_numbers)
    history: dict[str, Any]
    config: EarlyExitConfig


# -- data ----------------------------------------------------------------------------
def _first_input(dataset: Dataset) -> Any:
    x, _ = split_batch(dataset[0])
    if isinstance(x, dict):
        return {k: torch.as_tensor(v).unsqueeze(0) for k, v in x.items()}
    return x.unsqueeze(0)


def _seeded_parts(dataset: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """A seeded random ``(part, rest)`` split with ``fraction`` of the examples in ``part``."""
    from frugalnn.data.splits import subset

    n = len(dataset)  # type: ignore[arg-type]
    k = int(round(fraction * n))
    if k < 1 or k >= n:
        raise UserError(f"cannot hold out {fraction} of {n} validation examples for the final "
                        "ensemble; use a larger --val-limit / --val-fraction or another "
                        "--final-ensemble-holdout")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7)).tolist()
    return subset(dataset, sorted(order[:k])), subset(dataset, sorted(order[k:]))


def validation_parts(val: Dataset | None, config: EarlyExitConfig
                     ) -> tuple[Dataset | None, Dataset | None]:
    """``(fit, choose)`` parts of the validation split.

    With ``final_ensemble`` a seeded ``final_ensemble_holdout`` of it fits the
    final ensemble and the rest chooses the thresholds; otherwise all of it
    chooses them. The final ensemble needs a validation split: fitted on the
    backbone's own training images it would trust the backbone too much.
    """
    if not config.final_ensemble:
        return None, val
    if val is None:
        raise UserError("--final-ensemble is fitted on part of the validation split; give one "
                        "(--val-fraction > 0)")
    return _seeded_parts(val, config.final_ensemble_holdout, config.seed)


def augmented_view(dataset: Dataset, seed: int) -> Dataset:
    """The same examples in the same order, with seeded crop-and-flip augmentation.

    ``dataset`` is an image dataset with an ``augment`` switch
    (:class:`frugalnn.data.base.ImageArrayDataset`), possibly inside
    ``Subset`` wrappers (splits, limits); the images are shared, not copied.
    """
    if isinstance(dataset, Subset):
        inner = augmented_view(dataset.dataset, seed)
        out = Subset(inner, dataset.indices)
        out.info = getattr(dataset, "info", None)  # type: ignore[attr-defined]
        return out
    if not hasattr(dataset, "augment"):
        raise UserError(f"{type(dataset).__name__} has no augmentation; --augment and "
                        "--augment-passes apply to image datasets")
    view = copy.copy(dataset)
    view.augment, view.seed, view.epoch = True, seed, 0  # type: ignore[attr-defined]
    return view


# -- conversion and training -----------------------------------------------------------
def _attach(model: nn.Module, config: EarlyExitConfig, example: Any) -> EarlyExitModel:
    return attach_heads(model, config.positions, config.head, cascade=config.cascade,
                        policy=config.policy, pool_size=config.pool_size,
                        example_input=example, exit_after=config.exit_after)


def train_from_caches(
    ee: EarlyExitModel, config: EarlyExitConfig, caches: Sequence[Any], *,
    device: str = "cpu", progress: bool = False,
) -> tuple[dict[str, Any], Any]:
    """Heads mode on cached features: train the heads (and the cross-fitted ensemble).

    ``caches``: the plain images' :class:`~frugalnn.methods.early_exit.training.FeatureCache`
    then those of augmented passes over the same images in the same order.
    Returns the training history and the cache the ZTW ensemble is to be
    fitted on (the ``ensemble_holdout`` rows, or every row), for
    :func:`~frugalnn.methods.early_exit.training.train_ensemble`; with
    ``ensemble_folds`` the ensemble is already fitted (``"ensemble"`` in the history).
    """
    from frugalnn.methods.early_exit.training import (
        FeatureCache,
        train_heads,
        train_ztw_crossfit,
    )

    seed, history = config.seed, {}
    ee.freeze_backbone = True
    if config.ensemble and config.ensemble_folds:
        plain_rows = len(caches[0])  # rows of every pass follow the plain images' order
        cache = FeatureCache.concat(list(caches))
        fitted = train_ztw_crossfit(
            ee, cache, folds=config.ensemble_folds,
            groups=torch.arange(len(cache)) % plain_rows, epochs=config.epochs,
            lr=config.learning_rate, batch_size=config.batch_size,
            ensemble_epochs=config.ensemble_epochs, seed=seed, device=device,
            progress=progress)
        return {"heads": fitted["heads"], "ensemble": fitted["ensemble"]}, cache
    if config.ensemble and config.ensemble_holdout > 0:
        # Over-fitted heads look too reliable on their own training rows. One seed
        # holds out the same images in every pass.
        parts = [c.split(config.ensemble_holdout, seed=seed) for c in caches]
        head_cache = FeatureCache.concat([h for h, _ in parts])
        cache = FeatureCache.concat([e for _, e in parts])
        del parts
    else:
        head_cache = cache = FeatureCache.concat(list(caches))
    history["heads"] = train_heads(ee, head_cache, epochs=config.epochs,
                                   lr=config.learning_rate, batch_size=config.batch_size,
                                   seed=seed, device=device, progress=progress)
    return history, cache


def _train_heads_mode(ee: EarlyExitModel, config: EarlyExitConfig, train_data: Dataset,
                      device: str, progress: bool) -> tuple[dict[str, Any], Any]:
    from frugalnn.methods.early_exit.training import cache_augmented_passes, cache_features

    ee.freeze_backbone = True
    cache = cache_features(ee, DataLoader(train_data, batch_size=256), device=device,
                           progress=progress)
    # Every augmented pass lists the same images in the same order as ``cache``.
    caches = [cache, *cache_augmented_passes(
        ee, lambda k: augmented_view(train_data, config.seed + 100 + k),
        config.augment_passes, device=device, progress=progress)]
    del cache
    return train_from_caches(ee, config, caches, device=device, progress=progress)


def _convert_and_train(
    model: nn.Module, config: EarlyExitConfig, train_data: Dataset, val_data: Dataset | None,
    device: str, progress: bool,
) -> tuple[EarlyExitModel, dict[str, Any]]:
    from frugalnn.methods.early_exit.training import (
        cache_features,
        train_ensemble,
        train_final_ensemble,
        train_joint,
    )

    config.validate()
    if config.final_ensemble and val_data is None:
        raise UserError("final_ensemble is fitted on held-out examples; pass val_data")
    torch.manual_seed(config.seed)
    model = model.to(device)
    ee = _attach(model, config, to_device(_first_input(train_data), device))
    history: dict[str, Any] = {}
    cache = None
    if config.mode == "heads":
        history, cache = _train_heads_mode(ee, config, train_data, device, progress)
    else:
        data = augmented_view(train_data, config.seed) if config.augment else train_data
        loader = DataLoader(data, batch_size=config.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(config.seed))
        res = train_joint(ee, loader, epochs=config.epochs, lr=config.learning_rate,
                          seed=config.seed, progress=progress, device=device,
                          kd_weight=config.kd_weight, kd_temperature=config.kd_temperature,
                          final_weight=config.final_weight)
        history["joint"] = res.history
    if config.ensemble and "ensemble" not in history:
        if cache is None:  # joint mode: features of the trained backbone, plain images
            cache = cache_features(ee, DataLoader(train_data, batch_size=256), device=device,
                                   progress=progress)
        history["ensemble"] = train_ensemble(ee, cache, epochs=config.ensemble_epochs,
                                             seed=config.seed, device=device)
    if config.final_ensemble:
        assert val_data is not None
        history["final_ensemble"] = train_final_ensemble(
            ee, DataLoader(val_data, batch_size=256), seed=config.seed, device=device,
            progress=progress)
    ee.eval()
    return ee, history


def early_exit(
    model: nn.Module,
    config: EarlyExitConfig | None = None,
    *,
    train_data: Dataset,
    val_data: Dataset | None = None,
    device: str = "cpu",
    progress: bool = False,
) -> EarlyExitModel:
    """Attach exit heads to ``model`` and train them as ``config`` says.

    ``model``: a frugalnn staged backbone or any classifier
    :func:`~frugalnn.models.adapters.staged.as_staged` can view as one
    (``config.exit_after`` names exit points it does not find itself).

    ``train_data`` yields ``(x, y)`` pairs (heads, joint training, the ZTW
    ensemble); ``val_data`` is needed with ``final_ensemble`` only: held-out
    examples the final ensemble is fitted on. In ``heads`` mode the backbone
    is frozen (give a trained one) and left unchanged. Returns the model in
    eval mode at its full budget; ``set_budget(threshold)`` turns exiting on.
    """
    ee, _ = _convert_and_train(model, config or EarlyExitConfig(), train_data, val_data,
                               device, progress)
    return ee


# -- the run directory -----------------------------------------------------------------
def _trace(ee: EarlyExitModel, dataset: Dataset | None, device: str, progress: bool) -> Any:
    from frugalnn.methods.early_exit.offline import collect_trace

    if dataset is None:
        return None
    return collect_trace(ee, DataLoader(dataset, batch_size=256), device=device,
                         progress=progress)


def run_early_exit(
    model: nn.Module,
    config: EarlyExitConfig,
    splits: Any,
    out: str | Path,
    *,
    device: str = "cpu",
    threads: int | None = None,
    progress: bool = False,
    force: bool = False,
    model_name: str = "",
    run_config: dict[str, Any] | None = None,
    baseline_flops: float | None = None,
    baseline_accuracy: float | None = None,
    report: bool = True,
    reference_model: nn.Module | None = None,
) -> EarlyExitRun:
    """Convert and train ``model``, then write the whole run directory ``out``::

        out/config.json       the settings (``run_config`` with ``early_exit`` = config)
        out/checkpoint/       loadable by ``frugalnn evaluate`` and ``frugalnn.load``
        out/records.csv ...   the threshold sweep on ``splits.test``
        out/validation/       the same sweep on the validation split (chooses thresholds)
        out/extras/           per-exit table, accuracy at 25/50/75 % FLOPs, FLOPs saved
                              within 0.5/1 pt (chosen on validation), plot, JSON
        out/report/           the run's report, written last (it includes the extras)

    ``reference_model`` (the unconverted backbone) is timed beside the run in
    interleaved rounds, for same-run speed-ups.
    ``splits`` is a :class:`frugalnn.data.splits.Splits`. The sweep runs the
    real batched inference (with wall clock) unless ``config.offline_sweep``.
    ``baseline_flops`` / ``baseline_accuracy`` are passed to the evaluation
    (the demo compares with its baseline); ``report=False`` skips ``out/report``.
    """
    from frugalnn.evaluation import VALIDATION_DIR, evaluate_into
    from frugalnn.methods.early_exit.offline import sweep
    from frugalnn.methods.early_exit.report import write_extras
    from frugalnn.train.checkpoint import data_signature, save_checkpoint
    from frugalnn.utils.io import jsonable, write_json_atomic

    config = replace(config).validate()
    out = check_run_dir(out, force)
    fit_ds, choose_ds = validation_parts(splits.val, config)
    ee, history = _convert_and_train(model, config, splits.train, fit_ds, device, progress)
    method = config.method_name()
    settings = jsonable({**(run_config or {}), "early_exit": config.to_dict(),
                         "val_split": getattr(splits, "val_spec", None)})
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "config.json", settings)
    meta_data = {"data": data_signature(splits.info)}
    save_checkpoint(out / "checkpoint", ee, {**meta_data, "method": method, "history": history,
                                             "config": settings})
    test_trace = _trace(ee, splits.test, device, progress)
    val_trace = _trace(ee, choose_ds, device, progress)
    budgets = list(config.budgets) if config.budgets else None
    if config.offline_sweep:
        meta = {"transforms": ee.frugalnn_transforms, "config": settings}
        model_name = model_name or (getattr(ee, "frugalnn_spec", None) or {}).get("name", "")
        records = sweep(test_trace, config.policy, budgets, method=method,
                        model_name=model_name, meta=meta)
        if val_trace is not None:
            val_records = sweep(val_trace, config.policy, budgets, method=method,
                                model_name=model_name, meta={**meta, "split": "validation"})
            val_records.save(out / VALIDATION_DIR, force=force)
            records.meta["validation"] = {"dir": VALIDATION_DIR,
                                          "examples": val_records.meta["examples"]}
        records.save(out, force=force)
    else:
        records = evaluate_into(
            ee, splits.test, out, val_dataset=choose_ds, method=method, batch_size=64,
            budgets=budgets, threads=threads, device=device,
            latency_batch_sizes=[int(b) for b in config.latency_batch_sizes],
            latency_repeats=config.latency_repeats, baseline_flops=baseline_flops,
            baseline_accuracy=baseline_accuracy, config=settings, force=force,
            progress=progress, reference_model=reference_model)
    numbers = write_extras(test_trace, config.policy, out / "extras", title=method,
                           val_trace=val_trace)
    if report:
        from frugalnn.report import write_run_report

        write_run_report(out)
    return EarlyExitRun(out, ee, records, numbers, history, config)
