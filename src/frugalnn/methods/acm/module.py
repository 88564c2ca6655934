"""The adaptive computation module (ACM) that replaces one FFN.

An FFN ``fc2(act(fc1(x)))`` becomes ``N`` *learners*, each a small FFN with
``hidden / N`` neurons, so the N learners together cost what the original
layer cost. The output after ``k`` learners is the sum of the first ``k``
learners' outputs; a per-token **gate** (a small MLP with ``N`` outputs)
picks ``k`` in ``1..N``. Because the learners are made from a partition of the
original neurons (most important first) and the output bias goes to the first
learner, all N learners together reproduce the original FFN exactly before
any training; distillation (:mod:`.training`) then makes every prefix a good
approximation on its own. A gated FFN (``down(act(gate(x)) * up(x))``,
SwiGLU) gives gated learners: each keeps its neurons' gate rows too.

Execution never loops over tokens. Tokens are sorted by their learner count,
largest first, so the tokens that need learner ``j`` are a prefix of the
sorted order: learner ``j`` runs on one contiguous slice (a Python loop over
the N learners only), and one scatter puts the results back in place.

Inference chooses ``k`` from the gate's distribution with the knob ``q``
(:meth:`ACMFFN.set_q`): the smallest ``k`` whose cumulative gate probability
reaches ``q``. ``q = 0`` runs one learner per token, ``q = 1`` runs all of
them (the gate is skipped: full budget, the distilled dense output), and
``q = 0.5`` is the median of the gate's distribution. In training the gate is
sampled with straight-through Gumbel-softmax over the N prefix outputs
(``mode="gumbel"``), and the layer keeps the expected compute and gate
probabilities of its last call for the budget, entropy and diversity losses.

Cost: one learner and the gate on one token are measured with
:func:`frugalnn.cost.count.count_flops` at construction; each forward charges
``gate + k * learner`` FLOPs per token to the example that owns the token
(``N * learner`` at full budget, where the gate does not run) and records
``learners_per_token/<site>`` (mean over the example's tokens).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from frugalnn.cost import ledger
from frugalnn.errors import UserError

__all__ = ["ACMFFN", "MODES", "learner_layout"]

MODES = ("infer", "gumbel", "prefixes")


class _OneLearner(nn.Module):
    """What one learner computes for one token; used only to count its FLOPs."""

    def __init__(self, dim: int, size: int, out: int, act: nn.Module, gated: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, size)
        self.gate = nn.Linear(dim, size) if gated else None
        self.act = act
        self.fc2 = nn.Linear(size, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is None:
            return self.fc2(self.act(self.fc1(x)))
        return self.fc2(self.act(self.gate(x)) * self.fc1(x))


def _gate(dim: int, hidden: int, choices: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, choices))


def learner_layout(hidden: int, num_learners: int) -> int:
    """Neurons per learner for ``hidden`` neurons split into ``num_learners`` learners."""
    if int(num_learners) != num_learners or num_learners < 1:
        raise UserError(f"the number of learners must be a positive integer, got {num_learners}")
    if num_learners > hidden:
        raise UserError(
            f"cannot split {hidden} hidden neurons into {num_learners} learners; "
            f"use at most {hidden}"
        )
    return math.ceil(hidden / num_learners)


def _count(module: nn.Module, x: torch.Tensor) -> float:
    from frugalnn.cost.count import count_flops

    with torch.no_grad():
        return float(count_flops(module, x))


class ACMFFN(ledger.DynamicModule):
    """``num_learners`` learners of ``learner_size`` neurons plus a per-token gate.

    Weights are stacked learner-major: ``w1 (N, s, dim)``, ``b1 (N, s)``,
    ``w2 (N, s, out)`` (transposed like ``fc2.weight.t()``), ``b2 (N, out)``;
    ``gated`` adds the gate projection ``wg (N, s, dim)``, ``bg (N, s)``.
    """

    #: Marks a module that replaced an FFN (the FFN site search skips it).
    replaces_ffn = True

    def __init__(
        self,
        dim: int,
        out_dim: int,
        num_learners: int,
        learner_size: int,
        act: nn.Module,
        *,
        gate_hidden: int | None = None,
        name: str = "ffn",
        gated: bool = False,
    ) -> None:
        super().__init__()
        if num_learners < 1 or learner_size < 1:
            raise UserError("an ACM layer needs at least one learner of at least one neuron")
        self.dim, self.out_dim = dim, out_dim
        self.num_learners, self.learner_size = num_learners, learner_size
        self.name = name
        n, s = num_learners, learner_size
        self.w1 = nn.Parameter(torch.zeros(n, s, dim))
        self.b1 = nn.Parameter(torch.zeros(n, s))
        self.w2 = nn.Parameter(torch.zeros(n, s, out_dim))
        self.b2 = nn.Parameter(torch.zeros(n, out_dim))
        self.wg: nn.Parameter | None = None
        self.bg: nn.Parameter | None = None
        if gated:
            self.wg = nn.Parameter(torch.zeros(n, s, dim))
            self.bg = nn.Parameter(torch.zeros(n, s))
        self.act = act
        self.gate_hidden = int(gate_hidden or max(8, dim // 4))
        self.gate = _gate(dim, self.gate_hidden, n)
        self.q = 1.0
        self.mode = "infer"
        self.gumbel_tau = 1.0
        self.keep_counts = False
        self.last_counts: torch.Tensor | None = None
        self.last_compute: torch.Tensor | None = None
        self.last_probs: torch.Tensor | None = None
        probe = torch.zeros(1, dim)
        self.learner_flops = _count(_OneLearner(dim, s, out_dim, act, gated), probe)
        self.gate_flops = _count(self.gate, probe)

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_dense(
        cls, fc1: nn.Linear, act: nn.Module, fc2: nn.Linear, num_learners: int,
        gate: nn.Linear | None = None, **kwargs: object,
    ) -> ACMFFN:
        """Split a dense FFN's neurons into learners, most important first.

        A neuron's importance is ``|fc1 row| * |fc2 column|`` (how much it can
        move the output); neurons are sorted by it and cut into consecutive
        groups, so learner 1 alone is the strongest single learner. When the
        hidden width is not a multiple of ``num_learners``, the last learner
        gets inert neurons (zero weights), which add exactly 0. The sum of all
        learners equals the dense FFN. ``gate``: the gate projection of a gated
        FFN (``fc1`` is then the up projection; a neuron's first-layer norm is
        that of its gate and up rows together).
        """
        hidden = fc1.out_features
        s = learner_layout(hidden, num_learners)
        layer = cls(fc1.in_features, fc2.out_features, num_learners, s, act,  # type: ignore[arg-type]
                    gated=gate is not None, **kwargs)  # type: ignore[arg-type]
        with torch.no_grad():
            layer.to(device=fc1.weight.device, dtype=fc1.weight.dtype)
            rows = fc1.weight if gate is None else torch.cat([gate.weight, fc1.weight], 1)
            importance = rows.norm(dim=1) * fc2.weight.norm(dim=0)
            order = torch.argsort(importance, descending=True, stable=True)
            w1 = torch.zeros(num_learners * s, fc1.in_features, device=fc1.weight.device)
            b1 = torch.zeros(num_learners * s, device=fc1.weight.device)
            w2 = torch.zeros(num_learners * s, fc2.out_features, device=fc1.weight.device)
            w1[:hidden] = fc1.weight[order]
            if fc1.bias is not None:
                b1[:hidden] = fc1.bias[order]
            w2[:hidden] = fc2.weight.t()[order]
            layer.w1.copy_(w1.view_as(layer.w1))
            layer.b1.copy_(b1.view_as(layer.b1))
            layer.w2.copy_(w2.view_as(layer.w2))
            layer.b2.zero_()
            if fc2.bias is not None:
                layer.b2[0].copy_(fc2.bias)
            if gate is not None:
                assert layer.wg is not None and layer.bg is not None
                wg = torch.zeros_like(w1)
                bg = torch.zeros_like(b1)
                wg[:hidden] = gate.weight[order]
                if gate.bias is not None:
                    bg[:hidden] = gate.bias[order]
                layer.wg.copy_(wg.view_as(layer.wg))
                layer.bg.copy_(bg.view_as(layer.bg))
        return layer

    # -- knob and modes ---------------------------------------------------------------------
    def set_q(self, q: float) -> None:
        q = float(q)
        if not 0.0 <= q <= 1.0:
            raise UserError(f"q must be in [0, 1] (1 = every learner on every token), got {q}")
        self.q = q

    def set_mode(self, mode: str, *, gumbel_tau: float | None = None) -> None:
        """``infer`` (grouped execution), ``gumbel`` (training the gate end to end) or
        ``prefixes`` (training: every learner on every token, output of all N)."""
        if mode not in MODES:
            raise UserError(f"unknown ACM mode {mode!r}; use one of {', '.join(MODES)}")
        self.mode = mode
        if gumbel_tau is not None:
            self.gumbel_tau = float(gumbel_tau)

    # -- pieces -----------------------------------------------------------------------------
    @property
    def gated(self) -> bool:
        return self.wg is not None

    def hidden(self, x: torch.Tensor, j: int) -> torch.Tensor:
        """Hidden activations of learner ``j`` on tokens ``x``."""
        h = F.linear(x, self.w1[j], self.b1[j])
        if self.wg is None or self.bg is None:
            return self.act(h)
        return self.act(F.linear(x, self.wg[j], self.bg[j])) * h

    def learner_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Every learner on every token: ``(N, tokens, out)`` for ``x (tokens, dim)``."""
        h = torch.einsum("td,jsd->jts", x, self.w1) + self.b1.unsqueeze(1)
        if self.wg is not None and self.bg is not None:
            h = self.act(torch.einsum("td,jsd->jts", x, self.wg) + self.bg.unsqueeze(1)) * h
        else:
            h = self.act(h)
        return torch.bmm(h, self.w2) + self.b2.unsqueeze(1)

    def prefix_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Output after ``k = 1..N`` learners: ``(N, tokens, out)`` (cumulative sums)."""
        return self.learner_outputs(x).cumsum(0)

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """All learners at once as one wide FFN (what full budget computes)."""
        h = F.linear(x, self.w1.reshape(-1, self.dim), self.b1.reshape(-1))
        if self.wg is not None and self.bg is not None:
            h = self.act(F.linear(x, self.wg.reshape(-1, self.dim), self.bg.reshape(-1))) * h
        else:
            h = self.act(h)
        return torch.addmm(self.b2.sum(0), h, self.w2.reshape(-1, self.out_dim))

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        """Learners per token ``(tokens,)`` in ``1..N``: smallest k with P(<= k) >= q."""
        n = self.num_learners
        if self.q >= 1.0:
            return torch.full(logits.shape[:1], n, dtype=torch.long, device=logits.device)
        cum = logits.float().softmax(-1).cumsum(-1)
        return ((cum < self.q).sum(-1) + 1).clamp(max=n)

    def run_grouped(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Output for tokens ``x`` running the first ``k[t]`` learners on token ``t``."""
        order = torch.argsort(k, descending=True, stable=True)
        xs = x.index_select(0, order)
        # needs[j] = how many tokens run learner j (a prefix of the sorted tokens).
        hist = torch.bincount(k, minlength=self.num_learners + 1)
        needs = (hist.flip(0).cumsum(0).flip(0))[1:].tolist()
        # Every token runs learner 1, so its output starts the result; learner j
        # then adds to the first needs[j] sorted tokens.
        ys = torch.addmm(self.b2[0], self.hidden(xs, 0), self.w2[0])
        for j, m in enumerate(needs[1:], start=1):
            if m == 0:
                break
            h = self.hidden(xs[:m], j)
            ys[:m].addmm_(h, self.w2[j]).add_(self.b2[j])
        return torch.empty_like(ys).index_copy_(0, order, ys)

    # -- forward -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self.mode == "gumbel":
            return self._forward_gumbel(x2).reshape(*shape[:-1], self.out_dim)
        if self.mode == "prefixes":
            # Training stage I: the caller reads prefix outputs; return the full sum.
            return self.dense(x2).reshape(*shape[:-1], self.out_dim)
        n = x2.shape[0]
        per_row = n // shape[0] if x.dim() > 2 else 1
        if self.q >= 1.0:
            k = torch.full((n,), self.num_learners, dtype=torch.long, device=x.device)
            y = self.dense(x2)
            flops = torch.full((n,), self.num_learners * self.learner_flops, dtype=torch.float64)
        else:
            k = self.choose(self.gate(x2))
            y = self.run_grouped(x2, k)
            flops = self.gate_flops + k.to("cpu", torch.float64) * self.learner_flops
        if self.keep_counts:
            self.last_counts = k.reshape(shape[:-1]).cpu()
        if ledger.active_ledger() is not None:
            rows = torch.arange(n // per_row).repeat_interleave(per_row)
            ledger.charge(flops, rows=rows)
            per_example = torch.zeros(n // per_row, dtype=torch.float64)
            per_example.index_add_(0, rows, k.to("cpu", torch.float64))
            ledger.record(f"learners_per_token/{self.name}", per_example / per_row)
        return y.reshape(*shape[:-1], self.out_dim)

    def _forward_gumbel(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.gate(x)
        weights = F.gumbel_softmax(logits, tau=self.gumbel_tau, hard=True)
        prefixes = self.prefix_outputs(x)
        steps = torch.arange(1, self.num_learners + 1, device=x.device, dtype=weights.dtype)
        self.last_compute = (weights * steps).sum(-1) / self.num_learners
        self.last_probs = logits.softmax(-1)
        return torch.einsum("tj,jto->to", weights, prefixes)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, learners={self.num_learners}x{self.learner_size}, "
            f"{'gated, ' if self.gated else ''}"
            f"gate_hidden={self.gate_hidden}, q={self.q}, mode={self.mode}"
        )
