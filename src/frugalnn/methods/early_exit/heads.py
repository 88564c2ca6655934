"""Internal classifier heads attached to intermediate blocks.

Each head turns a block's state into class logits cheaply, so that an early
exit costs a small fraction of the blocks it saves:

* images (``(B, C, H, W)``): the SDN-style feature reduction, i.e. average
  *and* max pooling down to ``pool_size x pool_size`` (parameter free, so the
  pooled features of a frozen backbone can be cached), then one linear layer;
* tokens (``(B, T, D)``): the first (CLS) token or the mean over real tokens,
  then LayerNorm and one linear layer;
* vectors (``(B, D)``, the MLP): one linear layer.

A head is split into ``features(state)`` (fixed, no parameters) and
``classify(features, prev_logits)`` (trainable). With ``cascade=True``
(Zero-Time-Waste) the classifier also receives the previous head's logits,
detached so that a head never pushes gradients into its predecessor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from frugalnn.errors import UserError
from frugalnn.models.base import State, hidden_of

HEAD_KINDS = ("auto", "pool", "cls", "mean", "linear")


def _window_max(h: torch.Tensor, s: int, k: tuple[int, int]) -> torch.Tensor:
    """``F.max_pool2d(h, k)`` for an ``s*k`` map, exactly, but fast in NCHW layout.

    On CPU, PyTorch's NCHW max pooling runs at a quarter to a third of the speed of
    average pooling at batch 64 (`benchmarks/results/head_pooling.md`), which
    made it a visible share of ResNet-56's time with 13 heads; the maximum over
    columns and then over rows of contiguous views is 1.8-2.8x faster there and
    gives the same values (a maximum involves no rounding). Below 16 rows the
    stock kernel is the faster one (:func:`_max_pool` picks). Channels-last
    tensors keep the native kernel, which is fast in that layout.
    """
    if not h.is_contiguous():
        return F.max_pool2d(h, k)
    b, c, height, width = h.shape
    cols = h.view(b, c, height, s, k[1]).amax(dim=4)  # (b, c, height, s)
    return cols.view(b, c, s, k[0], s).amax(dim=3)


# Below this many rows the stock kernel wins in NCHW as well (1.2-1.8x faster at batch
# 1-8 on a 2-core AMD EPYC, 2026-12-02; `benchmarks/head_pooling.py --batch-sizes ...`), and at
# batch 1 head overhead is what limits early-exit speed-ups.
WINDOW_MAX_MIN_ROWS = 16


def _max_pool(h: torch.Tensor, s: int, k: tuple[int, int]) -> torch.Tensor:
    """``F.max_pool2d(h, k)`` by whichever exact kernel is faster for this batch and layout."""
    if h.shape[0] >= WINDOW_MAX_MIN_ROWS and h.is_contiguous():
        return _window_max(h, s, k)
    return F.max_pool2d(h, k)


def _token_mask(state: State) -> torch.Tensor | None:
    """The ``(B, T)`` mask of real tokens in a dict state, if it carries one."""
    if not isinstance(state, dict):
        return None
    for key in ("attention_mask", "mask"):
        mask = state.get(key)
        if mask is not None and mask.dim() == 2:
            return mask
    return None


class ExitHead(nn.Module):
    """One internal classifier: fixed feature reduction, then a linear layer."""

    def __init__(
        self,
        kind: str,
        channels: int,
        num_classes: int,
        *,
        pool_size: int = 4,
        spatial: int | None = None,
        cascade_in: int = 0,
    ) -> None:
        super().__init__()
        if kind not in ("pool", "cls", "mean", "linear"):
            raise UserError(f"unknown head kind {kind!r}; use one of {', '.join(HEAD_KINDS)}")
        self.kind = kind
        self.cascade_in = cascade_in
        if kind == "pool":
            # SDN reduces large maps to 4x4 before the linear layer; smaller maps stay as they are.
            self.pool_size = min(pool_size, spatial) if spatial else pool_size
            in_features = 2 * channels * self.pool_size**2
            self.norm: nn.Module = nn.Identity()
        elif kind == "linear":
            self.pool_size = 0
            in_features = channels
            self.norm = nn.Identity()
        else:
            self.pool_size = 0
            in_features = channels
            self.norm = nn.LayerNorm(channels)
        self.feature_dim = in_features
        self.linear = nn.Linear(in_features + cascade_in, num_classes)

    def features(self, state: State) -> torch.Tensor:
        """Parameter-free reduction of the state to a ``(B, feature_dim)`` tensor."""
        h = hidden_of(state)
        if self.kind == "pool":
            s = self.pool_size
            height, width = h.shape[-2:]
            if height % s == 0 and width % s == 0:
                # Same windows as the adaptive ops (bit-identical), but the fixed-kernel
                # kernels are faster; at batch size 1 head overhead is what limits speed-ups.
                k = (height // s, width // s)
                avg, mx = F.avg_pool2d(h, k), _max_pool(h, s, k)
            else:
                avg, mx = F.adaptive_avg_pool2d(h, s), F.adaptive_max_pool2d(h, s)
            return torch.cat([avg, mx], dim=1).flatten(1)
        if self.kind == "linear":
            return h.flatten(1)
        if self.kind == "cls":
            return h[:, 0]
        mask = _token_mask(state)
        if mask is None:
            return h.mean(dim=1)
        m = mask.to(h.dtype).unsqueeze(-1)
        return (h * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)

    def classify(
        self, feats: torch.Tensor, prev_logits: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits from reduced features (and the previous head's logits when cascading)."""
        z = self.norm(feats)
        if self.cascade_in:
            if prev_logits is None:
                prev_logits = z.new_zeros(z.shape[0], self.cascade_in)
            z = torch.cat([z, prev_logits.detach()], dim=1)
        return self.linear(z)

    def forward(self, state: State, prev_logits: torch.Tensor | None = None) -> torch.Tensor:
        return self.classify(self.features(state), prev_logits)


def resolve_head_kind(head: str, model: nn.Module) -> str:
    """Pick the head design for a backbone (``auto``: pooling for images, CLS/mean for tokens)."""
    kind = getattr(model, "feature_kind", None)
    if head not in HEAD_KINDS:
        raise UserError(f"unknown head {head!r}; use one of {', '.join(HEAD_KINDS)}")
    if kind == "image":
        if head not in ("auto", "pool"):
            raise UserError(f"head {head!r} needs token features; image backbones take 'pool'")
        return "pool"
    if kind == "tokens":
        if head == "pool":
            raise UserError(
                "head 'pool' needs image features; token backbones take 'cls' or 'mean'"
            )
        if head == "auto":
            return "cls" if _uses_cls_token(model) else "mean"
        return head
    if kind == "vector":
        if head not in ("auto", "linear"):
            raise UserError(f"head {head!r} does not fit vector features; use 'linear'")
        return "linear"
    raise UserError(
        f"backbone feature_kind {kind!r} is not supported; early exits need 'image', "
        "'tokens' or 'vector' states"
    )


def _uses_cls_token(model: nn.Module) -> bool:
    """Whether the backbone's own classifier reads a CLS token (then the heads do too)."""
    pool = getattr(model, "pool", None)
    if isinstance(pool, str):
        return pool == "cls"
    return getattr(model, "cls_token", None) is not None
