"""Nonlinear tensor factorisation: factorised chains with a learnable kink between factors.

A linear factorisation (:mod:`frugalnn.methods.lowrank.layers`) replaces a
layer ``W`` by a chain of small linear maps, ``W ~ U2 U1``; the chain can only
represent rank-limited *linear* maps. The layers here put a per-channel
nonlinearity between consecutive factors, ``U2 phi(U1 x)``, so the same
factors (the same parameters, up to two numbers per bottleneck channel) can
represent functions a rank-limited linear map cannot. The nonlinearity is a
learnable kink on an identity path::

    phi(h)[c] = h[c] + scale[c] * relu(h[c] - shift[c])      scale = shift = 0 at start

so at initialisation from the linear decomposition the layer *is* the linear
factorisation (same outputs), and training decides per channel how bent the
map becomes (``scale = -1`` clips at ``shift``, a ReLU up to sign).

==================  ========================================================
``svd-nl``          Linear / 1x1 conv: first -> phi -> second
``tucker-nl``       1x1 (in->r_in) -> phi -> KxK -> phi -> 1x1 (r_out->out)
``tt-nl``           TT chain with phi between consecutive present cores (at
                    full end ranks: Kx1 -> phi -> 1xK)
==================  ========================================================

The methods are selected by name wherever the linear ones are
(``LowRankConfig(method="tt-nl")``, ``frugalnn lowrank compress --method
tt-nl``); ranks are chosen for the linear chain (same criteria, same ranks),
the ``"lowrank"`` transformation record names the method, so checkpoints
rebuild. Costs: the factors' parameters and FLOPs are the linear chain's; the
extras are ``2 * channels`` parameters per kink (:func:`extra_params`) and
elementwise work, which ``FlopCounterMode`` does not count (as for every
activation in frugalnn).

Training: :func:`distill_layers` fits every factorised layer to the output of
the layer it replaced, on the inputs the original model feeds it (layer-wise
output MSE on calibration batches), before the recipe's end-to-end
distillation fine-tune (``LowRankConfig.layerwise_steps``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from frugalnn.errors import UserError
from frugalnn.methods.lowrank import layers as L
from frugalnn.methods.lowrank.costs import chain_flops
from frugalnn.methods.lowrank.geometry import ConvSpec
from frugalnn.utils.batch import call_model, inputs_of, to_device

SUFFIX = "-nl"
METHODS = ("svd-nl", "tucker-nl", "tt-nl")
#: Layer-wise distillation steps a nonlinear method gets unless the config says otherwise.
DEFAULT_LAYERWISE_STEPS = 200


def linear_method(method: str) -> str:
    """The linear factorisation a method's factors come from (``tt-nl`` -> ``tt``)."""
    return method[: -len(SUFFIX)] if method.endswith(SUFFIX) else method


def is_nonlinear(method: str) -> bool:
    return method in METHODS


