"""Knowledge distillation: match a teacher's logits and intermediate outputs.

The cheaper model (student) learns from the original (teacher):

* ``alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))`` on the
  logits (Hinton et al.; the ``T^2`` keeps gradient size independent of T),
* ``feature_weight * MSE(student_feature, teacher_feature)`` for each pair of
  named modules, whose outputs are captured with forward hooks,

added to ``(1 - alpha) * task_loss``. Features let a factorised or
mixture-of-experts layer be trained to reproduce the layer it replaced.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from frugalnn.errors import UserError
from frugalnn.utils.batch import call_model, logits_of


@dataclass
class DistillConfig:
    """Distillation weights: ``alpha`` for the logit KL, ``feature_weight`` for features.

    ``feature_pairs`` lists ``(student_module_name, teacher_module_name)`` as
    given by ``named_modules()``; both modules must output tensors of one shape.
    """

    alpha: float = 0.5
    temperature: float = 2.0
    feature_pairs: Sequence[tuple[str, str]] = field(default_factory=list)
    feature_weight: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise UserError(f"distillation alpha must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise UserError(f"distillation temperature must be > 0, got {self.temperature}")
        if self.feature_weight < 0:
            raise UserError(f"feature_weight must be >= 0, got {self.feature_weight}")
        self.feature_pairs = [(str(s), str(t)) for s, t in self.feature_pairs]


def frozen_copy(model: nn.Module, device: str | torch.device | None = None) -> nn.Module:
    """A deep copy of ``model`` in eval mode with no trainable parameters: a teacher.

    Fine-tuning steps distil from the model as it was before they changed it,
    so they need this snapshot rather than the live model.
    """
    teacher = copy.deepcopy(model)
    if device is not None:
        teacher.to(device)
    return teacher.eval().requires_grad_(False)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float):
    """Temperature-scaled KL divergence, averaged over examples (or tokens for LMs)."""
    v = student_logits.shape[-1]
    s = F.log_softmax(student_logits.reshape(-1, v).float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.reshape(-1, v).float() / temperature, dim=-1)
    return F.kl_div(s, t, reduction="batchmean", log_target=True) * temperature**2


def output_matching_loss(teacher: nn.Module, cosine_weight: float = 1.0):
    """A ``fit`` loss that makes the student's output reproduce ``teacher``'s, without labels.

    For models whose output is not a class distribution (a sentence-embedding
    encoder), logit KL does not apply; the student instead regresses the
    teacher's output vector: mean squared error scaled by the teacher's mean
    square (so the term is about 1 for an unrelated output, whatever the
    embedding's scale), plus ``cosine_weight * (1 - cosine similarity)``,
    which is what retrieval with normalised embeddings cares about. Batches
    may be ``(x, ...)`` or ``x``; anything after ``x`` is ignored.
    """
    if cosine_weight < 0:
        raise UserError(f"cosine_weight must be >= 0, got {cosine_weight}")
    teacher = frozen_copy(teacher)

    def loss_fn(model: nn.Module, batch: Any) -> tuple[torch.Tensor, None]:
        x = batch[0] if isinstance(batch, list | tuple) else batch
        with torch.no_grad():
            target = teacher(x).float()
        out = model(x).float()
        loss = F.mse_loss(out, target) / target.pow(2).mean().clamp_min(1e-12)
        if cosine_weight > 0:
            loss = loss + cosine_weight * (1 - F.cosine_similarity(out, target, dim=-1)).mean()
        return loss, None

    return loss_fn


class FeatureCapture:
    """Forward hooks that keep the latest output of some named modules."""

    def __init__(self, model: nn.Module, names: Sequence[str], role: str) -> None:
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = []
        modules = dict(model.named_modules())
        for name in names:
            if name not in modules:
                raise UserError(
                    f"{role} has no module named {name!r}; use a name from "
                    f"model.named_modules(), e.g. {', '.join(list(modules)[1:6])}"
                )
            self._handles.append(modules[name].register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if isinstance(output, tuple):
                output = output[0]
            if isinstance(output, dict):
                output = output["hidden"]
            self.outputs[name] = output

        return hook

    def clear(self) -> None:
        self.outputs.clear()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


class Distiller:
    """Computes the distillation terms for one batch; owns the hooks."""

    def __init__(self, student: nn.Module, teacher: nn.Module, config: DistillConfig) -> None:
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.config = config
        pairs = config.feature_pairs if config.feature_weight > 0 else []
        self.student_hooks = FeatureCapture(student, [s for s, _ in pairs], "student")
        self.teacher_hooks = FeatureCapture(teacher, [t for _, t in pairs], "teacher")
        self.pairs = list(pairs)

    def loss(
        self, task_loss: torch.Tensor, student_logits: torch.Tensor | None, x: Any
    ) -> torch.Tensor:
        """Blend ``task_loss`` with the KL and feature terms (student already ran on x)."""
        cfg = self.config
        with torch.no_grad():
            teacher_logits = logits_of(call_model(self.teacher, x))
        total = task_loss
        if cfg.alpha > 0:
            if student_logits is None:
                raise UserError("distillation needs logits: make loss_fn return (loss, logits)")
            total = (1 - cfg.alpha) * task_loss + cfg.alpha * kd_loss(
                student_logits, teacher_logits, cfg.temperature
            )
        for s_name, t_name in self.pairs:
            s_out = self.student_hooks.outputs.get(s_name)
            t_out = self.teacher_hooks.outputs.get(t_name)
            if s_out is None or t_out is None:
                raise UserError(
                    f"feature pair ({s_name!r}, {t_name!r}) produced no output this step; "
                    "pick modules that run on every forward"
                )
            if s_out.shape != t_out.shape:
                raise UserError(
                    f"feature pair ({s_name!r}, {t_name!r}) has shapes {tuple(s_out.shape)} "
                    f"vs {tuple(t_out.shape)}; pair modules with equal output shapes"
                )
            total = total + cfg.feature_weight * F.mse_loss(s_out.float(), t_out.float())
        self.student_hooks.clear()
        self.teacher_hooks.clear()
        return total

    def close(self) -> None:
        self.student_hooks.remove()
        self.teacher_hooks.remove()
