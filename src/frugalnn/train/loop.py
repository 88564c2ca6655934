"""The training loop: one readable ``fit`` for classification and language models.

What makes it more than a textbook loop is what the rest of the toolkit
needs from it:

* **exact resume** — the data order is a function of (seed, epoch, rank), the
  random generators are re-derived from (seed, rank, epoch, step) at every
  checkpoint boundary, and a checkpoint holds model, optimizer, scheduler and
  the position in the epoch; so a run killed and resumed ends with the same
  weights as one that never stopped;
* **"train only the new parts"** via ``trainable``;
* **distillation** from the original model (``teacher`` + ``DistillConfig``);
* **torchrun** — the same call runs DistributedDataParallel (see
  :mod:`frugalnn.train.distributed`).
"""

from __future__ import annotations

import inspect
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from frugalnn.data.base import set_data_epoch
from frugalnn.errors import UserError
from frugalnn.train import distributed as dist_util
from frugalnn.train.checkpoint import (
    checkpoint_problems,
    has_checkpoint,
    load_meta,
    load_train_state,
    load_weights,
    save_checkpoint,
    unwrap,
    write_json_atomic,
)
from frugalnn.train.distill import DistillConfig, Distiller
from frugalnn.train.sampling import derived_seed, rebuild_eval_loader, rebuild_train_loader
from frugalnn.train.schedule import (
    SCHEDULE_UNITS,
    build_optimizer,
    build_scheduler,
    lr_multiplier,
)
from frugalnn.utils.batch import call_model, logits_of, split_batch, to_device

LossFn = Callable[[nn.Module, Any], tuple[torch.Tensor, torch.Tensor | None]]
Trainable = Callable[[str], bool] | Iterable[str] | None

CHECKPOINT_DIR = "checkpoint"
HISTORY_FILE = "train_history.json"
# Test hook: exit abruptly (no cleanup, like a kill) after this many optimizer
# steps, so tests can check that a resumed run matches an uninterrupted one.
KILL_ENV = "FRUGALNN_TEST_KILL_AFTER_STEP"


