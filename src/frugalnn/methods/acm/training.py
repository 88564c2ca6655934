"""The three training stages of adaptive computation modules (Wójcik et al., AAAI 2025).

I.   **Distillation** of the learners: every prefix ``k = 1..N`` of every ACM
     layer is fitted (MSE) to the output of the original FFN on the original
     model's FFN inputs, so that each prefix is as good an approximation as
     it can be and later learners refine earlier ones.
II.  **Gate pre-training** on labels: for each token, the label is the
     smallest ``k`` at which adding learner ``k + 1`` no longer helps much,
     ``err(k) / err(k + 1) < ratio`` (1.2 by default), else ``N``; the gate
     is trained with cross-entropy on those labels.
III. **End-to-end fine-tuning** with the gate sampled by straight-through
     Gumbel-softmax, on the task loss plus ``budget_weight * |mean compute -
     target|`` (L1 between the average fraction of learners run and the
     target budget), a small entropy term (per-token gate entropy, pushing
     the gate to decide) and a small diversity term (minus the entropy of the
     batch-average gate distribution, so the gate does not collapse onto one
     choice for every token).

Every stage is a call of :func:`frugalnn.train.fit` with its own ``loss_fn``
and ``trainable`` set; the original (dense) model acts as the teacher whose
FFN inputs and outputs are captured with hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from frugalnn.errors import UserError
from frugalnn.methods.acm.convert import ACMModel
from frugalnn.methods.acm.module import ACMFFN
from frugalnn.utils.batch import call_model, logits_of, split_batch

__all__ = ["ACMTrainConfig", "capture_ffns", "gate_labels", "train_acm"]


@dataclass
class ACMTrainConfig:
    """Hyper-parameters of the three stages (epochs 0 skips a stage)."""

    distill_epochs: int = 2
    gate_epochs: int = 1
    finetune_epochs: int = 1
    distill_lr: float = 1e-3
    gate_lr: float = 3e-3
    finetune_lr: float = 1e-4
    ratio: float = 1.2
    target: float = 0.5
    budget_weight: float = 1.0
    entropy_weight: float = 0.01
    diversity_weight: float = 0.01
    gumbel_tau: float = 1.0
    # Stage III mixes the task loss with distillation from the dense model's logits
    # (weight ``kd_weight``, temperature ``kd_temperature``): fine-tuning on a small
    # subset otherwise drifts away from what the dense model knew.
    kd_weight: float = 0.5
    kd_temperature: float = 2.0
    max_tokens: int = 4096
    weight_decay: float = 0.0
    history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def check(self) -> None:
        for name in ("distill_epochs", "gate_epochs", "finetune_epochs"):
            if getattr(self, name) < 0:
                raise UserError(f"{name.replace('_', '-')} must be >= 0")
        if self.ratio < 1.0:
            raise UserError(
                f"the gate-label ratio must be >= 1 (1.2 in the paper), got {self.ratio}")
        if not 0.0 < self.target <= 1.0:
            raise UserError(f"the target budget must be in (0, 1], got {self.target}")
        if not 0.0 <= self.kd_weight <= 1.0:
            raise UserError(f"the distillation weight must be in [0, 1], got {self.kd_weight}")
        if self.kd_temperature <= 0.0:
            raise UserError(f"the distillation temperature must be > 0, got {self.kd_temperature}")


class capture_ffns:  # noqa: N801 - used as a context manager, reads like a function
    """Context manager: hooks that record each FFN site's input and output.

    ``store[name] = (input (tokens, dim), output (tokens, out))`` after each
    forward of ``model`` (the dense teacher); ``pattern`` names the FFN modules
    of a model whose FFNs are not recognised.
    """

    def __init__(self, model: nn.Module, names: Iterable[str], pattern: str | None = None) -> None:
        from frugalnn.models.adapters.ffn import find_ffn_sites

        wanted = set(names)
        self.sites = [s for s in find_ffn_sites(model, pattern, required=False)
                      if s.name in wanted]
        missing = wanted - {s.name for s in self.sites}
        if missing:
            raise UserError(f"the teacher lacks FFN sites {', '.join(sorted(missing))}")
        self.store: dict[str, list[torch.Tensor]] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> dict[str, list[torch.Tensor]]:
        for site in self.sites:
            def pre(_m: nn.Module, args: tuple, name: str = site.name) -> None:
                self.store[name] = [args[0].detach().reshape(-1, args[0].shape[-1])]

            def post(_m: nn.Module, _a: tuple, out: torch.Tensor, name: str = site.name) -> None:
                self.store[name].append(out.detach().reshape(-1, out.shape[-1]))

            self._handles.append(site.fc1.register_forward_pre_hook(pre))
            self._handles.append(site.fc2.register_forward_hook(post))
        return self.store

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def gate_labels(prefixes: torch.Tensor, target: torch.Tensor, ratio: float) -> torch.Tensor:
    """Gate class per token (0-based, ``k - 1``) from prefix outputs ``(N, T, out)``.

    The smallest ``k`` with ``err(k) < ratio * err(k + 1)`` (adding a learner
    improves the error by less than the ratio), else ``N``.
    """
    err = (prefixes - target.unsqueeze(0)).pow(2).mean(-1)  # (N, T)
    stop = err[:-1] < ratio * err[1:]
    stop = torch.cat([stop, torch.ones_like(stop[:1])], 0)
    return stop.float().argmax(0)  # first True along the learner axis


def _sample(x: torch.Tensor, y: torch.Tensor, limit: int, gen: torch.Generator) -> tuple:
    if x.shape[0] <= limit:
        return x, y
    pick = torch.randperm(x.shape[0], generator=gen)[:limit].to(x.device)
    return x[pick], y[pick]


def _task_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if logits.dim() == 3:
        return F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)
    return F.cross_entropy(logits, y)


def _names(model: nn.Module, keep: Callable[[str, ACMFFN], bool]) -> list[str]:
    out = []
    for mod_name, mod in model.named_modules():
        if isinstance(mod, ACMFFN):
            for p_name, _ in mod.named_parameters():
                if keep(p_name, mod):
                    out.append(f"{mod_name}.{p_name}" if mod_name else p_name)
    return out


def _fit(model: nn.Module, loader: Any, *, epochs: int, lr: float, loss_fn: Any,
         trainable: Any, cfg: ACMTrainConfig, seed: int, device: Any, progress: bool) -> Any:
    from frugalnn.train import fit

    return fit(model, loader, epochs=epochs, optimizer="adamw", lr=lr,
               weight_decay=cfg.weight_decay, schedule="cosine", trainable=trainable,
               loss_fn=loss_fn, seed=seed, progress=progress, device=device)


def train_acm(
    model: ACMModel,
    teacher: nn.Module,
    loader: Any,
    config: ACMTrainConfig | None = None,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> ACMTrainConfig:
    """Run stages I-III on ``loader`` (``(x, y)`` batches); returns the config with
    per-stage histories (``config.history``). ``teacher`` is the original model."""
    cfg = config or ACMTrainConfig()
    cfg.check()
    layers = {m.name: m for m in model.acm_layers()}
    if not layers:
        raise UserError("the model has no ACM layers; convert it with convert_to_acm first")
    teacher = teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)

    pattern = getattr(model, "ffn_pattern", None)

    def captured(x: Any) -> tuple[dict[str, list[torch.Tensor]], torch.Tensor]:
        with capture_ffns(teacher, layers, pattern) as store, torch.no_grad():
            logits = logits_of(call_model(teacher, x))
        return dict(store), logits

    def distill_loss(_model: nn.Module, batch: Any) -> tuple[torch.Tensor, None]:
        store, _ = captured(split_batch(batch)[0])
        total = 0.0
        for name, layer in layers.items():
            xin, yout = _sample(*store[name], cfg.max_tokens, gen)
            total = total + (layer.prefix_outputs(xin) - yout.unsqueeze(0)).pow(2).mean()
        return total / len(layers), None  # type: ignore[return-value]

    def gate_loss(_model: nn.Module, batch: Any) -> tuple[torch.Tensor, None]:
        store, _ = captured(split_batch(batch)[0])
        total = 0.0
        for name, layer in layers.items():
            xin, yout = _sample(*store[name], cfg.max_tokens, gen)
            with torch.no_grad():
                labels = gate_labels(layer.prefix_outputs(xin), yout, cfg.ratio)
            total = total + F.cross_entropy(layer.gate(xin), labels)
        return total / len(layers), None  # type: ignore[return-value]

    def finetune_loss(m: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = split_batch(batch)
        logits = logits_of(call_model(m, x))
        task = _task_loss(logits, y)
        if cfg.kd_weight > 0:
            with torch.no_grad():
                teacher_logits = logits_of(call_model(teacher, x))
            temp, classes = cfg.kd_temperature, logits.shape[-1]
            student = F.log_softmax(logits.reshape(-1, classes) / temp, -1)
            target = F.log_softmax(teacher_logits.reshape(-1, classes) / temp, -1)
            kd = F.kl_div(student, target, reduction="batchmean", log_target=True) * temp**2
            task = (1 - cfg.kd_weight) * task + cfg.kd_weight * kd
        compute = torch.stack([lay.last_compute.mean() for lay in layers.values()]).mean()
        probs = torch.cat([lay.last_probs for lay in layers.values()])
        ent = -(probs * probs.clamp_min(1e-9).log()).sum(-1).mean()
        mean_p = torch.stack([lay.last_probs.mean(0) for lay in layers.values()])
        div = (mean_p * mean_p.clamp_min(1e-9).log()).sum(-1).mean()
        loss = (task + cfg.budget_weight * (compute - cfg.target).abs()
                + cfg.entropy_weight * ent + cfg.diversity_weight * div)
        return loss, logits

    is_learner = _names(model, lambda n, _m: not n.startswith("gate."))
    is_gate = _names(model, lambda n, _m: n.startswith("gate."))
    model.set_budget(1.0)
    try:
        if cfg.distill_epochs:
            model.set_mode("prefixes")
            res = _fit(model, loader, epochs=cfg.distill_epochs, lr=cfg.distill_lr,
                       loss_fn=distill_loss, trainable=is_learner, cfg=cfg, seed=seed,
                       device=device, progress=progress)
            cfg.history["distill"] = list(res.history)
        if cfg.gate_epochs:
            res = _fit(model, loader, epochs=cfg.gate_epochs, lr=cfg.gate_lr,
                       loss_fn=gate_loss, trainable=is_gate, cfg=cfg, seed=seed + 1,
                       device=device, progress=progress)
            cfg.history["gate"] = list(res.history)
        if cfg.finetune_epochs:
            model.set_mode("gumbel", gumbel_tau=cfg.gumbel_tau)
            res = _fit(model, loader, epochs=cfg.finetune_epochs, lr=cfg.finetune_lr,
                       loss_fn=finetune_loss, trainable=lambda _n: True, cfg=cfg,
                       seed=seed + 2, device=device, progress=progress)
            cfg.history["finetune"] = list(res.history)
    finally:
        model.set_mode("infer")
        for layer in layers.values():  # the last training step's graph: not model state
            layer.last_compute = layer.last_probs = None
        for p in model.parameters():
            p.requires_grad_(True)
        model.eval()
    return cfg
