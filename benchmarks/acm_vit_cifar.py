"""ViT on CIFAR-10 (JPEG) with adaptive computation modules, and the difficulty-rankings study.

Pipeline (cached under --work; re-running skips what exists):

1. a ViT baseline: ``--baseline CKPT`` (e.g. the MoE benchmark's trained ViT, so
   all methods share one model), or trained here on a random train subset;
2. a *reference run* of the baseline on a random test subset (seeded; the same
   subset as ``benchmarks/moe_vit_cifar.py`` draws with the same seed and size):
   per-example loss, prediction entropy and fraction of zero ReLU outputs;
3. every FFN converted to N learners, the three ACM training stages on a train
   subset, the ``q`` sweep evaluated on the test subset (records, FLOPs per
   example, end-to-end latency), and the converted FFN layers alone timed
   against the dense FFNs on real FFN inputs at batch 64;
4. a cost-accuracy report of ACM, the baseline and any ``--compare`` runs (MoE,
   early exits) and the rankings study across them all.

    .venv/bin/python benchmarks/acm_vit_cifar.py --data-dir /work/shared/data \
        --baseline runs/bench/moe_vit_cifar/baseline/checkpoint \
        --compare runs/bench/moe_vit_cifar/moe-dynamic ...

The converted layers are timed on every run, trained or cached, under the timing
lock: seeds trained side by side (more processes than cores) are re-timed by running
the same command again on a quiet machine, which trains nothing and rewrites the
results with the new layer timings (the end-to-end latencies of the sweep stay the
training run's).

Writes ``--out`` (the measured section, with anything below a ``<!-- findings -->`` line
kept; ``benchmarks/results/acm.md`` is assembled by hand from such sections) and the
figures under ``--work``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import add_split_flags, log, splits_from_args, timing_lock
from torch.utils.data import DataLoader

from frugalnn.analysis.operating_point import operating_point
from frugalnn.analysis.rankings import load_signals, reference_run, write_rankings
from frugalnn.cost.latency import measure_latency
from frugalnn.cost.machine import describe_machine, machine_markdown
from frugalnn.data.splits import random_subset, seeded_loader
from frugalnn.errors import UserError
from frugalnn.evaluation import evaluate_into, load_records, load_summary
from frugalnn.methods.acm.recipe import ACMConfig, acm
from frugalnn.methods.acm.report import write_extras
from frugalnn.models import create_model
from frugalnn.train import fit, load_model, save_checkpoint
from frugalnn.train.distill import DistillConfig, frozen_copy


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_split_flags(p, data="cifar10")
    p.set_defaults(train_limit=12000, val_limit=1000, test_limit=1000,
                   data_dir=os.environ.get("FRUGALNN_DATA"))
    p.add_argument("--work", default="runs/bench/acm_vit_cifar")
    p.add_argument("--baseline", help="checkpoint of a trained vit_tiny (default: train one)")
    p.add_argument("--compare", nargs="*", default=[], help="other evaluated runs to compare")
    p.add_argument("--dim", type=int, default=96)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--acm-examples", type=int, default=4000, help="train subset for ACM stages")
    p.add_argument("--learners", type=int, default=4)
    p.add_argument("--distill-epochs", type=int, default=2)
    p.add_argument("--gate-epochs", type=int, default=1)
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--target", type=float, default=0.5)
    p.add_argument("--finetune-lr", type=float, default=1e-4)
    p.add_argument("--qs", default="0,0.05,0.1,0.15,0.2,0.25,0.4,0.5,0.6,0.75,0.9,1",
                   help="budget values q swept (comma-separated)")
    p.add_argument("--kd-weight", type=float, default=0.5,
                   help="stage III distillation weight from the dense logits")
    p.add_argument("--latency-repeats", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-early-exit", action="store_true",
                   help="skip the early-exit (SDN heads on the same frozen ViT) comparison")
    p.add_argument("--exit-epochs", type=int, default=10, help="early-exit head epochs")
    p.add_argument("--moe-checkpoint", default="runs/bench/moe_vit_cifar/moe/checkpoint",
                   help="MoE model for experts-per-patch maps (skipped when missing)")
    p.add_argument("--rank-relative-cost", type=float, default=0.75,
                   help="rank --compare runs at the budget nearest this fraction of their cost")
    p.add_argument("--out", default="runs/bench/results/acm_vit_cifar.md",
                   help="results section (benchmarks/results/acm.md is written by hand from it)")
    p.add_argument("--json", help="also write the headline figures as JSON here")
    return p.parse_args(argv)


def baseline_model(a: argparse.Namespace, work: Path, train: Any) -> torch.nn.Module:
    if a.baseline:
        return load_model(a.baseline).eval()
    ckpt = work / "baseline" / "checkpoint"
    if not (ckpt / "model.safetensors").exists():
        torch.manual_seed(a.seed)
        model = create_model("vit_tiny", dim=a.dim, depth=a.depth, heads=a.heads,
                             activation="relu")
        log(f"training ViT dim={a.dim} depth={a.depth} on {len(train)} images")
        fit(model, DataLoader(train, batch_size=128,
                              shuffle=True, generator=torch.Generator().manual_seed(a.seed)),
            epochs=a.epochs, optimizer="adamw", lr=1e-3, weight_decay=0.05, schedule="cosine",
            warmup_epochs=0.2, seed=a.seed, progress=False, run_dir=work / "baseline")
    return load_model(ckpt).eval()


def dense_control(a: argparse.Namespace, work: Path, teacher: torch.nn.Module, sub: Any,
                  test: Any, val: Any) -> Path:
    """The same-training control: the dense ViT given ACM's stage III (every weight trained,
    the same images, epochs, learning rate, schedule and distillation weight from the
    original), evaluated like ACM. Stages I-II train only the learners and gates, which
    the dense model does not have. ACM's gain or loss is read against the better of the
    dense model and this control, so that it is not just "more training"."""
    run = work / "control"
    if (run / "summary.json").exists():
        return run
    model = copy.deepcopy(teacher).train()
    log(f"dense control: {a.finetune_epochs} epoch(s) on the same {len(sub)} images")
    fit(model, seeded_loader(sub, a.batch_size, a.seed), epochs=a.finetune_epochs,
        optimizer="adamw", lr=a.finetune_lr, weight_decay=0.0, schedule="cosine",
        teacher=frozen_copy(teacher), distill=DistillConfig(alpha=a.kd_weight, temperature=2.0),
        seed=a.seed + 2, progress=False)
    evaluate_into(model.eval(), test, run, val_dataset=val, method="ViT dense control",
                  batch_size=a.batch_size, threads=a.threads, latency_batch_sizes=(),
                  config={"data": "cifar10", "test_examples": len(test), "seed": a.seed},
                  progress=False)
    return run


def ffn_latency(acm: Any, teacher: torch.nn.Module, x: torch.Tensor, repeats: int,
                threads: int) -> list[dict[str, Any]]:
    """Converted FFN layers alone vs the dense FFNs, on the real FFN inputs of one batch."""
    inputs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=m.name: inputs.__setitem__(n, args[0]))
             for m in acm.acm_layers()]
    acm.set_budget(1.0)
    with torch.inference_mode():
        acm(x)
    for h in hooks:
        h.remove()
    dense = {s.name: s for s in teacher.ffn_sites()}

    def run_dense(_x: torch.Tensor) -> None:
        for name, t in inputs.items():
            s = dense[name]
            s.fc2(s.act(s.fc1(t)))

    def run_acm(_x: torch.Tensor) -> None:
        for layer in acm.acm_layers():
            layer(inputs[layer.name])

    # Three interleaved rounds (dense, then every q), keeping each configuration's
    # fastest round median: a configuration timed first in a process, or while the
    # machine briefly got busier, would otherwise look slower than it is.
    timings: dict[Any, list[Any]] = {}
    fractions: dict[float, float] = {}
    with torch.inference_mode():
        for _ in range(3):
            rec = measure_latency(run_dense, x, warmup=3, repeats=repeats, threads=threads)
            timings.setdefault("dense", []).append(rec)
            for q in acm.budget_values():
                acm.set_budget(q)
                if q not in fractions:
                    acm.keep_counts(True)
                    run_acm(x)
                    fractions[q] = acm.ffn_compute_fraction()
                    acm.keep_counts(False)
                rec = measure_latency(run_acm, x, warmup=3, repeats=repeats, threads=threads)
                timings.setdefault(q, []).append(rec)
    best = {k: min(v, key=lambda r: r.median_ms) for k, v in timings.items()}
    base = best["dense"]
    rows = [{"q": "dense", "median_ms": base.median_ms, "p10": base.p10_ms,
             "p90": base.p90_ms, "speedup": 1.0, "learners": float(acm.num_learners())}]
    for q in acm.budget_values():
        rec = best[q]
        rows.append({"q": q, "median_ms": rec.median_ms, "p10": rec.p10_ms, "p90": rec.p90_ms,
                     "speedup": base.median_ms / rec.median_ms,
                     "learners": fractions[q] * acm.num_learners()})
    acm.set_budget(1.0)
    return rows


def early_exit_run(a: argparse.Namespace, work: Path, backbone: torch.nn.Module, train: Any,
                   test: Any, val: Any) -> Path:
    """SDN-style early exits (a head after every block, frozen backbone) on the same ViT."""
    from frugalnn.methods.early_exit import attach_heads
    from frugalnn.methods.early_exit.training import cache_features, train_heads

    run = work / "early-exit"
    if (run / "records.csv").exists():
        return run
    torch.manual_seed(a.seed)
    model = attach_heads(copy.deepcopy(backbone), "every",
                         example_input=test[0][0].unsqueeze(0))
    model.freeze_backbone = True
    sub = random_subset(train, a.acm_examples, a.seed + 7)
    log(f"early-exit heads on {len(sub)} images, {a.exit_epochs} epochs")
    cache = cache_features(model, DataLoader(sub, batch_size=256))
    train_heads(model, cache, epochs=a.exit_epochs, lr=3e-3, seed=a.seed)
    model.eval()
    base = load_summary(work / "reference")["budgets"][0]
    evaluate_into(model, test, run, val_dataset=val, method="early exits (SDN heads)",
                  batch_size=a.batch_size, threads=a.threads,
                  latency_batch_sizes=(a.batch_size,), latency_repeats=a.latency_repeats,
                  baseline_flops=base["flops"], baseline_accuracy=base["accuracy"],
                  config={"data": "cifar10", "test_examples": len(test), "seed": a.seed},
                  progress=False)
    return run


def moe_compute_maps(ckpt: Path, test: Any, out: Path, images: int = 8) -> list[Path]:
    """Experts per patch of the MoE conversion, drawn with the shared compute-map helper.

    The MoE layer records only per-example means in the ledger, so the per-token
    counts are recomputed here from each layer's router decision on its input.
    """
    from frugalnn.methods.moe import MoEFFN
    from frugalnn.report.compute_maps import save_compute_maps

    model = load_model(ckpt).eval()
    layers = [m for m in model.modules() if isinstance(m, MoEFFN)]
    x = torch.stack([test[i][0] for i in range(images)])
    titles = [f"#{i} label {int(test[i][1])}" for i in range(images)]
    files = []
    for tau in (0.5, 0.8):
        model.set_budget(tau)
        counts: list[torch.Tensor] = []

        def hook(mod: Any, args: tuple, _out: Any, counts: list = counts) -> None:
            t = args[0]
            mask = mod.select(mod.scores(t.reshape(-1, t.shape[-1])))
            counts.append(mask.sum(1).reshape(t.shape[:-1]).double())

        handles = [m.register_forward_hook(hook) for m in layers]
        with torch.inference_mode():
            model(x)
        for h in handles:
            h.remove()
        files.append(save_compute_maps(
            torch.stack(counts).mean(0), x, out / f"moe_experts_tau{tau:g}.png", titles=titles,
            label=f"experts per patch (tau={tau:g}, mean over layers)", vmin=0,
            vmax=float(max(m.num_experts for m in layers))))
    model.set_budget(model.full_budget())
    return files


def ffn_fraction(run: Path) -> dict[float, float]:
    # ``run`` may be a run's validation directory: the same columns.
    """Per budget: learners run / learners available, mean over layers (from records)."""
    rec = load_records(run)
    cols = [c for c in rec.decision_columns if c.startswith("learners_per_token/")]
    n = max(np.nanmax(rec.columns[c]) for c in cols)
    return {b: float(np.mean([np.nanmean(rec.columns[c][rec.rows_for(b)]) for c in cols]) / n)
            for b in rec.budgets()}


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    machine = describe_machine()
    log("loading CIFAR-10 JPEG")
    splits = splits_from_args(a)
    train, val, test = splits.train, splits.val, splits.test
    model = baseline_model(a, work, train)
    teacher = copy.deepcopy(model).eval()

    ref = work / "reference"
    if not (ref / "records.csv").exists():
        log("reference run (loss, entropy, ReLU zero fraction) of the baseline")
        reference_run(model, test, ref, batch_size=a.batch_size, method="ViT baseline",
                      config={"data": "cifar10", "test_examples": len(test),
                              "seed": a.seed})

    run = work / "acm"
    sub = random_subset(train, a.acm_examples, a.seed + 7)
    if not (run / "records.csv").exists():
        config = ACMConfig(learners=a.learners, distill_epochs=a.distill_epochs,
                           gate_epochs=a.gate_epochs, finetune_epochs=a.finetune_epochs,
                           target=a.target, finetune_lr=a.finetune_lr, kd_weight=a.kd_weight,
                           qs=[float(v) for v in a.qs.split(",")], batch_size=a.batch_size,
                           seed=a.seed)
        log(f"ACM stages on {len(sub)} images: distil {a.distill_epochs}, gate {a.gate_epochs}, "
            f"fine-tune {a.finetune_epochs} epochs")
        t0 = time.time()
        converted = acm(model, config, train_data=sub)
        train_s = time.time() - t0
        log(f"ACM trained in {train_s:.0f} s")
        save_checkpoint(run / "checkpoint", converted, {"train_seconds": train_s})
        base = load_summary(ref)["budgets"][0]
        evaluate_into(converted, test, run, val_dataset=val, method="ACM (per-token learners)",
                      batch_size=a.batch_size, threads=a.threads,
                      latency_batch_sizes=(a.batch_size,), latency_repeats=a.latency_repeats,
                      baseline_flops=base["flops"], baseline_accuracy=base["accuracy"],
                      config={"data": "cifar10", "test_examples": len(test),
                              "seed": a.seed, "train_seconds": train_s, "acm": config.to_dict()},
                      progress=False)
        write_extras(converted, run, test, point=operating_point(run))
    control = dense_control(a, work, teacher, sub, test, val) if a.finetune_epochs else None
    converted = load_model(run / "checkpoint").eval()
    x = torch.stack([test[i][0] for i in range(a.batch_size)])
    log("timing the converted FFN layers against the dense FFNs")
    with timing_lock():
        lat = ffn_latency(converted, teacher, x, a.latency_repeats, a.threads)

    extra = [] if a.no_early_exit else [early_exit_run(a, work, teacher, train, test, val)]
    runs = [ref, run, *extra, *[Path(c) for c in a.compare]]
    from frugalnn.report import write_report

    write_report(runs, work / "report", title="ViT on CIFAR-10 (JPEG): ACM vs others",
                 force=True)
    rank_runs = [run, ref, *extra]
    notes = []
    for c in a.compare:
        try:
            load_signals([run, ref, Path(c)])
            rank_runs.append(Path(c))
        except UserError as exc:
            notes.append(f"- {c} left out of the rankings: {exc}")
    # ACM is ranked where it runs about half of the converted layers' learners (read off
    # the validation records when the run has them).
    frac = ffn_fraction(run / "validation" if (run / "validation").is_dir() else run)
    q_half = min(frac, key=lambda q: abs(frac[q] - 0.5))
    write_rankings(rank_runs, work / "rankings", dataset=test, force=True,
                   budgets={str(run): q_half}, relative_cost=a.rank_relative_cost)
    if Path(a.moe_checkpoint).exists():
        moe_compute_maps(Path(a.moe_checkpoint), test, work / "moe_maps")
        notes.append(f"- MoE experts-per-patch maps: `{work / 'moe_maps'}`")
    log(f"done in {time.time() - started:.0f} s")
    write_results(a, machine, ref, run, control, lat, work, notes, time.time() - started)
    return 0


def at_most_half(budgets: list[dict[str, Any]], frac: dict[float, float],
                 base: dict[str, Any], chooser: list[dict[str, Any]], chosen_on: str) -> str:
    """The budget most accurate on ``chooser`` (the validation rows) among those that run
    at most half of the converted layers' compute, scored on ``budgets`` (test)."""
    ok = [r for r in chooser if frac[float(r["budget"])] <= 0.5]
    if not ok:
        return "No budget runs 50 % or less of the converted layers' compute."
    q = float(max(ok, key=lambda r: r["accuracy"])["budget"])
    best = next(r for r in budgets if float(r["budget"]) == q)
    return (f"Most accurate budget at or below 50 % of the converted layers' compute "
            f"(chosen_on: {chosen_on}): q={q:g} ({100 * frac[q]:.0f} %), test accuracy "
            f"{100 * best['accuracy']:.2f} % "
            f"({100 * (best['accuracy'] - base['accuracy']):+.2f} points).")


