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
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch
from _common import log, results_header, write_results

from frugalnn.cost.allocator import retain_freed_memory
from frugalnn.cost.count import count_flops
from frugalnn.cost.latency import measure_latency
from frugalnn.methods.lowrank.recipe import LowRankConfig, compress
from frugalnn.models import create_model

LAYOUTS = {"NCHW": torch.contiguous_format, "NHWC": torch.channels_last}


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="tucker,cp,tt")
    p.add_argument("--target", nargs="+", default=["flops=2"],
                   help="one or more rank targets; every method is built at each. A target "
                        "may add per-layer overrides after ';': "
                        "'flops=2;blocks.[0-8].*:flops=3' (see --layer-target of the CLI)")
    p.add_argument("--rank-multiple", type=int, default=1,
                   help="round flops/params ranks down to multiples of this (every target)")
    p.add_argument("--exclude", nargs="*", default=[],
                   help="module-name patterns left dense (as in lowrank_resnet56.py)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (fastest kept)")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per round (median)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--jit", action="store_true",
                   help="also time each model traced, frozen and optimize_for_inference'd "
                        "(TorchScript folds BatchNorm into the convolutions)")
    p.add_argument("--bound", action="store_true",
                   help="also time 'bound 3x3->1x1': the dense model with every 3x3 conv "
                        "replaced by a 1x1 (an upper bound on any factorisation's speed-up)")
    p.add_argument("--allocator", nargs="+", default=["default"], choices=("default", "retain"),
                   help="'retain': time again after frugalnn.cost.allocator.retain_freed_memory() "
                        "(glibc keeps freed activations instead of page-faulting them back); "
                        "'default' always runs first, since the setting cannot be undone")
    p.add_argument("--out", default="benchmarks/results/lowrank_layout.md")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dense = create_model("resnet56").eval()
    example = torch.randn(2, 3, 32, 32)
    models = {"dense": dense}
    legend, labels = [], []
    for i, target in enumerate(a.target):
        default, *overrides = target.split(";")
        label = f"plan {i + 1}" if overrides else target
        labels.append(label)
        if overrides:
            legend.append(f"- plan {i + 1}: `--target {default} "
                          + " ".join(f"--layer-target '{o}'" for o in overrides) + "`")
        for method in a.methods.split(","):
            name = method if len(a.target) == 1 else f"{method} {label}"
            config = LowRankConfig(method=method, target=default, exclude=a.exclude or None,
                                   layer_targets=overrides or None,
                                   rank_multiple=a.rank_multiple, finetune_epochs=0)
            models[name], _, _ = compress(dense, config, example=example)
            log(f"built {name}")
    if a.bound:
        models["bound 3x3->1x1"] = pointwise_bound(dense)
    flops = {k: count_flops(m, example[:1]) for k, m in models.items()}
    params = {k: sum(q.numel() for q in m.parameters()) for k, m in models.items()}
    variants = {(k, lay): copy.deepcopy(m).eval().to(memory_format=fmt)
                for k, m in models.items() for lay, fmt in LAYOUTS.items()}
    layouts = dict(LAYOUTS)
    if a.jit:
        for lay, fmt in LAYOUTS.items():
            layouts[lay + "+jit"] = fmt
            for k in models:
                variants[(k, lay + "+jit")] = frozen_for_inference(
                    variants[(k, lay)], example.contiguous(memory_format=fmt))
    allocators = sorted(set(a.allocator), key=("default", "retain").index)
    ms: dict[tuple[str, str, int, str], float] = {}
    with torch.inference_mode():
        for alloc in allocators:
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
    title = ("Memory layout and factorised convolutions (ResNet-56, every 3x3 conv at "
             f"{' / '.join(labels)})")
    lines = [
        results_header(title),
        f"Data-free factorisation (timing does not depend on weight values); the fastest of "
        f"{a.rounds} interleaved rounds, each the median of {a.repeats} calls, "
        f"{a.threads} thread(s). 'vs best dense' divides by the dense model in whichever "
        "layout is faster at that batch size"
        + (" ('+jit': traced, frozen, optimize_for_inference)" if a.jit else "") + "."
        + (" 'bound 3x3->1x1' is not a usable model: the dense network with every 3x3 "
           "convolution replaced by a 1x1 of the same shape, whose speed-up bounds what any "
           "factorisation of the 3x3 convolutions can buy here." if a.bound else "")
        + (" Allocator 'retain': timed after frugalnn.cost.allocator.retain_freed_memory() "
           "(glibc keeps freed blocks; no page faults for re-allocated activations); "
           "'default': glibc's defaults. Ratios compare models under the same allocator."
           if "retain" in allocators else ""), "", *legend, *([""] if legend else []),
        "| model | params | MFLOPs/example | layout | allocator | batch | ms | "
        "vs dense, same layout | vs best dense |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    for alloc in allocators:
        for bs in a.batch_sizes:
            best = min(ms[("dense", lay, bs, alloc)] for lay in layouts)
            for k in models:
                for lay in layouts:
                    t = ms[(k, lay, bs, alloc)]
                    lines.append(
                        f"| {k} | {params[k]:,} | {flops[k] / 1e6:.1f} | {lay} | {alloc} | {bs} "
                        f"| {t:.2f} | {ms[('dense', lay, bs, alloc)] / t:.2f}x | "
                        f"{best / t:.2f}x |")
    write_results(a.out, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
