"""EfficientNet-Lite0 (ImageNet weights, the upstream module): dense, early exits, low-rank.

The dense model is ``frugalnn.create_model("efficientnet_lite0")``: the
``efficientnet-lite-pytorch`` class itself, which frugalnn did not define.
Natural images are CIFAR-10 JPEGs upsampled to 224x224; their labels are the
dense model's own top-1 ImageNet predictions, so accuracy = top-1 agreement
with the dense model. The foolbox ImageNet photos (20) are a smoke check of
real accuracy.

Early exits (``--method early-exit``, the default): pooling heads attached to
the upstream module's ``_blocks`` (``frugalnn.models.adapters.as_staged``)
and trained with the backbone frozen on CIFAR-10 *train* images, on agreement
labels (the dense top-1) plus distillation from the dense logits
(``--kd-weight``; 0 = frugalnn's ``train_heads``, hard labels only). The
backbone runs once over every image: the heads' inputs at every
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

Input resolution (``--method resolution``): a baseline, not a frugalnn method. The
dense model itself at a lower input size (the CIFAR-10 pictures resized straight to
each of ``--resolutions``), scored against its own top-1 at 224; the cheapest size
whose validation agreement reaches ``--min-agreement`` is chosen there and timed
against the dense model at 224 (alternating rounds, the same images). A method that
lands below this line on the plane costs more than simply shrinking the input.

    make efficientnet
    python benchmarks/real_efficientnet.py --data-dir ../shared/data
    python benchmarks/real_efficientnet.py --method lowrank --targets flops=1.6
    python benchmarks/real_efficientnet.py --method resolution --resolutions 200 184 160
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import torch
from _common import log, results_header, timing_lock, write_results

import frugalnn
from frugalnn.data.base import resolve_data_dir
from frugalnn.data.pretrained_eval import (
    ResizedImages,
    agreement_split,
    cifar10_resized,
    imagenet_photos,
    predicted_labels,
)
from frugalnn.utils.batch import logits_of


def agreement(model: torch.nn.Module, data: ResizedImages) -> float:
    return float((predicted_labels(model, data) == data.labels).float().mean())


def take(data: ResizedImages, rows: torch.Tensor) -> ResizedImages:
    return ResizedImages(data.images[rows], data.labels[rows], data.size,
                         description=data.info.description)


def mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def choose_on_val(rows: list[dict[str, Any]], bar: float) -> tuple[dict[str, Any], str]:
    """The cheapest row whose mean validation agreement reaches ``bar`` (else the best on
    validation) and the mark its table line gets."""
    ok = [r for r in rows if statistics.mean(r["val"]) >= bar]
    if ok:
        return min(ok, key=lambda r: r["flops"]), " (chosen)"
    return (max(rows, key=lambda r: statistics.mean(r["val"])),
            " (best on val; none reached the bar)")


def agreement_table(rows: list[dict[str, Any]], chosen: dict[str, Any], chosen_mark: str,
                    dense_name: str, dense_flops: float, photos: ResizedImages,
                    photo_acc: float) -> list[str]:
    """Markdown lines: the dense model, then each row's FLOPs and agreement."""
    n = len(photos)
    lines = ["| model | GFLOPs | FLOPs ratio | val agreement % | test agreement % "
             "| foolbox photos |", "|---|---|---|---|---|---|",
             f"| {dense_name} | {dense_flops / 1e9:.3f} | 1.00x | 100 | 100 | "
             f"{photo_acc * n:.0f}/{n} |"]
    for r in rows:
        mark = chosen_mark if r is chosen else ""
        lines.append(f"| {r['name']}{mark} | {r['flops'] / 1e9:.3f} | "
                     f"{dense_flops / r['flops']:.2f}x | {mean_sd(r['val'])} | "
                     f"{mean_sd(r['test'])} | {r['photos'] * n:.0f}/{n} |")
    return lines


