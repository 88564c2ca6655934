"""EfficientNet-Lite0 (ImageNet weights, the upstream module): dense, early exits, low-rank.

The dense model is ``frugalnn.create_model("efficientnet_lite0")``: the
``efficientnet-lite-pytorch`` class itself, which frugalnn did not define.
Natural images are CIFAR-10 JPEGs upsampled to 224x224; their labels are the
dense model's own top-1 ImageNet predictions, so accuracy = top-1 agreement
with the dense model. The foolbox ImageNet photos (20) are a smoke check of
real accuracy.

Early exits (``--method early-exit``, the default): pooling heads attached to
the upstream module's ``_blocks`` (``frugalnn.models.adapters.as_staged``)
and trained with the backbone frozen on agreement labels of CIFAR-10 *train*
images. The backbone runs once over every image: the heads' inputs at every
candidate exit point are cached (``cache_features``) and each candidate set
of exit positions and each seed trains on those caches (``train_heads``)
and is scored on traces built from them (``trace_from_features``, the same
decision and cost model as real inference). The exit positions and the
confidence threshold are chosen on validation images (other train images):
the cheapest with mean agreement >= ``--min-agreement``; test images only
score them. Latency of dense vs the chosen early-exit model (real batched
inference, exited images leave the batch) at batch 1 and 32, interleaved.

Low-rank (``--method lowrank``): ``frugalnn.lowrank`` with SVD on the 1x1 convolutions and the
classifier (the stem conv, whose upstream class pads inside ``forward``, is
excluded), fine-tuned by distillation from the dense model on CIFAR-10 *train*
images; every FLOPs target is scored on validation images (other train
images) and the cheapest one with mean agreement >= ``--min-agreement`` is
chosen there, then reported on test. Latency of dense vs chosen at batch 1 and
32 is measured interleaved (``frugalnn.time_budgets``) under the timing lock.

    make efficientnet
    python benchmarks/real_efficientnet.py --data-dir ../shared/data
    python benchmarks/real_efficientnet.py --method lowrank --targets flops=1.6
"""

from __future__ import annotations

import argparse
import fcntl
import statistics
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from _common import log, results_header, write_results

import frugalnn
from frugalnn.data.base import resolve_data_dir
from frugalnn.data.pretrained_eval import (
    ResizedImages,
    agreement_split,
    cifar10_resized,
    imagenet_photos,
    predicted_labels,
)

LOCK = "/tmp/frugalnn-timing.lock"


