"""ViT with NMF token mixing vs softmax attention: FLOPs, time and accuracy as tokens grow.

Two parts (one command, fixed seeds):

1. Cost: the same ViT on 32x32 images with patch size 4, 2 and 1 (64, 256 and
   1024 patch tokens, plus the CLS token), once with softmax attention and
   once with NMF mixing (and projective NMF); FLOPs per example counted by
   ``FlopCounterMode`` (SDPA included) and wall-clock latency measured, for
   the whole model and for one token mixer alone.
2. Accuracy: both variants trained from scratch on a CIFAR-10 (JPEG) subset at
   64 tokens and evaluated on a test subset.

Full scale: ``--train-limit 50000 --test-limit 10000 --epochs 50 --dim 192
--depth 6 --train-tokens 64,256``. The defaults are scaled down for a shared
2-core CPU; the results file states the scale used.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from frugalnn.cost.count import count_flops
from frugalnn.cost.latency import measure_latency
from frugalnn.cost.machine import describe_machine, machine_markdown
from frugalnn.data import get_dataset
from frugalnn.methods.lowrank.nmf import replace_attention
from frugalnn.methods.lowrank.pipeline import accuracy
from frugalnn.models import create_model
from frugalnn.train import fit

PATCH_FOR_TOKENS = {64: 4, 256: 2, 1024: 1}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build(variant: str, patch: int, args: argparse.Namespace) -> torch.nn.Module:
    torch.manual_seed(args.seed)
    model = create_model("vit_tiny", image_size=32, patch_size=patch, dim=args.dim,
                         depth=args.depth, heads=args.heads)
    if variant != "attention":
        model = replace_attention(model, rank=args.rank, steps=args.steps, heads=args.heads,
                                  variant=variant, seed=args.seed)
    return model.eval()


def cost_part(args: argparse.Namespace) -> list[dict]:
    rows = []
    for tokens in args.tokens:
        patch = PATCH_FOR_TOKENS[tokens]
        x = torch.randn(args.latency_batch, 3, 32, 32)
        for variant in ("attention", "nmf", "projective"):
            model = build(variant, patch, args)
            flops = count_flops(model, x[:1])
            ms = measure_latency(model, x, warmup=2, repeats=args.repeats,
                                 threads=args.threads)
            state = torch.randn(args.latency_batch, tokens + 1, args.dim)
            mixer = model.blocks[0].attn
            mix_flops = count_flops(mixer, state[:1])
            mix_ms = measure_latency(mixer, state, warmup=2, repeats=args.repeats,
                                     threads=args.threads)
            rows.append({"tokens": tokens, "variant": variant, "flops": flops,
                         "ms": ms.median_ms, "mixer_flops": mix_flops,
                         "mixer_ms": mix_ms.median_ms, "loadavg": ms.loadavg_before})
            log(f"{tokens} tokens {variant}: {flops / 1e6:.1f} MFLOPs, {ms.median_ms:.2f} ms; "
                f"mixer {mix_flops / 1e6:.2f} MFLOPs {mix_ms.median_ms:.3f} ms")
    return rows


def accuracy_part(args: argparse.Namespace) -> list[dict]:
    data_dir = Path(args.data_dir)
    train = get_dataset("cifar10", "train", data_dir, augment=True, seed=args.seed)
    test = get_dataset("cifar10", "test", data_dir)
    g = torch.Generator().manual_seed(args.seed)
    train = Subset(train, sorted(torch.randperm(len(train), generator=g)[:args.train_limit]
                                 .tolist()))
    test = Subset(test, sorted(torch.randperm(len(test), generator=g)[:args.test_limit].tolist()))
    rows = []
    for tokens in args.train_tokens:
        for variant in ("attention", "nmf"):
            model = build(variant, PATCH_FOR_TOKENS[tokens], args).train()
            gen = torch.Generator().manual_seed(args.seed)
            loader = DataLoader(train, batch_size=64, shuffle=True, generator=gen)
            t0 = time.time()
            fit(model, loader, epochs=args.epochs, optimizer="adamw", lr=1e-3,
                weight_decay=0.05, schedule="cosine", seed=args.seed, progress=False)
            acc = accuracy(model, DataLoader(test, batch_size=256))
            rows.append({"tokens": tokens, "variant": variant, "accuracy": acc,
                         "train_seconds": time.time() - t0})
            log(f"{tokens} tokens {variant}: accuracy {100 * acc:.2f} %")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("FRUGALNN_DATA"))
    p.add_argument("--tokens", default="64,256,1024")
    p.add_argument("--train-tokens", default="64")
    p.add_argument("--dim", type=int, default=96)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-limit", type=int, default=5000)
    p.add_argument("--test-limit", type=int, default=1000)
    p.add_argument("--latency-batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--out", default="benchmarks/results/nmf_vit.json")
    p.add_argument("--markdown", default="benchmarks/results/lowrank.md")
    args = p.parse_args(argv)
    args.tokens = [int(t) for t in args.tokens.split(",")]
    args.train_tokens = [int(t) for t in args.train_tokens.split(",") if t]
    torch.set_num_threads(args.threads)
    started = time.time()
    cost = cost_part(args)
    acc = [] if args.skip_accuracy or not args.data_dir else accuracy_part(args)
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps({"args": vars(args), "machine": describe_machine(),
                               "cost": cost, "accuracy": acc}, indent=1))
    os.replace(tmp, args.out)
    write_markdown(args, cost, acc, time.time() - started)
    return 0


def write_markdown(args, cost: list[dict], acc: list[dict], seconds: float) -> None:
    cmd = "python benchmarks/nmf_vit.py " + " ".join(sys.argv[1:])
    base = {r["tokens"]: r for r in cost if r["variant"] == "attention"}
    lines = [
        "## ViT: NMF token mixing vs softmax attention as tokens grow\n",
        f"Command: `{cmd}` ({seconds / 60:.1f} min)\n", machine_markdown(), "",
        f"ViT dim {args.dim}, depth {args.depth}, {args.heads} heads; NMF rank {args.rank}, "
        f"{args.steps} no-grad steps in training, {args.steps + 1} at evaluation, plus the "
        f"gradient step. Latency: batch {args.latency_batch}, median of {args.repeats}, "
        f"{args.threads} thread. FLOPs per example (FlopCounterMode; NMF's elementwise "
        "updates and the softmax are not counted, as for every model here).\n",
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
                  f"augmentation) on {args.train_limit} CIFAR-10 JPEG train images, tested on "
                  f"{args.test_limit} test images; scaled down, so both are far from converged.",
                  "", "| tokens | mixer | accuracy (%) | train s |", "|---|---|---|---|"]
        lines += [f"| {r['tokens']} | {r['variant']} | {100 * r['accuracy']:.2f} | "
                  f"{r['train_seconds']:.0f} |" for r in acc]
    section = "\n".join(lines) + "\n"
    path = Path(args.markdown)
    text = path.read_text() if path.exists() else "# Low-rank compression results\n\n"
    start = text.find("## ViT: NMF token mixing")
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
    else:
        text = text.rstrip() + "\n\n" + section
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    print(section)


if __name__ == "__main__":
    sys.exit(main())
