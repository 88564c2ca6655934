"""Training the exits: heads on a frozen backbone, joint SDN-style, ZTW ensembles.

Three procedures, all minimising cross-entropy at the exits:

* :func:`train_heads` (``mode="heads"``): the backbone is frozen (eval mode,
  no gradients) and only the heads learn. Because the heads' feature
  reduction is parameter free, the reduced features of every training example
  are computed **once** (:func:`cache_features`) and the heads are trained on
  that cache: exact for a frozen backbone without data augmentation, and
  ``num_blocks`` times cheaper than re-running the backbone every epoch.
  With a cascade (Zero-Time-Waste) the previous head's logits enter detached,
  so each head's loss trains that head only.
* :func:`train_joint` (``mode="joint"``): backbone and heads together through
  :func:`frugalnn.train.fit`, with the SDN-style weighted sum of exit losses
  (:func:`exit_loss_weights`: each exit weighted by its depth, measured as the
  fraction of the backbone's FLOPs spent before it; the final exit weighs 1).
* :func:`train_ensemble`: the ZTW geometric ensemble, trained afterwards on the
  frozen cascade from cached head log-probabilities (of held-out rows).
* :func:`train_ztw_crossfit`: heads on every row and the ensemble on
  out-of-fold predictions of fold models (stacking), instead of a hold-out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from frugalnn.errors import UserError
from frugalnn.methods.early_exit.model import EarlyExitModel
from frugalnn.train.distill import frozen_copy, kd_loss
from frugalnn.utils.batch import split_batch, to_device


@dataclass
class FeatureCache:
    """Reduced features of every head for a dataset (frozen backbone), with labels."""

    feats: list[torch.Tensor]  # one (N, F_i) tensor per internal head
    labels: torch.Tensor  # (N,)
    final_logits: torch.Tensor  # (N, C) the backbone's own outputs

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def split(self, fraction: float, seed: int = 0) -> tuple[FeatureCache, FeatureCache]:
        """A seeded random split ``(rest, held_out)`` with ``fraction`` of the rows held out.

        Used to fit the ZTW ensemble on examples the heads were not trained on:
        on the training rows, over-fitted heads look more reliable than they are.
        """
        if not 0.0 < fraction < 1.0:
            raise UserError(f"held-out fraction must lie in (0, 1), got {fraction}")
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        k = max(1, int(round(fraction * len(self))))
        parts = []
        for idx in (order[k:], order[:k]):
            idx = idx.sort().values
            parts.append(FeatureCache([f[idx] for f in self.feats], self.labels[idx],
                                      self.final_logits[idx]))
        return parts[0], parts[1]

    @classmethod
    def concat(cls, caches: Sequence[FeatureCache]) -> FeatureCache:
        """The rows of several caches of the same heads, one after another.

        Used to train heads on the plain features plus augmented passes over
        the same images (:func:`cache_augmented_passes`).
        """
        if not caches:
            raise UserError("concat needs at least one feature cache")
        if len(caches) == 1:
            return caches[0]  # no copy: the features can be gigabytes
        widths = [[f.shape[1:] for f in c.feats] for c in caches]
        if any(w != widths[0] for w in widths):
            raise UserError("feature caches of different heads cannot be concatenated")
        return cls([torch.cat([c.feats[i] for c in caches]) for i in range(len(caches[0].feats))],
                   torch.cat([c.labels for c in caches]),
                   torch.cat([c.final_logits for c in caches]))


def cache_augmented_passes(
    model: EarlyExitModel,
    make_dataset: Callable[[int], Any],
    passes: int,
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> list[FeatureCache]:
    """Head features of ``passes`` augmented passes over the same images.

    ``make_dataset(k)`` returns the training images with augmentation drawn
    for pass ``k`` (e.g. a dataset seeded with ``seed + k``, in the same order
    as the plain one, so that :meth:`FeatureCache.split` with one seed splits
    every pass by the same images). Heads trained on features of the plain
    images alone see a frozen backbone's features of its *own training
    images*, cleaner than a new image's; crops and flips make them look more
    like test features (on ResNet-56 one extra pass lifted the FLOPs saved
    within 0.5 point by 2-3 points, `benchmarks/results/early_exit.md`).
    """
    if passes < 0:
        raise UserError(f"augmented passes must be >= 0, got {passes}")
    return [cache_features(model, DataLoader(make_dataset(k), batch_size=batch_size),
                           device=device, dtype=dtype, progress=progress)
            for k in range(passes)]


def _to(x: Any, device: torch.device) -> Any:
    return to_device(x, device)


@torch.inference_mode()
def cache_features(
    model: EarlyExitModel,
    loader: Iterable[Any],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> FeatureCache:
    """Run the (frozen) backbone once over ``loader`` and keep every head's input."""
    device = torch.device(device)
    was_training = model.training
    model.eval().to(device)
    feats: list[list[torch.Tensor]] = [[] for _ in range(model.num_internal)]
    labels, finals = [], []
    try:
        for batch in tqdm(loader, desc="cache features", unit="batch", disable=not progress,
                          leave=False):
            x, y = split_batch(batch)
            f, final = model.head_features(_to(x, device))
            for i, t in enumerate(f):
                feats[i].append(t.to("cpu", dtype))
            labels.append(y.cpu().long())
            finals.append(final.float().cpu())
    finally:
        model.train(was_training)
    if not labels:
        raise UserError("the training data is empty; check the dataset and --limit")
    return FeatureCache([torch.cat(f) for f in feats], torch.cat(labels), torch.cat(finals))


