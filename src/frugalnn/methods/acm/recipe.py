"""The ACM recipe: one config, one entry point and one pipeline.

* :class:`ACMConfig`: every knob of ``frugalnn acm convert``, with its defaults;
* :func:`acm`: ``model -> ACMModel`` (FFNs become learners + a gate, then the
  three training stages), the public
  ``frugalnn.acm(model, frugalnn.ACMConfig(learners=4), train_data=...)``;
* :func:`run_acm`: the whole run directory (checkpoint, records on the test
  split and on the validation split, compute maps and the operating point
  chosen on validation in ``extras/``, report last). The CLI command, the demo
  hook and the benchmark script call these; none of them repeats the pipeline.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from frugalnn.analysis.operating_point import choose_budget, operating_point
from frugalnn.data.splits import seeded_loader
from frugalnn.errors import UserError
from frugalnn.methods.acm.convert import DEFAULT_QS, ACMModel
from frugalnn.methods.acm.training import ACMTrainConfig
from frugalnn.utils.rundir import check_run_dir

__all__ = ["ACMConfig", "ACMRun", "acm", "run_acm"]


@dataclass
class ACMConfig:
    """Every setting of the ACM conversion; the defaults are those of ``frugalnn acm convert``.

    ``qs`` are the budgets swept (1 = every learner). ``tolerance_points``: the
    operating point is the cheapest budget whose validation accuracy is within
    this many points of the full budget's validation accuracy. ``ffn_pattern``
    names the FFN modules (``fnmatch`` on module names) of a model whose FFNs
    are not recognised.
    """

    learners: int = 4
    gate_hidden: int | None = None
    sites: Sequence[str] | None = None
    distill_epochs: int = 2
    gate_epochs: int = 1
    finetune_epochs: int = 1
    distill_lr: float = 1e-3
    gate_lr: float = 3e-3
    finetune_lr: float = 1e-4
    ratio: float = 1.2
    target: float = 0.5
    budget_weight: float = 1.0
    kd_weight: float = 0.5
    kd_temperature: float = 2.0
    qs: Sequence[float] = field(default_factory=lambda: list(DEFAULT_QS))
    batch_size: int = 64
    latency_repeats: int = 10
    map_images: int = 8
    tolerance_points: float = 1.0
    seed: int = 0
    ffn_pattern: str | None = None

    def train_config(self) -> ACMTrainConfig:
        """The hyper-parameters of the three training stages."""
        return ACMTrainConfig(
            distill_epochs=self.distill_epochs, gate_epochs=self.gate_epochs,
            finetune_epochs=self.finetune_epochs, distill_lr=self.distill_lr,
            gate_lr=self.gate_lr, finetune_lr=self.finetune_lr, ratio=self.ratio,
            target=self.target, budget_weight=self.budget_weight, kd_weight=self.kd_weight,
            kd_temperature=self.kd_temperature,
        )

    def validate(self) -> ACMConfig:
        """Raise :class:`UserError` (one line) on a setting that cannot work; return self."""
        for name in ("learners", "batch_size", "latency_repeats"):
            value = getattr(self, name)
            if value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.gate_hidden is not None and self.gate_hidden < 1:
            raise UserError(f"--gate-hidden must be positive, got {self.gate_hidden}")
        if self.map_images < 0:
            raise UserError(f"--map-images must be >= 0, got {self.map_images}")
        if not self.qs or not all(0.0 <= float(q) <= 1.0 for q in self.qs):
            raise UserError(f"q values must lie in [0, 1] (1 = every learner), got "
                            f"{list(self.qs)}")
        if self.tolerance_points < 0:
            raise UserError(f"the accuracy tolerance must be >= 0 points, got "
                            f"{self.tolerance_points}")
        self.train_config().check()
        return self

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["qs"] = [float(q) for q in self.qs]
        out["sites"] = list(self.sites) if self.sites is not None else None
        return out


def acm(
    model: nn.Module,
    config: ACMConfig | None = None,
    *,
    train_data: Any,
    val_data: Any = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> ACMModel:
    """Convert the FFNs of ``model`` (in place) into adaptive computation modules and
    train them (distillation, gate, end-to-end) on ``train_data`` (a dataset or an
    iterable of ``(x, y)`` batches), the original model acting as the teacher.

    The model is returned at full budget, unless ``val_data`` is given: then at
    the operating point chosen on it (the cheapest ``q`` within
    ``config.tolerance_points`` of the full budget's accuracy), recorded in
    ``model.operating_point`` with ``chosen_on: "validation"``.
    """
    from frugalnn.methods.acm.convert import convert_to_acm
    from frugalnn.methods.acm.training import train_acm

    cfg = (config or ACMConfig()).validate()
    model = model.to(device).eval()
    teacher = copy.deepcopy(model)
    converted = convert_to_acm(model, num_learners=cfg.learners, gate_hidden=cfg.gate_hidden,
                               sites=cfg.sites, qs=cfg.qs, seed=cfg.seed,
                               ffn_pattern=cfg.ffn_pattern)
    train_acm(converted, teacher, seeded_loader(train_data, cfg.batch_size, cfg.seed),
              cfg.train_config(), seed=cfg.seed, device=device, progress=progress)
    if val_data is not None:
        point = choose_budget(converted, val_data, cfg.tolerance_points,
                              batch_size=cfg.batch_size, device=device)
        converted.set_budget(point["budget"])
        converted.operating_point = point  # type: ignore[assignment]
    return converted.eval()


@dataclass
class ACMRun:
    """What :func:`run_acm` produced: the run directory, the converted model, the test
    records and the operating point (``None`` without a validation split)."""

    out: Path
    model: ACMModel
    records: Any
    point: dict[str, Any] | None


def run_acm(
    model: nn.Module,
    config: ACMConfig,
    splits: Any,
    out: str | Path,
    *,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    progress: bool = False,
    force: bool = False,
    run_config: dict[str, Any] | None = None,
) -> ACMRun:
    """Convert and train, save ``out/checkpoint``, evaluate on ``splits.test`` (and
    ``splits.val`` into ``out/validation``), write ``out/extras`` and, last, the report.

    ``splits`` is a :class:`frugalnn.data.splits.Splits`; ``run_config`` (e.g. the
    command line) is saved beside the config.
    """
    from frugalnn.evaluation import evaluate_into
    from frugalnn.methods.acm.report import write_extras
    from frugalnn.report import write_run_report
    from frugalnn.train.checkpoint import data_signature, save_checkpoint

    cfg = config.validate()
    out = check_run_dir(out, force)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    converted = acm(model, cfg, train_data=splits.train, device=device, progress=progress)
    saved = {**(run_config or {}), "acm": cfg.to_dict(), "val_split": splits.val_spec}
    out.mkdir(parents=True, exist_ok=True)
    meta_data = {"data": data_signature(splits.info)}
    save_checkpoint(out / "checkpoint", converted, {**meta_data, "config": saved})
    records = evaluate_into(
        converted, splits.test, out, val_dataset=splits.val, method="acm",
        batch_size=cfg.batch_size, threads=threads, device=device,
        latency_batch_sizes=(1, cfg.batch_size), latency_repeats=cfg.latency_repeats,
        config=saved, force=force, progress=progress,
    )
    point = operating_point(out, cfg.tolerance_points)
    write_extras(converted, out, splits.test, device=device, images=cfg.map_images, point=point)
    write_run_report(out)
    return ACMRun(out, converted, records, point)
