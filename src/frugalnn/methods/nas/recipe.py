"""The NAS recipe: one config, one search, one pipeline per run directory.

Python API::

    import frugalnn

    splits = frugalnn.load_splits("digits")
    model = frugalnn.nas(frugalnn.NASConfig(latency_target_ms=0.5, epochs=4),
                         train_data=splits.train, val_data=splits.val)

:func:`nas` searches (weight steps on the training data, architecture steps on
the validation data), derives the most probable network and retrains it from
scratch (``retrain_epochs``; 0 keeps the supernet's weights of that path).
:func:`run_nas` is the whole pipeline of ``frugalnn nas search``: latency
table, search, ``arch.json`` / ``search.json`` / ``extras/``, retraining,
evaluation on the test split (and the validation split) and, last, the report.
The architecture is chosen on the validation split only; the test split only
scores the chosen network. The CLI, the demo hook and the benchmark call
these functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from frugalnn.errors import UserError
from frugalnn.methods.nas.latency import LatencyModel, LatencyTable
from frugalnn.methods.nas.search import SearchConfig, SearchResult
from frugalnn.methods.nas.space import SearchSpace
from frugalnn.methods.nas.supernet import Supernet

__all__ = [
    "NASConfig",
    "NASRun",
    "NASSearch",
    "check_target",
    "latency_table",
    "nas",
    "run_nas",
    "search_architecture",
    "derived_model",
    "retrain_arch",
    "search_space",
    "with_target",
]


@dataclass
class NASConfig:
    """Every knob of ``frugalnn nas search``, with the command's defaults.

    ``latency_target_ms`` is required for a search. ``space`` holds
    :class:`~frugalnn.methods.nas.space.SearchSpace` fields (widths, stages...;
    missing ones are sized for the data), ``candidates`` the candidate ops.
    ``table`` is the latency table file (default: the per-device cache);
    ``latency_batch``, ``threads``, ``repeats``, ``rounds`` and ``calibrate``
    set how it is timed. ``retrain_epochs=None`` retrains for ``epochs``; 0
    skips retraining. ``arch_fraction`` is used only when no validation data is
    given: that share of the training data is then carved out (seeded) for the
    architecture steps.
    """

    latency_target_ms: float | None = None
    epochs: int = 10
    warmup_epochs: int = 2
    weight_lr: float = 0.05
    arch_lr: float = 0.01
    arch_every: int = 1
    latency_loss: str = "mul"
    beta: float = 0.6
    log_unit_ms: float | None = None
    lam: float = 0.1
    prune_threshold: float = 0.02
    retrain_epochs: int | None = None
    batch_size: int = 64
    arch_fraction: float = 0.2
    space: dict[str, Any] = field(default_factory=dict)
    candidates: list[str] | None = None
    table: str | None = None
    latency_batch: int = 1
    threads: int = 1
    repeats: int = 30
    rounds: int = 3
    calibrate: int = 10
    seed: int = 0

    def search_config(self) -> SearchConfig:
        """The search loop's hyper-parameters."""
        if self.latency_target_ms is None:
            raise UserError("a NAS search needs a latency target (--latency-target MS)")
        return SearchConfig(
            latency_target_ms=self.latency_target_ms, epochs=self.epochs,
            warmup_epochs=self.warmup_epochs, weight_lr=self.weight_lr, arch_lr=self.arch_lr,
            arch_every=self.arch_every, loss=self.latency_loss, beta=self.beta, lam=self.lam,
            prune_threshold=self.prune_threshold, log_unit_ms=self.log_unit_ms, seed=self.seed)

    def validate(self) -> None:
        """Refuse impossible settings with one clear line (:class:`UserError`)."""
        if self.latency_target_ms is not None:  # a latency table alone needs none
            if not math.isfinite(self.latency_target_ms):
                raise UserError("--latency-target must be a positive number of milliseconds")
            self.search_config().validate()
        if self.batch_size < 1:
            raise UserError("--batch-size must be >= 1")
        if self.retrain_epochs is not None and self.retrain_epochs < 0:
            raise UserError(f"--retrain-epochs must be >= 0, got {self.retrain_epochs}")
        if min(self.threads, self.latency_batch, self.repeats, self.rounds) < 1:
            raise UserError("--threads, --latency-batch, --repeats and --rounds must be >= 1")
        if self.calibrate < 0:
            raise UserError(f"--calibrate must be >= 0, got {self.calibrate}")
        if not 0.0 < self.arch_fraction < 1.0:
            raise UserError(f"arch_fraction must be in (0, 1), got {self.arch_fraction}")

    @property
    def epochs_to_retrain(self) -> int:
        return self.epochs if self.retrain_epochs is None else self.retrain_epochs