def write_results(a: argparse.Namespace, machine: dict[str, Any], ref: Path, run: Path,
                  control: Path | None, lat: list[dict[str, Any]], work: Path, notes: list[str],
                  seconds: float) -> None:
    base = load_summary(ref)["budgets"][0]
    ctrl = load_summary(control)["budgets"][0] if control is not None else None
    # ACM's figures are read against the better (on test) of the dense model and its
    # same-training control: the stricter of the two references.
    reference = max(base["accuracy"], ctrl["accuracy"]) if ctrl else base["accuracy"]
    summ = load_summary(run)
    frac = test_frac = ffn_fraction(run)
    rows = ["| q | accuracy | Δ vs dense (points) | MFLOPs/example | × dense FLOPs | "
            "converted-FFN compute | latency b=64 (ms) |", "|---|---|---|---|---|---|---|"]
    lat_e2e = {str(r.get("budget")): r for r in summ.get("latency", [])}
    for r in summ["budgets"]:
        q = float(r["budget"])
        e2e = lat_e2e.get(str(r["budget"]), {})
        delta = 100 * (r["accuracy"] - base["accuracy"])
        rows.append(
            f"| {q:g} | {100 * r['accuracy']:.2f} % | {delta:+.2f}"
            f" | {r['flops'] / 1e6:.2f} | {r['flops'] / base['flops']:.3f} | "
            f"{100 * frac.get(q, float('nan')):.0f} % | "
            f"{e2e.get('median_ms', float('nan')):.1f} |")
    # Points are chosen on the validation records (when the run has them), scored on test.
    val_dir = run / "validation"
    chosen_on = "validation" if (val_dir / "summary.json").is_file() else "test"
    chooser = load_summary(val_dir)["budgets"] if chosen_on == "validation" else summ["budgets"]
    frac = ffn_fraction(val_dir) if chosen_on == "validation" else frac
    q_half = float(min(chooser, key=lambda r: abs(frac[float(r["budget"])] - 0.5))["budget"])
    control_line = (
        f"Same-training control (the dense ViT given stage III: {a.finetune_epochs} epoch(s), "
        f"same images, lr and distillation weight): {100 * ctrl['accuracy']:.2f} %." if ctrl
        else "No same-training control (no stage III).")
    half = next(r for r in summ["budgets"] if float(r["budget"]) == q_half)
    lat_rows = ["| FFN layers | learners/token | median ms | p10–p90 ms | speed-up vs dense |",
                "|---|---|---|---|---|"]
    for r in lat:
        label = "dense FFNs" if r["q"] == "dense" else f"ACM q={r['q']:g}"
        lat_rows.append(f"| {label} | {r['learners']:.2f} | {r['median_ms']:.2f} | "
                        f"{r['p10']:.2f}–{r['p90']:.2f} | {r['speedup']:.2f}× |")
    rankings = (work / "rankings" / "rankings.md").read_text()
    rank_tables = rankings.split("## Figures")[0].split("\n", 2)[2]
    cmd = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/acm_vit_cifar.py " + " ".join(
        shlex.quote(v) for v in sys.argv[1:])
    text = "\n".join([
        "## Adaptive computation modules (per-token learners) — ViT on CIFAR-10 (JPEG)", "",
        f"Command: `{cmd}` ({seconds / 60:.1f} min including cached stages)", "",
        machine_markdown(machine), "",
        f"Scaled down for a shared 2-core CPU: baseline `{a.baseline or 'trained here'}`, "
        f"{a.learners} learners per FFN, ACM stages on {a.acm_examples} training images "
        f"(distil {a.distill_epochs} / gate {a.gate_epochs} / fine-tune {a.finetune_epochs} "
        f"epochs, target {a.target}, stage III lr {a.finetune_lr}, distillation weight "
        f"{a.kd_weight}), evaluated on {summ.get('examples')} random test images, points "
        f"chosen on {chosen_on} "
        f"(seed {a.seed}). FLOPs are counted (real FLOPs = 2 × MACs); times are measured "
        "medians (converted FFN layers: the fastest of 3 interleaved rounds), threads = "
        + str(a.threads) + ".", "",
        f"Dense baseline: {100 * base['accuracy']:.2f} % at {base['flops'] / 1e6:.2f} MFLOPs "
        "per example. " + control_line, "",
        "### Accuracy and cost per budget", "", *rows, "",
        f"At about half the converted layers' compute (chosen_on: {chosen_on}; "
        f"q={float(half['budget']):g}, "
        f"{100 * frac[float(half['budget'])]:.0f} %): accuracy "
        f"{100 * half['accuracy']:.2f} % vs dense {100 * base['accuracy']:.2f} % "
        f"({100 * (half['accuracy'] - base['accuracy']):+.2f} points; against the better of "
        f"dense and the control: {100 * (half['accuracy'] - reference):+.2f}; target: ≥ −1).",
        "",
        at_most_half(summ["budgets"], frac, base, chooser, chosen_on), "",
        "### Converted FFN layers alone (batch 64, real FFN inputs)", "", *lat_rows, "",
        "### Difficulty rankings", "", rank_tables.strip(), "", *notes, "",
        f"Figures: `{work}/report/` (cost–accuracy planes), `{work}/rankings/` "
        f"(correlation.png, scatter.png, grid_*.png), `{run}/extras/` (compute maps).", "",
    ])
    out = Path(a.out)
    old = out.read_text() if out.exists() else ""
    keep = old.split("<!-- findings -->", 1)[1] if "<!-- findings -->" in old else "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text + "\n<!-- findings -->" + keep)
    os.replace(tmp, out)
    (work / "latency.json").write_text(json.dumps(lat, indent=2))
    if a.json:
        from frugalnn.utils.io import write_json_atomic

        q = float(half["budget"])
        write_json_atomic(a.json, {
            "args": vars(a), "machine": machine, "chosen_on": chosen_on,
            "baseline": {"accuracy": base["accuracy"], "flops": base["flops"]},
            "control": {"accuracy": ctrl["accuracy"]} if ctrl else None,
            "reference_accuracy": reference,
            "half_compute": {"q": q, "compute": test_frac[q],
                             "validation_compute": frac[q], "accuracy": half["accuracy"],
                             "delta_pt": 100 * (half["accuracy"] - base["accuracy"]),
                             "delta_vs_reference_pt": 100 * (half["accuracy"] - reference)},
            "ffn_speedup_b64": {("dense" if r["q"] == "dense" else f"q={r['q']:g}"):
                                r["speedup"] for r in lat}})


if __name__ == "__main__":
    sys.exit(main())