@dataclass
class TrainResult:
    """Per-epoch metric rows, the best row, and where the last checkpoint is."""

    history: list[dict[str, Any]]
    best_metrics: dict[str, Any]
    checkpoint_dir: Path | None


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    *,
    epochs: int,
    optimizer: str = "sgd",
    lr: float = 0.1,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    schedule: str = "cosine",
    schedule_unit: str = "step",
    warmup_epochs: float = 0.0,
    step_size: int | None = None,
    gamma: float = 0.1,
    label_smoothing: float = 0.0,
    grad_clip: float | None = None,
    trainable: Trainable = None,
    loss_fn: LossFn | None = None,
    teacher: nn.Module | None = None,
    distill: DistillConfig | None = None,
    run_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = True,
    seed: int = 0,
    eval_loader: DataLoader | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    metadata: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``train_loader`` for ``epochs`` epochs.

    Batches are ``(x, y)``; ``y`` is ``(B,)`` class ids, or ``(B, T)`` next-token
    ids for a language model with ``(B, T, V)`` logits (``-100`` is ignored). A
    dict batch holding ``"labels"`` (Hugging Face style) gives its other keys to
    the model as keyword arguments; a model that takes ``labels`` itself (a
    Hugging Face model) returns the loss that is minimised, its own.
    ``loss_fn(model, batch) -> (loss, logits or None)`` replaces the default
    cross-entropy (without one, a model's own ``training_loss(net, batch)`` method
    is used when it has one: the margin loss of the capsule networks).
    ``schedule`` (``cosine``|``step``|``none``) advances every optimizer step
    or every epoch (``schedule_unit``); ``warmup_epochs`` is the cosine warm-up
    and ``step_size`` the step schedule's period, both in epochs.
    ``trainable`` is a predicate on parameter names or a collection of names;
    every other parameter is frozen. ``teacher`` with ``distill`` adds
    distillation. With ``run_dir`` a checkpoint is written atomically to
    ``run_dir/checkpoint`` after every epoch (and every ``checkpoint_every``
    steps) and an existing one is resumed from (``resume=False`` refuses to).
    """
    _validate(epochs, label_smoothing, grad_clip, checkpoint_every, schedule_unit, teacher, distill)
    loss_fn = loss_fn or getattr(model, "training_loss", None)  # a model's own loss, if it has one
    device = torch.device(device) if device is not None else _model_device(model)
    env = dist_util.setup(device)
    try:
        return _fit(**{k: v for k, v in locals().items() if k != "env"}, env=env)
    finally:
        dist_util.teardown(env)


def _fit(*, model, train_loader, epochs, optimizer, lr, momentum, nesterov, weight_decay,
         schedule, schedule_unit, warmup_epochs, step_size, gamma, label_smoothing, grad_clip,
         trainable, loss_fn, teacher, distill, run_dir, checkpoint_every, resume, seed,
         eval_loader, progress, device, metadata, env) -> TrainResult:  # fmt: skip
    device = dist_util.local_device(device, env)
    model.to(device)
    params = _select_trainable(model, trainable)

    loader, sampler, generator = rebuild_train_loader(
        train_loader, rank=env.rank, world=env.world_size, seed=seed
    )
    if checkpoint_every and sampler is None:
        raise UserError(
            "checkpoint_every needs a DataLoader built with batch_size= and shuffle= "
            "(no custom sampler), so the position inside an epoch can be restored"
        )
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise UserError("the training data is empty (or smaller than one batch with drop_last)")
    if eval_loader is not None:
        eval_loader = rebuild_eval_loader(eval_loader, rank=env.rank, world=env.world_size)

    opt = build_optimizer(
        params, optimizer, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov
    )
    per_step = schedule_unit == "step"
    unit = steps_per_epoch if per_step else 1
    multiplier = lr_multiplier(
        schedule,
        epochs * unit,
        warmup=round(warmup_epochs * unit),
        step_size=round(step_size * unit) if step_size else None,
        gamma=gamma,
    )
    sched = build_scheduler(opt, multiplier)

    ckpt_dir = Path(run_dir) / CHECKPOINT_DIR if run_dir is not None else None
    state = _LoopState()
    if ckpt_dir is not None and not has_checkpoint(ckpt_dir) and ckpt_dir.exists():
        raise UserError(  # never start over silently on top of a damaged checkpoint
            f"{ckpt_dir} is an incomplete checkpoint ({'; '.join(checkpoint_problems(ckpt_dir))}); "
            "restore the missing files or choose a new run directory")
    if ckpt_dir is not None and has_checkpoint(ckpt_dir):
        if not resume:
            raise UserError(
                f"{ckpt_dir} already holds a checkpoint; resume it or choose a new run directory"
            )
        state = _restore(ckpt_dir, model, opt, sched, device, steps_per_epoch)

    net = dist_util.wrap(model, env, device)
    distiller = None
    if teacher is not None:
        teacher.to(device)
        distiller = Distiller(model, teacher, distill or DistillConfig())
    show_bar = progress and env.is_main and sys.stderr.isatty()
    kill_after = int(os.environ.get(KILL_ENV, "0") or 0)

    def checkpoint(final_of_epoch: bool) -> None:
        if ckpt_dir is None:
            return
        dist_util.barrier(env)
        if env.is_main:
            meta = {
                **(metadata or {}),
                "epoch": state.epoch + (1 if final_of_epoch else 0),
                "step": state.global_step,
                "epochs": epochs,
                "seed": seed,
                "world_size": env.world_size,
                "metrics": state.history[-1] if state.history else {},
            }
            save_checkpoint(ckpt_dir, model, meta, opt, sched, state.to_extra(final_of_epoch))
            write_json_atomic(Path(run_dir) / HISTORY_FILE, state.history)
        dist_util.barrier(env)

    try:
        while state.epoch < epochs:
            epoch = state.epoch
            net.train()
            if sampler is not None:
                sampler.set_epoch(epoch)
                sampler.set_offset(state.batch * (loader.batch_size or 1))
            _reseed(seed, env.rank, epoch, state.batch, generator)
            set_data_epoch(loader.dataset, epoch)
            bar = tqdm(
                total=steps_per_epoch,
                initial=state.batch,
                disable=not show_bar,
                leave=False,
                desc=f"epoch {epoch + 1}/{epochs}",
                unit="batch",
                dynamic_ncols=True,
            )
            t0 = time.perf_counter()
            timed_samples = 0
            for batch in loader:
                batch = to_device(batch, device)
                opt.zero_grad(set_to_none=True)
                loss, logits = _forward_loss(net, batch, loss_fn, label_smoothing)
                if distiller is not None:
                    loss = distiller.loss(loss, logits, _inputs_targets(batch)[0])
                if not torch.isfinite(loss):
                    raise UserError(
                        f"loss became {loss.item()} at epoch {epoch + 1} step {state.batch + 1}; "
                        "lower the learning rate or set grad_clip"
                    )
                loss.backward()
                if grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, grad_clip)
                state.last_lr = opt.param_groups[0]["lr"]
                opt.step()
                if per_step:
                    sched.step()
                n = _batch_size(batch)
                correct, counted = _accuracy_counts(logits, batch)
                state.add(loss.item() * n, correct, counted, n)
                timed_samples += n
                state.batch += 1
                state.global_step += 1
                if show_bar:
                    elapsed = max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix(
                        state.running(), rate=f"{timed_samples * env.world_size / elapsed:.0f}/s"
                    )
                bar.update(1)
                if (
                    checkpoint_every
                    and state.batch % checkpoint_every == 0
                    and state.batch < steps_per_epoch
                ):
                    _reseed(seed, env.rank, epoch, state.batch, generator, data=False)
                    checkpoint(final_of_epoch=False)
                if kill_after and state.global_step >= kill_after:
                    os._exit(86)  # simulate a kill: no cleanup, no final checkpoint
            bar.close()
            elapsed = time.perf_counter() - t0
            dist_util.sync_buffers(model, env)
            row = _epoch_row(state, env, device, epoch, elapsed, timed_samples)
            if eval_loader is not None:
                row.update(_evaluate(model, eval_loader, loss_fn, device, env))
                net.train()
            if not per_step:
                sched.step()
            state.history.append(row)
            checkpoint(final_of_epoch=True)
            state.next_epoch()
            if progress and env.is_main:
                tqdm.write(_format_row(row, epochs), file=sys.stderr)
    finally:
        if distiller is not None:
            distiller.close()
    return TrainResult(state.history, _best(state.history), ckpt_dir)


# --------------------------------------------------------------------- state


class _LoopState:
    """Where the loop is, plus the running sums of the current epoch."""

    def __init__(self) -> None:
        self.epoch = 0
        self.batch = 0  # batches of the current epoch already trained
        self.global_step = 0
        self.last_lr = math.nan
        self.history: list[dict[str, Any]] = []
        self.sums = [0.0, 0.0, 0.0, 0.0]  # loss*n, correct, counted, samples

    def add(self, loss_sum: float, correct: float, counted: float, n: float) -> None:
        for i, v in enumerate((loss_sum, correct, counted, n)):
            self.sums[i] += v

    def running(self) -> dict[str, str]:
        loss_sum, correct, counted, n = self.sums
        out = {"loss": f"{loss_sum / max(n, 1):.4f}"}
        if counted:
            out["acc"] = f"{correct / counted:.3f}"
        return out

    def next_epoch(self) -> None:
        self.epoch += 1
        self.batch = 0
        self.sums = [0.0, 0.0, 0.0, 0.0]

    def to_extra(self, end_of_epoch: bool) -> dict[str, Any]:
        # Only tensors/numbers/strings: train_state.pt must load with weights_only.
        return {
            "epoch": self.epoch + (1 if end_of_epoch else 0),
            "batch": 0 if end_of_epoch else self.batch,
            "global_step": self.global_step,
            "sums": torch.tensor([0.0] * 4 if end_of_epoch else self.sums, dtype=torch.float64),
            "history": json.dumps(self.history),
        }


def _restore(ckpt_dir: Path, model, opt, sched, device, steps_per_epoch: int) -> _LoopState:
    train_state = load_train_state(ckpt_dir)
    if train_state is None or train_state.get("extra") is None:
        raise UserError(
            f"{ckpt_dir} has no training state to resume from; use it as --checkpoint "
            "(initial weights) in a new run directory instead"
        )
    extra = train_state["extra"]
    load_weights(model, ckpt_dir, map_location=device)
    opt.load_state_dict(train_state["optimizer"])
    sched.load_state_dict(train_state["scheduler"])
    state = _LoopState()
    state.epoch = int(extra["epoch"])
    state.batch = int(extra["batch"])
    state.global_step = int(extra["global_step"])
    state.sums = [float(v) for v in extra["sums"].tolist()]
    state.history = json.loads(extra["history"])
    if state.batch >= steps_per_epoch:
        raise UserError(
            f"{ckpt_dir} was written with a different data size or batch size; "
            "resume with the original settings or start a new run"
        )
    load_meta(ckpt_dir)  # validates format
    return state


def _reseed(seed: int, rank: int, epoch: int, batch: int, generator, data: bool = True) -> None:
    """Re-derive every random generator from the position in training.

    Done at each point a run can resume from, so an uninterrupted run and a
    resumed one draw the same random numbers (dropout, augmentation) without
    storing generator states, and every rank draws different ones.
    """
    s = derived_seed(seed, rank, epoch, batch)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    if data and generator is not None:
        generator.manual_seed(derived_seed(seed, rank, epoch, batch, 1))


# ------------------------------------------------------------------- pieces


def _validate(
    epochs, label_smoothing, grad_clip, checkpoint_every, schedule_unit, teacher, distill
):
    if not isinstance(epochs, int) or epochs < 1:
        raise UserError(f"epochs must be a positive integer, got {epochs!r}")
    if not 0.0 <= label_smoothing < 1.0:
        raise UserError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if grad_clip is not None and grad_clip <= 0:
        raise UserError(f"grad_clip must be > 0 (or None to disable), got {grad_clip}")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise UserError(f"checkpoint_every must be >= 1 step, got {checkpoint_every}")
    if schedule_unit not in SCHEDULE_UNITS:
        raise UserError(f"schedule_unit must be one of {', '.join(SCHEDULE_UNITS)}")
    if distill is not None and teacher is None:
        raise UserError("distill= needs a teacher= model to distil from")


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _select_trainable(model: nn.Module, trainable: Trainable) -> list[nn.Parameter]:
    """Freeze everything ``trainable`` does not select; return the trainable parameters."""
    named = list(model.named_parameters())
    if trainable is not None:
        if callable(trainable):
            keep = {n for n, _ in named if trainable(n)}
        else:
            keep = set(trainable)
            unknown = keep - {n for n, _ in named}
            if unknown:
                raise UserError(
                    f"trainable names not in the model: {', '.join(sorted(unknown)[:5])}; "
                    "use names from model.named_parameters()"
                )
        for n, p in named:
            p.requires_grad_(n in keep)
    params = [p for _, p in named if p.requires_grad]
    if not params:
        raise UserError("no trainable parameters: `trainable` selected none of the model's")
    return params


def _batch_size(batch: Any) -> int:
    first = batch[0] if isinstance(batch, list | tuple) else batch
    if isinstance(first, dict):
        first = next(iter(first.values()))
    return int(first.shape[0]) if isinstance(first, torch.Tensor) else 1


def _inputs_targets(batch: Any) -> tuple[Any, torch.Tensor]:
    """``(x, y)`` of a batch: an ``(inputs, targets, ...)`` sequence or a dict holding
    ``"labels"`` (Hugging Face style; the other keys are the model's keyword inputs)."""
    if isinstance(batch, list | tuple) and len(batch) >= 2:
        return batch[0], batch[1]
    if isinstance(batch, dict) and "labels" in batch:
        return split_batch(batch)
    raise UserError('batches must be (inputs, targets) pairs or dicts holding "labels", '
                    "or pass a loss_fn")


def _computes_own_loss(net: nn.Module) -> bool:
    """True for a model whose forward takes ``labels`` and returns its loss (Hugging Face)."""
    try:
        params = inspect.signature(unwrap(net).forward).parameters
    except (TypeError, ValueError):
        return False
    return "labels" in params


def _forward_loss(net, batch, loss_fn, label_smoothing):
    """(loss, logits) of one batch. A dict batch reaches the model as keyword arguments;
    a model that takes ``labels`` (a Hugging Face model) computes its own loss, so that a
    causal LM shifts its targets, unless ``label_smoothing`` asks for cross-entropy here."""
    if loss_fn is not None:
        return loss_fn(net, batch)
    x, y = _inputs_targets(batch)
    if isinstance(x, dict) and not label_smoothing and _computes_own_loss(net):
        out = call_model(net, {**x, "labels": y})
        loss = getattr(out, "loss", None)
        if isinstance(loss, torch.Tensor):
            return loss, logits_of(out)
        return cross_entropy(logits_of(out), y), logits_of(out)
    logits = logits_of(call_model(net, x))
    return cross_entropy(logits, y, label_smoothing), logits


def cross_entropy(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0):
    """Classification ``(B, C)`` vs ``(B,)`` or LM ``(B, T, V)`` vs ``(B, T)`` (-100 ignored)."""
    if logits.dim() == y.dim() + 1:
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            y.reshape(-1),
            label_smoothing=label_smoothing,
            ignore_index=-100,
        )
    raise UserError(
        f"logits of shape {tuple(logits.shape)} do not match targets of shape {tuple(y.shape)}; "
        "expected (B, C) vs (B,) or (B, T, V) vs (B, T)"
    )


