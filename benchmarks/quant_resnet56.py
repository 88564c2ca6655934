"""ResNet-56 on CIFAR-10 (JPEG), static int8: accuracy, size and speed against float; and
low-rank + int8 stacked.

The published ResNet-56 weights (``pretrained/resnet-cifar10``) are evaluated
directly, without fine-tuning. Static int8 by the recipe
(:func:`frugalnn.methods.quant.recipe.quantize`, per-channel weights, conv +
BN + ReLU fused, int8 activations between layers) is calibrated on
``--calibration-size`` training images (a random subset drawn with each of
``--seeds``; the validation split, carved from training with the split seed,
is never calibrated on). The activation observer is the operating point: the
one with the best mean *validation* accuracy is chosen and the test split only
scores it (mean ± sd over the calibration seeds). Latency: float and int8
alternately at ``--batch-sizes`` on ``--threads`` thread(s), median of
``--repeats`` calls per pass, median over ``--passes`` passes, on the runtime
each model runs on (PyTorch eager CPU: aten float kernels; ``quantized::``
int8 kernels of the ``x86`` engine). Size: bytes of the state dict.

Stacked (``--stack``): Tucker-2 at half the FLOPs by the low-rank recipe,
fine-tuned ``--stack-epochs`` on ``--stack-train`` training images with
distillation (0: none), then static int8 with the chosen observer.

Run timing under the shared lock:
``flock /tmp/frugalnn-timing.lock python benchmarks/quant_resnet56.py --data-dir DATA``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from _common import (
    add_split_flags,
    alternating_latency_ms,
    log,
    mean_sd,
    results_header,
    splits_from_args,
    write_results,
)

from frugalnn.cost.count import format_bytes, measure
from frugalnn.data.splits import random_subset
from frugalnn.methods.quant.recipe import QuantConfig, accuracy, quantize
from frugalnn.models import create_model


def _ort_rows(base: torch.nn.Module, splits: object, a: argparse.Namespace, sizes: list[int],
              torch_ms: dict[int, dict[str, float]]) -> list[str]:
    """ONNX Runtime, float and QDQ int8 (per-channel, calibrated on the same images as the
    PyTorch int8 model), timed like the PyTorch models: which int8 runtime is fastest here."""
    import tempfile
    import warnings

    import numpy as np
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    calib = random_subset(splits.train, a.calibration_size, 0)
    batches = [torch.stack([calib[i][0] for i in range(j, min(j + 64, len(calib)))]).numpy()
               for j in range(0, len(calib), 64)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(batches)

        def get_next(self) -> dict | None:
            x = next(self.it, None)
            return None if x is None else {"x": x}

    tmp = Path(tempfile.mkdtemp())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(base, (splits.test[0][0][None],), str(tmp / "f.onnx"), dynamo=False,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}},
                          opset_version=17)
    quantize_static(str(tmp / "f.onnx"), str(tmp / "q.onnx"), Reader(),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = a.threads
    opts.inter_op_num_threads = 1
    rows = []
    for name in ("f", "q"):
        sess = ort.InferenceSession(str(tmp / f"{name}.onnx"), opts,
                                    providers=["CPUExecutionProvider"])
        correct = 0
        for j in range(0, len(splits.test), 256):
            idx = range(j, min(j + 256, len(splits.test)))
            x = torch.stack([splits.test[i][0] for i in idx]).numpy()
            y = np.array([int(splits.test[i][1]) for i in idx])
            correct += int((sess.run(None, {"x": x})[0].argmax(1) == y).sum())
        cells = []
        for b in sizes:
            x = torch.stack([splits.test[i][0] for i in range(b)]).numpy()
            ms = []
            for _ in range(a.passes):
                for _ in range(3):
                    sess.run(None, {"x": x})
                times = []
                for _ in range(a.repeats):
                    t0 = time.perf_counter()
                    sess.run(None, {"x": x})
                    times.append(1000 * (time.perf_counter() - t0))
                ms.append(statistics.median(times))
            m = statistics.median(ms)
            cells.append(f"{m:.2f} (PyTorch int8 / ORT: {torch_ms[b]['int8'] / m:.2f}x)")
        label = "ONNX Runtime float" if name == "f" else "ONNX Runtime QDQ int8"
        rows.append(f"| {label} | {100 * correct / len(splits.test):.2f} | "
                    f"{(tmp / f'{name}.onnx').stat().st_size / 2**20:.2f} MiB | "
                    + " | ".join(cells) + " |")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_split_flags(p, data="cifar10")
    p.set_defaults(data_dir=os.environ.get("FRUGALNN_DATA"))
    p.add_argument("--seeds", default="0,1,2", help="calibration-subset seeds")
    p.add_argument("--observers", default="histogram,minmax")
    p.add_argument("--calibration-size", type=int, default=512)
    p.add_argument("--batch-sizes", default="1,64")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--stack", action="store_true", help="also low-rank + int8")
    p.add_argument("--stack-epochs", type=int, default=0)
    p.add_argument("--stack-train", type=int, default=5000)
    p.add_argument("--engines", default="x86,onednn,fbgemm",
                   help="PyTorch int8 engines to time (the chosen observer, seed 0)")
    p.add_argument("--ort", action="store_true", help="also time ONNX Runtime QDQ int8")
    p.add_argument("--accuracy-only", action="store_true",
                   help="no timing (runs beside other jobs without the timing lock)")
    p.add_argument("--markdown", default="benchmarks/results/quant.md")
    a = p.parse_args(argv)
    if a.accuracy_only:
        a.batch_sizes, a.engines, a.ort = "", "", False
    torch.set_num_threads(a.threads)
    splits = splits_from_args(a)
    ckpt = next((Path(a.data_dir) / "pretrained" / "resnet-cifar10").glob("resnet56-*.th"))
    base = create_model("resnet56", checkpoint=str(ckpt)).eval()
    log(f"splits: train {len(splits.train)}, val {len(splits.val)}, test {len(splits.test)}")
    f_val, f_test = accuracy(base, splits.val), accuracy(base, splits.test)
    seeds = [int(s) for s in a.seeds.split(",")]
    grid: dict[str, list[tuple[float, float]]] = {}
    models: dict[str, torch.nn.Module] = {}
    for observer in a.observers.split(","):
        for seed in seeds:
            config = QuantConfig(mode="static", observer=observer,
                                 calibration_size=a.calibration_size, seed=seed)
            q = quantize(base, config, calibration_data=splits.train)
            grid.setdefault(observer, []).append((accuracy(q, splits.val),
                                                  accuracy(q, splits.test)))
            models.setdefault(observer, q)
            log(f"{observer} seed {seed}: val {grid[observer][-1][0]:.2f}, "
                f"test {grid[observer][-1][1]:.2f}")
    chosen = max(grid, key=lambda o: statistics.mean(v for v, _ in grid[o]))
    timed: dict[str, torch.nn.Module] = {"float": base, "int8": models[chosen]}
    if a.stack:
        from frugalnn.methods.lowrank.recipe import LowRankConfig, lowrank

        lr_config = LowRankConfig(method="tucker", target="flops=2",
                                  finetune_epochs=a.stack_epochs, seed=seeds[0])
        train = random_subset(splits.train, a.stack_train, seeds[0])
        low = lowrank(base, lr_config, train_data=train if a.stack_epochs else None,
                      example_input=splits.train[0][0][None])
        timed["low-rank"] = low
        timed["low-rank + int8"] = quantize(
            low, QuantConfig(mode="static", observer=chosen,
                             calibration_size=a.calibration_size, seed=seeds[0]),
            calibration_data=splits.train)
    sizes = [int(s) for s in a.batch_sizes.split(",") if s]
    x1 = splits.test[0][0][None]
    lat = {b: alternating_latency_ms(timed, torch.stack([splits.test[i][0] for i in range(b)]),
                                     passes=a.passes, repeats=a.repeats, threads=a.threads)
           for b in sizes}
    log("timed")
    engine_rows = []
    for engine in filter(None, a.engines.split(",")):
        q = quantize(base, QuantConfig(mode="static", backend=engine, observer=chosen,
                                       calibration_size=a.calibration_size, seed=seeds[0]),
                     calibration_data=splits.train)
        cells = []
        for b in sizes:
            x = torch.stack([splits.test[i][0] for i in range(b)])
            ms = alternating_latency_ms({"q": q}, x, passes=a.passes, repeats=a.repeats,
                                        threads=a.threads)["q"]
            cells.append(f"{ms:.2f} ({lat[b]['float'] / ms:.2f}x)")
        engine_rows.append(f"| PyTorch `{engine}` | {accuracy(q, splits.test):.2f} | "
                           + " | ".join(cells) + " |")
        log(f"engine {engine} timed")
    torch.backends.quantized.engine = "x86"
    ort_rows = _ort_rows(base, splits, a, sizes, lat) if a.ort else []
    rows = []
    fb = measure(base, x1, depth=0)
    for name, model in timed.items():
        c = measure(model, x1, depth=0)
        acc_val = accuracy(model, splits.val) if name not in ("float", "int8") else None
        acc_test = accuracy(model, splits.test) if name not in ("float", "int8") else None
        if name == "float":
            acc_val, acc_test = f_val, f_test
        if name == "int8":
            tests, vals = [t for _, t in grid[chosen]], [v for v, _ in grid[chosen]]
            acc = f"{mean_sd(tests)} (val {mean_sd(vals)})"
        else:
            acc = f"{acc_test:.2f} (val {acc_val:.2f})"
        prec = ", ".join(f"{k} {v / 1e6:.1f} M" for k, v in c.flops_by_precision.items())
        speed = " | ".join(f"{lat[b][name]:.2f} ({lat[b]['float'] / lat[b][name]:.2f}x)"
                           for b in sizes)
        rows.append(f"| {name} | {acc} | {format_bytes(c.model_bytes)} "
                    f"({fb.model_bytes / c.model_bytes:.2f}x smaller) | {prec} | {speed} |")
    grid_rows = [f"| {o} | {mean_sd([v for v, _ in r])} | {mean_sd([t for _, t in r])} | "
                 f"{'chosen (best validation mean)' if o == chosen else ''} |"
                 for o, r in grid.items()]
    title = "ResNet-56 on CIFAR-10 (JPEG): static int8, and low-rank + int8"
    text = results_header(title) + "\n".join([
        "",
        f"Published ResNet-56 weights evaluated directly (no fine-tuning). Splits: "
        f"{len(splits.train)} train (calibration draws {a.calibration_size}), "
        f"{len(splits.val)} validation (carved from train, chooses the observer), "
        f"{len(splits.test)} test. Calibration seeds {a.seeds}; int8 engine "
        f"`{torch.backends.quantized.engine}`; {a.threads} thread(s).",
        "",
        "Observer grid (accuracy %, mean ± sd over calibration seeds):",
        "",
        "| observer | validation | test | |",
        "|---|---|---|---|",
        *grid_rows,
        "",
        f"Float: validation {f_val:.2f} %, test {f_test:.2f} %.",
        "",
        "| model | test acc % | size (state dict) | FLOPs/image by precision | "
        + " | ".join(f"ms @ b{b} (speed-up)" for b in sizes) + " |",
        "|---|---|---|---|" + "---|" * len(sizes),
        *rows,
        "",
        "Which int8 runtime is fastest here (static int8, chosen observer, calibration seed "
        f"{seeds[0]}; speed-up over the float PyTorch model timed above):",
        "",
        "| runtime | test acc % | " + " | ".join(f"ms @ b{b}" for b in sizes) + " |",
        "|---|---|" + "---|" * len(sizes),
        *engine_rows,
        "",
        *(["| runtime | test acc % | model file | " + " | ".join(f"ms @ b{b}" for b in sizes)
           + " |", "|---|---|---|" + "---|" * len(sizes), *ort_rows, ""] if ort_rows else []),
        f"Stacked low-rank: Tucker-2 flops=2, fine-tuned {a.stack_epochs} epoch(s) on "
        f"{a.stack_train} training images (0 = not fine-tuned: its accuracy is not a result)."
        if a.stack else "", ""])
    write_results(a.markdown, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
