"""Dense model -> mixture-of-experts model, with a budget knob.

:func:`convert_to_moe` splits every FFN of a :class:`StagedModel` into experts
(:mod:`.split`), installs a :class:`MoEFFN` at each site, trains the routers
(:func:`train_routers`) and wraps the result in :class:`MoEModel`, which
implements the :class:`frugalnn.budget.Budgeted` knob: ``tau`` for dynamic-k
routing (1 = every expert = the dense model) or ``k`` for top-k routing.

The conversion is recorded as the transformation ``"moe"`` whose arguments
(the sites and their expert layout, router width, routing mode) rebuild the
structure, so :func:`frugalnn.train.checkpoint.load_model` restores a
converted model from its checkpoint.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from frugalnn.errors import UserError
from frugalnn.methods.moe._batches import iterate_inputs
from frugalnn.methods.moe.layer import MoEFFN
from frugalnn.methods.moe.router import expert_output_norms
from frugalnn.methods.moe.split import expert_layout, split_neurons
from frugalnn.models.base import FFNSite, WrappedModel, require_ffn_sites
from frugalnn.transforms import record_transform, register_transform
from frugalnn.utils.batch import call_model

__all__ = ["DEFAULT_TAUS", "MoEModel", "collect_ffn_activations", "convert_to_moe", "train_routers"]

DEFAULT_TAUS = (0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
_TOPK_FRACTIONS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.75, 1.0)


class MoEModel(WrappedModel):
    """A staged model whose FFNs are :class:`MoEFFN` layers; one knob for all of them.

    The base model is kept whole under ``base`` (see :class:`WrappedModel`);
    ``embed``, ``blocks``, ``classify`` and ``ffn_sites`` are the base model's.
    """

    def __init__(
        self, base: nn.Module, mode: str = "dynamic", taus: Sequence[float] = DEFAULT_TAUS
    ) -> None:
        super().__init__(base)
        self.taus = sorted({float(t) for t in taus})
        for t in self.taus:
            _check_tau(t)
        self.mode = mode
        self.set_mode(mode)

    def moe_layers(self) -> list[MoEFFN]:
        return [m for m in self.base.modules() if isinstance(m, MoEFFN)]

    # -- budget knob -----------------------------------------------------------------
    @property
    def budget_name(self) -> str:
        return "tau" if self.mode == "dynamic" else "k"

    def set_mode(self, mode: str) -> None:
        """``"dynamic"`` (knob ``tau``) or ``"topk"`` (knob ``k``); resets to full budget."""
        if mode not in ("dynamic", "topk"):
            raise UserError(f"unknown routing mode {mode!r}; use 'dynamic' or 'topk'")
        self.mode = mode
        for layer in self.moe_layers():
            layer.set_mode(mode)
        self.set_budget(self.full_budget())

    def max_experts(self) -> int:
        return max((m.num_experts for m in self.moe_layers()), default=1)

    def budget_values(self) -> list[float]:
        if self.mode == "dynamic":
            return list(self.taus)
        e = self.max_experts()
        return sorted({float(max(1, round(e * f))) for f in _TOPK_FRACTIONS})

    def full_budget(self) -> float:
        return 1.0 if self.mode == "dynamic" else float(self.max_experts())

    def set_budget(self, value: float) -> None:
        if self.mode == "dynamic":
            _check_tau(value)
            for layer in self.moe_layers():
                layer.set_tau(value)
            return
        e = self.max_experts()
        if int(value) != value or not 1 <= value <= e:
            raise UserError(f"k must be an integer in [1, {e}] (experts per layer), got {value}")
        for layer in self.moe_layers():
            layer.set_k(min(int(value), layer.num_experts))

    def set_impl(self, impl: str) -> None:
        """Execution strategy of every MoE layer (``auto``, ``gather`` or ``bmm``)."""
        for layer in self.moe_layers():
            layer.set_impl(impl)

    # -- statistics ------------------------------------------------------------------
    def reset_stats(self) -> None:
        for layer in self.moe_layers():
            layer.reset_stats()

    def ffn_flops_fraction(self) -> float:
        """Expert FLOPs run since ``reset_stats`` / FLOPs of the dense FFNs on the same tokens."""
        run = sum(m.stat_pairs * m.expert_flops for m in self.moe_layers())
        dense = sum(m.stat_tokens * m.num_experts * m.expert_flops for m in self.moe_layers())
        return run / dense if dense else 1.0


def _check_tau(tau: float) -> None:
    if not 0.0 <= float(tau) <= 1.0:
        raise UserError(f"tau must be in [0, 1] (1 = every expert = the dense model), got {tau}")


def _install_layers(
    model: nn.Module, layers: dict[str, MoEFFN], sites: list[FFNSite]
) -> None:
    for site in sites:
        if site.name in layers:
            site.install(layers[site.name])


@register_transform("moe")
def rebuild_moe(
    model: nn.Module,
    *,
    sites: list[dict[str, Any]],
    router_hidden: int = 128,
    mode: str = "dynamic",
    taus: Sequence[float] = DEFAULT_TAUS,
    ffn_pattern: str | None = None,
) -> MoEModel:
    """Recreate the structure of a converted model (weights are loaded afterwards)."""
    by_name = {s.name: s for s in require_ffn_sites(model, "MoE conversion", ffn_pattern)}
    layers = {}
    for spec in sites:
        site = by_name.get(spec["name"])
        if site is None:
            raise UserError(f"checkpoint names FFN site {spec['name']!r}, which the model lacks")
        layers[site.name] = MoEFFN(
            site.fc1.in_features,
            site.fc2.out_features,
            int(spec["num_experts"]),
            int(spec["expert_size"]),
            copy.deepcopy(site.act),
            router_hidden=router_hidden,
            name=site.name,
            gated=bool(spec.get("gated", False)),
        )
    _install_layers(model, layers, list(by_name.values()))
    return MoEModel(model, mode=mode, taus=taus)


def collect_ffn_activations(
    model: nn.Module,
    sites: list[FFNSite],
    loader: Iterable[Any],
    *,
    max_tokens: int = 8192,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """Sample hidden activations ``(tokens, hidden)`` of each FFN (for co-activation)."""
    store: dict[str, list[torch.Tensor]] = {s.name: [] for s in sites}
    counts = dict.fromkeys(store, 0)
    handles = []
    for site in sites:

        def hook(_m: nn.Module, _i: Any, out: torch.Tensor, name: str = site.name) -> None:
            if counts[name] < max_tokens:
                flat = out.detach().reshape(-1, out.shape[-1])[: max_tokens - counts[name]]
                store[name].append(flat.cpu())
                counts[name] += flat.shape[0]

        handles.append(site.act.register_forward_hook(hook))
    try:
        with torch.no_grad():
            for x in iterate_inputs(loader, device):
                call_model(model, x)
                if all(c >= max_tokens for c in counts.values()):
                    break
    finally:
        for h in handles:
            h.remove()
    return {k: torch.cat(v) for k, v in store.items() if v}


def train_routers(
    model: MoEModel,
    loader: Iterable[Any],
    *,
    epochs: int = 1,
    lr: float = 1e-3,
    tokens_per_batch: int = 4096,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """Fit every router to the exact expert output norms (MSE); return final losses.

    The model runs densely (every layer at full budget) so each router sees
    the FFN inputs of the original model; up to ``tokens_per_batch`` tokens
    per layer and batch are sampled to bound memory. Only router parameters
    are updated.
    """
    layers = model.moe_layers()
    saved = [(m.mode, m.tau, m.k) for m in layers]
    for m in layers:
        m.set_mode("dynamic", tau=1.0)
    captured: dict[int, torch.Tensor] = {}
    handles = [
        m.register_forward_pre_hook(lambda mod, args, i=i: captured.__setitem__(i, args[0]))
        for i, m in enumerate(layers)
    ]
    params = [p for m in layers for p in m.router.parameters()]
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    for m in layers:
        m.router.train()
    losses = {m.name: float("nan") for m in layers}
    try:
        for epoch in range(epochs):
            batches = iterate_inputs(loader, device)
            if progress:
                batches = tqdm(batches, desc=f"routers epoch {epoch + 1}/{epochs}", leave=False)
            sums = dict.fromkeys(losses, 0.0)
            n_batches = 0
            for x in batches:
                captured.clear()
                with torch.no_grad():
                    call_model(model, x)
                opt.zero_grad(set_to_none=True)
                total = 0.0
                for i, m in enumerate(layers):
                    tokens = captured[i].detach().reshape(-1, m.dim)
                    if tokens.shape[0] > tokens_per_batch:
                        pick = torch.randperm(tokens.shape[0], generator=gen)[:tokens_per_batch]
                        tokens = tokens[pick.to(tokens.device)]
                    with torch.no_grad():
                        target = expert_output_norms(
                            tokens, m.fc1_weight, m.fc1_bias, m.fc2_weight_t, m.act,
                            m.num_experts, m.gate_weight, m.gate_bias,
                        )
                    loss = nn.functional.mse_loss(m.router(tokens), target)
                    total = total + loss
                    sums[m.name] += loss.item()
                total.backward()  # type: ignore[union-attr]
                opt.step()
                n_batches += 1
            losses = {k: v / max(n_batches, 1) for k, v in sums.items()}
    finally:
        for h in handles:
            h.remove()
        for m, (mode, tau, k) in zip(layers, saved):
            m.set_mode(mode, tau=tau, k=k)
        model.train(was_training)
    return losses


def convert_to_moe(
    model: nn.Module,
    *,
    num_experts: int | None = None,
    expert_size: int | None = None,
    split: str = "kmeans",
    loader: Iterable[Any] | None = None,
    router_epochs: int = 1,
    router_lr: float = 1e-3,
    router_hidden: int = 128,
    mode: str = "dynamic",
    taus: Sequence[float] = DEFAULT_TAUS,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    ffn_pattern: str | None = None,
) -> MoEModel:
    """Convert every FFN of ``model`` into experts and train routers on ``loader``.

    Give ``num_experts`` or ``expert_size`` (per FFN). ``split`` is
    ``kmeans`` (balanced k-means on fc1 rows), ``coactivation`` (needs
    ``loader``) or ``sequential``. With ``router_epochs=0`` routers stay
    untrained (useful only for tests and full-budget use). The returned
    model is at full budget. ``ffn_pattern`` names the FFN modules of a model
    whose FFNs are not recognised (see :mod:`frugalnn.models.adapters.ffn`);
    gated (SwiGLU) FFNs become gated experts.
    """
    sites = require_ffn_sites(model, "MoE conversion", ffn_pattern)
    for t in taus:
        _check_tau(t)
    if (router_epochs > 0 or split == "coactivation") and loader is None:
        raise UserError("router training and co-activation splitting need data; pass --data")
    layouts = {s.name: expert_layout(s.fc1.out_features, num_experts, expert_size) for s in sites}
    acts = (
        collect_ffn_activations(model, sites, loader, device=device)  # type: ignore[arg-type]
        if split == "coactivation"
        else {}
    )
    layers: dict[str, MoEFFN] = {}
    for site in sites:
        e, _ = layouts[site.name]
        experts = split_neurons(
            site.fc1.weight, e, method=split, activations=acts.get(site.name), seed=seed,
            gate_weight=site.gate.weight if site.gate is not None else None,
        )
        layers[site.name] = MoEFFN.from_dense(
            site.fc1, copy.deepcopy(site.act), site.fc2, experts, gate=site.gate,
            router_hidden=router_hidden, name=site.name,
        )
    args: dict[str, Any] = {
        "sites": [
            {"name": n, "num_experts": m.num_experts, "expert_size": m.expert_size,
             **({"gated": True} if m.gated else {})}
            for n, m in layers.items()
        ],
        "router_hidden": router_hidden,
        "mode": mode,
        "taus": [float(t) for t in taus],
    }
    if ffn_pattern:
        args["ffn_pattern"] = ffn_pattern
    _install_layers(model, layers, sites)
    moe = MoEModel(model, mode=mode, taus=taus)
    moe.train(model.training)  # the converted model keeps the model's train/eval mode
    moe.to(device)
    record_transform(moe, "moe", args)
    if router_epochs > 0:
        assert loader is not None
        torch.manual_seed(seed)
        train_routers(
            moe, loader, epochs=router_epochs, lr=router_lr, device=device, seed=seed,
            progress=progress,
        )
    moe.set_budget(moe.full_budget())
    return moe