def lowrank_part(a: argparse.Namespace, dense: torch.nn.Module, dense_cost: Any,
                 photos: ResizedImages, photo_acc: float, test: ResizedImages,
                 val: ResizedImages, train: ResizedImages) -> str:
    """SVD at each FLOPs target (optionally distilled), chosen on validation; results text."""
    x1 = torch.zeros(1, 3, 224, 224)
    seeds = a.seeds if a.epochs > 0 else a.seeds[:1]  # without training: deterministic
    rows: list[dict[str, Any]] = []
    models: dict[str, torch.nn.Module] = {}
    runs = [(t, variant) for variant in a.variants.split(",") for t in a.targets]
    for target, variant in runs:
        aware = variant == "data-aware"
        name = f"{target} data-aware" if aware else target
        vals, tests, flops = [], [], 0.0
        for seed in seeds:
            cfg = frugalnn.LowRankConfig(method="svd", target=target, exclude=["_conv_stem"],
                                         finetune_epochs=a.epochs, lr=a.lr,
                                         batch_size=a.batch_size, seed=seed, data_aware=aware,
                                         calibration_examples=min(a.calibration_images,
                                                                  len(train)),
                                         gain_examples=a.gain_examples if aware and
                                         target.startswith("model-") else 0)
            cheap = frugalnn.lowrank(dense, cfg,
                                     train_data=train if a.epochs or aware else None,
                                     example_input=x1)
            cheap.eval()
            vals.append(agreement(cheap, val))
            tests.append(agreement(cheap, test))
            flops = frugalnn.measure(cheap, x1).flops
            models.setdefault(name, cheap)
            log(f"{name} seed {seed}: val {vals[-1]:.1%}, test {tests[-1]:.1%}, "
                f"{dense_cost.flops / flops:.2f}x fewer FLOPs")
        rows.append({"name": f"svd {name}", "target": name, "val": vals, "test": tests,
                     "flops": flops, "photos": agreement(models[name], photos)})

    chosen, chosen_mark = choose_on_val(rows, a.min_agreement)
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
                            f"{seeds} (mean ± sd); `data-aware` rows calibrate the SVD on "
                            f"the first {min(a.calibration_images, len(train))} of those "
                            "images (frugalnn.methods.lowrank.calibrate). "
                            "`flops=X`: every layer X times cheaper; `model-flops=X`: the model, "
                            "ranks allocated across layers. FLOPs = 2 x MACs, batch 1."),
             *agreement_table(rows, chosen, chosen_mark, f"dense ({dense_cost.params / 1e6:.2f} "
                              "M params)", dense_cost.flops, photos, photo_acc)]
    lines += ["", f"Latency ({a.threads} thread(s), {a.rounds} interleaved rounds, median of "
              f"{a.repeats} calls, on CIFAR-10 test images):", "",
              "| batch | dense ms | low-rank ms | speed-up |", "|---|---|---|---|"]
    for t in timing:
        inter = t["interleaved"]
        lines.append(f"| {t['batch_size']} | {min(inter['reference_ms']):.1f} | "
                     f"{min(inter['model_ms']):.1f} | {inter['speedup']:.2f}x |")
    return "\n".join(lines) + "\n"


def resized(data: ResizedImages, size: int) -> ResizedImages:
    """The same pictures and labels, resized from their stored pixels to ``size``."""
    description = data.info.description.replace(f"at {data.size}x{data.size}",
                                                 f"at {size}x{size}")
    return ResizedImages(data.images, data.labels, size, mean=data.mean, std=data.std,
                         description=description)


def at_input_size(dense: torch.nn.Module, size: int) -> torch.nn.Module:
    """The upstream EfficientNet-Lite0 built for ``size`` x ``size`` inputs, with ``dense``'s
    weights: its TF-style "same" paddings are fixed when it is built, for one input size,
    so the model built for 224 pads some stride-2 layers wrongly at other sizes."""
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0", image_size=size)
    model.load_state_dict(dense.state_dict())
    return model.eval()


