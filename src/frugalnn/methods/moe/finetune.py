"""Routed fine-tuning: train a converted MoE model *as it runs*, below full budget.

D2DMoE and MoEfication convert a model and stop: the experts are the dense
FFN's neurons, and every token that skips an expert simply loses that
expert's (small) contribution. The rest of the network was never trained to
live without those contributions, which is why accuracy falls off quickly
once fewer than about half of the experts run.

:func:`finetune_routed` closes that gap. Each training step draws a ``tau``
from ``taus`` (seeded), runs the model with dynamic-k routing at that tau —
exactly the execution used at inference — and minimises
``(1 - kd_weight) * CE + kd_weight * KD`` against a frozen copy of the model
at full budget (the dense model). Gradients reach the experts that ran and
every non-FFN weight; the routers stay frozen during this step (selection is
not differentiable) and are re-fitted afterwards to the experts' new output
norms with :func:`frugalnn.methods.moe.convert.train_routers`. Drawing tau
from a range, instead of training at one value, keeps the whole frontier
usable, so the knob still works after fine-tuning.

After fine-tuning, ``tau = 1`` no longer reproduces the *original* dense
model exactly (its weights changed); it still runs every expert, i.e. it is
the fine-tuned dense network.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from frugalnn.errors import UserError
from frugalnn.methods.moe._batches import task_and_distill_loss
from frugalnn.methods.moe.convert import MoEModel, _check_tau, train_routers
from frugalnn.train.distill import frozen_copy
from frugalnn.utils.batch import call_model, logits_of, to_device

__all__ = ["RoutedLoss", "finetune_routed"]


class RoutedLoss:
    """``loss_fn(model, batch)`` for :func:`frugalnn.train.fit` that trains at a drawn tau.

    ``objective="classification"``: ``(1 - kd_weight) * CE(labels) +
    kd_weight * T^2 KL(teacher_T || student_T)``; ``"embedding"`` (sentence
    encoders): ``1 - cos(student, teacher)``.
    """

    def __init__(
        self,
        teacher: torch.nn.Module,
        taus: Sequence[float],
        *,
        kd_weight: float = 0.5,
        temperature: float = 2.0,
        objective: str = "classification",
        seed: int = 0,
    ) -> None:
        if not taus:
            raise UserError("routed fine-tuning needs at least one tau")
        for t in taus:
            _check_tau(t)
        if not 0.0 <= kd_weight <= 1.0:
            raise UserError(f"kd_weight must lie in [0, 1], got {kd_weight}")
        if temperature <= 0:
            raise UserError(f"the distillation temperature must be positive, got {temperature}")
        if objective not in ("classification", "embedding"):
            raise UserError(f"unknown objective {objective!r}; use classification or embedding")
        self.teacher = teacher
        self.taus = [float(t) for t in taus]
        self.kd_weight = kd_weight
        self.temperature = temperature
        self.objective = objective
        self._rng = random.Random(seed)

    def __call__(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        from frugalnn.train.checkpoint import unwrap

        net = unwrap(model)
        device = next(net.parameters()).device
        x = to_device(batch[0] if isinstance(batch, (list, tuple)) else batch, device)
        if net.training:
            net.set_budget(self._rng.choice(self.taus))
        out = call_model(model, x)
        if self.objective == "classification":
            out = logits_of(out)  # Hugging Face models return an output object
        loss = task_and_distill_loss(out, x, batch, self.teacher, objective=self.objective,
                                     alpha=self.kd_weight, temperature=self.temperature)
        return loss, out


def finetune_routed(
    model: MoEModel,
    train_loader: Iterable[Any],
    *,
    taus: Sequence[float] = (0.4, 0.5, 0.6),
    epochs: int = 1,
    lr: float = 1e-4,
    kd_weight: float = 0.5,
    temperature: float = 2.0,
    objective: str = "classification",
    router_loader: Iterable[Any] | None = None,
    router_epochs: int = 1,
    router_lr: float = 1e-3,
    optimizer: str = "adamw",
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = False,
    **fit_kwargs: Any,
) -> MoEModel:
    """Fine-tune ``model`` with dynamic-k routing at taus drawn from ``taus``; re-fit routers.

    The teacher is a frozen copy of ``model`` at full budget (the dense
    network) taken before training. ``router_loader`` (default
    ``train_loader``) feeds the router re-fit; ``router_epochs=0`` skips it.
    The model is returned in eval mode at full budget (mode ``dynamic``).
    """
    from frugalnn.train import fit

    if not isinstance(model, MoEModel):
        raise UserError("routed fine-tuning needs a converted MoE model (frugalnn moe convert)")
    if epochs < 1:
        raise UserError(f"routed fine-tuning epochs must be at least 1, got {epochs}")
    if router_epochs < 0:
        raise UserError(f"router epochs must be >= 0, got {router_epochs}")
    mode = model.mode
    model.set_mode("dynamic")  # at full budget: the dense network, the teacher
    teacher = frozen_copy(model, device)
    loss_fn = RoutedLoss(teacher, taus, kd_weight=kd_weight, temperature=temperature,
                         objective=objective, seed=seed)
    flags = {p: p.requires_grad for p in model.parameters()}
    try:
        fit(
            model,
            train_loader,
            epochs=epochs,
            optimizer=optimizer,
            lr=lr,
            loss_fn=loss_fn,
            trainable=lambda name: ".router." not in name,
            seed=seed,
            progress=progress,
            device=device,
            **fit_kwargs,
        )
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.set_budget(model.full_budget())
    if router_epochs > 0:
        train_routers(model, router_loader if router_loader is not None else train_loader,
                      epochs=router_epochs, lr=router_lr, device=device, seed=seed,
                      progress=progress)
    model.set_mode(mode)
    return model.eval()
