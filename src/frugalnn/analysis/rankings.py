"""Difficulty rankings: does every dynamic method find the same examples hard?

Every dynamic method (early exits, mixture-of-experts, per-token learners)
spends a different amount of compute on each example, so each one *ranks*
the examples from easy (cheap) to hard (expensive). This module reads the
per-example records of any set of run directories evaluated on the same
data, turns each run into one or more **signals** (a value per example,
larger = harder), and compares the signals pairwise:

* Spearman and Kendall rank correlations (SciPy; ``tau-b``, which handles the
  many ties of discrete costs such as exit indices);
* overlap of the top and bottom ``k %`` (the hardest/easiest examples); ties
  are broken by a seeded random permutation, so discrete costs do not favour
  low example ids. A random ranking overlaps by ``k %`` on average.

Signals per run:

* a run with a budget knob: its per-example FLOPs at one budget, by default
  the budget whose mean cost is closest to ``relative_cost`` times the
  run's baseline cost (or its most expensive budget), among budgets where the
  costs differ between examples;
* a static run (a baseline or a *reference run*): its per-example loss, and
  the columns ``entropy`` (of the predicted distribution) and
  ``zero_fraction`` (fraction of ReLU outputs that are zero, turned into the
  *active* fraction ``1 - zero_fraction`` so that larger means harder) when
  present. :func:`reference_run` writes such a run for any static model.

:func:`write_rankings` writes ``rankings.md``, ``rankings.json``,
``per_example.csv``, the correlation heatmaps, a scatter matrix of the
per-example signals and (given the dataset) image grids of the easiest and
hardest examples of each signal.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from frugalnn.errors import UserError
from frugalnn.utils.io import atomic_writer

__all__ = [
    "RankingStudy",
    "Signal",
    "compare_signals",
    "input_dependent",
    "load_signals",
    "overlap",
    "reference_run",
    "write_rankings",
]

OUT_FILE = "rankings.md"


@dataclass
class Signal:
    """One per-example difficulty score (larger = harder), aligned to the example ids."""

    name: str
    run: str
    kind: str  # compute | loss | entropy | active_fraction
    values: np.ndarray
    budget: float | None = None
    mean_flops: float | None = None


@dataclass
class RankingStudy:
    """Signals over the same examples and their pairwise agreement."""

    example_ids: np.ndarray
    labels: np.ndarray
    correct: dict[str, np.ndarray]
    signals: list[Signal]
    top_fraction: float = 0.1
    spearman: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    kendall: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    top_overlap: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    bottom_overlap: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.signals]

    def to_dict(self) -> dict[str, Any]:
        def mat(m: np.ndarray) -> list[list[float | None]]:
            return [[None if math.isnan(v) else float(v) for v in row] for row in m]

        return {
            "examples": int(len(self.example_ids)),
            "top_fraction": self.top_fraction,
            "signals": [{"name": s.name, "run": s.run, "kind": s.kind, "budget": s.budget,
                         "mean_flops": s.mean_flops} for s in self.signals],
            "spearman": mat(self.spearman),
            "kendall": mat(self.kendall),
            "top_overlap": mat(self.top_overlap),
            "bottom_overlap": mat(self.bottom_overlap),
        }


# --------------------------------------------------------------------------------------
# Loading runs
# --------------------------------------------------------------------------------------


def _labels_for(runs: Sequence[Path], metas: Sequence[dict[str, Any]]) -> list[str]:
    methods = [str(m.get("method") or r.name) for r, m in zip(runs, metas)]
    out = []
    for r, m in zip(runs, methods):
        out.append(m if methods.count(m) == 1 else f"{m} [{r.name}]")
    return out


def _pick_budget(rec: Any, wanted: float | None, relative_cost: float) -> tuple[float, np.ndarray]:
    from frugalnn.evaluation.records import _same_budget

    budgets = rec.budgets()
    if wanted is not None:
        match = [b for b in budgets if _same_budget(b, float(wanted))]
        if not match:
            known = ", ".join(f"{b:g}" for b in budgets)
            raise UserError(f"budget {wanted:g} was not evaluated in that run; known: {known}")
        return match[0], rec.rows_for(match[0])
    means = {b: float(rec.columns["flops"][rec.rows_for(b)].mean()) for b in budgets}
    ref = rec.meta.get("baseline_flops") or max(means.values())
    varied = [b for b in budgets if np.ptp(rec.columns["flops"][rec.rows_for(b)]) > 0]
    pool = varied or budgets
    best = min(pool, key=lambda b: (abs(means[b] / ref - relative_cost), -means[b]))
    return best, rec.rows_for(best)


def _aligned(rec: Any, mask: np.ndarray, run: Path) -> tuple[np.ndarray, np.ndarray]:
    ids = rec.columns["example_id"][mask]
    order = np.argsort(ids, kind="stable")
    if len(np.unique(ids)) != len(ids):
        raise UserError(f"{run} lists an example id twice at one budget; re-run its evaluation")
    return order, ids[order]


def load_signals(
    run_dirs: Sequence[str | os.PathLike[str]],
    *,
    relative_cost: float = 0.5,
    budgets: Mapping[str, float] | None = None,
) -> RankingStudy:
    """Read the runs and build their signals; ``UserError`` if the data differ.

    ``budgets`` maps a run directory (as given) or its label to the budget to
    rank that run at; other dynamic runs use ``relative_cost``.
    """
    from frugalnn.evaluation import load_records

    if not run_dirs:
        raise UserError("give at least one run directory")
    if not 0.0 < relative_cost <= 1.5:
        raise UserError(f"--relative-cost must be in (0, 1.5], got {relative_cost}")
    runs = [Path(r) for r in run_dirs]
    records = [load_records(r) for r in runs]
    labels = _labels_for(runs, [r.meta for r in records])
    budgets = dict(budgets or {})
    signals: list[Signal] = []
    correct: dict[str, np.ndarray] = {}
    ref_ids = ref_labels = None
    ref_data = None
    for run, rec, label in zip(runs, records, labels):
        flops = rec.columns["flops"]
        if flops.size == 0 or not np.isfinite(flops).all():
            raise UserError(
                f"{run} has no per-example FLOPs (records.csv 'flops' is missing or NaN); "
                "re-evaluate it with `frugalnn evaluate`"
            )
        data = (rec.meta.get("config") or {}).get("data")
        if data and ref_data and data != ref_data:
            raise UserError(f"runs are on different data: {run} used {data!r}, others {ref_data!r}")
        ref_data = ref_data or data
        static = rec.meta.get("budget_name", "static") == "static" or all(
            math.isnan(b) for b in rec.budgets())
        wanted = budgets.pop(str(run), budgets.pop(label, None))
        if static:
            budget, mask = rec.budgets()[0], rec.rows_for(rec.budgets()[0])
        else:
            budget, mask = _pick_budget(rec, wanted, relative_cost)
        order, ids = _aligned(rec, mask, run)
        ys = rec.columns["label"][mask][order]
        if ref_ids is None:
            ref_ids, ref_labels = ids, ys
        elif len(ids) != len(ref_ids) or not (ids == ref_ids).all() or not (ys == ref_labels).all():
            raise UserError(
                f"runs are on different data: the example ids or labels of {run} differ from "
                f"{runs[0]}; evaluate every run on the same split and --limit"
            )
        cols = {k: v[mask][order] for k, v in rec.columns.items()}
        correct[label] = cols["correct"]
        b = None if math.isnan(budget) else float(budget)
        if not static:
            name = f"{label}: compute ({rec.meta.get('budget_name')}={budget:g})"
            signals.append(Signal(name, str(run), "compute", cols["flops"], b,
                                  float(cols["flops"].mean())))
        else:
            signals.append(Signal(f"{label}: loss", str(run), "loss", cols["loss"], b))
        if "entropy" in cols and np.isfinite(cols["entropy"]).any():
            signals.append(Signal(f"{label}: entropy", str(run), "entropy", cols["entropy"], b))
        if "zero_fraction" in cols and np.isfinite(cols["zero_fraction"]).any():
            signals.append(Signal(f"{label}: active fraction", str(run), "active_fraction",
                                  1.0 - cols["zero_fraction"], b))
    if budgets:
        raise UserError(f"--budget names unknown runs: {', '.join(budgets)}; use a run "
                        "directory exactly as given, or its method label")
    assert ref_ids is not None and ref_labels is not None
    return RankingStudy(ref_ids, ref_labels, correct, signals)


def input_dependent(run_dir: str | os.PathLike[str]) -> bool:
    """True when the run's per-example FLOPs differ between examples at some budget
    (a dynamic method), False for static models and static knobs (ranks, bit widths)."""
    from frugalnn.evaluation import load_records

    rec = load_records(run_dir)
    flops = rec.columns["flops"]
    return any(np.ptp(flops[rec.rows_for(b)]) > 0 for b in rec.budgets()
               if np.isfinite(flops[rec.rows_for(b)]).all())


# --------------------------------------------------------------------------------------
# Comparing
# --------------------------------------------------------------------------------------


def _hardest(values: np.ndarray, k: int, seed: int, hardest: bool = True) -> np.ndarray:
    """Indices of the ``k`` largest (or smallest) values, ties broken at random (seeded)."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(values))
    v = values[perm]
    v = np.where(np.isnan(v), -np.inf if hardest else np.inf, v)
    order = np.argsort(-v if hardest else v, kind="stable")
    return perm[order[:k]]