def _accuracy_counts(logits, batch) -> tuple[float, float]:
    """(correct, counted) predictions in a batch; (0, 0) when there is nothing to score.

    Token accuracy of a dict batch is not scored: a Hugging Face causal LM's labels are
    its inputs, shifted inside the model. A loss function may hand back the model's own
    output object (Hugging Face): its ``logits`` are scored."""
    if logits is not None and not isinstance(logits, torch.Tensor):
        logits = getattr(logits, "logits", None)
    if not isinstance(logits, torch.Tensor):
        return 0.0, 0.0
    if isinstance(batch, dict):
        y = batch.get("labels")
        if logits.dim() != 2:
            return 0.0, 0.0
    elif isinstance(batch, list | tuple) and len(batch) >= 2:
        y = batch[1]
    else:
        return 0.0, 0.0
    if not isinstance(y, torch.Tensor) or logits.dim() != y.dim() + 1:
        return 0.0, 0.0
    with torch.no_grad():
        pred = logits.argmax(-1)
        valid = y != -100
        return float(((pred == y) & valid).sum()), float(valid.sum())


@torch.no_grad()
def _evaluate(model, loader, loss_fn, device, env) -> dict[str, float]:
    """Loss and accuracy over ``loader`` (each rank its shard, then summed)."""
    model.eval()
    sums = [0.0, 0.0, 0.0, 0.0]
    for batch in loader:
        batch = to_device(batch, device)
        loss, logits = _forward_loss(model, batch, loss_fn, 0.0)
        n = _batch_size(batch)
        correct, counted = _accuracy_counts(logits, batch)
        for i, v in enumerate((float(loss) * n, correct, counted, n)):
            sums[i] += v
    loss_sum, correct, counted, n = dist_util.all_reduce_sum(sums, env, device)
    out = {"eval_loss": loss_sum / max(n, 1)}
    if counted:
        out["eval_acc"] = correct / counted
    return out