def train_heads(
    model: EarlyExitModel,
    data: FeatureCache | Iterable[Any],
    *,
    epochs: int = 10,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 128,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    rows: torch.Tensor | None = None,
) -> list[dict[str, float]]:
    """Train the internal heads on a frozen backbone; returns per-epoch loss/accuracy rows.

    ``data`` is a :class:`FeatureCache` or a loader (cached first). Adam with
    a cosine learning-rate decay, examples reshuffled every epoch from ``seed``.
    ``rows`` (indices into the cache) trains on those rows only, without
    copying the features (cross-fitting trains on several such subsets).
    """
    if epochs < 1:
        raise UserError(f"epochs must be at least 1, got {epochs}")
    cache = data if isinstance(data, FeatureCache) else cache_features(
        model, data, device=device, progress=progress)
    pool = torch.arange(len(cache)) if rows is None else rows.long().flatten()
    if len(pool) == 0:
        raise UserError("no rows to train the heads on; check the data and its split")
    device = torch.device(device)
    params = list(model.heads.parameters())
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    n = len(pool)
    steps = epochs * max(1, (n + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    gen = torch.Generator().manual_seed(seed)
    history = []
    model.heads.train()
    try:
        for epoch in range(epochs):
            order = pool[torch.randperm(n, generator=gen)]
            total, correct = 0.0, torch.zeros(model.num_internal)
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                feats = [f[idx].to(device, torch.float32) for f in cache.feats]
                y = cache.labels[idx].to(device)
                outs = model.heads_from_features(feats)
                loss = sum(F.cross_entropy(z, y) for z in outs)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
                correct += torch.stack([(z.argmax(1) == y).sum().cpu() for z in outs]).float()
            history.append({"epoch": epoch + 1, "loss": total / n,
                            "head_accuracy": (correct / n).tolist()})
            if progress:
                tqdm.write(f"heads epoch {epoch + 1}/{epochs}: loss {total / n:.4f}")
    finally:
        model.heads.eval()
        for p, flag in flags.items():
            p.requires_grad_(flag)
    return history


def train_ensemble(
    model: EarlyExitModel,
    data: FeatureCache | Iterable[Any],
    *,
    epochs: int = 50,
    lr: float = 1e-2,
    batch_size: int = 512,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> list[dict[str, float]]:
    """Fit the ZTW geometric-ensemble weights on the frozen cascade (adds it if missing)."""
    cache = data if isinstance(data, FeatureCache) else cache_features(
        model, data, device=device, progress=progress)
    log_probs = head_log_probs(model, cache, device=device)
    return _fit_ensemble(model, log_probs, cache.labels, epochs=epochs, lr=lr,
                         batch_size=batch_size, seed=seed, device=device)


def head_log_probs(
    model: EarlyExitModel,
    cache: FeatureCache,
    rows: torch.Tensor | None = None,
    *,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Log-probabilities ``(H, N, C)`` of every internal head (not ensembled) on cached rows."""
    device = torch.device(device)
    pool = torch.arange(len(cache)) if rows is None else rows.long().flatten()
    was_training = model.heads.training
    model.heads.eval()
    try:
        with torch.no_grad():
            logp = []
            for start in range(0, len(pool), 1024):
                idx = pool[start : start + 1024]
                feats = [f[idx].to(device, torch.float32) for f in cache.feats]
                logp.append(torch.stack(
                    [F.log_softmax(z, 1) for z in model.heads_from_features(feats)]).cpu())
    finally:
        model.heads.train(was_training)
    return torch.cat(logp, 1)


def _fit_ensemble(
    model: EarlyExitModel,
    log_probs: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    device: str | torch.device,
) -> list[dict[str, float]]:
    """Fit the geometric ensemble (added if missing) on head log-probabilities ``(H, N, C)``."""
    ens = model.add_ensemble()
    device = torch.device(device)
    opt = torch.optim.Adam(ens.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = int(labels.shape[0])
    history = []
    mask = torch.tril(torch.ones_like(ens.weight))
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            lp = log_probs[:, idx].to(device)
            y = labels[idx].to(device)
            # All exits at once: exit i mixes heads j <= i (lower-triangular weights).
            comb = torch.einsum("ij,jbc->ibc", ens.weight * mask.to(device), lp)
            comb = comb + ens.bias[:, None, :]
            loss = F.cross_entropy(comb.flatten(0, 1), y.repeat(comb.shape[0]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        history.append({"epoch": epoch + 1, "loss": total / n})
    with torch.no_grad():
        ens.weight.mul_(mask.to(ens.weight.device))  # unused upper entries stay zero
    return history


def train_ztw_crossfit(
    model: EarlyExitModel,
    cache: FeatureCache,
    *,
    folds: int = 5,
    groups: torch.Tensor | None = None,
    epochs: int = 10,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 128,
    ensemble_epochs: int = 50,
    ensemble_lr: float = 1e-2,
    ensemble_batch_size: int = 512,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """Train the heads on every row and fit the ZTW ensemble on out-of-fold predictions.

    The ensemble must be fitted on head outputs the heads were not trained on
    (on their own training rows over-fitted heads look too reliable), and the
    paper's recipe holds a validation split out of the heads' data for it; the
    heads then train on less data than SDN's. Cross-fitting (stacking) keeps
    both: the rows are cut into ``folds`` parts; for each part the heads are
    trained, from the same initial weights, on the other parts and record
    their log-probabilities on it; the ensemble is fitted on those
    out-of-fold log-probabilities, and the heads that are kept are trained
    once more on every row. Costs ``folds + 1`` head trainings (cheap on a
    feature cache). ``groups`` (one id per row) keeps rows that share an id in
    one fold: augmented passes over the same images must not straddle folds.
    Returns ``{"heads": ..., "ensemble": ..., "folds": [...]}`` histories.
    """
    n = len(cache)
    if groups is None:
        groups = torch.arange(n)
    groups = groups.long().flatten()
    if groups.shape[0] != n:
        raise UserError(f"groups has {groups.shape[0]} entries for {n} cached rows")
    ids, inverse = torch.unique(groups, return_inverse=True)
    if not 2 <= folds <= len(ids):
        raise UserError(f"cross-fitting needs 2 <= folds <= {len(ids)} (distinct groups), "
                        f"got {folds}")
    gen = torch.Generator().manual_seed(seed + 7919)
    fold_of_group = torch.randperm(len(ids), generator=gen) % folds
    fold_of_row = fold_of_group[inverse]
    initial = {k: v.clone() for k, v in model.heads.state_dict().items()}
    out_of_fold: torch.Tensor | None = None
    fold_histories = []
    for k in range(folds):
        model.heads.load_state_dict(initial)
        held = torch.nonzero(fold_of_row == k).flatten()
        rest = torch.nonzero(fold_of_row != k).flatten()
        fold_histories.append(train_heads(
            model, cache, epochs=epochs, lr=lr, weight_decay=weight_decay,
            batch_size=batch_size, seed=seed, device=device, progress=progress, rows=rest))
        lp = head_log_probs(model, cache, held, device=device)
        if out_of_fold is None:
            out_of_fold = torch.empty(lp.shape[0], n, lp.shape[2])
        out_of_fold[:, held] = lp
        if progress:
            tqdm.write(f"cross-fit fold {k + 1}/{folds} done")
    model.heads.load_state_dict(initial)
    heads_history = train_heads(model, cache, epochs=epochs, lr=lr, weight_decay=weight_decay,
                                batch_size=batch_size, seed=seed, device=device,
                                progress=progress)
    assert out_of_fold is not None
    ensemble_history = _fit_ensemble(model, out_of_fold, cache.labels, epochs=ensemble_epochs,
                                     lr=ensemble_lr, batch_size=ensemble_batch_size, seed=seed,
                                     device=device)
    return {"heads": heads_history, "ensemble": ensemble_history, "folds": fold_histories}


def train_final_ensemble(
    model: EarlyExitModel,
    data: FeatureCache | Iterable[Any],
    *,
    epochs: int = 200,
    lr: float = 2e-2,
    batch_size: int = 512,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> list[dict[str, float]]:
    """Fit the final-exit ensemble (adds it if missing) on held-out examples.

    The rows that reach the end of an early-exit model have had every head
    evaluated; a weighted geometric mean of those exits' outputs and the
    backbone's is a better last answer than the backbone's alone at no
    measurable cost (:class:`~frugalnn.methods.early_exit.model.FinalEnsemble`).
    Only its ``num_exits + num_classes`` parameters are trained; heads and
    internal ensemble stay as they are. ``data`` must be examples neither the
    backbone nor the heads were trained on (a validation split): on training
    rows the fit learns to trust the over-fitted backbone.
    """
    if epochs < 1:
        raise UserError(f"epochs must be at least 1, got {epochs}")
    fin = model.add_final_ensemble()
    cache = data if isinstance(data, FeatureCache) else cache_features(
        model, data, device=device, progress=progress)
    device = torch.device(device)
    with torch.no_grad():
        was_training = model.training
        model.eval()
        lps = []
        try:
            for start in range(0, len(cache), 1024):
                feats = [f[start : start + 1024].to(device, torch.float32) for f in cache.feats]
                internal = model.combine(model.heads_from_features(feats))
                final = cache.final_logits[start : start + 1024].to(device, torch.float32)
                lps.append(torch.stack([F.log_softmax(z, 1) for z in [*internal, final]]).cpu())
        finally:
            model.train(was_training)
        log_probs = torch.cat(lps, 1)  # (num_exits, N, C)
    opt = torch.optim.Adam(fin.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = len(cache)
    history = []
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            z = fin.combine(list(log_probs[:, idx].to(device)))
            loss = F.cross_entropy(z, cache.labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        history.append({"epoch": epoch + 1, "loss": total / n})
        if progress and (epoch + 1) % 50 == 0:
            tqdm.write(f"final ensemble epoch {epoch + 1}/{epochs}: loss {total / n:.4f}")
    return history


def exit_loss_weights(
    model: EarlyExitModel, example_input: Any, final_weight: float = 1.0
) -> list[float]:
    """SDN-style loss weights: each exit's share of the backbone's FLOPs, final ``final_weight``.

    With many heads the internal exits' weights add up to several times the
    final exit's (13 heads on ResNet-56: about 6.5 to 1), so the heads' gradients
    dominate the shared blocks; a ``final_weight`` above 1 protects the final exit.
    """
    if final_weight <= 0:
        raise UserError(f"final exit loss weight must be positive, got {final_weight}")
    costs = model.exit_costs(example_input)
    base = model.stage_costs(example_input).backbone()
    return [min(1.0, c / base) for c in costs[:-1]] + [float(final_weight)]


def multi_exit_loss(
    weights: Sequence[float],
    label_smoothing: float = 0.0,
    *,
    teacher: torch.nn.Module | None = None,
    kd_weight: float = 0.0,
    kd_temperature: float = 1.0,
):
    """A ``loss_fn`` for :func:`frugalnn.train.fit`: weighted sum of every exit's loss.

    With a ``teacher`` (a frozen model giving logits, typically the backbone as
    it was before the heads were attached) each exit's loss becomes
    ``(1 - kd_weight) * CE + kd_weight * T^2 * KL(teacher_T || exit_T)``.
    Distilling every exit from the original backbone keeps the final exit
    where it was (plain SDN training trades some of its accuracy for the
    internal exits) and gives the internal exits a softer, easier target.
    """
    w = [float(v) for v in weights]
    if not 0.0 <= kd_weight <= 1.0:
        raise UserError(f"kd_weight must lie in [0, 1], got {kd_weight}")
    if kd_temperature <= 0:
        raise UserError(f"kd_temperature must be positive, got {kd_temperature}")
    if kd_weight > 0 and teacher is None:
        raise UserError("kd_weight > 0 needs a teacher model to distil from")
    use_kd = teacher is not None and kd_weight > 0
    t = float(kd_temperature)
    placed: dict[str, torch.device] = {}

    def exit_loss(z: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        ce = F.cross_entropy(z, y, label_smoothing=label_smoothing)
        if target is None:
            return ce
        return (1.0 - kd_weight) * ce + kd_weight * kd_loss(z, target, t)

    def loss_fn(model: Any, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        from frugalnn.train.checkpoint import unwrap

        x, y = split_batch(batch)
        net = unwrap(model)
        target = None
        if use_kd:
            dev = next(net.parameters()).device
            if placed.get("device") != dev:  # follow the student (fit places it, per rank)
                teacher.to(dev)
                placed["device"] = dev
            with torch.no_grad():
                target = teacher(x)
        outs = net.exit_outputs(x)
        if len(outs) != len(w):
            raise UserError(f"{len(w)} loss weights for {len(outs)} exits")
        loss = sum(wi * exit_loss(z, y, target) for wi, z in zip(w, outs))
        return loss, outs[-1]

    return loss_fn


def train_joint(
    model: EarlyExitModel,
    loader: DataLoader,
    *,
    epochs: int,
    lr: float = 0.01,
    weight_decay: float = 5e-4,
    optimizer: str = "sgd",
    weights: Sequence[float] | None = None,
    run_dir: Any = None,
    seed: int = 0,
    progress: bool = True,
    device: str | torch.device | None = None,
    kd_weight: float = 0.0,
    kd_temperature: float = 2.0,
    teacher: torch.nn.Module | None = None,
    final_weight: float = 1.0,
) -> Any:
    """Train backbone and heads together (SDN) with :func:`frugalnn.train.fit`.

    ``kd_weight > 0`` distils every exit from ``teacher`` (by default a frozen
    copy of the backbone as it is before training), see :func:`multi_exit_loss`.
    Without explicit ``weights`` the exits are weighted by
    :func:`exit_loss_weights` with the final exit at ``final_weight``.
    """
    from frugalnn.train.loop import fit

    if model.final_ensemble is not None:
        raise UserError("this model has a final ensemble, which is fitted on held-out data "
                        "after training; train jointly first, then call train_final_ensemble")
    if weights is None:
        x, _ = split_batch(next(iter(loader)))
        weights = exit_loss_weights(model, x, final_weight)
    if kd_weight > 0 and teacher is None:
        teacher = frozen_copy(model.backbone)
    if teacher is not None:
        teacher.eval().requires_grad_(False)
    loss_fn = multi_exit_loss(weights, teacher=teacher, kd_weight=kd_weight,
                              kd_temperature=kd_temperature)
    model.freeze_backbone = False
    return fit(
        model, loader, epochs=epochs, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
        loss_fn=loss_fn, run_dir=run_dir, seed=seed, progress=progress,
        device=device,
    )
