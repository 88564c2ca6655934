"""Over-parameterised network with binarised paths (ProxylessNAS).

Every choice block holds all its candidate ops and one architecture parameter
per candidate. Instead of running all candidates and mixing them (which keeps
N paths of activations in memory), a *binary gate* is sampled from
``softmax(alpha)`` and only the selected path runs:

* ``"one"`` (weight step): one path sampled per block; ordinary autograd
  trains that path's weights only.
* ``"two"`` (architecture step): two distinct paths are sampled, their
  probabilities renormalised, and one of them is active. The forward runs
  only the active op; the backward computes the gradient of the loss with
  respect to each of the two gates, ``dL/dg_j = <dL/dout, op_j(x)>``
  (BinaryConnect-style estimate; the inactive op is re-run without autograd
  state, so its activations are never stored), and turns it into a gradient
  for ``alpha`` through the softmax over the two paths. After the optimiser
  step the two updated parameters are shifted so that the probabilities of
  the paths that were not sampled stay unchanged.
* ``"full"``: the softmax-weighted sum of all alive paths (DARTS-style);
  kept to measure what path binarisation saves.
* ``"argmax"``: the most probable op only (evaluation of the current choice).

Candidates whose probability falls below a threshold can be pruned during
search; a pruned candidate is never sampled again.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from frugalnn.errors import UserError
from frugalnn.methods.nas.ops import build_op
from frugalnn.methods.nas.space import BlockSlot, SearchSpace, build_head, build_stem
from frugalnn.models.base import StagedModel

__all__ = ["MODES", "MixedOp", "Supernet"]

MODES = ("one", "two", "full", "argmax")


class _BinaryGateFunction(torch.autograd.Function):
    """Runs the active op; backward also yields dL/dgate for the sampled ops."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, gates: torch.Tensor, mixed: MixedOp) -> torch.Tensor:
        x_in = x.detach().requires_grad_(x.requires_grad)
        with torch.enable_grad():
            out = mixed.candidates[mixed.active](x_in)
        ctx.mixed = mixed
        ctx.x_in = x_in
        ctx.out = out
        return out.detach()

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        mixed: MixedOp = ctx.mixed
        grad_x = None
        if ctx.x_in.requires_grad:
            if ctx.out.requires_grad:
                (grad_x,) = torch.autograd.grad(ctx.out, ctx.x_in, grad_out)
            else:  # the zero op: nothing flows back through the op itself
                grad_x = torch.zeros_like(ctx.x_in)
        gate_grads = torch.zeros(len(mixed.candidates), dtype=grad_out.dtype,
                                 device=grad_out.device)
        with torch.no_grad():
            for j in mixed.involved:
                out_j = ctx.out if j == mixed.active else mixed.candidates[j](ctx.x_in)
                gate_grads[j] = (out_j * grad_out).sum()
        ctx.x_in = ctx.out = None
        return grad_x, gate_grads, None


