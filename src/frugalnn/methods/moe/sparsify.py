"""Activation-sparsity enforcement before MoE conversion (D2DMoE, step 1).

Why: MoE conversion saves compute only if, for each token, most experts
contribute little. GELU FFNs have almost no exact zeros, so D2DMoE first
replaces GELU by ReLU and fine-tunes with an activation-sparsity penalty, the
squared Hoyer measure ``(sum |a|)^2 / sum a^2`` of each token's FFN hidden
activations, whose weight ``lam`` is warmed up linearly, while distilling
from the original model so accuracy is kept.

We divide the squared Hoyer measure by the FFN width so that it lies in
``(0, 1]`` (1 = all neurons equally active, 1/width = a single active neuron)
and ``lam`` means the same for narrow and wide FFNs; the mean is over tokens
and FFN layers.

Models without FFN layers (the ResNets, the small CNN) are handled too
(``sites="relu"``, chosen automatically): every ReLU the model calls,
functional or module, is captured during the forward pass and penalised per
example over its whole ``C x H x W`` map, as in work on activation sparsity
in CNNs. Nothing is replaced there; the ReLUs are already exact-zero
activations.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from frugalnn.errors import UserError
from frugalnn.methods.moe._batches import model_inputs, replace_child, task_and_distill_loss
from frugalnn.models.base import require_ffn_sites
from frugalnn.train.distill import frozen_copy
from frugalnn.transforms import record_transform, register_transform
from frugalnn.utils.batch import call_model, logits_of

__all__ = ["SparsityLoss", "hoyer_squared", "relu_ffn", "enforce_sparsity"]


def hoyer_squared(a: torch.Tensor, normalise: bool = True) -> torch.Tensor:
    """Mean over tokens of ``(sum|a|)^2 / sum a^2`` over the last dim (divided by its size)."""
    flat = a.reshape(-1, a.shape[-1])
    l1 = flat.abs().sum(-1)
    l2 = flat.pow(2).sum(-1)
    h = l1.pow(2) / l2.clamp_min(1e-12)
    if normalise:
        h = h / flat.shape[-1]
    return h.mean()


SITES = ("auto", "ffn", "relu")
_RELU_CALLS = (F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_)


def _resolve_sites(model: nn.Module, sites: str, ffn_pattern: str | None = None) -> str:
    """``auto`` -> ``ffn`` when the model has FFN layers, else ``relu``."""
    from frugalnn.models.adapters.ffn import find_ffn_sites

    if sites not in SITES:
        raise UserError(f"unknown sparsity sites {sites!r}; use one of {', '.join(SITES)}")
    if sites == "auto":
        has_ffn = bool(find_ffn_sites(model, ffn_pattern, required=False))
        return "ffn" if has_ffn else "relu"
    return sites


class _ReluCapture(TorchFunctionMode):
    """Collects the output of every ReLU call (``F.relu`` or ``nn.ReLU``) in a forward."""

    def __init__(self, sink: list[torch.Tensor]) -> None:
        super().__init__()
        self.sink = sink

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        out = func(*args, **(kwargs or {}))
        if func in _RELU_CALLS and isinstance(out, torch.Tensor):
            self.sink.append(out)
        return out


def _per_example(a: torch.Tensor) -> torch.Tensor:
    """Feature maps ``(B, C, H, W)`` are measured per example; tokens per token."""
    return a.flatten(1) if a.dim() == 4 else a


@register_transform("ffn_relu")
def relu_ffn(model: nn.Module, ffn_pattern: str | None = None) -> nn.Module:
    """Replace the activation of every FFN by ReLU (in place); recorded for checkpoints."""
    for site in require_ffn_sites(model, "sparsity enforcement", ffn_pattern):
        if not isinstance(site.act, nn.ReLU) and not replace_child(model, site.act, nn.ReLU()):
            raise UserError(f"cannot replace the activation of FFN {site.name}")
    record_transform(model, "ffn_relu", {"ffn_pattern": ffn_pattern} if ffn_pattern else {})
    return model


class SparsityLoss:
    """``loss_fn(model, batch)`` for :func:`frugalnn.train.fit`: task + distillation + Hoyer.

    ``loss = (1 - alpha) * CE + alpha * KD(teacher) + lam(step) * hoyer``, with
    ``lam`` rising linearly from 0 to ``lam`` over ``warmup_steps`` training
    steps. With ``objective="embedding"`` (sentence encoders, no labels) the
    task and KD terms are replaced by ``1 - cos(student, teacher)`` of the
    outputs. Hidden activations are captured with forward hooks on the FFN
    activation modules of ``model`` (``sites="ffn"``), or, for models without
    FFNs (``sites="relu"``), as the outputs of every ReLU call.
    """

    def __init__(
        self,
        model: nn.Module,
        teacher: nn.Module | None,
        *,
        lam: float = 0.2,
        warmup_steps: int = 100,
        alpha: float = 0.5,
        temperature: float = 2.0,
        objective: str = "classification",
        sites: str = "auto",
        ffn_pattern: str | None = None,
    ) -> None:
        if objective not in ("classification", "embedding"):
            raise UserError(f"unknown objective {objective!r}; use classification or embedding")
        if objective == "embedding" and teacher is None:
            raise UserError("the embedding objective needs a teacher model")
        self.objective = objective
        if lam < 0:
            raise UserError(f"the sparsity weight must be >= 0, got {lam}")
        self.teacher = teacher
        self.lam = lam
        self.warmup_steps = max(1, warmup_steps)
        self.alpha = alpha if teacher is not None else 0.0
        self.temperature = temperature
        self.step = 0
        self._acts: list[torch.Tensor] = []
        self.sites = _resolve_sites(model, sites, ffn_pattern)
        self._handles = []
        if self.sites == "ffn":
            self._handles = [
                site.act.register_forward_hook(lambda _m, _i, out: self._acts.append(out))
                for site in require_ffn_sites(model, "sparsity enforcement", ffn_pattern)
            ]

    def close(self) -> None:
        """Remove the activation hooks from the model."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def current_lam(self) -> float:
        return self.lam * min(1.0, self.step / self.warmup_steps)

    def __call__(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(model.parameters()).device
        x = model_inputs(batch, device)
        self._acts.clear()
        if self.sites == "relu":
            with _ReluCapture(self._acts):
                logits = logits_of(call_model(model, x))
            if not self._acts:
                raise UserError(
                    "the model calls no ReLU, so there is nothing to sparsify; use a model "
                    "with ReLU activations or FFN layers"
                )
        else:
            logits = logits_of(call_model(model, x))
        acts, self._acts = self._acts, []
        loss = task_and_distill_loss(logits, x, batch, self.teacher, objective=self.objective,
                                     alpha=self.alpha, temperature=self.temperature)
        if acts and self.lam > 0:
            hoyer = torch.stack([hoyer_squared(_per_example(a)) for a in acts]).mean()
            loss = loss + self.current_lam() * hoyer
        if model.training:
            self.step += 1
        return loss, logits


def enforce_sparsity(
    model: nn.Module,
    train_loader: Iterable[Any],
    *,
    epochs: int = 1,
    lam: float = 0.2,
    warmup_steps: int | None = None,
    lr: float = 1e-4,
    alpha: float = 0.5,
    optimizer: str = "adamw",
    relu: bool = True,
    device: str | torch.device = "cpu",
    objective: str = "classification",
    sites: str = "auto",
    ffn_pattern: str | None = None,
    run_dir: Any = None,
    seed: int = 0,
    progress: bool = False,
    **fit_kwargs: Any,
) -> nn.Module:
    """GELU -> ReLU (if ``relu``) and fine-tune with the Hoyer penalty, distilling from a copy.

    ``sites``: ``ffn`` (the FFN hidden activations), ``relu`` (every ReLU call,
    for CNNs) or ``auto`` (``ffn`` if the model has FFN layers, else ``relu``).
    Returns the fine-tuned model (the same object, modified in place). The
    teacher is a frozen copy of the model before any change. ``ffn_pattern``
    names the FFN modules of a model whose FFNs are not recognised.
    """
    from frugalnn.train import fit

    sites = _resolve_sites(model, sites, ffn_pattern)
    teacher = frozen_copy(model, device)
    if relu and sites == "ffn":
        relu_ffn(model, ffn_pattern)
    model.to(device)
    steps = epochs * len(train_loader)  # type: ignore[arg-type]
    loss_fn = SparsityLoss(
        model, teacher, lam=lam, warmup_steps=warmup_steps or max(1, steps // 2), alpha=alpha,
        objective=objective, sites=sites, ffn_pattern=ffn_pattern,
    )
    try:
        fit(
            model,
            train_loader,
            epochs=epochs,
            optimizer=optimizer,
            lr=lr,
            loss_fn=loss_fn,
            run_dir=run_dir,
            seed=seed,
            progress=progress,
            **fit_kwargs,
        )
    finally:
        loss_fn.close()
    return model.eval()
