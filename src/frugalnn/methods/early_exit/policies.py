"""Exit policies: when is a head's prediction good enough to stop?

A policy looks at the prediction of exit ``i`` (log-probabilities) and decides,
per row, whether to stop there. Its threshold is the model's budget knob:

* ``maxprob``: exit when the top probability is *strictly above* ``t``,
  ``t`` in [0, 1]; ``t = 1`` never exits (full budget), ``t = 0`` always
  exits at the first head;
* ``entropy``: exit when the entropy divided by ``log(num_classes)`` is
  *strictly below* ``t``, ``t`` in [0, 1]; ``t = 0`` never exits;
* ``patience``: exit when the last ``k`` heads (this one included) predict
  the same class (PABEE); ``k`` is an integer from 1 (exit at the first head)
  to ``num_internal_heads + 1`` (never exits).

The same decision functions serve the real batched inference and the offline
sweep, which is what keeps the two identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from frugalnn.errors import UserError

POLICIES = ("maxprob", "entropy", "patience")

_MAXPROB_SWEEP = [0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99,
                  0.995, 0.998, 0.999, 1.0]
_ENTROPY_SWEEP = [1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1, 0.07, 0.05, 0.03, 0.02,
                  0.01, 0.005, 0.002, 0.0]


def check_policy(name: str) -> str:
    if name not in POLICIES:
        raise UserError(f"unknown exit policy {name!r}; use one of {', '.join(POLICIES)}")
    return name


def full_budget(policy: str, num_internal: int) -> float:
    """The knob value at which no example exits early."""
    return {"maxprob": 1.0, "entropy": 0.0, "patience": float(num_internal + 1)}[policy]


def budget_values(policy: str, num_internal: int) -> list[float]:
    """Default sweep, cheapest first."""
    if policy == "maxprob":
        return list(_MAXPROB_SWEEP)
    if policy == "entropy":
        return list(_ENTROPY_SWEEP)
    return [float(k) for k in range(1, num_internal + 2)]


def check_threshold(policy: str, value: float, num_internal: int) -> float:
    """Validate a knob value; raise ``UserError`` naming the allowed range."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UserError(f"exit threshold must be a number, got {value!r}") from None
    if policy == "patience":
        hi = num_internal + 1
        if not (v.is_integer() and 1 <= v <= hi):
            raise UserError(
                f"patience must be an integer from 1 to {hi} (= never exit), got {value!r}"
            )
        return v
    if math.isnan(v) or not 0.0 <= v <= 1.0:
        raise UserError(
            f"{policy} threshold must lie in [0, 1] "
            f"({'1 = never exit' if policy == 'maxprob' else '0 = never exit'}), got {value!r}"
        )
    return v


@dataclass
class PatienceState:
    """Per-row memory of the patience policy: last prediction and run length."""

    last: torch.Tensor
    run: torch.Tensor

    def select(self, keep: torch.Tensor) -> PatienceState:
        return PatienceState(self.last[keep], self.run[keep])


def confidence(policy: str, log_probs: torch.Tensor) -> torch.Tensor:
    """The score the threshold is compared with (max prob, or normalised entropy)."""
    if policy == "maxprob":
        return log_probs.exp().amax(dim=1)
    p = log_probs.exp()
    ent = -(p * log_probs).nan_to_num(0.0).sum(dim=1)
    return ent / math.log(log_probs.shape[1])


def exit_mask(
    policy: str,
    threshold: float,
    log_probs: torch.Tensor,
    state: PatienceState | None,
) -> tuple[torch.Tensor, PatienceState | None]:
    """Which rows exit at this head, and the updated patience memory."""
    if policy == "maxprob":
        return confidence(policy, log_probs) > threshold, None
    if policy == "entropy":
        return confidence(policy, log_probs) < threshold, None
    pred = log_probs.argmax(dim=1)
    if state is None:
        run = torch.ones_like(pred)
    else:
        run = torch.where(pred == state.last, state.run + 1, torch.ones_like(pred))
    return run >= int(threshold), PatienceState(pred, run)
