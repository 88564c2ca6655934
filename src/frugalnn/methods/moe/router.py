"""Routers: predict, per token, how much each expert would contribute.

Following D2DMoE, a router is a 2-layer MLP (hidden 128, ReLU) with an
absolute-value output, trained by regression (MSE) to predict the L2 norm of
each expert's output for the token. The norm is what dynamic-k needs: an
expert whose output is small relative to the largest one can be skipped with
little change to the layer's output. Training uses the dense model's own FFN
inputs (every layer runs densely while routers learn), sampled per batch.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Router", "expert_output_norms", "select_dynamic_k", "select_top_k"]


class Router(nn.Module):
    """``x (N, dim) -> predicted expert output norms (N, num_experts)``, all >= 0."""

    def __init__(self, dim: int, num_experts: int, hidden: int = 128) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, num_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x))).abs()


def expert_output_norms(
    x: torch.Tensor,
    fc1_weight: torch.Tensor,
    fc1_bias: torch.Tensor,
    fc2_weight_t: torch.Tensor,
    act: nn.Module,
    num_experts: int,
    gate_weight: torch.Tensor | None = None,
    gate_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Exact L2 norm of every expert's output for every token, ``(N, E)``.

    Weights are in the MoE layer's expert-major layout: ``fc1_weight`` is
    ``(E*s, dim)`` and ``fc2_weight_t`` is ``(E*s, out)``; one batched matmul
    per layer gives all experts' outputs at once. A gated FFN gives its gate
    projection too (``gate_weight``, like ``fc1_weight``): hidden neurons are
    then ``act(gate) * fc1``.
    """
    n = x.shape[0]
    h = nn.functional.linear(x, fc1_weight, fc1_bias)  # (N, E*s)
    if gate_weight is not None:
        h = act(nn.functional.linear(x, gate_weight, gate_bias)) * h
    else:
        h = act(h)
    s = h.shape[1] // num_experts
    h = h.view(n, num_experts, s).transpose(0, 1)  # (E, N, s)
    out = torch.bmm(h, fc2_weight_t.view(num_experts, s, -1))  # (E, N, out)
    return out.norm(dim=-1).t()


def select_dynamic_k(scores: torch.Tensor, tau: float) -> torch.Tensor:
    """Run expert i iff its predicted norm >= (1 - tau) * the token's largest one.

    ``tau = 1`` selects every expert; ``tau = 0`` only the top expert(s).
    """
    thr = (1.0 - tau) * scores.amax(dim=-1, keepdim=True)
    return scores >= thr


def select_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """MoEfication's rule: the ``k`` experts with the largest predicted norms."""
    k = max(1, min(int(k), scores.shape[-1]))
    idx = scores.topk(k, dim=-1).indices
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, idx, True)
