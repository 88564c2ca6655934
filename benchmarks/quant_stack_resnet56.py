"""ResNet-56 on CIFAR-10 (JPEG): low-rank + int8 against a dense model given the same training.

The low-rank model is fine-tuned (distillation from the published ResNet-56);
the dense baseline it is scored against gets exactly that training too (the
same-training control: the published model fine-tuned by the same function,
images, epochs, learning rate and seed), so the low-rank model's accuracy is
not flattered by extra training on the JPEG images the published weights never
saw. Per seed (``--seeds``, fixed before running; the seed sets the data order and the
calibration images; the training and validation images, and their augmentation draws, are
those of the split seed ``--seed``):

1. control = published ResNet-56 + ``--epochs`` of distillation fine-tuning
   (:func:`frugalnn.methods.lowrank.pipeline.distill_finetune`);
2. low-rank = ``--method`` to ``--target`` (with ``--layer-target`` overrides)
   by the low-rank recipe, fine-tuned by the same function;
3. static int8 of both (per-channel weights, conv + BN + ReLU fused), the
   activation observer chosen per seed on the validation split (carved from
   train) among ``--observers``; the test split only scores.

Accuracy: mean ± sd over seeds, per-seed table. Size: bytes of the state dict.
Latency (unless ``--accuracy-only``): the four models timed alternately at
``--batch-sizes``, ``--passes`` passes of ``--repeats`` calls, under the shared
timing lock, on ``--threads`` thread(s); each model on the runtime it runs on
(aten float kernels, the ``x86`` engine's int8 kernels).

Training may run elsewhere: ``--device cuda`` fine-tunes (and scores the float
models) on a GPU, int8 always runs on the CPU. ``--json`` is rewritten after
every seed. ``--rows-from JSON`` trains nothing: it takes the per-seed accuracy
rows of such a run and times models of the same shapes here (the control is the
published network, the low-rank model its factorisation before fine-tuning,
each with int8 calibrated the same way; speed depends on the shapes and ranks,
not on the fine-tuned values), so that accuracy can come from a GPU and the
timing from the CPU that the figures are about.

    python benchmarks/quant_stack_resnet56.py --data-dir $FRUGALNN_DATA --seeds 0,1,2 \\
        --train-limit 10000 --epochs 2
    python benchmarks/quant_stack_resnet56.py ... --device cuda --accuracy-only --json acc.json
    python benchmarks/quant_stack_resnet56.py ... --rows-from acc.json [acc_seed2.json ...]

Writes ``--markdown`` (and ``--json``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from _common import (
    add_split_flags,
    alternating_latency_ms,
    log,
    mean_sd,
    one_line_errors,
    results_header,
    splits_from_args,
    timing_lock,
    write_results,
)

from frugalnn.cost.allocator import retain_freed_memory
from frugalnn.cost.count import format_bytes, measure
from frugalnn.cost.machine import describe_machine
from frugalnn.data.splits import seeded_loader
from frugalnn.errors import UserError
from frugalnn.methods.lowrank.pipeline import distill_finetune
from frugalnn.methods.lowrank.recipe import LowRankConfig, compress
from frugalnn.methods.quant.recipe import QuantConfig, accuracy, quantize
from frugalnn.models import create_model
from frugalnn.utils.io import write_json_atomic

MODELS = ("control", "control + int8", "low-rank", "low-rank + int8")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_split_flags(p, data="cifar10")
    p.set_defaults(data_dir=os.environ.get("FRUGALNN_DATA"), train_limit=10000,
                   val_limit=2000)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=1,
                   help="fine-tuning epochs, the same for the control and the low-rank model")
    p.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (cosine)")
    p.add_argument("--augment", action="store_true", help="random crop + flip while training")
    p.add_argument("--method", default="tucker")
    p.add_argument("--target", default="flops=2")
    p.add_argument("--layer-target", nargs="*", default=[], metavar="PATTERN:TARGET")
    p.add_argument("--exclude", nargs="*", default=[])
    p.add_argument("--rank-multiple", type=int, default=1)
    p.add_argument("--observers", default="histogram,minmax",
                   help="activation observers; the best on validation is used, per seed")
    p.add_argument("--calibration-size", type=int, default=512)
    p.add_argument("--batch-sizes", default="1,64")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--train-threads", type=int, default=1)
    p.add_argument("--accuracy-only", action="store_true", help="no timing")
    p.add_argument("--retain-freed-memory", action="store_true",
                   help="time with glibc keeping freed memory (no page faults per call); "
                        "without it, timings depend on what the process allocated before")
    p.add_argument("--device", default="cpu",
                   help="fine-tuning device (the float models are scored there too)")
    p.add_argument("--rows-from", metavar="JSON", nargs="+",
                   help="accuracy rows of --accuracy-only runs (one per seed, say); train "
                        "nothing, time here")
    p.add_argument("--json")
    p.add_argument("--markdown", default="benchmarks/results/quant_stack.md")
    a = p.parse_args(argv)
    if a.epochs < 1:
        p.error("--epochs must be >= 1 (the comparison is about equal training)")
    return a


def _int8(model: torch.nn.Module, splits: Any, a: argparse.Namespace,
          seed: int) -> tuple[torch.nn.Module, str, dict[str, float]]:
    """Static int8 of ``model`` with the observer that scores best on validation."""
    best: tuple[float, str, torch.nn.Module] | None = None
    val: dict[str, float] = {}
    for observer in a.observers.split(","):
        q = quantize(model, QuantConfig(mode="static", observer=observer,
                                        calibration_size=a.calibration_size, seed=seed),
                     calibration_data=splits.train)
        val[observer] = accuracy(q, splits.val)
        if best is None or val[observer] > best[0]:
            best = (val[observer], observer, q)
    assert best is not None
    return best[2], best[1], val


def factorise(base: torch.nn.Module, splits: Any, a: argparse.Namespace,
              seed: int) -> torch.nn.Module:
    """The low-rank recipe's factorisation of ``base`` (on the CPU), not yet fine-tuned."""
    config = LowRankConfig(method=a.method, target=a.target, exclude=a.exclude or None,
                           layer_targets=a.layer_target or None,
                           rank_multiple=a.rank_multiple, finetune_epochs=0, seed=seed)
    low, _plan, _ = compress(base, config, example=splits.train[0][0][None],
                             threads=a.train_threads)
    return low