@dataclass
class NASSearch:
    """One finished search: the space, its latency table, the supernet and the result."""

    space: SearchSpace
    table: LatencyTable
    supernet: Supernet
    result: SearchResult
    config: NASConfig

    @property
    def arch(self) -> dict[str, Any]:
        """The found architecture, for ``create_model("nas_net", arch=...)``."""
        return {"space": self.space.to_dict(), "ops": list(self.result.ops)}


@dataclass
class NASRun:
    """What :func:`run_nas` produced."""

    out: Path
    search: NASSearch
    model: nn.Module | None = None
    records: Any = None
    measured_ms: float | None = None


# -- the steps ----------------------------------------------------------------------------


def search_space(config: NASConfig, input_shape: tuple[int, ...] | None = None,
                 num_classes: int | None = None) -> SearchSpace:
    """The search space of ``config.space`` / ``config.candidates``, with the fields it
    leaves out sized for ``(C, H, W)`` inputs and ``num_classes`` when given."""
    kw: dict[str, Any] = dict(config.space or {})
    if config.candidates:
        kw["candidates"] = list(config.candidates)
    if input_shape is not None:
        c, h, _ = input_shape
        kw.setdefault("in_channels", c)
        kw.setdefault("input_size", h)
        if h <= 12:
            base = SearchSpace.for_input(tuple(input_shape), num_classes or 10).to_dict()
            for key in ("stages", "stem_channels", "first_channels", "head_channels"):
                kw.setdefault(key, base[key])
    if num_classes is not None:
        kw.setdefault("num_classes", num_classes)
    return SearchSpace.from_dict(kw)


def latency_table(config: NASConfig, space: SearchSpace, device: str | torch.device = "cpu",
                  progress: bool = False) -> LatencyTable:
    """Time (or load from its cache) every candidate op of ``space`` on ``device``."""
    from frugalnn.methods.nas.latency import build_latency_table

    return build_latency_table(space, device, batch_size=config.latency_batch,
                               threads=config.threads, repeats=config.repeats,
                               rounds=config.rounds,
                               path=Path(config.table) if config.table else None,
                               calibrate=config.calibrate, seed=config.seed,
                               progress=progress)


def check_target(config: NASConfig, space: SearchSpace, table: LatencyTable,
                 device: str | torch.device = "cpu") -> None:
    """Refuse a latency target below the cheapest architecture of the space."""
    cheap = LatencyModel(space, table).cheapest()[1]
    target = config.search_config().latency_target_ms
    if target < cheap:
        raise UserError(f"latency target {target:.3g} ms is below the cheapest architecture "
                        f"in this space ({cheap:.3g} ms on {device}); raise --latency-target")


def _data_shape(data: Any, config: NASConfig) -> tuple[tuple[int, ...], int]:
    info = getattr(data, "info", None)
    if info is not None:
        if info.task != "classification" or len(info.input_shape) != 3:
            raise UserError("NAS needs an image classification dataset ((C, H, W) inputs), not "
                            f"a {info.task} dataset of shape {tuple(info.input_shape)}")
        return tuple(info.input_shape), int(info.num_classes)
    x = data[0][0]
    if "num_classes" not in config.space:
        raise UserError("the data carries no class count; set NASConfig.space['num_classes']")
    return tuple(x.shape), int(config.space["num_classes"])


def _arch_split(config: NASConfig, train_data: Dataset,
                val_data: Dataset | None) -> tuple[Dataset, Dataset]:
    """(weight data, architecture data): the validation split when given, else a
    seeded ``arch_fraction`` of the training data (never test data)."""
    if val_data is not None:
        return train_data, val_data
    from frugalnn.data.splits import carve_validation, subset

    weights, arch = carve_validation(len(train_data), config.arch_fraction,  # type: ignore[arg-type]
                                     config.seed)
    return subset(train_data, weights), subset(train_data, arch)


def search_architecture(
    config: NASConfig, train_data: Dataset, val_data: Dataset | None = None, *,
    space: SearchSpace | None = None, table: LatencyTable | None = None,
    device: str | torch.device = "cpu", progress: bool = False,
) -> NASSearch:
    """Search: weight steps on ``train_data``, architecture steps on ``val_data``.

    ``space`` and ``table`` default to :func:`search_space` (sized for the data)
    and :func:`latency_table` on ``device``.
    """
    from frugalnn.methods.nas.latency import resolve_device
    from frugalnn.methods.nas.pipeline import search

    config.validate()
    cfg = config.search_config()
    dev = resolve_device(str(device))
    if space is None:
        space = search_space(config, *_data_shape(train_data, config))
    if table is None:
        table = latency_table(config, space, dev, progress)
    check_target(config, space, table, dev)
    weights, arch = _arch_split(config, train_data, val_data)
    supernet, result = search(space, table, weights, arch, cfg, batch_size=config.batch_size,
                              device=dev, progress=progress)
    return NASSearch(space, table, supernet, result, config)