class ChannelKink(nn.Module):
    """``h + scale * relu(h - shift)`` per channel; the identity at initialisation.

    ``dim`` is the channel dimension (1 for ``(N, C, H, W)``, -1 for tokens).
    Applied to fewer channels than it has (the rank knob), it uses the first ones.
    """

    def __init__(self, channels: int, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim
        self.scale = nn.Parameter(torch.zeros(channels))
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        n = h.shape[self.dim]
        shape = [1] * h.dim()
        shape[self.dim] = n
        s, t = self.scale[:n].view(shape), self.shift[:n].view(shape)
        return torch.addcmul(h, s, F.relu(h - t))

    def extra_repr(self) -> str:
        return f"channels={self.scale.numel()}"


class _Nonlinear:
    """What the nonlinear chains share: FLOPs of the linear chain (kinks are elementwise)."""

    linear: str = ""

    def flops(self, h: int = 1, w: int = 1) -> int:
        """FLOPs for one example (as ``FlopCounterMode`` counts them: the factors only)."""
        dw = getattr(self, "depthwise", "separable")
        return chain_flops(self.linear, self.spec, self.active_ranks(), h, w, dw)  # type: ignore[attr-defined]


class NLSVDLinear(_Nonlinear, L.SVDLinear):
    """``Linear(in, out)`` as ``second(phi(first(x)))``."""

    method, linear = "svd-nl", "svd"

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, rank, bias)
        self.act = ChannelKink(self.ranks[0], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rank_fraction == 1.0:
            return self.second(self.act(self.first(x)))
        (k,) = self.active_ranks()
        h = self.act(F.linear(x, self.first.weight[:k]))
        return F.linear(h, self.second.weight[:, :k], self.second.bias)


class NLSVDConv1x1(_Nonlinear, L.SVDConv1x1):
    """A 1x1 convolution as ``second(phi(first(x)))``."""

    method, linear = "svd-nl", "svd"

    def __init__(self, spec: ConvSpec, rank: int) -> None:
        super().__init__(spec, rank)
        self.act = ChannelKink(self.ranks[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rank_fraction == 1.0:
            return self.second(self.act(self.first(x)))
        (k,) = self.active_ranks()
        h = self.act(L._conv(self.first, x, k, None))
        return L._conv(self.second, h, self.spec.out_channels, k)


class NLTuckerConv2d(_Nonlinear, L.TuckerConv2d):
    """Tucker-2 with kinks: 1x1 -> phi -> KxK -> phi -> 1x1."""

    method, linear = "tucker-nl", "tucker"

    def __init__(self, spec: ConvSpec, ranks: tuple[int, int]) -> None:
        super().__init__(spec, ranks)
        self.act_in = ChannelKink(self.ranks[0])
        self.act_out = ChannelKink(self.ranks[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rank_fraction == 1.0:
            return self.pw_out(self.act_out(self.core(self.act_in(self.pw_in(x)))))
        ri, ro = self.active_ranks()
        h = self.act_in(L._conv(self.pw_in, x, ri, None))
        h = self.act_out(L._conv(self.core, h, ro, ri))
        return L._conv(self.pw_out, h, self.spec.out_channels, ro)


class NLTTConv2d(_Nonlinear, L.TTConv2d):
    """Tensor-train with a kink between consecutive present cores."""

    method, linear = "tt-nl", "tt"

    def __init__(self, spec: ConvSpec, ranks: tuple[int, int, int]) -> None:
        super().__init__(spec, ranks)
        r1, r2, r3 = self.ranks
        self.register_module("act1", None if self.absorb_in else ChannelKink(r1))
        self.act2 = ChannelKink(r2)
        self.register_module("act3", None if self.absorb_out else ChannelKink(r3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        full = self.rank_fraction == 1.0
        r1, r2, r3 = self.active_ranks()
        h = x
        if not self.absorb_in:
            h = self.act1(self.c1(h) if full else L._conv(self.c1, h, r1, None))
        h = self.c2(h) if full else L._conv(self.c2, h, r2, None if self.absorb_in else r1)
        h = self.c3(self.act2(h)) if full else L._conv(self.c3, self.act2(h), r3, r2)
        if self.absorb_out:
            return h
        h = self.act3(h)
        return self.c4(h) if full else L._conv(self.c4, h, self.spec.out_channels, r3)


_CONV = {"svd-nl": NLSVDConv1x1, "tucker-nl": NLTuckerConv2d, "tt-nl": NLTTConv2d}


def build(module: nn.Module, method: str, ranks: tuple[int, ...],
          from_weights: bool = True) -> L.FactorizedLayer:
    """The nonlinear chain of ``method`` for ``module`` (an ``nn.Linear`` or ``nn.Conv2d``).

    ``from_weights``: factors from the linear decomposition of the module's
    weights (kinks at the identity: outputs equal the linear chain's); else an
    untrained structure for a checkpoint to fill.
    """
    if method not in METHODS:
        raise UserError(f"unknown nonlinear factorisation {method!r}; choose one of "
                        f"{', '.join(METHODS)}")
    ranks = L.normalize_ranks(linear_method(method), ranks)
    if isinstance(module, nn.Linear):
        if method != "svd-nl":
            raise UserError(f"{method} factorises convolutions; use svd-nl for a Linear")
        if from_weights:
            return NLSVDLinear.from_linear(module, ranks[0])
        layer = NLSVDLinear(module.in_features, module.out_features, ranks[0],
                            module.bias is not None)
        return layer.to(module.weight.device, module.weight.dtype)
    cls = _CONV[method]
    arg: Any = ranks[0] if method == "svd-nl" else ranks
    return cls.from_conv(module, arg) if from_weights else cls._from(module, arg)


def kink_channels(method: str, spec: ConvSpec, ranks: tuple[int, ...]) -> int:
    """Bottleneck channels that carry a kink in ``method``'s chain at ``ranks``."""
    if not is_nonlinear(method):
        return 0
    if method == "tt-nl":
        from frugalnn.methods.lowrank.costs import tt_absorbed

        a_in, a_out = tt_absorbed(spec, ranks)
        return (0 if a_in else ranks[0]) + ranks[1] + (0 if a_out else ranks[2])
    return sum(ranks)


def extra_params(method: str, spec: ConvSpec, ranks: tuple[int, ...]) -> int:
    """Parameters a nonlinear chain has beyond its linear one: scale and shift per kink."""
    return 2 * kink_channels(method, spec, ranks)


# -- layer-wise distillation -------------------------------------------------------------


def distill_layers(teacher: nn.Module, student: nn.Module, batches: Iterable[Any], *,
                   steps: int = DEFAULT_LAYERWISE_STEPS, lr: float = 1e-3,
                   device: str | torch.device = "cpu") -> dict[str, Any]:
    """Fit each factorised layer of ``student`` to the same-named module of ``teacher``.

    Every step runs ``teacher`` on one batch (cycling through ``batches``,
    ``(inputs, labels)`` pairs or dicts with ``"labels"``), records what each
    replaced module receives and returns, and takes one Adam step on the sum
    over layers of ``MSE(layer(input), output) / var(output)``: each layer
    learns to reproduce its original on the inputs the original model gives
    it, independently of the other layers' errors. Only the factorised layers'
    parameters move. Returns the history: the mean relative error of the first
    and the last 10 steps, the steps taken and the seconds.
    """
    if steps < 0:
        raise UserError(f"layer-wise distillation steps must be >= 0, got {steps}")
    names = [n for n, m in student.named_modules() if isinstance(m, L.FactorizedLayer)]
    if not names:
        raise UserError(f"{type(student).__name__} has no factorised layer to distil")
    pairs: dict[str, tuple[nn.Module, nn.Module]] = {}
    for n in names:
        try:
            pairs[n] = (teacher.get_submodule(n), student.get_submodule(n))
        except AttributeError:
            raise UserError(f"the teacher has no module {n!r} to distil the student's "
                            "factorised layer from; was it compressed from this model?") from None
    params = [p for _, layer in pairs.values() for p in layer.parameters()]
    opt = torch.optim.Adam(params, lr=lr)
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(name: str):
        def fn(_m: nn.Module, inputs: tuple[Any, ...], out: torch.Tensor) -> None:
            seen[name] = (inputs[0].detach(), out.detach())
        return fn

    handles = [pairs[n][0].register_forward_hook(hook(n)) for n in names]
    was = teacher.training
    teacher.eval()
    losses: list[float] = []
    start = time.perf_counter()
    try:
        while len(losses) < steps:
            before = len(losses)
            for batch in batches:
                if len(losses) >= steps:
                    break
                x = inputs_of(batch)
                seen.clear()
                with torch.no_grad():
                    call_model(teacher, to_device(x, device))
                loss = sum(F.mse_loss(pairs[n][1](inp), out) / (out.var() + 1e-8)
                           for n, (inp, out) in seen.items()) / max(len(seen), 1)
                opt.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[union-attr]
                opt.step()
                losses.append(float(loss.detach()))  # type: ignore[union-attr]
            if len(losses) == before:
                raise UserError("layer-wise distillation got no batches; give training data")
    finally:
        for h in handles:
            h.remove()
        teacher.train(was)
    head, tail = losses[:10], losses[-10:]
    return {"steps": len(losses), "lr": lr, "seconds": time.perf_counter() - start,
            "layers": len(names),
            "rel_error_first": sum(head) / max(len(head), 1),
            "rel_error_last": sum(tail) / max(len(tail), 1)}