@torch.inference_mode()
def top1_probability(model: torch.nn.Module, data: ResizedImages) -> torch.Tensor:
    """``model``'s softmax probability of its own top-1 class on every example of ``data``."""
    return torch.cat([logits_of(model(data.prepare(data.images[i : i + 64]))).softmax(1)
                      .amax(1) for i in range(0, len(data), 64)])


def resolution_part(a: argparse.Namespace, dense: torch.nn.Module, dense_cost: Any,
                    photos: ResizedImages, photo_acc: float, test: ResizedImages,
                    val: ResizedImages, train: ResizedImages) -> str:
    """The dense model at each input size of ``--resolutions``, chosen on validation."""
    from frugalnn.cost.latency import measure_latency

    del train  # nothing is trained: the baseline is the dense model itself
    dense_prob = top1_probability(dense, test)
    sure = dense_prob >= 0.5  # the images the dense model is sure of
    rows, models = [], {}
    for size in sorted(set(a.resolutions), reverse=True):
        model = models[size] = at_input_size(dense, size)
        flops = frugalnn.measure(model, torch.zeros(1, 3, size, size)).flops
        hits = predicted_labels(model, resized(test, size)) == test.labels
        rows.append({"name": f"{size}x{size}", "size": size, "flops": flops,
                     "val": [agreement(model, resized(val, size))],
                     "test": [float(hits.float().mean())],
                     "test_sure": float(hits[sure].float().mean()) if sure.any() else 0.0,
                     "photos": agreement(model, imagenet_photos(size))})
        log(f"{size}x{size}: {dense_cost.flops / flops:.2f}x fewer FLOPs, val "
            f"{rows[-1]['val'][0]:.1%}, test {rows[-1]['test'][0]:.1%}")
    chosen, chosen_mark = choose_on_val(rows, a.min_agreement)
    log(f"chosen on validation: {chosen['size']}x{chosen['size']}; timing against 224")
    small = models[chosen["size"]]
    timing = []
    with timing_lock():
        for batch_size in (1, 32):
            images = test.images[:batch_size]
            x_dense, x_small = test.prepare(images), resized(test, chosen["size"]).prepare(images)
            dense_ms = small_ms = float("inf")
            for _ in range(a.rounds):  # dense and small alternate: same conditions
                dense_ms = min(dense_ms, measure_latency(dense, x_dense, warmup=2,
                                                         repeats=a.repeats,
                                                         threads=a.threads).median_ms)
                small_ms = min(small_ms, measure_latency(small, x_small, warmup=2,
                                                         repeats=a.repeats,
                                                         threads=a.threads).median_ms)
            timing.append((batch_size, dense_ms, small_ms))

    lines = [results_header("EfficientNet-Lite0 (ImageNet): the dense model at lower input "
                            "resolution (a baseline)",
                            notes=f"Images: {len(test)} CIFAR-10 JPEG test images, labels = the "
                            "dense model's top-1 at 224x224 (agreement); each size resizes the "
                            "stored 32x32 pixels straight to it (bilinear) and runs the "
                            "upstream model built for it (`EfficientNet.from_name(..., "
                            "image_size=size)`, the same weights); the size is chosen "
                            f"on {len(val)} train images (the cheapest with agreement >= "
                            f"{a.min_agreement:.0%}). FLOPs = 2 x MACs, batch 1. Deterministic: "
                            "nothing is trained or drawn."),
             *agreement_table(rows, chosen, chosen_mark, "224x224 (dense)", dense_cost.flops,
                              photos, photo_acc)]
    lines += ["", f"On the {int(sure.sum())} of {len(test)} test images to whose top-1 the "
              "dense model gives a probability of at least 0.5 (median over all test images: "
              f"{float(dense_prob.median()):.2f}), test agreement: "
              + ", ".join(f"{r['name']} {100 * r['test_sure']:.1f} %" for r in rows) + "."]
    lines += ["", f"Latency ({a.threads} thread(s), {a.rounds} alternating rounds, the fastest "
              f"round's median of {a.repeats} calls, the first test images):", "",
              f"| batch | 224x224 ms | {chosen['size']}x{chosen['size']} ms | speed-up |",
              "|---|---|---|---|"]
    lines += [f"| {b} | {d:.1f} | {s:.1f} | {d / s:.2f}x |" for b, d, s in timing]
    return "\n".join(lines) + "\n"


