"""Capsule networks: dynamic-routing CapsNet and Efficient-CapsNet.

``capsnet`` (Sabour, Frosst and Hinton 2017): a ReLU convolution, a primary
capsule convolution whose channels group into ``primary_caps`` capsule types of
``primary_dim`` numbers at every position, and one class capsule of
``class_dim`` numbers per class, computed by routing-by-agreement. The number
of routing iterations is the model's budget knob (``routing_iterations``).

``capsnet_efficient`` (Mazzia, Salvetti and Chiaberge 2021): a four-layer
convolution stem with batch norm, a depthwise primary capsule convolution
whose kernel covers the whole remaining feature map (16 capsules of 8 numbers),
and class capsules computed by self-attention routing (no iterations), about
160 k parameters on MNIST.

Both are staged models: ``embed`` is the convolution stem, ``blocks`` are
[:class:`PrimaryCapsules`, the class capsules (transformation + routing)],
``classify`` gives the capsule lengths. Both share :class:`CapsuleTransform`
(``blocks[1].transform``), the per-pair pose transformation
``u_hat[b, i, j] = W[i, j] @ u[b, i]`` with ``W`` of shape
``(in_caps, out_caps, out_dim, in_dim)``; it is what
:mod:`frugalnn.methods.lowrank.capsule` factorises. Every product (the
transformation, the routing's weighted sums and agreements) runs as an
``einsum`` that PyTorch dispatches to ``bmm``, so :func:`frugalnn.measure`
counts it.

The models return class scores = the lengths of the class capsules, so any
top-1 evaluation works unchanged; ``forward(x, targets=y)`` also returns the
decoder's reconstruction (when the model has one). Training uses the margin
loss (plus ``recon_weight`` x the per-example summed squared reconstruction
error), which :func:`frugalnn.train.fit` picks up from
:meth:`CapsuleModel.training_loss`. The reconstruction targets the input as
the data pipeline delivers it (normalised pixels), so the decoder ends
linearly rather than with the paper's sigmoid on [0, 1] pixels.

Small images (the 8x8 ``digits`` set): the default kernels do not fit, so
``capsnet`` uses 3x3 kernels below 20 pixels and ``capsnet_efficient`` pads its
stem convolutions to keep the map size below 24 pixels; give ``kernel_size`` /
``padding`` to choose yourself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from frugalnn.errors import UserError
from frugalnn.models.base import StagedModel
from frugalnn.models.registry import register_model
from frugalnn.utils.batch import split_batch

M_PLUS, M_MINUS, LAMBDA = 0.9, 0.1, 0.5


def squash(s: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """Sabour et al.'s squashing: ``|s|^2 / (1 + |s|^2) * s / |s|``."""
    n2 = (s * s).sum(dim, keepdim=True)
    return n2 / (1.0 + n2) * s / torch.sqrt(n2 + eps)


