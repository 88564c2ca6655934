"""Dense model -> model with adaptive computation modules, and its budget knob.

:func:`convert_to_acm` replaces FFN sites of a :class:`StagedModel` by
:class:`ACMFFN` layers and wraps the result in :class:`ACMModel`, which
implements :class:`frugalnn.budget.Budgeted` with the knob ``q`` (see
:mod:`.module`; 1 = every learner = the distilled dense model). The
conversion is recorded as the transformation ``"acm"`` whose arguments
rebuild the structure, so :func:`frugalnn.train.checkpoint.load_model`
restores a converted model from its checkpoint. Training lives in
:mod:`.training`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from frugalnn.errors import UserError
from frugalnn.methods.acm.module import ACMFFN
from frugalnn.models.base import FFNSite, WrappedModel, require_ffn_sites
from frugalnn.transforms import record_transform, register_transform

__all__ = ["DEFAULT_QS", "ACMModel", "convert_to_acm", "rebuild_acm"]

DEFAULT_QS = (0.0, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0)


def _check_q(q: float) -> None:
    if not 0.0 <= float(q) <= 1.0:
        raise UserError(f"q must be in [0, 1] (1 = every learner = the dense model), got {q}")


class ACMModel(WrappedModel):
    """A staged model whose FFNs are :class:`ACMFFN` layers; one knob ``q`` for all.

    The base model is kept whole under ``base`` (see :class:`WrappedModel`).
    """

    budget_name = "q"

    def __init__(
        self, base: nn.Module, qs: Sequence[float] = DEFAULT_QS, ffn_pattern: str | None = None
    ) -> None:
        super().__init__(base)
        self.ffn_pattern = ffn_pattern
        self.qs = sorted({float(q) for q in qs} | {1.0})
        for q in self.qs:
            _check_q(q)

    def acm_layers(self) -> list[ACMFFN]:
        return [m for m in self.base.modules() if isinstance(m, ACMFFN)]

    # -- budget knob ---------------------------------------------------------------------------
    def budget_values(self) -> list[float]:
        return list(self.qs)

    def full_budget(self) -> float:
        return 1.0

    def set_budget(self, value: float) -> None:
        _check_q(value)
        for layer in self.acm_layers():
            layer.set_q(value)

    def set_mode(self, mode: str, *, gumbel_tau: float | None = None) -> None:
        """Execution mode of every layer (``infer``, ``gumbel``, ``prefixes``)."""
        for layer in self.acm_layers():
            layer.set_mode(mode, gumbel_tau=gumbel_tau)

    def keep_counts(self, on: bool = True) -> None:
        """Keep each layer's learners per token of the last call (for compute maps)."""
        for layer in self.acm_layers():
            layer.keep_counts = on
            layer.last_counts = None

    def token_counts(self) -> torch.Tensor:
        """Mean over layers of the learners per token of the last call, ``(B, T)``."""
        counts = [m.last_counts for m in self.acm_layers() if m.last_counts is not None]
        if not counts:
            raise RuntimeError("no learner counts kept; call keep_counts(True) and run the model")
        return torch.stack([c.double() for c in counts]).mean(0)

    def num_learners(self) -> int:
        return max((m.num_learners for m in self.acm_layers()), default=1)

    def ffn_compute_fraction(self) -> float:
        """Last call: learners run / learners available, over every ACM layer."""
        pairs = [(m.last_counts, m) for m in self.acm_layers() if m.last_counts is not None]
        run = sum(float(c.sum()) for c, _ in pairs)
        total = sum(c.numel() * m.num_learners for c, m in pairs)
        return run / total if total else 1.0


def _sites(
    model: nn.Module, names: Sequence[str] | None, pattern: str | None = None
) -> list[FFNSite]:
    sites = require_ffn_sites(model, "an adaptive computation module", pattern)
    if names is None:
        return sites
    by_name = {s.name: s for s in sites}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise UserError(
            f"unknown FFN site(s) {', '.join(unknown)}; the model has {', '.join(by_name)}"
        )
    return [by_name[n] for n in names]


@register_transform("acm")
def rebuild_acm(
    model: nn.Module,
    *,
    sites: list[dict[str, Any]],
    gate_hidden: int | None = None,
    qs: Sequence[float] = DEFAULT_QS,
    ffn_pattern: str | None = None,
) -> ACMModel:
    """Recreate the structure of a converted model (weights are loaded afterwards)."""
    by_name = {s.name: s for s in _sites(model, None, ffn_pattern)}
    for spec in sites:
        site = by_name.get(spec["name"])
        if site is None:
            raise UserError(f"checkpoint names FFN site {spec['name']!r}, which the model lacks")
        site.install(ACMFFN(
            site.fc1.in_features, site.fc2.out_features, int(spec["num_learners"]),
            int(spec["learner_size"]), copy.deepcopy(site.act), gate_hidden=gate_hidden,
            name=site.name, gated=bool(spec.get("gated", False)),
        ))
    return ACMModel(model, qs=qs, ffn_pattern=ffn_pattern)


def convert_to_acm(
    model: nn.Module,
    *,
    num_learners: int = 4,
    gate_hidden: int | None = None,
    sites: Sequence[str] | None = None,
    qs: Sequence[float] = DEFAULT_QS,
    seed: int = 0,
    ffn_pattern: str | None = None,
) -> ACMModel:
    """Replace FFN sites (default: all) of ``model`` in place by ACM layers.

    The result is at full budget and computes exactly what ``model`` computed
    (the learners partition the original neurons). Train it with
    :func:`frugalnn.methods.acm.training.train_acm` before lowering the budget:
    the gate starts untrained. ``ffn_pattern`` names the FFN modules of a
    model whose FFNs are not recognised (:mod:`frugalnn.models.adapters.ffn`);
    gated (SwiGLU) FFNs get gated learners.
    """
    for q in qs:
        _check_q(q)
    chosen = _sites(model, sites, ffn_pattern)
    torch.manual_seed(seed)
    layers = {}
    for site in chosen:
        layers[site.name] = ACMFFN.from_dense(
            site.fc1, copy.deepcopy(site.act), site.fc2, num_learners, gate=site.gate,
            gate_hidden=gate_hidden, name=site.name,
        )
    for site in chosen:
        site.install(layers[site.name])
    acm = ACMModel(model, qs=qs, ffn_pattern=ffn_pattern)
    acm.train(model.training)  # the converted model keeps the model's train/eval mode
    first = next(iter(layers.values()))
    args: dict[str, Any] = {
        "sites": [{"name": n, "num_learners": m.num_learners, "learner_size": m.learner_size,
                   **({"gated": True} if m.gated else {})}
                  for n, m in layers.items()],
        "gate_hidden": first.gate_hidden,
        "qs": [float(q) for q in acm.qs],
    }
    if ffn_pattern:
        args["ffn_pattern"] = ffn_pattern
    record_transform(acm, "acm", args)
    acm.set_budget(1.0)
    return acm