def _score(model: torch.nn.Module, data: Any, device: str) -> float:
    """Accuracy of a float model on ``device``; the model is back on the CPU after."""
    try:
        return accuracy(model.to(device), data)
    finally:
        model.cpu()


def run_seed(base: torch.nn.Module, splits: Any, a: argparse.Namespace,
             seed: int) -> tuple[dict[str, Any], dict[str, torch.nn.Module]]:
    """Fine-tune the control and the low-rank model identically; int8 of both; score all four.

    Both go through :func:`distill_finetune` with the same loader order, epochs,
    learning rate and seed (the low-rank recipe's own fine-tuning step)."""
    train = splits.train
    torch.manual_seed(seed)
    control = copy.deepcopy(base)
    low = factorise(base, splits, a, seed)
    history = {}
    for name, student in (("control", control), ("low-rank", low)):
        history[name] = distill_finetune(student, base, seeded_loader(train, 64, seed),
                                         epochs=a.epochs, lr=a.lr, seed=seed, device=a.device)
        student.cpu()
        base.cpu()
    models: dict[str, torch.nn.Module] = {"control": control.eval(), "low-rank": low.eval()}
    observers = {}
    for name in ("control", "low-rank"):
        q, observer, val = _int8(models[name], splits, a, seed)
        models[f"{name} + int8"] = q
        observers[name] = {"chosen": observer, "val": val}
    row: dict[str, Any] = {"seed": seed, "observers": observers, "history": history}
    for name, model in models.items():
        device = a.device if name in ("control", "low-rank") else "cpu"
        row[name] = {"val": _score(model, splits.val, device),
                     "test": _score(model, splits.test, device)}
        log(f"seed {seed} {name}: val {row[name]['val']:.2f}, test {row[name]['test']:.2f}")
    return row, models


def untrained_models(base: torch.nn.Module, splits: Any, a: argparse.Namespace,
                     observers: dict[str, str]) -> dict[str, torch.nn.Module]:
    """Models of the trained ones' shapes for timing: the published network as the control,
    its factorisation before fine-tuning as the low-rank model, int8 of both with
    ``observers`` (the ones seed ``--seeds[0]`` chose)."""
    seed = int(a.seeds.split(",")[0])
    models = {"control": copy.deepcopy(base).eval(), "low-rank": factorise(base, splits, a, seed)}
    for name in ("control", "low-rank"):
        models[f"{name} + int8"] = quantize(
            models[name], QuantConfig(mode="static", observer=observers[name],
                                      calibration_size=a.calibration_size, seed=seed),
            calibration_data=splits.train)
    return models