def squash_exp(s: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """Efficient-CapsNet's squashing: ``(1 - exp(-|s|)) * s / |s|``."""
    n = torch.sqrt((s * s).sum(dim, keepdim=True) + eps)
    return (1.0 - torch.exp(-n)) * s / n


def capsule_lengths(v: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Lengths of capsules ``(..., dim)`` (with an epsilon so the gradient is finite at 0)."""
    return torch.sqrt((v * v).sum(-1) + eps)


def margin_loss(lengths: torch.Tensor, targets: torch.Tensor, m_plus: float = M_PLUS,
                m_minus: float = M_MINUS, lam: float = LAMBDA) -> torch.Tensor:
    """Margin loss, summed over classes and averaged over the batch.

    ``L_k = T_k max(0, m+ - |v_k|)^2 + lam (1 - T_k) max(0, |v_k| - m-)^2``.
    """
    if lengths.dim() != 2 or targets.shape != lengths.shape[:1]:
        raise UserError(f"margin loss needs (B, C) capsule lengths and (B,) class ids, got "
                        f"{tuple(lengths.shape)} and {tuple(targets.shape)}")
    t = F.one_hot(targets.long(), lengths.shape[1]).to(lengths.dtype)
    present = t * F.relu(m_plus - lengths) ** 2
    absent = lam * (1.0 - t) * F.relu(lengths - m_minus) ** 2
    return (present + absent).sum(1).mean()


class CapsuleTransform(nn.Module):
    """Pose predictions ``u_hat[b, i, j, :] = W[i, j] @ u[b, i, :]``.

    ``weight`` has shape ``(in_caps, out_caps, out_dim, in_dim)``; the input
    ``(B, in_caps, in_dim)`` gives ``(B, in_caps, out_caps, out_dim)``.
    """

    def __init__(self, in_caps: int, out_caps: int, in_dim: int, out_dim: int,
                 init_std: float = 0.01) -> None:
        super().__init__()
        self.in_caps, self.out_caps, self.in_dim, self.out_dim = in_caps, out_caps, in_dim, out_dim
        self.weight = nn.Parameter(torch.randn(in_caps, out_caps, out_dim, in_dim) * init_std)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        check_capsule_input(u, self.in_caps, self.in_dim)
        return torch.einsum("ijod,bid->bijo", self.weight, u)

    def extra_repr(self) -> str:
        return (f"in_caps={self.in_caps}, out_caps={self.out_caps}, in_dim={self.in_dim}, "
                f"out_dim={self.out_dim}")


def check_capsule_input(u: torch.Tensor, in_caps: int, in_dim: int) -> None:
    if u.dim() != 3 or tuple(u.shape[1:]) != (in_caps, in_dim):
        raise UserError(f"capsule transform expects (B, {in_caps}, {in_dim}) capsules, got "
                        f"{tuple(u.shape)}")


def dynamic_routing(u_hat: torch.Tensor, iterations: int) -> torch.Tensor:
    """Routing-by-agreement (Sabour et al. 2017, procedure 1) on ``(B, I, J, O)`` predictions.

    Each iteration: coupling ``c = softmax_j(b)``, ``s_j = sum_i c_ij u_hat_ij``,
    ``v_j = squash(s_j)``; all but the last add the agreement
    ``u_hat_ij . v_j`` to the logits ``b``. Returns ``(B, J, O)``.
    """
    # One (B, J, I, O) copy up front (free when u_hat is already laid out so), then every
    # iteration is two batched matrix products reading it in place; einsum on (B, I, J, O)
    # re-copies the whole tensor at every sum and agreement (5 copies at 3 iterations).
    u = u_hat.permute(0, 2, 1, 3).contiguous()
    b = u.new_zeros(u.shape[:3])  # (B, J, I) logits
    v = u.new_zeros(u.shape[0], u.shape[1], u.shape[3])
    for r in range(iterations):
        c = torch.softmax(b, dim=1)
        v = squash((c.unsqueeze(2) @ u).squeeze(2))  # (B, J, O)
        if r < iterations - 1:
            b = b + (u @ v.unsqueeze(-1)).squeeze(-1)
    return v


def attention_routing(u_hat: torch.Tensor, log_prior: torch.Tensor) -> torch.Tensor:
    """Efficient-CapsNet's self-attention routing on ``(B, I, J, O)`` predictions.

    For every class capsule ``j`` the agreement of the input capsules with each
    other, ``A_j = u_hat_j u_hat_j^T / sqrt(O)``, summed over partners, gives
    coupling logits normalised over the class capsules; the log prior ``(I, J)``
    is added and ``s_j = sum_i c_ij u_hat_ij``. Returns ``(B, J, O)``.
    """
    agree = torch.einsum("bijo,bkjo->bjik", u_hat, u_hat) / math.sqrt(u_hat.shape[-1])
    c = torch.softmax(agree.sum(-1), dim=1) + log_prior.t()
    return squash_exp(torch.einsum("bji,bijo->bjo", c, u_hat))


class PrimaryCapsules(nn.Module):
    """A convolution whose channels group into capsules of ``dim`` numbers, squashed.

    ``(B, C, H, W)`` feature maps give ``(B, C // dim * H' * W', dim)`` capsules
    (capsule type major, then position).
    """

    def __init__(self, conv: nn.Conv2d, dim: int, squash_exp: bool = False) -> None:
        super().__init__()
        self.conv, self.dim, self.squash_exp = conv, int(dim), bool(squash_exp)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        p = self.conv(h)
        b, c, hh, ww = p.shape
        u = p.view(b, c // self.dim, self.dim, hh, ww).permute(0, 1, 3, 4, 2)
        u = u.reshape(b, -1, self.dim)
        return squash_exp(u) if self.squash_exp else squash(u)


class DynamicRoutingCapsules(nn.Module):
    """Class capsules from routing-by-agreement over ``transform``'s predictions."""

    def __init__(self, transform: CapsuleTransform, iterations: int) -> None:
        super().__init__()
        self.transform, self.iterations = transform, _check_iterations(iterations)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return dynamic_routing(self.transform(u), self.iterations)


class AttentionRoutingCapsules(nn.Module):
    """Class capsules from self-attention routing, with a learnt log prior ``(I, J)``."""

    def __init__(self, transform: CapsuleTransform) -> None:
        super().__init__()
        self.transform = transform
        self.log_prior = nn.Parameter(torch.zeros(transform.in_caps, transform.out_caps))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return attention_routing(self.transform(u), self.log_prior)


class CapsuleModel(StagedModel):
    """What both capsule networks share: the stages, class scores, decoder, training loss.

    Staged as ``embed`` (the convolution stem), ``blocks`` = [primary capsules,
    class capsules] and ``classify`` (capsule lengths).
    """

    feature_kind = "vector"
    recon_weight: float = 0.0005
    decoder: nn.Module | None
    stem: nn.Module

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)

    def classify(self, state: torch.Tensor) -> torch.Tensor:
        return capsule_lengths(state)

    def _decoder(self, num_classes: int, class_dim: int, hidden: Sequence[int],
                 input_shape: Sequence[int]) -> nn.Module:
        layers: list[nn.Module] = []
        width = num_classes * class_dim
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        layers.append(nn.Linear(width, math.prod(input_shape)))
        return nn.Sequential(*layers)

    def class_capsules(self, x: torch.Tensor) -> torch.Tensor:
        """The class capsules ``(B, num_classes, class_dim)``."""
        state = self.embed(x)
        for block in self.blocks:
            state = block(state)
        return state

    def reconstruct(self, v: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Decode the capsule of ``targets`` (else of the longest capsule); the others masked."""
        if self.decoder is None:
            raise UserError("this capsule network has no decoder; build it with "
                            "reconstruction=True")
        if targets is None:
            targets = capsule_lengths(v).argmax(1)
        mask = F.one_hot(targets.long(), v.shape[1]).to(v.dtype).unsqueeze(-1)
        out = self.decoder((v * mask).flatten(1))
        return out.view(v.shape[0], *self.input_shape)

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> Any:
        v = self.class_capsules(x)
        lengths = capsule_lengths(v)
        if targets is None or self.decoder is None:
            return lengths
        return lengths, self.reconstruct(v, targets)

    def training_loss(self, net: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Margin loss (+ weighted reconstruction loss) of ``net`` (this model, maybe wrapped)."""
        x, y = split_batch(batch)
        if self.decoder is None:
            lengths = net(x)
            return margin_loss(lengths, y), lengths
        lengths, recon = net(x, targets=y)
        sse = ((recon - x) ** 2).flatten(1).sum(1).mean()
        return margin_loss(lengths, y) + self.recon_weight * sse, lengths


def _out(n: int, k: int, s: int = 1, p: int = 0) -> int:
    return (n + 2 * p - k) // s + 1


class CapsNet(CapsuleModel):
    """Sabour et al.'s CapsNet; the budget knob is the number of routing iterations."""

    budget_name = "routing_iterations"

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10,
                 conv_channels: int = 256, kernel_size: int | None = None,
                 primary_caps: int = 32, primary_dim: int = 8, primary_stride: int = 2,
                 class_dim: int = 16, routing_iterations: int = 3, reconstruction: bool = True,
                 decoder_hidden: Sequence[int] = (512, 1024),
                 recon_weight: float = 0.0005) -> None:
        super().__init__()
        k = int(kernel_size) if kernel_size is not None else (9 if image_size >= 20 else 3)
        grid = _out(_out(image_size, k), k, primary_stride)
        if grid < 1:
            raise UserError(f"capsnet: {image_size}x{image_size} images are too small for "
                            f"{k}x{k} kernels; give a smaller kernel_size")
        self.input_shape = (in_channels, image_size, image_size)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, conv_channels, k), nn.ReLU())
        in_caps = primary_caps * grid * grid
        # Scaled so that the class capsules start near half length whatever the sizes.
        transform = CapsuleTransform(in_caps, num_classes, primary_dim, class_dim,
                                     init_std=0.5 * num_classes / math.sqrt(in_caps * class_dim))
        self.default_iterations = _check_iterations(routing_iterations)
        self.blocks = nn.ModuleList([
            PrimaryCapsules(nn.Conv2d(conv_channels, primary_caps * primary_dim, k,
                                      primary_stride), primary_dim),
            DynamicRoutingCapsules(transform, self.default_iterations),
        ])
        self.recon_weight = float(recon_weight)
        self.decoder = (self._decoder(num_classes, class_dim, decoder_hidden, self.input_shape)
                        if reconstruction else None)

    # -- budget knob (frugalnn.budget.Budgeted) ---------------------------------------------
    def budget_values(self) -> list[float]:
        return [float(r) for r in range(1, self.default_iterations + 1)]

    def full_budget(self) -> float:
        return float(self.default_iterations)

    def set_budget(self, value: float) -> None:
        self.blocks[-1].iterations = _check_iterations(value)


