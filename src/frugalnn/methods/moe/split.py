"""Partition an FFN's hidden neurons into equally sized experts.

MoEfication and D2DMoE both group neurons whose first-layer weight rows point
in similar directions (balanced k-means on L2-normalised rows of ``fc1``):
neurons that respond to similar inputs then land in the same expert, so a
token tends to need few experts. Balanced means every expert gets the same
number of neurons (up to one), which keeps the experts' matmuls the same
shape and their costs equal. MoEfication's alternative, grouping neurons that
fire together on real data (co-activation), is offered as ``method="coactivation"``.

The clustering itself is scikit-learn's :class:`~sklearn.cluster.KMeans`; the
balance is enforced by an exact capacity-constrained assignment solved with
SciPy's :func:`~scipy.optimize.linear_sum_assignment` (each centroid is
replicated as many times as its expert has slots), alternated with centroid
updates for a few rounds.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans

from frugalnn.errors import UserError

__all__ = ["balanced_kmeans", "expert_layout", "split_neurons"]


def expert_layout(
    hidden: int, num_experts: int | None = None, expert_size: int | None = None
) -> tuple[int, int]:
    """``(num_experts, expert_size)`` for an FFN with ``hidden`` neurons.

    Exactly one of the two may be given. When ``hidden`` is not a multiple of
    the expert count, experts hold ``expert_size`` or ``expert_size - 1``
    real neurons (the layer pads the short ones with inert zero neurons).
    """
    if (num_experts is None) == (expert_size is None):
        raise UserError("give exactly one of --experts N or --expert-size S")
    if num_experts is not None:
        if num_experts < 1:
            raise UserError(f"--experts must be at least 1, got {num_experts}")
        if num_experts > hidden:
            raise UserError(
                f"{num_experts} experts for an FFN with only {hidden} hidden neurons; "
                f"use at most {hidden} experts"
            )
        return num_experts, math.ceil(hidden / num_experts)
    assert expert_size is not None
    if expert_size < 1 or expert_size > hidden:
        raise UserError(
            f"--expert-size must be between 1 and the FFN width {hidden}, got {expert_size}"
        )
    num = math.ceil(hidden / expert_size)
    return num, math.ceil(hidden / num)


def _capacities(n: int, k: int) -> np.ndarray:
    base, extra = divmod(n, k)
    return np.array([base + (1 if i < extra else 0) for i in range(k)], dtype=np.int64)


def balanced_kmeans(
    points: np.ndarray, num_clusters: int, *, seed: int = 0, rounds: int = 5
) -> np.ndarray:
    """Cluster label per point, every cluster holding ``n // k`` or ``n // k + 1`` points.

    K-means (scikit-learn) gives centroids; then points are assigned to
    centroid slots by minimum total squared distance under the capacity
    constraint (an assignment problem), and centroids are recomputed from that
    balanced assignment, for ``rounds`` rounds or until it stops changing.
    """
    points = np.asarray(points, dtype=np.float64)
    n = points.shape[0]
    if num_clusters < 1 or num_clusters > n:
        raise UserError(f"cannot form {num_clusters} clusters from {n} neurons")
    caps = _capacities(n, num_clusters)
    if num_clusters == 1:
        return np.zeros(n, dtype=np.int64)
    if num_clusters == n:
        # One neuron per expert: the clustering is irrelevant, keep the order.
        return np.arange(n, dtype=np.int64)
    km = KMeans(n_clusters=num_clusters, n_init=3, random_state=seed).fit(points)
    centroids = km.cluster_centers_
    slot_owner = np.repeat(np.arange(num_clusters), caps)  # slot -> cluster
    labels = None
    for _ in range(rounds):
        d2 = (  # (n, k) squared distances, without an (n, k, dim) temporary
            (points**2).sum(1)[:, None] - 2.0 * points @ centroids.T + (centroids**2).sum(1)[None]
        )
        cost = d2[:, slot_owner]  # (n, n): point x slot
        rows, cols = linear_sum_assignment(cost)
        new = np.empty(n, dtype=np.int64)
        new[rows] = slot_owner[cols]
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        centroids = np.stack([points[labels == c].mean(0) for c in range(num_clusters)])
    assert labels is not None
    return labels


def split_neurons(
    fc1_weight: torch.Tensor,
    num_experts: int,
    *,
    method: str = "kmeans",
    activations: torch.Tensor | None = None,
    seed: int = 0,
    gate_weight: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Neuron indices of each expert (a partition of ``range(hidden)``).

    ``method="kmeans"``: balanced k-means on L2-normalised rows of ``fc1``.
    ``method="coactivation"``: balanced k-means on each neuron's L2-normalised
    firing pattern (``activations > 0``) over sample tokens, shape
    ``(tokens, hidden)``, so neurons that fire together share an expert.
    ``method="sequential"``: neurons in their original order (a baseline).
    For a gated FFN, ``gate_weight`` (the gate projection, shaped like
    ``fc1_weight``) joins the k-means features: each neuron is its gate row and
    up row concatenated.
    """
    hidden = fc1_weight.shape[0]
    if method == "kmeans":
        feats = fc1_weight.detach().double().cpu()
        if gate_weight is not None:
            feats = torch.cat([gate_weight.detach().double().cpu(), feats], dim=1)
        feats = feats / feats.norm(dim=1, keepdim=True).clamp_min(1e-12)
    elif method == "coactivation":
        if activations is None:
            raise UserError("co-activation splitting needs sample activations (give --data)")
        fired = (activations.detach().reshape(-1, hidden) > 0).double().cpu().t()
        feats = fired / fired.norm(dim=1, keepdim=True).clamp_min(1e-12)
    elif method == "sequential":
        labels = np.repeat(np.arange(num_experts), _capacities(hidden, num_experts))
        return [torch.from_numpy(np.flatnonzero(labels == e)) for e in range(num_experts)]
    else:
        raise UserError(f"unknown split method {method!r}; use kmeans, coactivation or sequential")
    labels = balanced_kmeans(feats.numpy(), num_experts, seed=seed)
    return [torch.from_numpy(np.flatnonzero(labels == e)) for e in range(num_experts)]