def overlap(a: np.ndarray, b: np.ndarray, fraction: float, *, hardest: bool = True,
            seeds: tuple[int, int] = (0, 1)) -> float:
    """Share of the top (``hardest``) or bottom ``fraction`` of ``a`` also in that of ``b``.

    ``seeds`` break ties of ``a`` and ``b`` independently (the same seed for a
    signal compared with itself gives 1).
    """
    n = len(a)
    k = max(1, int(round(fraction * n)))
    sa = set(_hardest(a, k, seeds[0], hardest).tolist())
    sb = set(_hardest(b, k, seeds[1], hardest).tolist())
    return len(sa & sb) / k


def _corr(fn: Any, a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan")
    return float(fn(a[ok], b[ok])[0])


def compare_signals(study: RankingStudy, top_fraction: float = 0.1, seed: int = 0) -> RankingStudy:
    """Fill the pairwise Spearman, Kendall and top/bottom-overlap matrices."""
    if not 0.0 < top_fraction <= 0.5:
        raise UserError(f"--top must be a fraction in (0, 0.5], got {top_fraction}")
    n = len(study.signals)
    mats = {k: np.full((n, n), np.nan) for k in ("s", "k", "t", "b")}
    for i, si in enumerate(study.signals):
        for j, sj in enumerate(study.signals):
            if j < i:
                for k in mats:
                    mats[k][i, j] = mats[k][j, i]
                continue
            mats["s"][i, j] = _corr(stats.spearmanr, si.values, sj.values)
            mats["k"][i, j] = _corr(stats.kendalltau, si.values, sj.values)
            seeds = (seed + i, seed + j)
            mats["t"][i, j] = overlap(si.values, sj.values, top_fraction, seeds=seeds)
            mats["b"][i, j] = overlap(si.values, sj.values, top_fraction, hardest=False,
                                      seeds=seeds)
    study.top_fraction = top_fraction
    study.spearman, study.kendall = mats["s"], mats["k"]
    study.top_overlap, study.bottom_overlap = mats["t"], mats["b"]
    return study


# --------------------------------------------------------------------------------------
# Reference runs
# --------------------------------------------------------------------------------------


def _relu_capture(store: list[tuple[np.ndarray, np.ndarray]], batch: int) -> Any:
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    relus = {F.relu, torch.relu, torch.relu_, F.relu_, torch.Tensor.relu, torch.Tensor.relu_}

    class _Relus(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
            out = func(*args, **(kwargs or {}))
            if func in relus and isinstance(out, torch.Tensor) and out.shape[:1] == (batch,):
                flat = out.detach().reshape(batch, -1)
                store.append(((flat == 0).sum(1).double().cpu().numpy(),
                              np.full(batch, flat.shape[1], dtype=np.float64)))
            return out

    return _Relus()


def reference_run(
    model: Any,
    dataset: Any,
    run_dir: str | os.PathLike[str],
    *,
    batch_size: int = 64,
    device: str = "cpu",
    method: str = "reference",
    config: dict[str, Any] | None = None,
    force: bool = False,
    progress: bool = False,
) -> Path:
    """Evaluate a static model into a run directory with the reference columns.

    Besides the usual records (loss, FLOPs, ...), every example gets
    ``entropy`` (nats, of the softmax of the logits; mean over tokens for a
    language model) and ``zero_fraction`` (zero outputs of every ReLU call /
    all ReLU outputs; NaN for a model without ReLUs). A model with a budget
    knob is evaluated at its full budget.
    """
    import torch
    from torch.utils.data import DataLoader

    from frugalnn.budget import has_budget
    from frugalnn.evaluation import evaluate

    run_dir = Path(run_dir)
    if (run_dir / "records.csv").exists() and not force:
        raise UserError(f"{run_dir} already holds records; pass --force or choose another --out")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    budgets = [model.full_budget()] if has_budget(model) else None
    records = evaluate(model, loader, budgets=budgets, method=method, device=device,
                       progress=progress)
    entropy, zeros = [], []
    model.eval()
    with torch.inference_mode():
        for batch in loader:
            x = batch[0].to(device) if isinstance(batch[0], torch.Tensor) else batch[0]
            b = len(batch[1])
            store: list[tuple[np.ndarray, np.ndarray]] = []
            with _relu_capture(store, b):
                logits = model(x)
            logp = torch.log_softmax(logits.float(), -1)
            ent = -(logp.exp() * logp).sum(-1)
            entropy.append((ent.mean(-1) if ent.dim() > 1 else ent).double().cpu().numpy())
            if store:
                zero = sum(z for z, _ in store) / sum(t for _, t in store)
            else:
                zero = np.full(b, np.nan)
            zeros.append(zero)
    records.columns["entropy"] = np.concatenate(entropy)
    records.columns["zero_fraction"] = np.concatenate(zeros)
    records.meta["config"] = {**(config or {}), "reference": True}
    records.save(run_dir, force=force)
    with atomic_writer(run_dir / "config.json") as fh:
        json.dump(records.meta["config"], fh, indent=2, default=str)
        fh.write("\n")
    return run_dir


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


def _short(name: str, width: int = 44) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _heatmaps(study: RankingStudy, path: Path) -> Path:
    from frugalnn.utils.figures import pyplot, save_figure

    plt = pyplot()
    n = len(study.signals)
    names = [f"({i + 1}) {_short(s)}" for i, s in enumerate(study.names)]
    size = 1.6 + 0.55 * n
    fig, axes = plt.subplots(1, 3, figsize=(3 * size + 3.5, size), constrained_layout=True)
    panels = [("Spearman", study.spearman, -1, 1, "RdBu_r"),
              ("Kendall tau-b", study.kendall, -1, 1, "RdBu_r"),
              (f"hardest {100 * study.top_fraction:g} % overlap", study.top_overlap, 0, 1,
               "viridis")]
    for k, (ax, (title, mat, lo, hi, cmap)) in enumerate(zip(axes, panels)):
        im = ax.imshow(mat, vmin=lo, vmax=hi, cmap=cmap)
        ax.set_xticks(range(n), [f"({i + 1})" for i in range(n)], fontsize=7)
        ax.set_yticks(range(n), names if k == 0 else [f"({i + 1})" for i in range(n)],
                      fontsize=7)
        for i in range(n):
            for j in range(n):
                v = mat[i, j]
                dark = abs(v) > 0.6 if cmap == "RdBu_r" else v < 0.6
                ax.text(j, i, "–" if math.isnan(v) else f"{v:.2f}", ha="center", va="center",
                        fontsize=7, color="white" if dark else "black")
        ax.set_title(title)
        fig.colorbar(im, ax=ax, shrink=0.7)
    return save_figure(fig, path)


def _scatter(study: RankingStudy, path: Path, max_signals: int = 6) -> Path:
    from frugalnn.utils.figures import pyplot, save_figure

    plt = pyplot()
    sigs = study.signals[:max_signals]
    n = len(sigs)
    fig, axes = plt.subplots(n, n, figsize=(2.2 * n + 1, 2.2 * n + 1), squeeze=False)
    rng = np.random.default_rng(0)
    for i, si in enumerate(sigs):
        for j, sj in enumerate(sigs):
            ax = axes[i, j]
            ax.tick_params(labelsize=6)
            if i == j:
                ax.hist(si.values[np.isfinite(si.values)], bins=30, color="gray")
            else:
                # jitter discrete costs slightly so overlapping points stay visible
                def jit(v: np.ndarray) -> np.ndarray:
                    spread = np.ptp(v[np.isfinite(v)]) if np.isfinite(v).any() else 0.0
                    return v + rng.normal(0, 0.005 * (spread or 1.0), len(v))

                ax.scatter(jit(sj.values), jit(si.values), s=3, alpha=0.35)
            if i == n - 1:
                ax.set_xlabel(_short(sj.name, 24), fontsize=7)
            if j == 0:
                ax.set_ylabel(_short(si.name, 24), fontsize=7)
    fig.suptitle("per-example difficulty signals (FLOPs for dynamic runs)", fontsize=9)
    return save_figure(fig, path)


def _image_grids(study: RankingStudy, dataset: Any, out: Path, count: int) -> list[Path]:
    import torch

    from frugalnn.utils.figures import display_images, pyplot, save_figure

    plt = pyplot()

    n_ds = len(dataset)
    if int(study.example_ids.max()) >= n_ds:
        raise UserError(
            f"the records name example {int(study.example_ids.max())} but the dataset has {n_ds}; "
            "pass the --split, --eval-limit and --seed the runs were evaluated with"
        )
    ds_labels = getattr(dataset, "labels", None)
    if ds_labels is not None and study.labels.min() >= 0:
        got = np.asarray(ds_labels)[study.example_ids]
        if not (got == study.labels).all():
            raise UserError("the dataset's labels differ from the records'; pass the --data, "
                            "--split, --eval-limit and --seed the runs were evaluated with")
    files = []
    for k, sig in enumerate(study.signals):
        rows = []
        for hardest in (False, True):
            idx = _hardest(sig.values, min(count, len(sig.values)), seed=0, hardest=hardest)
            rows.append(idx)
        cols = len(rows[0])
        fig, axes = plt.subplots(2, cols, figsize=(1.2 * cols + 0.6, 3.0), squeeze=False)
        for r, idx in enumerate(rows):
            items = [dataset[int(study.example_ids[i])] for i in idx]
            x = torch.stack([torch.as_tensor(it[0]) for it in items])
            if x.dim() != 4:
                plt.close(fig)
                return files  # not images
            imgs = display_images(x)
            for c in range(cols):
                ax = axes[r, c]
                ax.axis("off")
                if c < len(idx):
                    ax.imshow(imgs[c], cmap="gray" if imgs.ndim == 3 else None,
                              interpolation="nearest")
                    ax.set_title(f"#{int(study.example_ids[idx[c]])} y={int(items[c][1])}\n"
                                 f"{sig.values[idx[c]]:.3g}", fontsize=6)
            axes[r, 0].text(-0.3, 0.5, "easiest" if r == 0 else "hardest", rotation=90,
                            transform=axes[r, 0].transAxes, ha="center", va="center")
        fig.suptitle(sig.name, fontsize=8)
        files.append(save_figure(fig, out / f"grid_{k:02d}_{sig.kind}.png"))
    return files


def _md_matrix(title: str, names: list[str], mat: np.ndarray) -> list[str]:
    head = " | ".join(f"({i + 1})" for i in range(len(names)))
    lines = [f"### {title}", "", f"| | {head} |", "|---" * (len(names) + 1) + "|"]
    for i, name in enumerate(names):
        vals = ["–" if math.isnan(v) else f"{v:.2f}" for v in mat[i]]
        lines.append(f"| ({i + 1}) {name} | " + " | ".join(vals) + " |")
    return lines + [""]


def _markdown(study: RankingStudy, figures: list[Path], out: Path) -> str:
    n = len(study.example_ids)
    lines = ["# Difficulty rankings", "",
             f"{n} examples, {len(study.signals)} signals (larger = harder). Correlations over "
             f"examples; overlap = share of the hardest (top) or easiest (bottom) "
             f"{100 * study.top_fraction:g} % that two signals share (random: "
             f"{100 * study.top_fraction:g} %).", "",
             "| # | signal | run | kind | budget | mean MFLOPs | accuracy of run |",
             "|---|---|---|---|---|---|---|"]
    for i, s in enumerate(study.signals):
        label = s.name.split(": ")[0]
        acc = study.correct.get(label)
        lines.append(
            f"| ({i + 1}) | {s.name} | {s.run} | {s.kind} | "
            f"{'' if s.budget is None else f'{s.budget:g}'} | "
            f"{'' if s.mean_flops is None else f'{s.mean_flops / 1e6:.3f}'} | "
            f"{'' if acc is None else f'{100 * float(np.mean(acc)):.2f} %'} |")
    flat = [f"({i + 1})" for i, s in enumerate(study.signals)
            if np.ptp(s.values[np.isfinite(s.values)]) == 0]
    if flat:
        lines += ["", f"Signals {', '.join(flat)} are the same for every example (e.g. top-k "
                  "routing): they rank nothing, so their correlations are undefined (–)."]
    lines.append("")
    names = study.names
    lines += _md_matrix("Spearman rank correlation", names, study.spearman)
    lines += _md_matrix("Kendall tau-b", names, study.kendall)
    lines += _md_matrix(f"Overlap of the hardest {100 * study.top_fraction:g} %", names,
                        study.top_overlap)
    lines += _md_matrix(f"Overlap of the easiest {100 * study.top_fraction:g} %", names,
                        study.bottom_overlap)
    lines += ["## Figures", ""]
    lines += [f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in figures]
    return "\n".join(lines) + "\n"


def write_rankings(
    run_dirs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    relative_cost: float = 0.5,
    budgets: Mapping[str, float] | None = None,
    top_fraction: float = 0.1,
    dataset: Any = None,
    data: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    split: str = "test",
    limit: int | None = None,
    seed: int = 0,
    grid: int = 12,
    force: bool = False,
) -> Path:
    """Rank the examples of ``run_dirs`` by each signal, compare, and write ``out_dir``.

    Images for the easiest/hardest grids come from ``dataset`` (a dataset
    object indexed by example id) or are loaded with
    :func:`frugalnn.data.splits.load_test_split` (the ``limit`` random examples of
    ``split`` drawn with ``seed``, as evaluated); without either, no grids are drawn.
    Returns the path of ``rankings.md``.
    """
    out = Path(out_dir)
    if (out / OUT_FILE).exists() and not force:
        raise UserError(f"{out} already holds rankings; pass --force or choose another --out")
    if grid < 1:
        raise UserError(f"--grid must be positive, got {grid}")
    study = compare_signals(load_signals(run_dirs, relative_cost=relative_cost, budgets=budgets),
                            top_fraction)
    if dataset is None and data is not None:
        from frugalnn.data.splits import load_test_split

        dataset = load_test_split(data, data_dir, split=split, limit=limit, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    figures = [_heatmaps(study, out / "correlation.png"), _scatter(study, out / "scatter.png")]
    if dataset is not None:
        figures += _image_grids(study, dataset, out, grid)
    with atomic_writer(out / "rankings.json") as fh:
        json.dump(study.to_dict(), fh, indent=2)
        fh.write("\n")
    with atomic_writer(out / "per_example.csv") as fh:
        writer = csv.writer(fh)
        writer.writerow(["example_id", "label", *study.names])
        for i, eid in enumerate(study.example_ids):
            writer.writerow([int(eid), int(study.labels[i]),
                             *(repr(float(s.values[i])) for s in study.signals)])
    with atomic_writer(out / OUT_FILE) as fh:
        fh.write(_markdown(study, figures, out))
    return out / OUT_FILE