def _check_iterations(value: Any) -> int:
    try:
        n = float(value)
    except (TypeError, ValueError):
        n = math.nan
    if not n >= 1 or n != int(n):
        raise UserError(f"routing iterations must be a whole number >= 1, got {value!r}")
    return int(n)


class EfficientCapsNet(CapsuleModel):
    """Efficient-CapsNet: conv stem, depthwise primary capsules, self-attention routing."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10,
                 widths: Sequence[int] = (32, 64, 64, 128), kernels: Sequence[int] = (5, 3, 3, 3),
                 padding: bool | None = None, primary_dim: int = 8, class_dim: int = 16,
                 reconstruction: bool = False, decoder_hidden: Sequence[int] = (512, 1024),
                 recon_weight: float = 0.0005) -> None:
        super().__init__()
        if len(widths) != len(kernels) or not widths:
            raise UserError("capsnet_efficient: widths and kernels need one entry per stem conv")
        if widths[-1] % primary_dim:
            raise UserError(f"capsnet_efficient: the last stem width {widths[-1]} is not a "
                            f"multiple of primary_dim={primary_dim}")
        pad = image_size < 24 if padding is None else bool(padding)
        layers: list[nn.Module] = []
        size, cin = image_size, in_channels
        for n, (w, k) in enumerate(zip(widths, kernels)):
            stride = 2 if n == len(widths) - 1 else 1
            p = k // 2 if pad else 0
            layers += [nn.Conv2d(cin, w, k, stride, p), nn.BatchNorm2d(w), nn.ReLU()]
            size, cin = _out(size, k, stride, p), w
        if size < 1:
            raise UserError(f"capsnet_efficient: {image_size}x{image_size} images are too small "
                            "for the stem; pass padding=true or smaller kernels")
        self.input_shape = (in_channels, image_size, image_size)
        self.stem = nn.Sequential(*layers)
        transform = CapsuleTransform(cin // primary_dim, num_classes, primary_dim, class_dim,
                                     init_std=1.0 / math.sqrt(primary_dim))
        self.blocks = nn.ModuleList([
            # depthwise, its kernel the whole map: one position left per channel
            PrimaryCapsules(nn.Conv2d(cin, cin, size, groups=cin), primary_dim, squash_exp=True),
            AttentionRoutingCapsules(transform),
        ])
        self.recon_weight = float(recon_weight)
        self.decoder = (self._decoder(num_classes, class_dim, decoder_hidden, self.input_shape)
                        if reconstruction else None)


@register_model("capsnet", input_shape=(1, 28, 28),
                description="CapsNet with dynamic routing (Sabour et al. 2017)")
def capsnet(in_channels: int = 1, image_size: int = 28, num_classes: int = 10,
            conv_channels: int = 256, kernel_size: int | None = None, primary_caps: int = 32,
            primary_dim: int = 8, primary_stride: int = 2, class_dim: int = 16,
            routing_iterations: int = 3, reconstruction: bool = True,
            decoder_hidden: Sequence[int] = (512, 1024),
            recon_weight: float = 0.0005) -> CapsNet:
    return CapsNet(in_channels, image_size, num_classes, conv_channels, kernel_size,
                   primary_caps, primary_dim, primary_stride, class_dim, routing_iterations,
                   reconstruction, decoder_hidden, recon_weight)


@register_model("capsnet_efficient", input_shape=(1, 28, 28),
                description="Efficient-CapsNet, self-attention routing (Mazzia et al. 2021)")
def capsnet_efficient(in_channels: int = 1, image_size: int = 28, num_classes: int = 10,
                      widths: Sequence[int] = (32, 64, 64, 128),
                      kernels: Sequence[int] = (5, 3, 3, 3), padding: bool | None = None,
                      primary_dim: int = 8, class_dim: int = 16, reconstruction: bool = False,
                      decoder_hidden: Sequence[int] = (512, 1024),
                      recon_weight: float = 0.0005) -> EfficientCapsNet:
    return EfficientCapsNet(in_channels, image_size, num_classes, widths, kernels, padding,
                            primary_dim, class_dim, reconstruction, decoder_hidden, recon_weight)
