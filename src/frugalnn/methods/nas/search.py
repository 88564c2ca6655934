"""The search loop: alternate weight and architecture updates on a supernet.

ProxylessNAS's recipe:

1. warm-up: train the supernet's weights with one path sampled per block
   (architecture parameters frozen at uniform);
2. then, per training batch, a weight step (one sampled path, SGD) and every
   ``arch_every`` batches an architecture step on a held-out batch: two paths
   per block, the binary-gate gradient of the cross-entropy, plus the gradient
   of the latency term through the expected latency, Adam on ``alpha``;
3. candidates whose probability falls below ``prune_threshold`` are pruned
   at the end of each epoch after the warm-up.

Loss of the architecture step:

* ``mul``: ``CE * (log(E[lat] / u) / log(target / u)) ** beta`` (beta = 0.6);
* ``add``: ``CE + lam * E[lat] / target``;
* ``hinge``: ``CE + lam * max(0, E[lat] / target - 1)``: an additive penalty
  that vanishes below the target (not in the paper). Measured here: with a
  briefly trained supernet, the ``mul`` and ``add`` forms push every target
  to the cheapest architecture, because their latency gradient never changes
  sign while the cross-entropy gate gradient is noisy; the hinge lets the
  cross-entropy decide once the target is met.

ProxylessNAS writes the first as ``log E[lat] / log target`` with latencies in
ms on a phone (targets around 80 ms). The ratio of logs depends on the unit:
for CPU latencies of a few ms, or GPU latencies below 1 ms, "ms" makes it
explode or go negative, and microseconds make every target look alike. We
therefore take the logs relative to a unit ``u`` (``log_unit_ms``; default
half the cheapest architecture's latency, so ``E[lat] / u >= 2``), which keeps
the loss independent of the time unit and sensitive to the target.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from frugalnn.data.base import set_data_epoch
from frugalnn.errors import UserError
from frugalnn.methods.nas.latency import LatencyModel
from frugalnn.methods.nas.supernet import Supernet

__all__ = ["SearchConfig", "SearchResult", "latency_loss", "run_search", "short_arch"]


LOSSES = ("mul", "add", "hinge")


@dataclass
class SearchConfig:
    """Hyper-parameters of one search (defaults scaled for a CPU)."""

    latency_target_ms: float
    epochs: int = 10
    warmup_epochs: int = 2
    weight_lr: float = 0.05
    weight_momentum: float = 0.9
    weight_decay: float = 4e-5
    arch_lr: float = 0.01
    arch_every: int = 1
    loss: str = "mul"
    beta: float = 0.6
    lam: float = 0.1
    prune_threshold: float = 0.02
    log_unit_ms: float | None = None
    grad_clip: float = 5.0
    seed: int = 0

    def validate(self) -> None:
        if self.latency_target_ms <= 0 or not math.isfinite(self.latency_target_ms):
            raise UserError("--latency-target must be a positive number of milliseconds")
        if self.epochs < 1 or self.warmup_epochs < 0:
            raise UserError("epochs must be >= 1 and warm-up epochs >= 0")
        if self.loss not in LOSSES:
            raise UserError(f"unknown latency loss {self.loss!r}; use one of {LOSSES}")
        if self.arch_every < 1:
            raise UserError("arch_every must be >= 1")
        if not 0 <= self.prune_threshold < 1:
            raise UserError("prune threshold must be in [0, 1)")


@dataclass
class SearchResult:
    ops: list[str]
    predicted_ms: float
    expected_ms: float
    probabilities: list[dict[str, float]]
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_SHORT = {"zero": "-"}


def short_arch(ops: list[str]) -> str:
    """Compact display of an architecture: ``3/6`` for mb3_e6, ``sh2``, ``s3``, ``-``."""
    out = []
    for op in ops:
        if op in _SHORT:
            out.append(_SHORT[op])
        elif op.startswith("mb"):
            k, e = op[2:].split("_e")
            out.append(f"{k}/{e}")
        elif op.startswith("shuffle_g"):
            out.append("sh" + op[len("shuffle_g"):])
        elif op.startswith("sep"):
            out.append("s" + op[3:])
        else:
            out.append(op)
    return " ".join(out)


def latency_loss(ce: torch.Tensor, expected_ms: torch.Tensor, cfg: SearchConfig,
                 unit_ms: float | None = None) -> torch.Tensor:
    """Combine cross-entropy with the expected latency as ProxylessNAS does."""
    if cfg.loss == "mul":
        unit = unit_ms or cfg.log_unit_ms or 1.0
        if cfg.latency_target_ms <= unit:
            raise UserError(f"latency target {cfg.latency_target_ms:.3g} ms must exceed the log "
                            f"unit {unit:.3g} ms of the mul loss; lower the unit or use 'add'")
        num = torch.log(expected_ms / unit).clamp_min(1e-3)
        return ce * (num / math.log(cfg.latency_target_ms / unit)) ** cfg.beta
    if cfg.loss == "hinge":
        return ce + cfg.lam * torch.relu(expected_ms / cfg.latency_target_ms - 1.0)
    return ce + cfg.lam * expected_ms / cfg.latency_target_ms


def _cycle(loader: Iterable[Any]) -> Iterator[Any]:
    while True:
        yield from loader


def _batch(batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = batch[0], batch[1]
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


@torch.no_grad()
def _argmax_accuracy(net: Supernet, loader: Iterable[Any], device: torch.device,
                     max_batches: int) -> float:
    net.eval()
    net.set_mode("argmax")
    correct = total = 0
    for i, batch in enumerate(loader):
        if i >= max_batches:
            break
        x, y = _batch(batch, device)
        correct += int((net(x).argmax(1) == y).sum())
        total += int(y.numel())
    net.train()
    return correct / max(total, 1)


def run_search(
    net: Supernet,
    latency: LatencyModel,
    train_loader: Iterable[Any],
    arch_loader: Iterable[Any],
    cfg: SearchConfig,
    *,
    device: str | torch.device = "cpu",
    progress: bool = True,
    eval_batches: int = 10,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> SearchResult:
    """Search an architecture for ``cfg.latency_target_ms``; returns the argmax path."""
    cfg.validate()
    device = torch.device(device)
    cheap_ops, cheap_ms = latency.cheapest()
    if cfg.latency_target_ms < cheap_ms:
        raise UserError(
            f"latency target {cfg.latency_target_ms:.3g} ms is below the cheapest architecture "
            f"in this space ({cheap_ms:.3g} ms on this device); raise --latency-target"
        )
    unit = cfg.log_unit_ms or cheap_ms / 2
    if cfg.loss == "mul" and cfg.latency_target_ms <= unit:
        raise UserError(f"latency target must exceed the log unit ({unit:.3g} ms)")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    net.to(device).train()
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=cfg.weight_lr,
                            momentum=cfg.weight_momentum, nesterov=True,
                            weight_decay=cfg.weight_decay)
    a_opt = torch.optim.Adam(net.arch_parameters(), lr=cfg.arch_lr, betas=(0.0, 0.999),
                             eps=1e-8)
    steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
    total_steps = cfg.epochs * steps_per_epoch
    arch_iter = _cycle(arch_loader)
    history: list[dict[str, Any]] = []
    start = time.perf_counter()
    step = 0
    for epoch in range(cfg.epochs):
        searching = epoch >= cfg.warmup_epochs
        phase = "search" if searching else "warm-up"
        set_data_epoch(getattr(train_loader, "dataset", None), epoch)
        bar = tqdm(train_loader, desc=f"nas {phase} {epoch + 1}/{cfg.epochs}",
                   disable=not progress, leave=False)
        seen = correct = 0
        loss_sum = 0.0
        for batch in bar:
            # -- weight step: one sampled path per block ---------------------------------
            lr = 0.5 * cfg.weight_lr * (1 + math.cos(math.pi * step / max(total_steps, 1)))
            for g in w_opt.param_groups:
                g["lr"] = lr
            x, y = _batch(batch, device)
            net.set_mode("one", gen)
            logits = net(x)
            loss = F.cross_entropy(logits, y)
            w_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.weight_parameters(), cfg.grad_clip)
            w_opt.step()
            seen += int(y.numel())
            correct += int((logits.argmax(1) == y).sum())
            loss_sum += loss.item() * int(y.numel())
            step += 1
            # -- architecture step: two paths per block, binary-gate gradient ------------
            if searching and step % cfg.arch_every == 0:
                xa, ya = _batch(next(arch_iter), device)
                net.set_mode("two", gen)
                ce = F.cross_entropy(net(xa), ya)
                expected = latency.expected([m.probs() for m in net.mixed_ops])
                a_loss = latency_loss(ce, expected, cfg, unit)
                a_opt.zero_grad(set_to_none=True)
                a_loss.backward()
                net.set_alpha_grads()
                a_opt.step()
                net.rescale_alphas()
            if progress and step % 5 == 0:
                ops = net.argmax_arch()
                bar.set_postfix_str(
                    f"arch=[{short_arch(ops)}] pred={latency.predict(ops):.2f}ms "
                    f"loss={loss_sum / max(seen, 1):.3f}"
                )
        pruned = net.prune(cfg.prune_threshold) if searching and cfg.prune_threshold > 0 else {}
        ops = net.argmax_arch()
        with torch.no_grad():
            exp_ms = float(latency.expected([m.probs() for m in net.mixed_ops]))
        row = {
            "epoch": epoch + 1,
            "phase": phase,
            "train_loss": loss_sum / max(seen, 1),
            "train_acc_sampled": correct / max(seen, 1),
            "arch": ops,
            "predicted_ms": latency.predict(ops),
            "expected_ms": exp_ms,
            "argmax_valid_acc": _argmax_accuracy(net, arch_loader, device, eval_batches),
            "pruned": {str(k): v for k, v in pruned.items()},
            "seconds": time.perf_counter() - start,
        }
        history.append(row)
        if progress:
            tqdm.write(
                f"epoch {epoch + 1} [{phase}] arch=[{short_arch(ops)}] "
                f"pred={row['predicted_ms']:.2f}ms E[lat]={exp_ms:.2f}ms "
                f"target={cfg.latency_target_ms:.2f}ms acc(argmax)={row['argmax_valid_acc']:.3f}"
            )
        if on_epoch is not None:
            on_epoch(row)
    ops = net.argmax_arch()
    with torch.no_grad():
        exp_ms = float(latency.expected([m.probs() for m in net.mixed_ops]))
    return SearchResult(ops, latency.predict(ops), exp_ms, net.probabilities(), history,
                        time.perf_counter() - start)