def time_models(models: dict[str, torch.nn.Module], splits: Any,
                a: argparse.Namespace) -> dict[int, dict[str, float]]:
    return {b: alternating_latency_ms(models, torch.stack([splits.test[i][0] for i in range(b)]),
                                      passes=a.passes, repeats=a.repeats, threads=a.threads)
            for b in [int(s) for s in a.batch_sizes.split(",") if s]}


def markdown(a: argparse.Namespace, rows: list[dict[str, Any]], sizes: dict[str, int],
             costs: dict[str, dict[str, Any]], lat: dict[int, dict[str, float]],
             published: dict[str, float], trained_on: str | None = None) -> str:
    gaps = [r["low-rank + int8"]["test"] - r["control"]["test"] for r in rows]
    lines = [
        results_header("ResNet-56 on CIFAR-10 (JPEG): low-rank + int8 against a same-training "
                       "control"),
        f"Splits: {sizes['train']} training images (fine-tuning, calibration draws "
        f"{a.calibration_size}), {sizes['val']} validation (carved from train; chooses the "
        f"observer), {sizes['test']} test. Seeds {a.seeds}. Both the control and the "
        f"low-rank model: {a.epochs} epoch(s) of distillation from the published ResNet-56, "
        f"SGD lr {a.lr} cosine, batch 64{', random crop + flip' if a.augment else ''}. "
        f"Low-rank: {a.method} {a.target}"
        f"{' with ' + ', '.join(a.layer_target) if a.layer_target else ''}"
        f"{'; left dense: ' + ', '.join(a.exclude) if a.exclude else ''}. Published weights "
        f"without fine-tuning: validation {published['val']:.2f} %, test "
        f"{published['test']:.2f} %."
        + (f" Fine-tuning and accuracy: {trained_on} (int8 on its CPU); the latency "
           "columns: this machine, models of the same shapes (published weights, "
           "factorisation before fine-tuning)." if trained_on else ""),
        "",
        "| model | test acc % (mean ± sd) | validation % | size (state dict) | "
        "FLOPs/image by precision | "
        + " | ".join(f"ms @ b{b} (speed-up vs control)" for b in lat) + " |",
        "|---|---|---|---|---|" + "---|" * len(lat),
    ]
    base_bytes = costs["control"]["bytes"]
    for name in MODELS:
        test = [r[name]["test"] for r in rows]
        val = [r[name]["val"] for r in rows]
        c = costs[name]
        speed = " | ".join(f"{lat[b][name]:.2f} ({lat[b]['control'] / lat[b][name]:.2f}x)"
                           for b in lat)
        lines.append(f"| {name} | {mean_sd(test)} | {mean_sd(val)} | "
                     f"{format_bytes(c['bytes'])} ({base_bytes / c['bytes']:.2f}x smaller) | "
                     f"{c['flops']} |" + (f" {speed} |" if lat else ""))
    lines += [
        "",
        f"Low-rank + int8 minus the control, test: **{mean_sd(gaps)} pt** (per seed "
        + ", ".join(f"{g:+.2f}" for g in gaps) + ").",
        "",
        "| seed | " + " | ".join(f"{m} test %" for m in MODELS) + " | observers (control, "
        "low-rank) |",
        "|---|" + "---|" * len(MODELS) + "---|",
    ]
    for r in rows:
        obs = f"{r['observers']['control']['chosen']}, {r['observers']['low-rank']['chosen']}"
        lines.append(f"| {r['seed']} | " + " | ".join(f"{r[m]['test']:.2f}" for m in MODELS)
                     + f" | {obs} |")
    if lat:
        lines += ["", f"Latency: seed {rows[0]['seed']}'s models (shapes), median of "
                  f"{a.repeats} calls "
                  f"per pass, median of {a.passes} alternating passes, {a.threads} thread(s), "
                  + ("freed memory retained (glibc); " if a.retain_freed_memory
                     else "default allocator; ")
                  + "the control has the published model's architecture (same speed)."]
    return "\n".join(lines) + "\n"


