"""The mixture-of-experts FFN that replaces a dense ``fc2(act(fc1(x)))``.

Weights stay in one expert-major block: expert ``e`` owns rows
``e*s:(e+1)*s`` of ``fc1_weight`` (``(E*s, dim)``, like ``nn.Linear``) and of
``fc2_weight_t`` (``(E*s, out)``, the transpose of ``fc2.weight``). Each
expert's slice is contiguous, so running one expert is one ``addmm`` on its
gathered tokens, and running all of them is exactly the dense FFN with
permuted hidden neurons. A gated FFN (``down(act(gate(x)) * up(x))``, SwiGLU)
also has ``gate_weight`` / ``gate_bias`` in the same expert-major layout
(``fc1`` being the up projection), so an expert's hidden neurons are
``act(gate rows) * fc1 rows``: at full budget the layer takes that dense path and
skips the router, so it reproduces the original outputs at the original cost.

Execution below full budget never loops over tokens. Token-expert pairs are
listed expert-major with one ``nonzero`` call; then either

* ``gather``: one ``index_select -> addmm -> act -> mm -> index_add_`` per
  expert that has tokens (a Python loop over experts, not tokens); or
* ``bmm``: the pairs are packed into an ``(E, capacity, dim)`` tensor (padding
  with a zero row) and all experts run as two batched matmuls.

``impl="auto"`` picks ``gather`` on CPU (faster there at every expert size
measured, see docs/moe.md) and ``bmm`` on CUDA (one launch for all experts).

Cost: the router and one expert on one token are measured with
:func:`frugalnn.cost.count.count_flops` at construction; each forward charges
``router + experts_run * expert`` FLOPs per token to the owning example and
records ``experts_per_token/<layer>`` (mean over the example's tokens).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from frugalnn.cost import ledger
from frugalnn.errors import UserError
from frugalnn.methods.moe.router import Router, select_dynamic_k, select_top_k

__all__ = ["MoEFFN"]

IMPLS = ("auto", "gather", "bmm")


class _OneExpert(nn.Module):
    """What one expert computes for one token; used only to count its FLOPs."""

    def __init__(self, dim: int, size: int, out: int, act: nn.Module, gated: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, size)
        self.gate = nn.Linear(dim, size) if gated else None
        self.act = act
        self.fc2 = nn.Linear(size, out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is None:
            return self.fc2(self.act(self.fc1(x)))
        return self.fc2(self.act(self.gate(x)) * self.fc1(x))


def _count(module: nn.Module, x: torch.Tensor) -> float:
    from frugalnn.cost.count import count_flops

    with torch.no_grad():
        return float(count_flops(module, x))


class MoEFFN(ledger.DynamicModule):
    """An FFN split into ``num_experts`` experts of ``expert_size`` neurons, with a router.

    ``mode="dynamic"`` uses the threshold ``tau`` in [0, 1] (1 = all experts);
    ``mode="topk"`` runs the ``k`` best-scored experts per token. ``gated``
    adds the gate projection of a GLU / SwiGLU FFN.
    """

    #: Marks a module that replaced an FFN (the FFN site search skips it).
    replaces_ffn = True

    def __init__(
        self,
        dim: int,
        out_dim: int,
        num_experts: int,
        expert_size: int,
        act: nn.Module,
        *,
        router_hidden: int = 128,
        name: str = "ffn",
        mode: str = "dynamic",
        tau: float = 1.0,
        k: int | None = None,
        impl: str = "auto",
        gated: bool = False,
    ) -> None:
        super().__init__()
        self.dim, self.out_dim = dim, out_dim
        self.num_experts, self.expert_size = num_experts, expert_size
        self.name = name
        hidden = num_experts * expert_size
        self.fc1_weight = nn.Parameter(torch.zeros(hidden, dim))
        self.fc1_bias = nn.Parameter(torch.zeros(hidden))
        self.fc2_weight_t = nn.Parameter(torch.zeros(hidden, out_dim))
        self.fc2_bias = nn.Parameter(torch.zeros(out_dim))
        self.gate_weight: nn.Parameter | None = None
        self.gate_bias: nn.Parameter | None = None
        if gated:
            self.gate_weight = nn.Parameter(torch.zeros(hidden, dim))
            self.gate_bias = nn.Parameter(torch.zeros(hidden))
        self.act = act
        self.router = Router(dim, num_experts, router_hidden)
        self.mode = "dynamic"
        self.tau = 1.0
        self.k = num_experts
        self.set_mode(mode, tau=tau, k=k if k is not None else num_experts)
        self.set_impl(impl)
        probe = torch.zeros(1, dim)
        self.router_flops = _count(self.router, probe)
        self.expert_flops = _count(_OneExpert(dim, expert_size, out_dim, act, gated), probe)
        self.reset_stats()

    # -- construction -----------------------------------------------------------
    @classmethod
    def from_dense(
        cls,
        fc1: nn.Linear,
        act: nn.Module,
        fc2: nn.Linear,
        experts: list[torch.Tensor],
        gate: nn.Linear | None = None,
        **kwargs: object,
    ) -> MoEFFN:
        """Build from a dense FFN and a partition of its hidden neurons.

        Experts shorter than the longest are padded with inert neurons (zero
        ``fc1`` row and bias, zero ``fc2`` column), which contribute exactly 0.
        ``gate``: the gate projection of a gated FFN (``fc1`` is then the up
        projection).
        """
        size = max(len(e) for e in experts)
        layer = cls(
            fc1.in_features, fc2.out_features, len(experts), size, act,  # type: ignore[arg-type]
            gated=gate is not None, **kwargs,  # type: ignore[arg-type]
        )
        with torch.no_grad():
            layer.to(device=fc1.weight.device, dtype=fc1.weight.dtype)
            w2t = fc2.weight.t()
            for e, idx in enumerate(experts):
                idx = idx.to(fc1.weight.device)
                rows = slice(e * size, e * size + len(idx))
                layer.fc1_weight[rows] = fc1.weight[idx]
                if fc1.bias is not None:
                    layer.fc1_bias[rows] = fc1.bias[idx]
                layer.fc2_weight_t[rows] = w2t[idx]
                if gate is not None:
                    assert layer.gate_weight is not None and layer.gate_bias is not None
                    layer.gate_weight[rows] = gate.weight[idx]
                    if gate.bias is not None:
                        layer.gate_bias[rows] = gate.bias[idx]
            if fc2.bias is not None:
                layer.fc2_bias.copy_(fc2.bias)
        return layer

    # -- knob -------------------------------------------------------------------
    def set_mode(self, mode: str, *, tau: float | None = None, k: int | None = None) -> None:
        if mode not in ("dynamic", "topk"):
            raise UserError(f"unknown routing mode {mode!r}; use 'dynamic' or 'topk'")
        self.mode = mode
        if tau is not None:
            self.set_tau(tau)
        if k is not None:
            self.set_k(k)

    def set_tau(self, tau: float) -> None:
        tau = float(tau)
        if not 0.0 <= tau <= 1.0:
            raise UserError(f"tau must be in [0, 1] (1 = every expert), got {tau}")
        self.tau = tau

    def set_k(self, k: int) -> None:
        if int(k) != k or not 1 <= k <= self.num_experts:
            raise UserError(f"k must be an integer in [1, {self.num_experts}], got {k}")
        self.k = int(k)

    def set_impl(self, impl: str) -> None:
        if impl not in IMPLS:
            raise UserError(f"unknown MoE execution {impl!r}; use one of {', '.join(IMPLS)}")
        self.impl = impl

    def is_full(self) -> bool:
        """True when every expert runs for every token (the dense path)."""
        if self.mode == "dynamic":
            return self.tau >= 1.0
        return self.k >= self.num_experts

    # -- statistics -------------------------------------------------------------
    def reset_stats(self) -> None:
        """Counters of tokens seen and token-expert pairs run since the last reset."""
        self.stat_tokens = 0
        self.stat_pairs = 0

    # -- execution --------------------------------------------------------------
    @property
    def gated(self) -> bool:
        return self.gate_weight is not None

    def hidden(self, x: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
        """Hidden activations of the neurons ``rows`` (``act(gate) * up`` when gated)."""
        h = F.linear(x, self.fc1_weight[rows], self.fc1_bias[rows])
        if self.gate_weight is None or self.gate_bias is None:
            return self.act(h)
        return self.act(F.linear(x, self.gate_weight[rows], self.gate_bias[rows])) * h

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """All experts on all tokens: the original FFN (neurons permuted)."""
        return torch.addmm(self.fc2_bias, self.hidden(x), self.fc2_weight_t)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Router predictions ``(N, E)`` of each expert's output norm."""
        return self.router(x)

    def select(self, scores: torch.Tensor) -> torch.Tensor:
        if self.mode == "dynamic":
            return select_dynamic_k(scores, self.tau)
        return select_top_k(scores, self.k)

    def run_experts(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Output for tokens ``x (N, dim)`` running expert e on token n iff ``mask[n, e]``."""
        counts = mask.sum(0)
        impl = self.impl
        if impl == "auto":
            # Measured (docs/moe.md): on CPU one matmul per expert on its gathered
            # tokens beats the padded batched form at every expert size we tried;
            # on GPUs the batched form avoids one kernel launch per expert.
            impl = "bmm" if x.is_cuda else "gather"
        if impl == "bmm":
            return self._run_bmm(x, mask, counts)
        return self._run_gather(x, mask, counts)

    def _pairs(self, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = mask.t().nonzero()  # expert-major (expert, token)
        return pairs[:, 0], pairs[:, 1]

    def _run_gather(
        self, x: torch.Tensor, mask: torch.Tensor, counts: torch.Tensor
    ) -> torch.Tensor:
        s = self.expert_size
        y = self.fc2_bias.expand(x.shape[0], self.out_dim).clone()
        _, tokens = self._pairs(mask)
        start = 0
        for e, c in enumerate(counts.tolist()):
            if c == 0:
                continue
            idx = tokens[start : start + c]
            start += c
            rows = slice(e * s, (e + 1) * s)
            if c == x.shape[0]:  # every token: no gather/scatter needed
                y.addmm_(self.hidden(x, rows), self.fc2_weight_t[rows])
                continue
            h = self.hidden(x.index_select(0, idx), rows)
            y.index_add_(0, idx, h @ self.fc2_weight_t[rows])
        return y

    def _run_bmm(self, x: torch.Tensor, mask: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        n, e_count, s = x.shape[0], self.num_experts, self.expert_size
        experts, tokens = self._pairs(mask)
        cap = int(counts.max())
        offsets = torch.cumsum(counts, 0) - counts
        slot = torch.arange(tokens.numel(), device=x.device) - offsets[experts]
        index = torch.full((e_count, cap), n, dtype=torch.long, device=x.device)
        index[experts, slot] = tokens
        padded = torch.cat([x, x.new_zeros(1, x.shape[1])], 0)
        xg = padded[index]  # (E, cap, dim); pad slots read the zero row

        def project(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            return torch.baddbmm(
                bias.view(e_count, 1, s), xg, weight.view(e_count, s, -1).transpose(1, 2)
            )

        h = project(self.fc1_weight, self.fc1_bias)
        if self.gate_weight is not None and self.gate_bias is not None:
            h = self.act(project(self.gate_weight, self.gate_bias)) * h
        else:
            h = self.act(h)
        out = torch.bmm(h, self.fc2_weight_t.view(e_count, s, -1)).reshape(-1, self.out_dim)
        y = x.new_zeros(n + 1, self.out_dim).index_add(0, index.reshape(-1), out)
        return y[:n] + self.fc2_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        n = x2.shape[0]
        per_row = n // shape[0] if x.dim() > 1 else n
        rows = torch.arange(shape[0] if x.dim() > 1 else 1).repeat_interleave(per_row)
        if self.is_full():
            y = self.dense(x2)
            experts_run = torch.full((n,), float(self.num_experts))
            self.stat_pairs += n * self.num_experts
            ledger.charge(self.num_experts * self.expert_flops, rows=rows)
        else:
            mask = self.select(self.scores(x2))
            y = self.run_experts(x2, mask)
            experts_run = mask.sum(1).to("cpu", torch.float64)
            self.stat_pairs += int(experts_run.sum())
            ledger.charge(self.router_flops + experts_run * self.expert_flops, rows=rows)
        self.stat_tokens += n
        if ledger.active_ledger() is not None:
            b = rows.max().item() + 1 if n else 0
            per_example = torch.zeros(b, dtype=torch.float64)
            per_example.index_add_(0, rows, experts_run.double())
            per_example /= per_row
            ledger.record(f"experts_per_token/{self.name}", per_example)
        return y.reshape(*shape[:-1], self.out_dim)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, experts={self.num_experts}x{self.expert_size}, "
            f"{'gated, ' if self.gated else ''}mode={self.mode}, "
            f"tau={self.tau}, k={self.k}, impl={self.impl}"
        )