@contextmanager
def timing_lock():  # noqa: ANN201 - a context manager
    """Hold the shared timing lock (no other timing runs meanwhile)."""
    with open(LOCK, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def agreement(model: torch.nn.Module, data: ResizedImages) -> float:
    return float((predicted_labels(model, data) == data.labels).float().mean())


def take(data: ResizedImages, rows: torch.Tensor) -> ResizedImages:
    return ResizedImages(data.images[rows], data.labels[rows], data.size,
                         description=data.info.description)


def mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", help="data directory (default: $FRUGALNN_DATA)")
    p.add_argument("--targets", nargs="+", default=["flops=1.6", "flops=1.8"],
                   help="low-rank FLOPs targets of the factorised layers")
    p.add_argument("--train-images", type=int, default=800, help="distillation images")
    p.add_argument("--val-images", type=int, default=200, help="images choosing the target")
    p.add_argument("--test-images", type=int, default=1000, help="CIFAR-10 test images")
    p.add_argument("--epochs", type=int, default=1, help="distillation epochs")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--min-agreement", type=float, default=0.95)
    p.add_argument("--repeats", type=int, default=10, help="timed calls per setting")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    p.add_argument("--threads", type=int, default=1, help="torch threads while timing")
    p.add_argument("--out", default="benchmarks/results/real_efficientnet.md")
    a = p.parse_args(argv)
    data_dir = resolve_data_dir(a.data_dir)
    torch.manual_seed(0)

    dense = frugalnn.create_model("efficientnet_lite0")
    x1 = torch.zeros(1, 3, 224, 224)
    dense_cost = frugalnn.measure(dense, x1)
    photos = imagenet_photos()
    photo_acc = agreement(dense, photos)
    log(f"dense: {dense_cost.params / 1e6:.2f} M params, {dense_cost.flops / 1e9:.3f} GFLOPs, "
        f"{photo_acc:.0%} of the foolbox photos")

    log("labelling images with the dense model's top-1")
    test = agreement_split(dense, cifar10_resized(data_dir, "test", limit=a.test_images))
    pool = agreement_split(dense, cifar10_resized(data_dir, "train",
                                                  limit=a.train_images + a.val_images))
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))
    val, train = take(pool, order[: a.val_images]), take(pool, order[a.val_images:])

    seeds = a.seeds if a.epochs > 0 else a.seeds[:1]  # without training: deterministic
    rows: list[dict[str, Any]] = []
    models: dict[str, torch.nn.Module] = {}
    for target in a.targets:
        vals, tests, flops = [], [], 0.0
        for seed in seeds:
            cfg = frugalnn.LowRankConfig(method="svd", target=target, exclude=["_conv_stem"],
                                         finetune_epochs=a.epochs, lr=a.lr,
                                         batch_size=a.batch_size, seed=seed)
            cheap = frugalnn.lowrank(dense, cfg, train_data=train if a.epochs else None,
                                     example_input=x1)
            cheap.eval()
            vals.append(agreement(cheap, val))
            tests.append(agreement(cheap, test))
            flops = frugalnn.measure(cheap, x1).flops
            models.setdefault(target, cheap)
            log(f"{target} seed {seed}: val {vals[-1]:.1%}, test {tests[-1]:.1%}, "
                f"{dense_cost.flops / flops:.2f}x fewer FLOPs")
        rows.append({"target": target, "val": vals, "test": tests, "flops": flops,
                     "photos": agreement(models[target], photos)})

    ok = [r for r in rows if statistics.mean(r["val"]) >= a.min_agreement]
    chosen = min(ok, key=lambda r: r["flops"]) if ok else max(rows, key=lambda r: statistics.mean(
        r["val"]))
    log(f"chosen on validation: {chosen['target']}; timing dense vs chosen")
    batch = torch.stack([test[i][0] for i in range(32)])
    with timing_lock():
        model = models[chosen["target"]]
        full = [model.full_budget()] if hasattr(model, "full_budget") else None
        timing = frugalnn.time_budgets(model, batch, full, batch_sizes=(1, 32),
                                       reference=dense, rounds=a.rounds, repeats=a.repeats,
                                       threads=a.threads, progress=False)

    lines = [results_header("EfficientNet-Lite0 (ImageNet): dense and low-rank",
                            notes=f"Images: {len(test)} CIFAR-10 JPEG test images at 224x224, "
                            f"labels = dense top-1 (agreement); target chosen on {len(val)} "
                            f"train images; distillation on {len(train)} other train images, "
                            f"{a.epochs} epoch(s), SGD lr {a.lr}, batch {a.batch_size}, seeds "
                            f"{seeds} (mean ± sd). FLOPs = 2 x MACs, batch 1."),
             "| model | params (M) | GFLOPs | FLOPs ratio | val agreement % | test agreement % "
             "| foolbox photos |", "|---|---|---|---|---|---|---|",
             f"| dense | {dense_cost.params / 1e6:.2f} | {dense_cost.flops / 1e9:.3f} | 1.00x | "
             f"100 | 100 | {photo_acc * len(photos):.0f}/{len(photos)} |"]
    for r in rows:
        mark = ""
        if r is chosen:
            mark = " (chosen)" if ok else " (best on val; none reached the bar)"
        lines.append(f"| svd {r['target']}{mark} | - | {r['flops'] / 1e9:.3f} | "
                     f"{dense_cost.flops / r['flops']:.2f}x | {mean_sd(r['val'])} | "
                     f"{mean_sd(r['test'])} | {r['photos'] * len(photos):.0f}/{len(photos)} |")
    lines += ["", f"Latency ({a.threads} thread(s), {a.rounds} interleaved rounds, median of "
              f"{a.repeats} calls, on CIFAR-10 test images):", "",
              "| batch | dense ms | low-rank ms | speed-up |", "|---|---|---|---|"]
    for t in timing:
        inter = t["interleaved"]
        lines.append(f"| {t['batch_size']} | {min(inter['reference_ms']):.1f} | "
                     f"{min(inter['model_ms']):.1f} | {inter['speedup']:.2f}x |")
    write_results(Path(a.out), "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