def _epoch_row(state, env, device, epoch, elapsed, timed_samples) -> dict[str, Any]:
    loss_sum, correct, counted, n = dist_util.all_reduce_sum(state.sums, env, device)
    timed = dist_util.all_reduce_sum([float(timed_samples)], env, device)[0]
    row: dict[str, Any] = {
        "epoch": epoch + 1,
        "step": state.global_step,
        "lr": state.last_lr,  # the rate of the epoch's last step
        "train_loss": loss_sum / max(n, 1),
    }
    if counted:
        row["train_acc"] = correct / counted
    row["epoch_seconds"] = elapsed
    row["samples_per_second"] = timed / elapsed if elapsed > 0 else math.nan
    return row


def _format_row(row: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}"]
    for key in ("train_loss", "train_acc", "eval_loss", "eval_acc", "lr"):
        if key in row:
            parts.append(f"{key} {row[key]:.4g}")
    parts.append(f"{row['samples_per_second']:.0f} samples/s")
    return "  ".join(parts)


def _best(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The epoch with the best eval accuracy (else eval loss, else train loss)."""
    if not history:
        return {}
    if any("eval_acc" in r for r in history):
        return max((r for r in history if "eval_acc" in r), key=lambda r: r["eval_acc"])
    key = "eval_loss" if any("eval_loss" in r for r in history) else "train_loss"
    return min(history, key=lambda r: r.get(key, math.inf))
