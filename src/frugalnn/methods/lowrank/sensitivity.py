"""How much each layer's approximation error moves the model's output, measured.

The whole-model allocation (:mod:`frugalnn.methods.lowrank.allocate`) trades
each layer's discarded spectral energy against its cost, as if a unit of
energy dropped anywhere hurt the model alike. It does not: an error in a layer
whose output a normalisation rescales, or whose output feeds the attention
pattern, travels differently from one in a residual branch. With calibration
data the gain can be measured: each layer in turn is replaced by its
factorisation at a probe rank, the model runs on a calibration batch, and the
relative change of its output divided by the energy the probe drops is the
layer's *sensitivity*. The allocation then weighs every candidate's energy by
it (a first-order model: output error proportional to the energy dropped, with
a gain per layer). One forward pass per layer. Opt-in (``gain_examples``).

The probe of every layer drops the same small share of its energy
(:data:`PROBE_ENERGY`, the step of its ladder closest to it), so that every gain
is measured at the same small cut, where the first-order model holds. A probe
chosen by cost instead (the step a uniform target would take) can drop almost
nothing on a layer whose calibrated spectrum is short, and a change of zero
over an energy of zero reads as a gain of zero: the layer looks free to cut
(on EfficientNet-Lite0, such a probe makes the classifier look free and the cut
model predicts one class; ``docs/lowrank.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from frugalnn.utils.batch import call_model, logits_of

__all__ = ["PROBE_ENERGY", "output_sensitivity", "probe_modules"]

#: The share of its (calibrated) spectral energy each layer's probe drops.
PROBE_ENERGY = 0.01
#: Steps dropping less than this share are never probes: their change is noise.
_MIN_PROBE_ENERGY = 1e-6


def _relative_change(out: torch.Tensor, ref: torch.Tensor) -> float:
    diff = (out.double() - ref.double()).pow(2).sum()
    return float(diff / ref.double().pow(2).sum().clamp_min(1e-30))


@torch.no_grad()
def output_sensitivity(model: nn.Module, probes: dict[str, tuple[nn.Module, float]],
                       batch: Any) -> dict[str, float]:
    """Per layer name: the relative squared change of ``model``'s output on ``batch``
    when that layer alone is swapped for its probe module (``probes[name]``: the module
    and the fraction of spectral energy it drops), divided by that fraction. The model
    is restored layer by layer; it runs in eval mode."""
    was = model.training
    model.eval()
    out: dict[str, float] = {}
    try:
        ref = logits_of(call_model(model, batch))
        for name, (probe, dropped) in probes.items():
            original = model.get_submodule(name)
            model.set_submodule(name, probe.eval())
            try:
                change = _relative_change(logits_of(call_model(model, batch)), ref)
            finally:
                model.set_submodule(name, original)
            out[name] = change / max(dropped, 1e-12)
    finally:
        model.train(was)
    return out


def probe_modules(ladders: dict[str, tuple[Any, list[Any]]],
                  build: Callable[[Any, tuple[int, ...]], nn.Module],
                  energy: float = PROBE_ENERGY) -> dict[str, tuple[nn.Module, float]]:
    """Per layer name (``ladders[name]``: its target and rank steps, as
    :func:`frugalnn.methods.lowrank.allocate.ladder` gives them): the factorisation at the
    step whose dropped share of energy is closest to ``energy``, and that share. Layers
    without a step that drops any energy are left out."""
    probes = {}
    for name, (target, steps) in ladders.items():
        lossy = [s for s in steps if s.error > _MIN_PROBE_ENERGY]
        if lossy:
            step = min(lossy, key=lambda s: abs(s.error - energy))
            probes[name] = (build(target, step.ranks), float(step.error))
    return probes
