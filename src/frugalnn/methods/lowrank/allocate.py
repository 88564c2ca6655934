"""Whole-model compression targets: ``model-flops=X`` and ``model-params=X``.

``flops=X`` asks every layer to be X times cheaper. On a network of thin 1x1
convolutions that is harsh: a rank-``r`` chain of a ``c_in -> c_out`` layer
costs ``r (c_in + c_out)`` against ``c_in c_out``, so below about
``c_in c_out / (c_in + c_out)`` (86 % of the narrow side of a 6x expansion)
nothing is saved at all, and a uniform target cuts into every layer's spectrum
at once. A whole-model target instead asks the *model* to be X times cheaper
and lets the layers share the cut: a layer whose spectrum falls fast gives much,
one whose spectrum is flat gives nothing.

The allocation minimises the summed approximation error (the mean fraction of
spectral energy the ranks drop on the method's unfoldings, the proxy the
latency-aware selector uses) subject to the model's cost, by a Lagrange
multiplier: for a price ``lam`` every layer independently takes the candidate
(dense, or a rank step on its ladder) with the least ``error + lam * cost``;
``lam`` is bisected until the model meets the target. Costs are those of
:mod:`frugalnn.methods.lowrank.costs` (per example), the model's own cost is
counted on the example input, so the layers left out of factorisation (stem,
depthwise convolutions, attention) count as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from frugalnn.errors import UserError
from frugalnn.methods.lowrank.layers import max_ranks
from frugalnn.methods.lowrank.rank import (
    chain_cost,
    dense_cost,
    discarded_energy_fn,
    rank_ladder_size,
    scaled_ranks,
)

__all__ = ["Candidate", "allocate", "ladder"]


@dataclass(frozen=True)
class Candidate:
    """One rank step of a layer: its ranks, chain cost and discarded spectral energy."""

    ranks: tuple[int, ...]
    cost: float
    error: float


def ladder(method: str, target: Any, measure: str, depthwise: str = "separable",
           multiple: int = 1, weight: Any = None) -> list[Candidate]:
    """The rank steps of ``target`` (a :class:`~frugalnn.methods.lowrank.compress.LayerTarget`)
    that cost less than its dense layer, cheapest first; with ``multiple`` > 1 only steps
    that are multiples of it. ``weight``: the matrix whose spectrum sets the error (the
    layer's own weight by default; ``W L`` for data-aware SVD)."""
    spec, hw = target.spec, target.hw
    dense = dense_cost(spec, hw, measure)
    lost = discarded_energy_fn(method, target.module.weight if weight is None else weight)
    seen: set[tuple[int, ...]] = set()
    out = []
    for t in range(1, rank_ladder_size(method, spec) + 1):
        if multiple > 1 and t % multiple:
            continue
        ranks = scaled_ranks(method, spec, t)
        if ranks in seen or ranks == max_ranks(method, spec):
            continue
        seen.add(ranks)
        cost = chain_cost(method, spec, ranks, hw, measure, depthwise)
        if cost < dense:
            out.append(Candidate(ranks, float(cost), lost(ranks)))
    return sorted(out, key=lambda c: c.cost)


def allocate(targets: list[Any], method: str, ratio: float, model_cost: float, *,
             measure: str = "flops", depthwise: str = "separable", multiple: int = 1,
             weights: dict[str, Any] | None = None, gains: dict[str, float] | None = None,
             ladders: dict[str, list[Candidate]] | None = None,
             ) -> dict[str, tuple[tuple[int, ...] | None, str, dict[str, Any]]]:
    """Ranks per layer name so that the whole model costs at most ``model_cost / ratio``.

    ``weights``: per layer name, the matrix whose spectrum sets its error (data-aware SVD).
    ``gains``: per layer name, how much a unit of its dropped energy changes the model's
    output (:mod:`frugalnn.methods.lowrank.sensitivity`); every candidate's error is
    weighed by it (1 where absent). ``ladders``: per layer name, its :func:`ladder`
    when the caller has built it already (the same arguments).
    Returns ``{name: (ranks or None, reason, extra)}`` as the other selectors do.
    Raises :class:`UserError` when even the cheapest steps of every layer cannot reach
    the target, naming the ratio that can be reached.
    """
    budget = model_cost / ratio
    # Per layer: (target, dense cost, options); an option is (candidate or None, cost, error).
    table = []
    for t in targets:
        dense = float(dense_cost(t.spec, t.hw, measure))
        cands = (ladders[t.name] if ladders is not None else
                 ladder(method, t, measure, depthwise, multiple, (weights or {}).get(t.name)))
        gain = (gains or {}).get(t.name, 1.0)
        table.append((t, dense, [(None, dense, 0.0)]
                      + [(c, c.cost, gain * c.error) for c in cands]))

    def total(choice: list[int]) -> float:
        return model_cost - sum(dense - options[k][1]
                                for (_t, dense, options), k in zip(table, choice))

    def choose(lam: float) -> list[int]:
        # Costs as fractions of the model's, so that lam is a plain number.
        return [min(range(len(o)), key=lambda k: o[k][2] + lam * o[k][1] / model_cost)
                for _t, _d, o in table]

    cheapest = [min(range(len(o)), key=lambda k: (o[k][1], o[k][2])) for _t, _d, o in table]
    if total(cheapest) > budget * (1 + 1e-9):
        reach = model_cost / total(cheapest)
        raise UserError(f"model-{measure}={ratio:g} is out of reach with --method {method}: "
                        f"factorising every eligible layer at its lowest rank gives "
                        f"{reach:.2f}x; ask for at most that, or add layers (--include)")
    lo, hi = 0.0, 1.0
    while hi < 1e12 and total(choose(hi)) > budget:
        hi *= 4.0
    for _ in range(60):  # the least price that meets the budget: the least error lost
        mid = math.sqrt(lo * hi) if lo > 0 else hi / 1024.0
        if total(choose(mid)) <= budget:
            hi = mid
        else:
            lo = mid
    choice = choose(hi)
    if total(choice) > budget * (1 + 1e-9):  # no price separated the steps: take the cheapest
        choice = cheapest
    out: dict[str, tuple[tuple[int, ...] | None, str, dict[str, Any]]] = {}
    for (t, dense, options), k in zip(table, choice):
        cand = options[k][0]
        extra = {"allocation": f"model-{measure}={ratio:g}", "dense_cost": dense}
        gain = ""
        if gains and t.name in gains:
            extra["output_gain"] = gains[t.name]
            gain = f", output gain {gains[t.name]:.3g}"
        if cand is None:
            out[t.name] = (None, f"kept dense under model-{measure}={ratio:g}{gain}", extra)
        else:
            extra.update(chain_cost=cand.cost, energy_lost=cand.error)
            out[t.name] = (cand.ranks, f"model-{measure}={ratio:g}: {dense / cand.cost:.2f}x "
                           f"this layer, {100 * cand.error:.1f} % energy dropped{gain}", extra)
    return out
