"""Does memory layout decide whether a factorised ResNet-56 is faster? Dense vs CP/Tucker/TT.

Every 3x3 convolution of ResNet-56 is factorised by the low-rank recipe
(:func:`frugalnn.methods.lowrank.recipe.compress`) to the target (2x fewer FLOPs
by default; ``--target flops=2 flops=3`` builds each method at both; data-free,
no fine-tuning: timing does not depend on the weights' values, so a fine-tuned
model with the same ranks runs exactly as fast), and the dense
and factorised models are timed in interleaved rounds in the default
(NCHW, "contiguous") layout and in channels-last (NHWC), at batch 1 and 64.
Speed-ups are against the dense model in the same layout *and* against the
dense model in its faster layout, the honest baseline.

    python benchmarks/lowrank_layout.py --out benchmarks/results/lowrank_layout.md

``--fold-bn`` folds BatchNorm into the convolutions of every model before
timing (the eager rows then pay only for the convolutions, as the TorchScript
rows do), ``--onnx`` also times each model on ONNX Runtime (exported from its
eager form, checked against it first), and ``--processes N`` repeats the whole
measurement in N separate processes, one after another, and writes the
speed-ups of each process and their mean ± sd (the number of processes is
part of the command, fixed before any figure is seen)::

    flock /tmp/frugalnn-timing.lock python benchmarks/lowrank_layout.py --methods tt \
        --target 'flops=2;blocks.[0-8].*:flops=3;blocks.9.*:flops=3;blocks.1[0-7].*:flops=3' \
        --labels 'plan B' --rank-multiple 8 --exclude conv1 --fold-bn --jit --onnx \
        --allocator default retain --rounds 5 --processes 3
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from _common import log, mean_sd, results_header, write_results

from frugalnn.cost.allocator import retain_freed_memory
from frugalnn.cost.count import count_flops
from frugalnn.cost.latency import measure_latency
from frugalnn.methods.lowrank.recipe import LowRankConfig, compress
from frugalnn.models import create_model
from frugalnn.models.fold import fold_batchnorm

LAYOUTS = {"NCHW": torch.contiguous_format, "NHWC": torch.channels_last}
#: The layout name of the ONNX Runtime rows (NCHW input; ONNX Runtime picks its own layout).
ORT = "ORT"


def frozen_for_inference(model: torch.nn.Module, example: torch.Tensor) -> torch.nn.Module:
    """TorchScript trace + freeze + optimize_for_inference: BatchNorm folded, ops fused.

    Framework overhead and unfused BatchNorm cost a chain of three thin
    convolutions more than one dense convolution; this removes both, so the
    comparison is between the convolutions themselves.
    """
    with torch.no_grad():
        traced = torch.jit.trace(model, example)
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced))


def pointwise_bound(model: torch.nn.Module) -> torch.nn.Module:
    """A copy with every 3x3 convolution after the stem replaced by a 1x1 of the same shape.

    Not a usable model: a timing reference. Its 3x3 convolutions cost 9x fewer
    FLOPs than the dense ones, more than any 2x factorisation saves, and a 1x1
    convolution is the cheapest kernel with the same channels and stride; the
    rest of the network (stem, BatchNorm, ReLU, shortcuts, pooling) is
    unchanged. Its speed-up over the dense model bounds what replacing the 3x3
    convolutions can buy in wall clock on this machine (Amdahl's law).
    """
    bound = copy.deepcopy(model)
    for parent in list(bound.modules()):
        for name, child in list(parent.named_children()):
            if (isinstance(child, torch.nn.Conv2d) and child.kernel_size == (3, 3)
                    and child.in_channels > 3):
                setattr(parent, name, torch.nn.Conv2d(child.in_channels, child.out_channels, 1,
                                                      child.stride, 0, bias=False))
    return bound.eval()


def comparisons(layouts: list[str]) -> dict[str, list[str]]:
    """``{comparison: layouts}``: eager, TorchScript, best PyTorch form, ONNX Runtime."""
    torch_lays = [lay for lay in layouts if lay != ORT]
    groups = {"eager (best layout)": [lay for lay in torch_lays if not lay.endswith("+jit")],
              "TorchScript-frozen (best layout)": [lay for lay in torch_lays
                                                  if lay.endswith("+jit")],
              "best PyTorch form": torch_lays,
              "ONNX Runtime": [lay for lay in layouts if lay == ORT]}
    if ORT in layouts:
        groups["best form, PyTorch or ONNX Runtime"] = list(layouts)
    return {k: v for k, v in groups.items() if v}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="tucker,cp,tt")
    p.add_argument("--target", nargs="+", default=["flops=2"],
                   help="one or more rank targets; every method is built at each. A target "
                        "may add per-layer overrides after ';': "
                        "'flops=2;blocks.[0-8].*:flops=3' (see --layer-target of the CLI)")
    p.add_argument("--labels", nargs="+",
                   help="a name for each target in the tables (default: the target, or "
                        "'plan i' for a target with overrides)")
    p.add_argument("--rank-multiple", type=int, default=1,
                   help="round flops/params ranks down to multiples of this (every target)")
    p.add_argument("--exclude", nargs="*", default=[],
                   help="module-name patterns left dense (as in lowrank_resnet56.py)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (fastest kept)")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per round (median)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fold-bn", action="store_true",
                   help="fold BatchNorm into the convolutions of every model before timing "
                        "(frugalnn.models.fold.fold_batchnorm), so eager rows are prepared "
                        "like the TorchScript ones")
    p.add_argument("--jit", action="store_true",
                   help="also time each model traced, frozen and optimize_for_inference'd "
                        "(TorchScript folds BatchNorm into the convolutions)")
    p.add_argument("--onnx", action="store_true",
                   help="also time each model on ONNX Runtime (layout 'ORT'; exported from "
                        "the eager model and checked against it on random inputs)")
    p.add_argument("--bound", action="store_true",
                   help="also time 'bound 3x3->1x1': the dense model with every 3x3 conv "
                        "replaced by a 1x1 (an upper bound on any factorisation's speed-up)")
    p.add_argument("--allocator", nargs="+", default=["default"], choices=("default", "retain"),
                   help="'retain': time again after frugalnn.cost.allocator.retain_freed_memory() "
                        "(glibc keeps freed activations instead of page-faulting them back); "
                        "'default' always runs first, since the setting cannot be undone")
    p.add_argument("--processes", type=int, default=1,
                   help="repeat the whole measurement in N separate processes, one after "
                        "another, and report each one's speed-ups and their mean ± sd")
    p.add_argument("--json", help="also write the measurements as JSON here")
    p.add_argument("--out", default="benchmarks/results/lowrank_layout.md")
    return p


def build_models(a: argparse.Namespace) -> tuple[dict[str, torch.nn.Module], list[str],
                                                  list[str]]:
    """``(models, legend lines, target labels)``: the dense ResNet-56 and every factorisation."""
    if a.labels and len(a.labels) != len(a.target):
        raise SystemExit(f"--labels needs one name per target ({len(a.target)})")
    torch.manual_seed(0)
    dense = create_model("resnet56").eval()
    example = torch.randn(2, 3, 32, 32)
    models: dict[str, torch.nn.Module] = {"dense": dense}
    legend, labels = [], []
    for i, target in enumerate(a.target):
        default, *overrides = target.split(";")
        label = a.labels[i] if a.labels else (f"plan {i + 1}" if overrides else target)
        labels.append(label)
        if overrides:
            legend.append(f"- {label}: `--target {default} "
                          + " ".join(f"--layer-target '{o}'" for o in overrides) + "`")
        for method in a.methods.split(","):
            name = method if len(a.target) == 1 and not a.labels else f"{method} {label}"
            config = LowRankConfig(method=method, target=default, exclude=a.exclude or None,
                                   layer_targets=overrides or None,
                                   rank_multiple=a.rank_multiple, finetune_epochs=0)
            models[name], _, _ = compress(dense, config, example=example)
            log(f"built {name}")
    if a.bound:
        models["bound 3x3->1x1"] = pointwise_bound(dense)
    return models, legend, labels


def on_onnx_runtime(model: torch.nn.Module, example: torch.Tensor,
                    threads: int) -> tuple[Any, float]:
    """``(runner, relative max difference)``: ``model`` exported to ONNX and run by ONNX
    Runtime, checked against the eager model on 8 random images."""
    from frugalnn.runtime.graphs import OrtGraph, graph_bytes

    with torch.no_grad():
        graph = graph_bytes(model, (example,), "onnx", input_names=["input"],
                            output_names=["logits"])
        runner = OrtGraph(graph, threads=threads)
        x = torch.randn(8, *example.shape[1:])
        ref = model(x)
        diff = float((runner(x) - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
    if diff > 1e-3:
        raise SystemExit(f"ONNX Runtime output differs from PyTorch by {diff:.2g} (relative)")
    return runner, diff


def measure(a: argparse.Namespace) -> dict[str, Any]:
    """Build, prepare and time every model; the measurements as a JSON-able dict."""
    torch.set_num_threads(a.threads)
    load_start = os.getloadavg()
    models, legend, labels = build_models(a)
    example = torch.randn(2, 3, 32, 32)
    # Parameters and FLOPs as trained (BatchNorm counted), before any folding.
    flops = {k: count_flops(m, example[:1]) for k, m in models.items()}
    params = {k: sum(q.numel() for q in m.parameters()) for k, m in models.items()}
    folded = {k: fold_batchnorm(m) if a.fold_bn else 0 for k, m in models.items()}
    variants: dict[tuple[str, str], Any] = {
        (k, lay): copy.deepcopy(m).eval().to(memory_format=fmt)
        for k, m in models.items() for lay, fmt in LAYOUTS.items()}
    layouts = dict(LAYOUTS)
    if a.jit:
        for lay, fmt in LAYOUTS.items():
            layouts[lay + "+jit"] = fmt
            for k in models:
                variants[(k, lay + "+jit")] = frozen_for_inference(
                    variants[(k, lay)], example.contiguous(memory_format=fmt))
    ort_diff: dict[str, float] = {}
    if a.onnx:
        layouts[ORT] = torch.contiguous_format
        for k in models:
            variants[(k, ORT)], ort_diff[k] = on_onnx_runtime(variants[(k, "NCHW")], example,
                                                              a.threads)
            log(f"exported {k} to ONNX (relative max difference {ort_diff[k]:.1e})")
    allocators = sorted(set(a.allocator), key=("default", "retain").index)
    ms: dict[tuple[str, str, int, str], float] = {}
    with torch.inference_mode():
        for alloc in list(allocators):
            if alloc == "retain" and not retain_freed_memory():
                log("retain_freed_memory() is not available here (no glibc); skipped")
                allocators.remove(alloc)
                break
            for bs in a.batch_sizes:
                x = torch.randn(bs, 3, 32, 32)
                inputs = {lay: x.contiguous(memory_format=fmt) for lay, fmt in layouts.items()}
                for _ in range(a.rounds):
                    for (k, lay), m in variants.items():
                        t = measure_latency(m, inputs[lay], warmup=2, repeats=a.repeats).median_ms
                        key = (k, lay, bs, alloc)
                        ms[key] = min(ms.get(key, float("inf")), t)
                log(f"timed batch {bs} ({alloc} allocator)")
    return {"models": list(models), "layouts": list(layouts), "allocators": allocators,
            "batch_sizes": list(a.batch_sizes), "legend": legend, "labels": labels,
            "params": params, "flops": flops, "bn_folded": folded, "ort_rel_diff": ort_diff,
            "ms": [[*k, v] for k, v in ms.items()],
            "load": {"start": list(load_start), "end": list(os.getloadavg())}}


def times_of(res: dict[str, Any]) -> dict[tuple[str, str, int, str], float]:
    return {(k, lay, int(bs), alloc): float(t) for k, lay, bs, alloc, t in res["ms"]}


def speedups(res: dict[str, Any]) -> dict[tuple[str, str, str, int], float]:
    """``{(model, comparison, allocator, batch): dense time / model time}``, each side at its
    fastest layout within the comparison (see :func:`comparisons`)."""
    ms = times_of(res)
    out = {}
    for comp, lays in comparisons(res["layouts"]).items():
        for alloc in res["allocators"]:
            for bs in res["batch_sizes"]:
                dense = min(ms[("dense", lay, bs, alloc)] for lay in lays)
                for k in res["models"][1:]:
                    out[(k, comp, alloc, bs)] = dense / min(ms[(k, lay, bs, alloc)]
                                                            for lay in lays)
    return out


def describe(a: argparse.Namespace, allocators: list[str], processes: int) -> str:
    return (
        f"Data-free factorisation (timing does not depend on weight values); the fastest of "
        f"{a.rounds} interleaved rounds, each the median of {a.repeats} calls, "
        f"{a.threads} thread(s)"
        + (f", in {processes} separate processes run one after another" if processes > 1
           else "")
        + ". 'vs best dense' divides by the dense model in whichever layout (or runtime) is "
        "faster at that batch size"
        + (". BatchNorm folded into the convolutions of every model before timing "
           "(frugalnn.models.fold.fold_batchnorm)" if a.fold_bn else "")
        + (" ('+jit': traced, frozen, optimize_for_inference)" if a.jit else "")
        + (" ('ORT': exported to ONNX, opset 17, run by ONNX Runtime "
           f"{__import__('onnxruntime').__version__} with {a.threads} intra-op thread(s) and "
           "its default graph optimisations)" if a.onnx else "") + "."
        + (" 'bound 3x3->1x1' is not a usable model: the dense network with every 3x3 "
           "convolution replaced by a 1x1 of the same shape, whose speed-up bounds what any "
           "factorisation of the 3x3 convolutions can buy here." if a.bound else "")
        + (" Allocator 'retain': timed after frugalnn.cost.allocator.retain_freed_memory() "
           "(glibc keeps freed blocks; no page faults for re-allocated activations); "
           "'default': glibc's defaults. Ratios compare models under the same allocator."
           if "retain" in allocators else ""))


def single_table(res: dict[str, Any]) -> list[str]:
    ms = times_of(res)
    lines = ["| model | params | MFLOPs/example | layout | allocator | batch | ms | "
             "vs dense, same layout | vs best dense |",
             "|---|---:|---:|---|---|---:|---:|---:|---:|"]
    for alloc in res["allocators"]:
        for bs in res["batch_sizes"]:
            best = min(ms[("dense", lay, bs, alloc)] for lay in res["layouts"])
            for k in res["models"]:
                for lay in res["layouts"]:
                    t = ms[(k, lay, bs, alloc)]
                    lines.append(
                        f"| {k} | {res['params'][k]:,} | {res['flops'][k] / 1e6:.1f} | {lay} "
                        f"| {alloc} | {bs} | {t:.2f} | {ms[('dense', lay, bs, alloc)] / t:.2f}x "
                        f"| {best / t:.2f}x |")
    return lines


def pooled_tables(results: list[dict[str, Any]]) -> list[str]:
    """The speed-ups of every process with their mean ± sd, then every time."""
    first, n = results[0], len(results)
    per = [speedups(r) for r in results]
    cols = " | ".join(f"process {i + 1}" for i in range(n))
    lines = ["### Speed-up over the dense model, per process", "",
             "Each entry: the dense model's fastest time over the comparison's layouts divided "
             "by the model's fastest time over the same layouts, both under the same allocator.",
             "", f"| model | comparison | allocator | batch | {cols} | mean ± sd |",
             "|---|---|---|---:|" + "---:|" * (n + 1)]
    for key in per[0]:
        vals = [p[key] for p in per]
        k, comp, alloc, bs = key
        lines.append(f"| {k} | {comp} | {alloc} | {bs} | "
                     + " | ".join(f"{v:.2f}x" for v in vals) + f" | {mean_sd(vals)}x |")
    lines += ["", "### Load average (1 / 5 / 15 min) at the start and end of each process", "",
              "| process | start | end |", "|---:|---|---|"]
    for i, r in enumerate(results):
        lines.append(f"| {i + 1} | " + " / ".join(f"{v:.2f}" for v in r["load"]["start"])
                     + " | " + " / ".join(f"{v:.2f}" for v in r["load"]["end"]) + " |")
    if first["ort_rel_diff"]:
        worst = {k: max(r["ort_rel_diff"][k] for r in results) for k in first["models"]}
        lines += ["", "ONNX Runtime against PyTorch (8 random images, largest difference over "
                  "the processes, relative to the largest output): "
                  + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()) + "."]
    if any(first["bn_folded"].values()):
        lines += ["", "BatchNorm layers folded: " + ", ".join(
            f"{k} {v}" for k, v in first["bn_folded"].items()) + "."]
    times = [times_of(r) for r in results]
    lines += ["", "### Times (ms per batch; fastest of the rounds in each process)", "",
              f"| model | params | MFLOPs/example | layout | allocator | batch | {cols} | "
              "mean ± sd |", "|---|---:|---:|---|---|---:|" + "---:|" * (n + 1)]
    for alloc, bs, k, lay in itertools.product(first["allocators"], first["batch_sizes"],
                                               first["models"], first["layouts"]):
        vals = [t[(k, lay, bs, alloc)] for t in times]
        lines.append(f"| {k} | {first['params'][k]:,} | {first['flops'][k] / 1e6:.1f} | {lay} "
                     f"| {alloc} | {bs} | " + " | ".join(f"{v:.2f}" for v in vals)
                     + f" | {mean_sd(vals)} |")
    return lines


def run_processes(n: int, argv: list[str]) -> list[dict[str, Any]]:
    """This script run ``n`` times in fresh processes, one after another; their JSON."""
    tmp = Path(tempfile.mkdtemp(prefix="lowrank-layout-"))
    results = []
    for i in range(n):
        out = tmp / f"process{i + 1}"
        log(f"process {i + 1}/{n}")
        # argparse keeps the last value of a repeated flag: these override the parent's.
        subprocess.run([sys.executable, str(Path(__file__).resolve()), *argv, "--processes",
                        "1", "--out", f"{out}.md", "--json", f"{out}.json"], check=True,
                       stdout=subprocess.DEVNULL)
        results.append(json.loads(Path(f"{out}.json").read_text()))
    return results


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = build_parser().parse_args(argv)
    if a.processes < 1:
        raise SystemExit("--processes must be at least 1")
    torch.set_num_threads(a.threads)  # the header describes the timing processes' threads
    results = run_processes(a.processes, argv) if a.processes > 1 else [measure(a)]
    first = results[0]
    title = ("Memory layout and factorised convolutions (ResNet-56, every 3x3 conv at "
             f"{' / '.join(first['labels'])})")
    lines = [results_header(title, argv=[sys.argv[0], *argv]),
             describe(a, first["allocators"], a.processes), "", *first["legend"],
             *([""] if first["legend"] else [])]
    lines += pooled_tables(results) if a.processes > 1 else single_table(first)
    if a.json:
        from frugalnn.utils.io import write_json_atomic

        write_json_atomic(a.json, results if a.processes > 1 else first)
    write_results(a.out, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