#: Flags that must agree between the --accuracy-only runs that --rows-from joins.
SAME_PROTOCOL = ("train_limit", "val_limit", "test_limit", "val_fraction", "seed", "epochs",
                 "lr", "augment", "method", "target", "layer_target", "exclude",
                 "rank_multiple", "observers", "calibration_size")


def read_rows(paths: list[str], a: argparse.Namespace) -> dict[str, Any]:
    """The runs of ``paths`` as one record, their rows in seed order; refuses runs of
    another protocol than this command's flags, or a seed given twice."""
    records = [json.loads(Path(p).read_text()) for p in paths]
    first = records[0]
    for path, rec in zip(paths, records):
        for key in SAME_PROTOCOL:
            if rec["args"].get(key) != getattr(a, key):
                raise UserError(f"--rows-from: {path} was run with {key}="
                                 f"{rec['args'].get(key)!r}, this command has "
                                 f"{getattr(a, key)!r}; give the same flags")
    rows = sorted((r for rec in records for r in rec["rows"]), key=lambda r: r["seed"])
    seeds = [r["seed"] for r in rows]
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--rows-from: seed given twice ({seeds})")
    return {**first, "rows": rows, "sources": list(paths)}


def _device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return f"{describe_machine()['cpu']} (torch {torch.__version__})"


def main(argv: list[str] | None = None) -> int:
    return one_line_errors(lambda: run(parse_args(argv)))


def run(a: argparse.Namespace) -> int:
    if not a.data_dir:
        raise UserError("set --data-dir or FRUGALNN_DATA")
    joined = read_rows(a.rows_from, a) if a.rows_from else None
    torch.set_num_threads(a.train_threads)
    splits = splits_from_args(a, augment=a.augment)
    sizes = {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)}
    ckpt = next((Path(a.data_dir) / "pretrained" / "resnet-cifar10").glob("resnet56-*.th"))
    base = create_model("resnet56", checkpoint=str(ckpt)).eval()
    record: dict[str, Any]
    if joined is not None:
        record = joined
        rows, published = record["rows"], record["published"]
        a.seeds = ",".join(str(r["seed"]) for r in rows)
        trained_on: str | None = record.get("trained_on")
        first = untrained_models(base, splits, a, {
            name: rows[0]["observers"][name]["chosen"] for name in ("control", "low-rank")})
    else:
        published = {"val": _score(base, splits.val, a.device),
                     "test": _score(base, splits.test, a.device)}
        trained_on = _device_name(a.device)
        record = {"args": vars(a), "sizes": sizes, "published": published,
                  "trained_on": trained_on, "rows": []}
        rows, first = record["rows"], None
        for seed in [int(s) for s in a.seeds.split(",") if s]:
            row, models = run_seed(base, splits, a, seed)
            rows.append(row)
            first = first or models
            if a.json:
                write_json_atomic(a.json, record)
    assert first is not None
    x1 = splits.test[0][0][None]
    costs = {}
    for name, model in first.items():
        c = measure(model, x1, depth=0)
        costs[name] = {"bytes": c.model_bytes, "flops": ", ".join(
            f"{k} {v / 1e6:.1f} M" for k, v in c.flops_by_precision.items())}
    lat: dict[int, dict[str, float]] = {}
    if not a.accuracy_only:
        torch.set_num_threads(a.threads)
        if a.retain_freed_memory and not retain_freed_memory():
            raise UserError("--retain-freed-memory needs glibc (Linux)")
        with timing_lock():
            lat = time_models(first, splits, a)
    if a.json:
        record.update(accuracy={m: {k: statistics.mean(r[m][k] for r in rows)
                                    for k in ("val", "test")} for m in MODELS},
                      gap_vs_control_pt={m: statistics.mean(r[m]["test"] - r["control"]["test"]
                                                            for r in rows) for m in MODELS[1:]},
                      costs=costs, latency_ms={str(b): v for b, v in lat.items()},
                      timed_on=None if a.accuracy_only else _device_name("cpu"))
        write_json_atomic(a.json, record)
    write_results(a.markdown, markdown(a, rows, sizes, costs, lat, published,
                                       trained_on if a.rows_from else None))
    log(json.dumps({"gap_pt": [r["low-rank + int8"]["test"] - r["control"]["test"]
                               for r in rows]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