class MixedOp(nn.Module):
    """All candidate ops of one choice block, their alphas and the binary gates."""

    def __init__(self, slot: BlockSlot) -> None:
        super().__init__()
        self.names = list(slot.candidates)
        self.candidates = nn.ModuleList(
            build_op(n, slot.c_in, slot.c_out, slot.stride) for n in self.names
        )
        self.alpha = nn.Parameter(torch.zeros(len(self.names)))
        self.register_buffer("alive", torch.ones(len(self.names), dtype=torch.bool))
        self.mode = "argmax"
        self.active = 0
        self.involved: list[int] = [0]
        self._old_alpha: torch.Tensor | None = None
        self.gates: torch.Tensor | None = None

    # -- probabilities ----------------------------------------------------------
    def probs(self) -> torch.Tensor:
        """softmax(alpha) over alive candidates (pruned ones have probability 0)."""
        return torch.softmax(self.alpha.masked_fill(~self.alive, float("-inf")), dim=0)

    def argmax(self) -> int:
        return int(self.probs().argmax())

    # -- sampling ----------------------------------------------------------------
    def sample(self, mode: str, generator: torch.Generator | None = None) -> None:
        """Draw the binary gates for the next forward pass in ``mode``."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.mode = mode
        with torch.no_grad():
            p = self.probs().detach().cpu()
            if mode == "argmax":
                self.involved = [int(p.argmax())]
                self.active = self.involved[0]
            elif mode == "one":
                self.active = int(torch.multinomial(p, 1, generator=generator))
                self.involved = [self.active]
            elif mode == "two":
                n_alive = int((p > 0).sum())
                k = min(2, n_alive)
                pair = torch.multinomial(p, k, replacement=False, generator=generator).tolist()
                sub = p[pair] / p[pair].sum()
                self.active = pair[int(torch.multinomial(sub, 1, generator=generator))]
                self.involved = pair
            else:
                self.involved = [int(i) for i in torch.nonzero(p > 0).flatten()]
                self.active = int(p.argmax())

    # -- forward -----------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "full":
            p = self.probs()
            return sum(p[j] * self.candidates[j](x) for j in self.involved)
        if self.mode == "two":
            self.gates = torch.zeros(len(self.names), device=x.device, requires_grad=True)
            return _BinaryGateFunction.apply(x, self.gates, self)
        return self.candidates[self.active](x)

    # -- architecture gradient --------------------------------------------------
    def set_alpha_grad(self) -> None:
        """Turn dL/dgate (from a ``two``-mode backward) into dL/dalpha over the pair.

        With p the softmax over the sampled pair, dL/dalpha_i =
        sum_j dL/dg_j * p_j * (delta_ij - p_i). Adds to ``alpha.grad``.
        """
        if self.gates is None or self.gates.grad is None:
            return
        g = self.gates.grad.detach()
        idx = torch.tensor(self.involved, device=self.alpha.device)
        p = torch.softmax(self.alpha.detach()[idx], dim=0)
        gi = g[idx].to(p.dtype)
        jac = torch.diag(p) - torch.outer(p, p)  # d p_j / d alpha_i (symmetric)
        grad = torch.zeros_like(self.alpha)
        grad[idx] = jac @ gi
        self.alpha.grad = grad if self.alpha.grad is None else self.alpha.grad + grad
        self._old_alpha = self.alpha.detach().clone()
        self.gates = None

    def rescale_after_step(self) -> None:
        """Keep unsampled paths' probabilities fixed after a ``two``-mode update."""
        if self._old_alpha is None or len(self.involved) < 2:
            self._old_alpha = None
            return
        with torch.no_grad():
            idx = torch.tensor(self.involved, device=self.alpha.device)
            offset = torch.logsumexp(self.alpha[idx], 0) - torch.logsumexp(
                self._old_alpha[idx], 0
            )
            self.alpha[idx] -= offset
        self._old_alpha = None

    def prune(self, threshold: float) -> list[str]:
        """Disable alive candidates with probability below ``threshold`` (never the best)."""
        p = self.probs().detach()
        best = int(p.argmax())
        dropped = []
        for j, name in enumerate(self.names):
            if j != best and bool(self.alive[j]) and float(p[j]) < threshold:
                self.alive[j] = False
                dropped.append(name)
        return dropped


class ChoiceBlock(nn.Module):
    """A mixed op plus the identity shortcut when input and output shapes agree."""

    def __init__(self, slot: BlockSlot) -> None:
        super().__init__()
        self.slot = slot
        self.residual = slot.residual
        self.mixed = MixedOp(slot)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.mixed(x)
        return out + x if self.residual else out


class Supernet(StagedModel):
    """The whole search space in one module; ``set_mode`` samples the gates."""

    feature_kind = "image"

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.space = space
        self.stem = build_stem(space)
        self.blocks = nn.ModuleList(ChoiceBlock(s) for s in space.slots())
        self.head = build_head(space)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)

    def classify(self, state: torch.Tensor) -> torch.Tensor:
        return self.head(state)

    @property
    def mixed_ops(self) -> list[MixedOp]:
        return [b.mixed for b in self.blocks]

    def arch_parameters(self) -> list[nn.Parameter]:
        return [m.alpha for m in self.mixed_ops]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def set_mode(self, mode: str, generator: torch.Generator | None = None) -> None:
        """Sample fresh binary gates in every block for the next forward."""
        for m in self.mixed_ops:
            m.sample(mode, generator)

    def set_arch(self, ops: list[str]) -> None:
        """Force a given architecture (for timing or evaluating one path)."""
        if len(ops) != len(self.blocks):
            raise UserError(f"need {len(self.blocks)} ops, got {len(ops)}")
        for m, op in zip(self.mixed_ops, ops):
            if op not in m.names:
                raise UserError(f"op {op!r} is not a candidate here; candidates: {m.names}")
            m.mode = "argmax"
            m.active = m.names.index(op)
            m.involved = [m.active]

    def argmax_arch(self) -> list[str]:
        return [m.names[m.argmax()] for m in self.mixed_ops]

    def probabilities(self) -> list[dict[str, float]]:
        return [
            {n: round(float(p), 4) for n, p in zip(m.names, m.probs().detach().cpu())}
            for m in self.mixed_ops
        ]

    def set_alpha_grads(self) -> None:
        for m in self.mixed_ops:
            m.set_alpha_grad()

    def rescale_alphas(self) -> None:
        for m in self.mixed_ops:
            m.rescale_after_step()

    def prune(self, threshold: float) -> dict[int, list[str]]:
        out = {}
        for i, m in enumerate(self.mixed_ops):
            dropped = m.prune(threshold)
            if dropped:
                out[i] = dropped
        return out