def subset_cache(cache: Any, keep: list[int]) -> Any:
    """The cached head inputs of the exit points ``keep`` (indices into ``cache.feats``)."""
    from frugalnn.methods.early_exit.training import FeatureCache

    return FeatureCache([cache.feats[i] for i in keep], cache.labels, cache.final_logits)


def cheapest_within(trace: Any, bar: float, policy: str = "maxprob") -> dict[str, float]:
    """The cheapest threshold whose agreement on ``trace`` is at least ``bar``."""
    from frugalnn.methods.early_exit.offline import saving_within

    row = saving_within(trace, policy, [1.0 - bar], reference_accuracy=1.0)[1.0 - bar]
    return {"threshold": row["threshold"], "flops_ratio": 1.0 - row["flops_saving"],
            "accuracy": row["accuracy"]}


def train_heads_kd(ee: Any, cache: Any, *, epochs: int, lr: float, batch_size: int,
                   seed: int, temperature: float, weight: float) -> None:
    """Heads on cached features with distillation from the cached dense logits:
    ``(1 - weight) * CE(dense top-1) + weight * T^2 KL(dense || head)`` per head (Adam,
    cosine decay, like ``train_heads``, which has the hard-label loss only)."""
    import torch.nn.functional as F

    params = list(ee.heads.parameters())
    opt = torch.optim.Adam(params, lr=lr, weight_decay=1e-4)
    steps = epochs * -(-len(cache) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    gen = torch.Generator().manual_seed(seed)
    ee.heads.train()
    for _ in range(epochs):
        order = torch.randperm(len(cache), generator=gen)
        for start in range(0, len(cache), batch_size):
            idx = order[start : start + batch_size]
            outs = ee.heads_from_features([f[idx].float() for f in cache.feats])
            target = F.softmax(cache.final_logits[idx].float() / temperature, dim=1)
            y = cache.labels[idx]
            loss = sum((1 - weight) * F.cross_entropy(z, y) + weight * temperature**2
                       * F.kl_div(F.log_softmax(z / temperature, dim=1), target,
                                  reduction="batchmean") for z in outs)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    ee.heads.eval()


def early_exit_part(a: argparse.Namespace, dense: torch.nn.Module, dense_cost: Any,
                    photos: ResizedImages, photo_acc: float, test: ResizedImages,
                    val: ResizedImages, train: ResizedImages) -> str:
    """Heads on the frozen backbone (cached once), positions and threshold chosen on
    validation, scored on test; latency of the chosen model vs dense; results text."""
    from torch.utils.data import DataLoader

    from frugalnn.methods.early_exit.model import attach_heads
    from frugalnn.methods.early_exit.offline import oracle_bound, score, trace_from_features
    from frugalnn.methods.early_exit.training import cache_features, train_heads

    x1 = torch.zeros(1, 3, 224, 224)
    candidates = [sorted({int(p) for p in c.split(",")}) for c in a.positions]
    union = sorted({p for c in candidates for p in c})
    probe = attach_heads(dense, union, "pool", pool_size=a.pool_size, example_input=x1)
    names = probe.exit_points()

    def cache(data: ResizedImages, what: str, dtype: torch.dtype) -> Any:
        log(f"caching the heads' inputs at {len(union)} exit points on {len(data)} {what} "
            "images (one backbone pass)")
        c = cache_features(probe, DataLoader(data, batch_size=64), dtype=dtype)
        c.labels = c.final_logits.argmax(dim=1)  # the dense model's top-1: agreement labels
        return c

    caches = {"train": cache(train, "train", torch.float16),  # float32 again when training
              "val": cache(val, "validation", torch.float32),
              "test": cache(test, "test", torch.float32)}
    test = test.relabel(caches["test"].labels, "CIFAR-10 test, labels = dense top-1")
    results: list[dict[str, Any]] = []
    for cand in candidates:
        keep = [union.index(p) for p in cand]
        sub = {k: subset_cache(c, keep) for k, c in caches.items()}
        runs = []
        for seed in a.seeds:
            torch.manual_seed(seed)
            ee = attach_heads(dense, cand, "pool", pool_size=a.pool_size, example_input=x1)
            if a.kd_weight > 0:
                train_heads_kd(ee, sub["train"], epochs=a.ee_epochs, lr=a.ee_lr,
                               batch_size=a.batch_size, seed=seed,
                               temperature=a.kd_temperature, weight=a.kd_weight)
            else:
                train_heads(ee, sub["train"], epochs=a.ee_epochs, lr=a.ee_lr,
                            batch_size=a.batch_size, seed=seed)
            ee.eval()
            vt = trace_from_features(ee, sub["val"], x1)
            tt = trace_from_features(ee, sub["test"], x1)
            pick = cheapest_within(vt, a.min_agreement)
            test_score = score(tt, "maxprob", pick["threshold"])
            runs.append({"seed": seed, "model": ee, "threshold": pick["threshold"],
                         "val": pick, "test": test_score, "oracle": oracle_bound(tt),
                         "head_val": vt.head_accuracy()[:-1],
                         "head_test": tt.head_accuracy()[:-1]})
            log(f"exits after {cand} seed {seed}: threshold {pick['threshold']:.4f}, val "
                f"{pick['accuracy']:.1%} at {1 / pick['flops_ratio']:.2f}x fewer FLOPs; test "
                f"{test_score['accuracy']:.1%} at {1 / test_score['flops_ratio']:.2f}x; heads "
                f"alone (val) {[round(100 * h, 1) for h in runs[-1]['head_val']]}")
        results.append({"positions": cand, "names": [names[union.index(p)] for p in cand],
                        "runs": runs,
                        "val_ratio": statistics.mean(r["val"]["flops_ratio"] for r in runs)})
    chosen = min(results, key=lambda r: r["val_ratio"])
    best = chosen["runs"][0]
    ee = best["model"]
    ee.set_budget(best["threshold"])
    log(f"chosen on validation: exits after {chosen['names']}; real inference on test "
        f"(seed {best['seed']}, threshold {best['threshold']:.4f})")
    check = take(test, torch.arange(min(a.check_images, len(test))))
    real_test = agreement(ee, check)
    real_photos = agreement(ee, photos)
    batch = torch.stack([test[i][0] for i in range(32 * a.repeats)])
    log("timing dense vs the chosen early-exit model")
    with timing_lock():
        timing = frugalnn.time_budgets(ee, batch, [best["threshold"]], batch_sizes=(1, 32),
                                       reference=dense, rounds=a.rounds, repeats=a.repeats,
                                       threads=a.threads, progress=False)

    def cell(runs: list[dict[str, Any]], part: str, key: str) -> str:
        vals = [r[part][key] for r in runs]
        if key == "flops_ratio":
            ratios = [1 / v for v in vals]
            if len(ratios) == 1:
                return f"{ratios[0]:.2f}x"
            return f"{statistics.mean(ratios):.2f}x ± {statistics.stdev(ratios):.2f}"
        return mean_sd(vals)

    kd_note = (f"loss (1 - {a.kd_weight}) CE(dense top-1) + {a.kd_weight} T^2 KL(dense "
               f"logits, T = {a.kd_temperature})" if a.kd_weight > 0
               else "cross-entropy on the dense top-1 (train_heads)")
    notes = (f"Images: CIFAR-10 JPEGs at 224x224 labelled with the dense model's top-1 "
             f"(accuracy = top-1 agreement with dense): heads trained on {len(train)} train "
             f"images, exit positions and threshold (maxprob policy) chosen on {len(val)} other "
             f"train images as the cheapest with >= {a.min_agreement:.0%} agreement, scored on "
             f"{len(test)} test images. Heads: SDN pooling heads (avg+max pool to "
             f"{a.pool_size}x{a.pool_size}, one linear layer to the 1000 classes), backbone "
             f"frozen, Adam lr {a.ee_lr}, {a.ee_epochs} epochs, batch {a.batch_size}, "
             f"{kd_note}, seeds "
             f"{a.seeds} (mean ± sd). FLOPs: mean per image at batch 1 (2 x MACs), heads "
             "included; dense 0.770 GFLOPs. Oracle: every test image stops at the first "
             "exit that agrees with dense (oracle_bound), the most any exit policy could "
             "save with these heads at 100 % agreement.")
    lines = [results_header("EfficientNet-Lite0 (ImageNet): early exits", notes=notes),
             "| exits after | val agreement % | val FLOPs fewer | test agreement % | "
             "test FLOPs fewer | oracle FLOPs fewer (test) |", "|---|---|---|---|---|---|"]
    for r in results:
        mark = " (chosen)" if r is chosen else ""
        lines.append(f"| {', '.join(r['names'])}{mark} | {cell(r['runs'], 'val', 'accuracy')} | "
                     f"{cell(r['runs'], 'val', 'flops_ratio')} | "
                     f"{cell(r['runs'], 'test', 'accuracy')} | "
                     f"{cell(r['runs'], 'test', 'flops_ratio')} | "
                     f"{cell(r['runs'], 'oracle', 'flops_ratio')} |")
    head_rows = ", ".join(f"{n}: {statistics.mean(r['head_test'][i] for r in chosen['runs']):.1%}"
                          for i, n in enumerate(chosen["names"]))
    lines += ["", f"Chosen model, each head alone on test (every image exits there, mean over "
              f"seeds): {head_rows}.", "",
              f"Real batched inference of the chosen model (seed {best['seed']}, threshold "
              f"{best['threshold']:.4f}) on the first {len(check)} test images: {real_test:.1%} "
              f"agreement; foolbox photos {real_photos * len(photos):.0f}/{len(photos)} "
              f"(dense {photo_acc * len(photos):.0f}/{len(photos)}).", "",
              f"Latency ({a.threads} thread(s), {a.rounds} interleaved rounds, median of "
              f"{a.repeats} calls on different CIFAR-10 test images):", "",
              "| batch | dense ms | early-exit ms | speed-up |", "|---|---|---|---|"]
    for t in timing:
        inter = t["interleaved"]
        lines.append(f"| {t['batch_size']} | {min(inter['reference_ms']):.1f} | "
                     f"{min(inter['model_ms']):.1f} | {inter['speedup']:.2f}x |")
    lines += ["", "## History", "",
              "Low-rank without training (SVD of the 1x1 convolutions and the classifier, "
              "no distillation): 0 % agreement from 1.10x fewer FLOPs on; table in "
              "`real_efficientnet_lowrank.md` (`--method lowrank`)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", help="data directory (default: $FRUGALNN_DATA)")
    p.add_argument("--method", choices=("early-exit", "lowrank", "resolution"),
                   default="early-exit")
    p.add_argument("--resolutions", type=int, nargs="+", default=[208, 192, 184, 176, 160],
                   help="resolution: input sizes to try (the dense model is 224)")
    p.add_argument("--targets", nargs="+", default=["flops=1.6", "flops=1.8"],
                   help="lowrank: FLOPs targets of the factorised layers")
    p.add_argument("--positions", nargs="+", default=["6,9", "8,11"],
                   help="early-exit: candidate sets of exit positions (block indices after "
                   "which a head sits), chosen among on validation")
    p.add_argument("--pool-size", type=int, default=2, help="early-exit: head pooling size")
    p.add_argument("--ee-epochs", type=int, default=20, help="early-exit: head epochs")
    p.add_argument("--ee-lr", type=float, default=2e-3, help="early-exit: head learning rate")
    p.add_argument("--kd-weight", type=float, default=0.5,
                   help="early-exit: weight of distillation from the dense logits (0: "
                   "hard agreement labels only, frugalnn's train_heads)")
    p.add_argument("--kd-temperature", type=float, default=2.0)
    p.add_argument("--check-images", type=int, default=300,
                   help="early-exit: test images re-scored by real batched inference")
    p.add_argument("--train-images", type=int, default=None,
                   help="distillation / head training images (800 lowrank, 1500 early-exit, "
                   "0 resolution)")
    p.add_argument("--val-images", type=int, default=None,
                   help="images choosing the target (200 lowrank and resolution, "
                   "400 early-exit)")
    p.add_argument("--test-images", type=int, default=1000, help="CIFAR-10 test images")
    p.add_argument("--epochs", type=int, default=1, help="lowrank: distillation epochs")
    p.add_argument("--lr", type=float, default=0.01, help="lowrank: distillation lr")
    p.add_argument("--variants", default="plain",
                   help="lowrank: plain (weight SVD) and/or data-aware, comma-separated")
    p.add_argument("--gain-examples", type=int, default=0,
                   help="data-aware model-* targets: weigh the allocation by each layer's "
                        "output gain measured on N calibration images (0: off)")
    p.add_argument("--calibration-images", type=int, default=256,
                   help="lowrank, data-aware: the first N train images calibrate (256)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--min-agreement", type=float, default=0.95)
    p.add_argument("--repeats", type=int, default=10, help="timed calls per setting")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    p.add_argument("--threads", type=int, default=1, help="torch threads while timing")
    p.add_argument("--out", help="results file (default: benchmarks/results/"
                   "real_efficientnet.md; _lowrank.md / _resolution.md for those methods)")
    a = p.parse_args(argv)
    if set(a.variants.split(",")) - {"plain", "data-aware"}:
        p.error(f"--variants takes plain and/or data-aware, not {a.variants!r}")
    ee = a.method == "early-exit"
    default_train = {"early-exit": 1500, "lowrank": 800, "resolution": 0}[a.method]
    a.train_images = a.train_images if a.train_images is not None else default_train
    a.val_images = a.val_images if a.val_images is not None else (400 if ee else 200)
    if a.method == "resolution" and any(not 32 <= r <= 224 for r in a.resolutions):
        p.error(f"--resolutions takes sizes from 32 to 224, not {a.resolutions}")
    a.out = a.out or ("benchmarks/results/real_efficientnet.md" if ee
                      else f"benchmarks/results/real_efficientnet_{a.method}.md")
    data_dir = resolve_data_dir(a.data_dir)
    torch.manual_seed(0)

    dense = frugalnn.create_model("efficientnet_lite0")
    x1 = torch.zeros(1, 3, 224, 224)
    dense_cost = frugalnn.measure(dense, x1)
    photos = imagenet_photos()
    photo_acc = agreement(dense, photos)
    log(f"dense: {dense_cost.params / 1e6:.2f} M params, {dense_cost.flops / 1e9:.3f} GFLOPs, "
        f"{photo_acc:.0%} of the foolbox photos")

    test = cifar10_resized(data_dir, "test", limit=a.test_images)
    pool = cifar10_resized(data_dir, "train", limit=a.train_images + a.val_images)
    if not ee:  # the early-exit part labels its images from the cached dense outputs
        log("labelling images with the dense model's top-1")
        test, pool = agreement_split(dense, test), agreement_split(dense, pool)
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))
    val, train = take(pool, order[: a.val_images]), take(pool, order[a.val_images:])
    part = {"early-exit": early_exit_part, "lowrank": lowrank_part,
            "resolution": resolution_part}[a.method]
    write_results(Path(a.out), part(a, dense, dense_cost, photos, photo_acc, test, val, train))


if __name__ == "__main__":
    main()
