"""The MoE recipe: one config, one entry point and one pipeline.

* :class:`MoEConfig`: every knob of ``frugalnn moe convert``, with its defaults;
* :func:`moe`: ``model -> MoEModel`` (optional sparsity enforcement, expert
  split, routers, optional routed fine-tuning), the public
  ``frugalnn.moe(model, frugalnn.MoEConfig(experts=8), train_data=...)``;
* :func:`run_moe`: the whole run directory (checkpoint, records on the test
  split and on the validation split, extras with the operating point chosen on
  validation, report last). The CLI command, the demo hook and the benchmark
  scripts call these; none of them repeats the pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from frugalnn.analysis.operating_point import choose_budget, operating_point
from frugalnn.data.splits import seeded_loader
from frugalnn.errors import UserError
from frugalnn.methods.moe.convert import DEFAULT_TAUS, MoEModel
from frugalnn.utils.rundir import check_run_dir

__all__ = ["EXPERT_SPLITS", "MODES", "MoEConfig", "MoERun", "moe",
           "run_moe"]

#: How the neurons of an FFN are grouped into experts (``--expert-split``).
EXPERT_SPLITS = ("kmeans", "coactivation", "sequential")
#: Routing rules of the converted model (``--mode``).
MODES = ("dynamic", "topk")


@dataclass
class MoEConfig:
    """Every setting of the MoE conversion; the defaults are those of ``frugalnn moe convert``.

    Give ``experts`` (per FFN, 8 by default) or ``expert_size`` (neurons per
    expert, with ``experts=None``).
    ``taus`` are the budgets swept in ``dynamic`` mode (1 = every expert = the
    dense model). ``tolerance_points``: the operating point is the cheapest
    budget whose validation accuracy is within this many points of the full
    budget's validation accuracy. ``ffn_pattern`` names the FFN modules
    (``fnmatch`` on module names) of a model whose FFNs are not recognised.
    """

    experts: int | None = 8
    expert_size: int | None = None
    expert_split: str = "kmeans"
    router_epochs: int = 2
    router_lr: float = 1e-3
    router_hidden: int = 128
    sparsify: bool = False
    sparsify_epochs: int = 1
    sparsity_weight: float = 0.2
    sparsify_lr: float = 1e-4
    finetune_epochs: int = 0
    finetune_taus: Sequence[float] = (0.4, 0.5, 0.6)
    finetune_lr: float = 1e-4
    finetune_kd_weight: float = 0.5
    mode: str = "dynamic"
    taus: Sequence[float] = field(default_factory=lambda: list(DEFAULT_TAUS))
    compare_topk: bool = False
    batch_size: int = 64
    latency_repeats: int = 10
    tolerance_points: float = 1.0
    seed: int = 0
    ffn_pattern: str | None = None

    def validate(self) -> MoEConfig:
        """Raise :class:`UserError` (one line) on a setting that cannot work; return self."""
        if (self.experts is None) == (self.expert_size is None):
            raise UserError("give exactly one of experts (per FFN) and expert_size "
                            "(--experts / --expert-size)")
        for name in ("experts", "expert_size", "router_hidden", "batch_size", "latency_repeats"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"{name.replace('_', '-')} must be positive, got {value}")
        if self.expert_split not in EXPERT_SPLITS:
            raise UserError(f"unknown expert split {self.expert_split!r}; use "
                            f"{', '.join(EXPERT_SPLITS)}")
        if self.mode not in MODES:
            raise UserError(f"unknown routing mode {self.mode!r}; use dynamic or topk")
        if min(self.router_epochs, self.sparsify_epochs, self.finetune_epochs) < 0:
            raise UserError("--router-epochs, --sparsify-epochs and --finetune-epochs "
                            "must be >= 0")
        if not self.taus or not all(0.0 <= float(t) <= 1.0 for t in self.taus):
            raise UserError(f"tau values must lie in [0, 1] (1 = every expert), got "
                            f"{list(self.taus)}")
        if not self.finetune_taus or not all(0.0 <= float(t) <= 1.0
                                             for t in self.finetune_taus):
            raise UserError(f"--finetune-taus must be numbers in [0, 1], got "
                            f"{list(self.finetune_taus)}")
        if not 0.0 <= self.finetune_kd_weight <= 1.0:
            raise UserError(f"--finetune-kd-weight must lie in [0, 1], got "
                            f"{self.finetune_kd_weight}")
        if self.finetune_epochs and self.router_epochs == 0:
            raise UserError("--finetune-epochs needs trained routers; set --router-epochs >= 1")
        if self.sparsity_weight < 0:
            raise UserError(f"the sparsity weight must be >= 0, got {self.sparsity_weight}")
        if self.tolerance_points < 0:
            raise UserError(f"the accuracy tolerance must be >= 0 points, got "
                            f"{self.tolerance_points}")
        return self

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["taus"] = [float(t) for t in self.taus]
        out["finetune_taus"] = [float(t) for t in self.finetune_taus]
        return out


def moe(
    model: nn.Module,
    config: MoEConfig | None = None,
    *,
    train_data: Any,
    val_data: Any = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> MoEModel:
    """Convert the FFNs of ``model`` (in place) into mixtures of experts.

    ``train_data`` (a dataset or an iterable of ``(x, y)`` batches) feeds the
    sparsity enforcement, the co-activation split, the routers and the routed
    fine-tuning. The model is returned at full budget, unless ``val_data`` is
    given: then at the operating point chosen on it (the cheapest budget within
    ``config.tolerance_points`` of the full budget's accuracy), recorded in
    ``model.operating_point`` with ``chosen_on: "validation"``.
    """
    from frugalnn.methods.moe.convert import convert_to_moe
    from frugalnn.models.base import require_ffn_sites

    cfg = (config or MoEConfig()).validate()
    model = model.to(device).eval()
    require_ffn_sites(model, "MoE conversion", cfg.ffn_pattern)  # before any fine-tuning
    loader = seeded_loader(train_data, cfg.batch_size, cfg.seed)
    if cfg.sparsify:
        from frugalnn.methods.moe.sparsify import enforce_sparsity

        enforce_sparsity(model, loader, epochs=cfg.sparsify_epochs, lam=cfg.sparsity_weight,
                         lr=cfg.sparsify_lr, device=device, seed=cfg.seed, progress=progress,
                         ffn_pattern=cfg.ffn_pattern)
    converted = convert_to_moe(
        model, num_experts=cfg.experts, expert_size=cfg.expert_size, split=cfg.expert_split,
        loader=loader, router_epochs=cfg.router_epochs, router_lr=cfg.router_lr,
        router_hidden=cfg.router_hidden, mode=cfg.mode, taus=cfg.taus, seed=cfg.seed,
        device=device, progress=progress, ffn_pattern=cfg.ffn_pattern,
    )
    if cfg.finetune_epochs:
        from frugalnn.methods.moe.finetune import finetune_routed

        finetune_routed(
            converted, loader, taus=cfg.finetune_taus, epochs=cfg.finetune_epochs,
            lr=cfg.finetune_lr, kd_weight=cfg.finetune_kd_weight,
            router_epochs=cfg.router_epochs, router_lr=cfg.router_lr, device=device,
            seed=cfg.seed, progress=progress,
        )
    if val_data is not None:
        point = choose_budget(converted, val_data, cfg.tolerance_points,
                              batch_size=cfg.batch_size, device=device)
        converted.set_budget(point["budget"])
        converted.operating_point = point  # type: ignore[assignment]
    return converted.eval()


@dataclass
class MoERun:
    """What :func:`run_moe` produced: the run directory, the converted model, the test
    records, every evaluated run directory and the operating point of each."""

    out: Path
    model: MoEModel
    records: Any
    runs: list[Path]
    points: dict[str, dict[str, Any] | None]


def run_moe(
    model: nn.Module,
    config: MoEConfig,
    splits: Any,
    out: str | Path,
    *,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    progress: bool = False,
    force: bool = False,
    run_config: dict[str, Any] | None = None,
) -> MoERun:
    """Convert, train, save ``out/checkpoint``, evaluate on ``splits.test`` (and
    ``splits.val`` into ``out/validation``), write ``out/extras`` and, last, the report.

    ``splits`` is a :class:`frugalnn.data.splits.Splits`. With ``compare_topk``
    (dynamic mode) top-k routing is evaluated into ``out/topk`` as well.
    ``run_config`` (e.g. the command line) is saved beside the config.
    """
    from frugalnn.evaluation import evaluate_into
    from frugalnn.methods.moe.report import write_extras
    from frugalnn.report import write_run_report
    from frugalnn.train.checkpoint import data_signature, save_checkpoint
    from frugalnn.utils.io import write_json_atomic

    cfg = config.validate()
    out = check_run_dir(out, force)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    converted = moe(model, cfg, train_data=splits.train, device=device, progress=progress)
    saved = {**(run_config or {}), "moe": cfg.to_dict(), "val_split": splits.val_spec}
    out.mkdir(parents=True, exist_ok=True)
    meta_data = {"data": data_signature(splits.info)}
    save_checkpoint(out / "checkpoint", converted, {**meta_data, "config": saved})
    common = {"batch_size": cfg.batch_size, "threads": threads, "device": device,
              "latency_batch_sizes": (1, cfg.batch_size), "latency_repeats": cfg.latency_repeats,
              "force": force, "progress": progress}
    records = evaluate_into(converted, splits.test, out, val_dataset=splits.val,
                            method=f"moe-{cfg.mode}", config=saved, **common)
    runs = [out]
    if cfg.compare_topk and cfg.mode == "dynamic":
        converted.set_mode("topk")
        evaluate_into(converted, splits.test, out / "topk", val_dataset=splits.val,
                      method="moe-topk", config={**saved, "mode": "topk"}, **common)
        converted.set_mode(cfg.mode)
        runs.append(out / "topk")
    points = {str(run): operating_point(run, cfg.tolerance_points) for run in runs}
    write_extras(converted, runs, out / "extras", points=list(points.values()))
    if points[str(out)] is not None:
        write_json_atomic(out / "extras" / "operating_point.json", points[str(out)])
    for run in runs:
        write_run_report(run)
    return MoERun(out, converted, records, runs, points)
