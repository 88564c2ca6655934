"""ViT with NMF / NTF token mixing vs softmax attention: FLOPs, time, accuracy as tokens grow.

The split flags are the CLI's (``--data``, ``--val-fraction``, the limits,
``--seed``).

Two parts (one command, fixed seeds):

1. Cost: the same ViT on 32x32 images with patch size 4, 2 and 1 (64, 256 and
   1024 patch tokens, plus the CLS token), once with softmax attention and
   once with each mixer of ``--variants`` (NMF, projective NMF, and NTF: a
   non-negative CP factorisation of the tokens x channels x heads tensor),
   built with the knobs of
   :class:`frugalnn.methods.lowrank.recipe.NMFConfig`; FLOPs per example
   counted by ``FlopCounterMode`` (SDPA included) and wall-clock latency
   measured, for the whole model and for one token mixer alone (untrained
   weights: the cost does not depend on their values), the mixers of one token
   count timed in ``--rounds`` interleaved rounds under the shared timing lock
   ``/tmp/frugalnn-timing.lock`` (taken by the script for this part only).
2. Accuracy: the ``--train-variants`` trained from scratch on a CIFAR-10 (JPEG)
   subset at the ``--train-tokens`` counts, once per training seed of
   ``--seeds`` (the splits stay those of ``--seed``), and evaluated on a test
   subset (mean and standard deviation over the seeds). The
   NMF and NTF models are the recipe's
   (:func:`frugalnn.methods.lowrank.recipe.run_nmf`, a run directory under
   ``--work``); the attention model is trained with the same optimiser,
   schedule and data and evaluated the same way (records on the test and the
   validation split).

Splits come from :func:`frugalnn.data.splits.load_splits` (``--train-limit``,
``--val-limit``, ``--test-limit``, ``--seed``: the same examples as the CLI).

Full scale: ``FULL_SCALE`` below. The defaults are scaled down for a shared
2-core CPU; the results file states the scale used. Writes ``--markdown``
(default ``benchmarks/results/nmf_vit.md``; its section is pasted into
``results/lowrank.md``) and ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from _common import (
    add_split_flags,
    log,
    results_header,
    splits_from_args,
    timing_lock,
    write_results,
)

from frugalnn.cost.count import count_flops
from frugalnn.cost.latency import measure_latency
from frugalnn.cost.machine import describe_machine
from frugalnn.data.splits import seeded_loader
from frugalnn.evaluation import evaluate_into
from frugalnn.methods.lowrank.nmf import replace_attention
from frugalnn.methods.lowrank.recipe import NMFConfig, run_nmf
from frugalnn.models import create_model
from frugalnn.train import fit
from frugalnn.utils.io import write_json_atomic

PATCH_FOR_TOKENS = {64: 4, 256: 2, 1024: 1}
FULL_SCALE = ("python benchmarks/nmf_vit.py --data-dir $FRUGALNN_DATA --train-limit 45000 "
              "--val-limit 5000 --test-limit 10000 --epochs 50 --dim 192 --depth 6 "
              "--train-tokens 64,256,1024 --seeds 0,1,2")


def nmf_config(args: argparse.Namespace, variant: str = "nmf",
               seed: int | None = None) -> NMFConfig:
    """The recipe's config for this run's NMF mixers (and its training, with training seed
    ``seed``, default ``--seed``)."""
    return NMFConfig(rank=args.rank, steps=args.steps, heads=args.heads, variant=variant,
                     epochs=args.epochs, lr=1e-3, weight_decay=0.05, batch_size=64,
                     latency_batch_sizes=(args.latency_batch,), latency_repeats=args.repeats,
                     seed=args.seed if seed is None else seed)


def vit(patch: int, args: argparse.Namespace, seed: int | None = None) -> torch.nn.Module:
    """The softmax-attention ViT (seeded): the baseline and the model NMF mixing starts from."""
    torch.manual_seed(args.seed if seed is None else seed)
    return create_model("vit_tiny", image_size=32, patch_size=patch, dim=args.dim,
                        depth=args.depth, heads=args.heads)


def build(variant: str, patch: int, args: argparse.Namespace) -> torch.nn.Module:
    model = vit(patch, args)
    if variant != "attention":
        c = nmf_config(args, variant)
        torch.manual_seed(c.seed)
        model = replace_attention(model, rank=c.rank, steps=c.steps, eval_steps=c.eval_steps,
                                  heads=c.heads, variant=c.variant, seed=c.seed)
    return model.eval()


def cost_part(args: argparse.Namespace) -> list[dict]:
    """FLOPs and latency of every mixer at every token count; per token count the models
    are timed in ``--rounds`` interleaved rounds (attention, nmf, ..., attention, nmf, ...)
    and each keeps its best median."""
    rows = []
    for tokens in args.tokens:
        patch = PATCH_FOR_TOKENS[tokens]
        x = torch.randn(args.latency_batch, 3, 32, 32)
        state = torch.randn(args.latency_batch, tokens + 1, args.dim)
        models = {v: build(v, patch, args) for v in args.variants}
        found = {v: {"tokens": tokens, "variant": v, "flops": count_flops(m, x[:1]),
                     "mixer_flops": count_flops(m.blocks[0].attn, state[:1]),
                     "ms": float("inf"), "mixer_ms": float("inf")}
                 for v, m in models.items()}
        for _ in range(args.rounds):
            for variant, model in models.items():
                ms = measure_latency(model, x, warmup=2, repeats=args.repeats,
                                     threads=args.threads)
                mix_ms = measure_latency(model.blocks[0].attn, state, warmup=2,
                                         repeats=args.repeats, threads=args.threads)
                r = found[variant]
                r["ms"] = min(r["ms"], ms.median_ms)
                r["mixer_ms"] = min(r["mixer_ms"], mix_ms.median_ms)
                r["loadavg"] = ms.loadavg_before
        for r in found.values():
            log(f"{tokens} tokens {r['variant']}: {r['flops'] / 1e6:.1f} MFLOPs, "
                f"{r['ms']:.2f} ms; mixer {r['mixer_flops'] / 1e6:.2f} MFLOPs "
                f"{r['mixer_ms']:.3f} ms")
        rows += list(found.values())
    return rows


def _train_seconds(history: Any) -> float:
    return float(sum(row.get("epoch_seconds", 0.0) for row in history or []))


def _accuracy(records: Any) -> float:
    return float(records.per_budget_summary()[0]["accuracy"])


def attention_run(splits: Any, patch: int, out: Path, args: argparse.Namespace,
                  seed: int) -> tuple[float, float]:
    """The softmax ViT trained and evaluated as :func:`run_nmf` trains and evaluates NMF:
    (test accuracy, training seconds)."""
    c = nmf_config(args, seed=seed)
    model = vit(patch, args, seed).train()
    loader = seeded_loader(splits.train, c.batch_size, c.seed, shuffle=True)
    res = fit(model, loader, epochs=c.epochs, optimizer="adamw", lr=c.lr,
              weight_decay=c.weight_decay, schedule="cosine", seed=c.seed, progress=False)
    model.eval()
    records = evaluate_into(model, splits.test, out, val_dataset=splits.val,
                            method="softmax attention (ViT)", batch_size=c.batch_size,
                            threads=args.threads, latency_batch_sizes=c.latency_batch_sizes,
                            latency_repeats=c.latency_repeats, force=True, progress=False)
    return _accuracy(records), _train_seconds(res.history)


def accuracy_part(args: argparse.Namespace) -> tuple[list[dict], dict[str, int]]:
    splits = splits_from_args(args, augment=True)
    sizes = {"train": len(splits.train), "test": len(splits.test),
             "val": len(splits.val) if splits.val is not None else 0}
    work = Path(args.work)
    rows = []
    for tokens in args.train_tokens:
        patch = PATCH_FOR_TOKENS[tokens]
        for seed in args.seeds:
            for variant in args.train_variants:
                out = work / f"{variant}-{tokens}-seed{seed}"
                if variant == "attention":
                    acc, seconds = attention_run(splits, patch, out, args, seed)
                else:
                    run = run_nmf(vit(patch, args, seed), nmf_config(args, variant, seed),
                                  splits, out, threads=args.threads, progress=False,
                                  force=True,
                                  run_config={"benchmark": "nmf_vit", "tokens": tokens})
                    acc, seconds = _accuracy(run.records), _train_seconds(
                        run.history.get("train"))
                rows.append({"tokens": tokens, "variant": variant, "seed": seed,
                             "accuracy": acc, "train_seconds": seconds, "run": str(out)})
                log(f"{tokens} tokens {variant} seed {seed}: accuracy {100 * acc:.2f} %")
    return rows, sizes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_split_flags(p, data="cifar10")
    p.set_defaults(train_limit=5000, val_limit=500, test_limit=1000,
                   data_dir=os.environ.get("FRUGALNN_DATA"))
    p.add_argument("--tokens", default="64,256,1024")
    p.add_argument("--train-tokens", default="64")
    p.add_argument("--variants", default="attention,nmf,projective,ntf",
                   help="token mixers of the cost part")
    p.add_argument("--train-variants", default="attention,nmf,ntf",
                   help="token mixers trained in the accuracy part")
    p.add_argument("--dim", type=int, default=96)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--latency-batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2,
                   help="interleaved timing rounds per token count (best median kept)")
    p.add_argument("--seeds", default="0",
                   help="training seeds of the accuracy part (the splits stay --seed's)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--work", default="runs/bench/nmf_vit",
                   help="run directories of the accuracy part")
    p.add_argument("--out", default="benchmarks/results/nmf_vit.json")
    p.add_argument("--markdown", default="benchmarks/results/nmf_vit.md")
    args = p.parse_args(argv)
    args.tokens = [int(t) for t in args.tokens.split(",")]
    args.train_tokens = [int(t) for t in args.train_tokens.split(",") if t]
    args.variants = [v for v in args.variants.split(",") if v]
    args.train_variants = [v for v in args.train_variants.split(",") if v]
    args.seeds = [int(v) for v in args.seeds.split(",") if v]
    if "attention" not in args.variants:
        args.variants.insert(0, "attention")  # the reference of every ratio
    torch.set_num_threads(args.threads)
    with timing_lock():
        cost = cost_part(args)
    acc, sizes = ([], {}) if args.skip_accuracy or not args.data_dir else accuracy_part(args)
    write_json_atomic(args.out, {"args": vars(args), "machine": describe_machine(),
                                 "sizes": sizes, "cost": cost, "accuracy": acc})
    log(f"wrote {args.out}")
    write_results(args.markdown, markdown(args, cost, acc, sizes))
    return 0


def markdown(args: argparse.Namespace, cost: list[dict], acc: list[dict],
             sizes: dict[str, int]) -> str:
    base = {r["tokens"]: r for r in cost if r["variant"] == "attention"}
    lines = [
        results_header("ViT: NMF / NTF token mixing vs softmax attention as tokens grow"),
        f"ViT dim {args.dim}, depth {args.depth}, {args.heads} heads (NTF: a tokens x "
        f"{args.dim // args.heads} channels x {args.heads} heads tensor); rank {args.rank}, "
        f"{args.steps} no-grad steps in training, {args.steps + 1} at evaluation, plus the "
        f"gradient step. Latency: batch {args.latency_batch}, median of {args.repeats}, "
        f"best of {args.rounds} interleaved rounds, {args.threads} thread, untrained weights. "
        "FLOPs per example (FlopCounterMode; the elementwise "
        "updates, Khatri-Rao products and the softmax are not counted, as for every model "
        "here).\n",
        "| tokens | mixer | model MFLOPs | model ms (vs attention) | one mixer MFLOPs | "
        "one mixer ms (vs attention) | load |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in cost:
        b = base[r["tokens"]]
        lines.append(
            f"| {r['tokens']} | {r['variant']} | {r['flops'] / 1e6:.1f} | {r['ms']:.2f} "
            f"({b['ms'] / r['ms']:.2f}x) | {r['mixer_flops'] / 1e6:.2f} | {r['mixer_ms']:.3f} "
            f"({b['mixer_ms'] / r['mixer_ms']:.2f}x) | {r['loadavg']} |")
    if acc:
        lines += ["", f"Accuracy: trained from scratch {args.epochs} epochs (AdamW, cosine, "
                  f"augmentation) on a random {sizes['train']} CIFAR-10 JPEG train images, "
                  f"tested on a random {sizes['test']} test images (validation records: "
                  f"{sizes['val']} images carved from train, split seed {args.seed}); "
                  f"training seeds {args.seeds}; scaled down, so all are far from converged. "
                  f"Full scale: `{FULL_SCALE}`.",
                  "", "| tokens | mixer | test accuracy % (mean ± sd) | per seed | train s "
                  "(mean) |", "|---|---|---|---|---|"]
        groups: dict[tuple[int, str], list[dict]] = {}
        for r in acc:
            groups.setdefault((r["tokens"], r["variant"]), []).append(r)
        for (tokens, variant), rs in groups.items():
            a = [100 * r["accuracy"] for r in rs]
            sd = statistics.stdev(a) if len(a) > 1 else 0.0
            lines.append(f"| {tokens} | {variant} | {statistics.mean(a):.2f} ± {sd:.2f} | "
                         f"{', '.join(f'{v:.1f}' for v in a)} | "
                         f"{statistics.mean(r['train_seconds'] for r in rs):.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
