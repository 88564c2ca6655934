"""Dense, low-rank and early exits on eager PyTorch and on ONNX Runtime (ResNet-56 or
EfficientNet-Lite0).

Each model is exported to ONNX with :func:`frugalnn.export` (checked against
PyTorch on real CIFAR-10 test images first) and timed on both runtimes at
batch 1 and 32, one thread, all configurations interleaved round by round
(median of the rounds' medians), under the shared timing lock when run as
the README says. Speed-ups are against the dense model run the same way.

``--model resnet56`` (default):

- dense: the pretrained ResNet-56 (``$FRUGALNN_DATA/pretrained``);
- low-rank: ``frugalnn.lowrank`` (Tucker, ``flops=2``), **no fine-tuning**
  (timing does not depend on it; its accuracy is not reported here);
- early exits: heads after blocks 8 and 17, **untrained**, run at a threshold
  chosen on the validation images so that a fixed share of rows leaves at each
  head; what matters here is whether the exported loop keeps the eager
  saving at the same operating point on the same images.

``--model efficientnet_lite0`` (``make efficientnet``; ImageNet weights, a model
frugalnn did not define; CIFAR-10 JPEG images upsampled to 224): low-rank is SVD
``flops=1.5`` without fine-tuning, early exits are pooled heads after ``_blocks.6``
and ``_blocks.9`` (the positions ``real_efficientnet.py`` chooses), untrained, at a
threshold set the same way. Speed only: the accuracy of either method on this
model is in ``results/real_efficientnet*.md``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    add_split_flags,
    log,
    results_header,
    splits_from_args,
    time_on_runtimes,
    write_results,
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_split_flags(p, data="cifar10")
    p.add_argument("--batch-sizes", default="1,32")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--exit-share", type=float, default=0.5,
                   help="share of validation rows that leave at the first head (0.5)")
    p.add_argument("--model", choices=("resnet56", "efficientnet_lite0"), default="resnet56")
    p.add_argument("--channels-last", action="store_true",
                   help="eager models and their inputs in channels-last layout (the input "
                        "conversion is timed); ONNX Runtime takes NCHW as exported")
    p.add_argument("--retain-freed-memory", action="store_true",
                   help="glibc keeps freed memory (no page faults per call), for both runtimes")
    p.add_argument("--out", default="benchmarks/results/runtime.md")
    a = p.parse_args(argv)

    import torch

    import frugalnn
    from frugalnn.cost.allocator import retain_freed_memory
    from frugalnn.data import resolve_data_dir
    from frugalnn.methods.early_exit.model import attach_heads
    from frugalnn.runtime.package import load_exported

    torch.set_num_threads(1)
    data_dir = resolve_data_dir(a.data_dir)
    if a.model == "resnet56":
        splits = splits_from_args(a)
        val_data, test_data = splits.val, splits.test
        ckpt = next((data_dir / "pretrained" / "resnet-cifar10").glob("resnet56-*.th"))
        dense = frugalnn.create_model("resnet56", checkpoint=str(ckpt)).eval()
        low_config = frugalnn.LowRankConfig(method="tucker", target="flops=2",
                                            finetune_epochs=0)
        positions, heads, title = "8,17", {}, "ResNet-56"
    else:
        from frugalnn.data.pretrained_eval import cifar10_resized

        val_data = cifar10_resized(data_dir, "train", limit=a.val_limit or 256)
        test_data = cifar10_resized(data_dir, "test", limit=a.test_limit or 64)
        dense = frugalnn.create_model("efficientnet_lite0").eval()
        low_config = frugalnn.LowRankConfig(method="svd", target="flops=1.5", finetune_epochs=0)
        # the heads real_efficientnet.py trains there: pooled to 2x2, one linear layer
        positions, heads, title = "6,9", {"head": "pool", "pool_size": 2}, "EfficientNet-Lite0"
    example = torch.stack([test_data[i][0] for i in range(2)])
    low = frugalnn.lowrank(dense, low_config, example_input=example).eval()
    ee = attach_heads(dense, positions, **heads, example_input=example[:1]).eval()
    val_x = torch.stack([val_data[i][0] for i in range(min(256, len(val_data)))])
    with torch.no_grad():
        conf = torch.softmax(ee.exit_outputs(val_x)[0], 1).amax(1)
    threshold = float(torch.quantile(conf, 1 - a.exit_share))
    log(f"early-exit threshold {threshold:.4f} (chosen on {len(val_x)} validation images)")

    models = {"dense": dense, "low-rank": low, "early exits": ee}
    tmp = Path(tempfile.mkdtemp(prefix="runtime-bench-"))
    runners, checks = {}, {}
    for name, model in models.items():
        log(f"exporting {name}")
        res = frugalnn.export(model, tmp / name.replace(" ", "_"),
                              frugalnn.ExportConfig(format="onnx", threads=1,
                                                    budgets=[threshold] if name == "early exits"
                                                    else None),
                              check_data=test_data)
        checks[name] = res.check
        runners[name] = load_exported(tmp / name.replace(" ", "_"), threads=1)
    ee.set_budget(threshold)
    runners["early exits"].set_budget(threshold)

    eager = ({name: _channels_last(model) for name, model in models.items()}
             if a.channels_last else models)
    if a.retain_freed_memory and not retain_freed_memory():
        raise SystemExit("--retain-freed-memory needs glibc (Linux)")
    sizes = [int(s) for s in a.batch_sizes.split(",")]
    n_img = max(sizes)
    images = torch.stack([test_data[i % len(test_data)][0] for i in range(n_img)])
    med = time_on_runtimes(eager, runners, images, sizes, rounds=a.rounds,
                           repeats=a.repeats)
    with torch.no_grad():
        runners["early exits"](images)
    exits = runners["early exits"].last_exits
    share = [float((exits == i).float().mean()) for i in range(3)]

    lines = ["| model | batch | eager ms | ORT ms | eager speed-up | ORT speed-up | "
             "ORT / eager (same model) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for bs in sizes:
        for name in models:
            e, o = med[(name, "eager", bs)], med[(name, "onnxruntime", bs)]
            se = med[("dense", "eager", bs)] / e
            so = med[("dense", "onnxruntime", bs)] / o
            lines.append(f"| {name} | {bs} | {e:.2f} | {o:.2f} | {se:.2f}x | {so:.2f}x | "
                         f"{e / o:.2f}x |")
    kept = []
    for bs in sizes:
        save_e = 1 - med[("early exits", "eager", bs)] / med[("dense", "eager", bs)]
        save_o = 1 - med[("early exits", "onnxruntime", bs)] / med[("dense", "onnxruntime", bs)]
        kept.append(f"| {bs} | {100 * save_e:.1f} % | {100 * save_o:.1f} % | "
                    f"{save_o / save_e if save_e > 0 else float('nan'):.2f} |")
    check_lines = ["| model | examples | budgets | rows within tolerance | max abs diff |",
                   "|---|---:|---:|---:|---:|"]
    for name, c in checks.items():
        check_lines.append(f"| {name} | {c['examples']} | {len(c['points'])} | "
                           f"{100 * c['match']:.1f} % | {c['max_abs_diff']:.2g} |")
    text = results_header(f"{title} on eager PyTorch and ONNX Runtime", notes=(
        f"Low-rank: {low_config.label}, no fine-tuning. Early exits: untrained heads after "
        f"blocks {positions.replace(',', ' and ')} at threshold {threshold:.4f} (chosen on "
        "validation images); of the "
        f"{n_img} timed images {share[0]:.0%} / {share[1]:.0%} / {share[2]:.0%} leave at head 0 / "
        f"head 1 / the end. Every batch size runs over the same {n_img} test images (ms per "
        "batch = time for all of them / number of batches). One thread, medians of "
        f"{a.rounds} interleaved rounds of {a.repeats} passes. Eager: "
        f"{'channels-last (input conversion timed)' if a.channels_last else 'NCHW'}; "
        f"allocator: {'freed memory retained' if a.retain_freed_memory else 'default'}. "
        "ONNX Runtime "
        f"{__import__('onnxruntime').__version__}, opset 17."))
    text += "\n## Latency\n\n" + "\n".join(lines) + "\n"
    text += ("\n## Early-exit saving kept on ONNX Runtime (target >= 0.8)\n\n"
             "| batch | eager saving | ORT saving | kept |\n|---:|---:|---:|---:|\n"
             + "\n".join(kept) + "\n")
    text += ("\n## Export check (ONNX Runtime vs PyTorch, CIFAR-10 test images)\n\n"
             + "\n".join(check_lines) + "\n")
    write_results(a.out, text)
    return 0


def _channels_last(model: Any) -> Any:
    """``model`` in channels-last, called on its input converted to that layout."""
    import torch

    model = model.to(memory_format=torch.channels_last)

    def run(x: Any) -> Any:
        return model(x.contiguous(memory_format=torch.channels_last))

    return run


if __name__ == "__main__":
    raise SystemExit(main())