def retrain_arch(arch: dict[str, Any], config: NASConfig, train_data: Dataset, *,
                 device: str | torch.device = "cpu", run_dir: Path | None = None,
                 progress: bool = False) -> nn.Module:
    """``create_model("nas_net", arch=arch)`` trained from scratch on ``train_data`` for
    ``config``'s retraining epochs (ProxylessNAS retrains; nothing is inherited)."""
    from frugalnn.methods.nas.pipeline import retrain

    return retrain(arch, train_data, epochs=config.epochs_to_retrain,
                   batch_size=config.batch_size, lr=config.weight_lr, seed=config.seed,
                   device=device, run_dir=run_dir, progress=progress)


def derived_model(found: NASSearch, train_data: Dataset, *, device: str | torch.device = "cpu",
                  run_dir: Path | None = None, progress: bool = False) -> nn.Module:
    """The found network: retrained from scratch for ``retrain_epochs`` (ProxylessNAS),
    or with the supernet's weights of its path when that is 0."""
    from frugalnn.methods.nas.derive import extract_network

    if found.config.epochs_to_retrain == 0:
        return extract_network(found.supernet, found.result.ops).eval()
    return retrain_arch(found.arch, found.config, train_data, device=device, run_dir=run_dir,
                        progress=progress)


def nas(config: NASConfig, *, train_data: Dataset, val_data: Dataset | None = None,
        device: str | torch.device = "cpu", progress: bool = False) -> nn.Module:
    """Search a network for ``config.latency_target_ms`` on ``device``, derive it and
    retrain it (``retrain_epochs``); the architecture is chosen on ``val_data``
    (or a seeded ``arch_fraction`` of ``train_data`` when none is given)."""
    found = search_architecture(config, train_data, val_data, device=device, progress=progress)
    return derived_model(found, train_data, device=device, progress=progress)


def _start(out: str | Path, force: bool) -> Path:
    from frugalnn.utils.rundir import open_run  # --force replaces only frugalnn runs

    path = Path(out)
    open_run(path, force=force, empty_ok=False, command="nas",
             taken=f"{path} exists; pass --force to replace it or choose another --out")
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_nas(
    config: NASConfig, splits: Any, out: str | Path, *, device: str = "cpu",
    progress: bool = True, force: bool = False, run_config: dict[str, Any] | None = None,
) -> NASRun:
    """The one ``nas search`` pipeline into the run directory ``out``.

    Weight steps on ``splits.train``, architecture steps on ``splits.val`` (a
    validation split is required: the test split never chooses anything);
    then ``arch.json``, ``search.json``, ``supernet/``, ``extras/``; with
    retraining epochs, the retrained ``checkpoint/``, its test and validation
    records (with predicted and measured latency in the config) and, last, the
    report. The run directory is created only once the target is known to be
    reachable.
    """
    from frugalnn.evaluation import evaluate_into
    from frugalnn.methods.nas.latency import measure_network_ms, resolve_device
    from frugalnn.methods.nas.pipeline import write_search_extras
    from frugalnn.report import write_run_report
    from frugalnn.utils.io import write_json_atomic
    from frugalnn.utils.rundir import run_record

    config.validate()
    if splits.val is None:
        raise UserError("nas search chooses the architecture on a validation split; "
                        "pass --val-fraction > 0")
    dev = resolve_device(device)
    space = search_space(config, *_data_shape(splits.train, config))
    table = latency_table(config, space, dev, progress)
    check_target(config, space, table, dev)
    run_dir = _start(out, force)
    record = run_record(config, splits, run_config, architecture_chosen_on="validation")
    write_json_atomic(run_dir / "config.json", record)
    found = search_architecture(config, splits.train, splits.val, space=space, table=table,
                                device=dev, progress=progress)
    write_search_extras(run_dir, found.supernet, found.result, config.search_config(), table)
    run = NASRun(run_dir, found)
    if config.epochs_to_retrain > 0:
        model = derived_model(found, splits.train, device=dev, run_dir=run_dir,
                              progress=progress)
        run.model = model
        run.measured_ms = measure_network_ms(model, space, device=dev,
                                             batch_size=config.latency_batch,
                                             threads=config.threads, repeats=config.repeats)
        run.records = evaluate_into(
            model, splits.test, run_dir, val_dataset=splits.val, method="nas",
            batch_size=config.batch_size, threads=config.threads, device=dev,
            config={**record, "predicted_ms": found.result.predicted_ms,
                    "measured_ms": run.measured_ms}, force=True, progress=progress)
        write_run_report(run_dir)
    return run


def with_target(config: NASConfig, latency_target_ms: float) -> NASConfig:
    """A copy of ``config`` searching for another latency target."""
    return replace(config, latency_target_ms=latency_target_ms)
