"""Reference-model table: parameters, MACs/FLOPs, latency, and pretrained accuracy.

Flags: ``--accuracy-limit N`` (the first N JPEG test images) became
``--test-limit N`` (a random N, drawn with ``--seed``: the same images as the
CLI's ``--eval-limit``).

For every registered model: static cost per example (FlopCounterMode plus SDPA,
FLOPs = 2 x MACs), measured CPU latency at batch 1 and at --batch-size (median
of repeats, threads fixed), and peak tensor memory. For the pretrained CIFAR-10
ResNets found in the data directory: top-1 accuracy on the pixel-exact 932-image
test subset (``cifar10-exact``) and on the JPEG test set (``cifar10``).

    .venv/bin/python benchmarks/reference_models.py --data-dir /path/to/data

Writes ``benchmarks/results/reference_models.md`` (and ``.json`` beside it).
Seeds are fixed; timings depend on the machine and its load, which the output
records (load average before/after each timing).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _common import log, results_header, write_results

from frugalnn.cost.count import format_bytes, format_count
from frugalnn.cost.latency import measure_latency
from frugalnn.cost.machine import describe_machine
from frugalnn.cost.memory import peak_memory
from frugalnn.cost.profile import example_input, profile_model
from frugalnn.errors import UserError
from frugalnn.models import create_model, list_models, model_info
from frugalnn.utils.io import write_json_atomic

RESULTS = Path(__file__).resolve().parent / "results"
PUBLISHED_ERROR = {20: 8.27, 32: 7.37, 44: 6.90, 56: 6.61}  # He et al. 2016, % test error


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", help="data directory (else $FRUGALNN_DATA); accuracy needs it")
    p.add_argument("--models", nargs="*", help="model names (default: all registered)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--max-seconds", type=float, default=20.0,
                   help="cap on timed seconds per (model, batch); fewer repeats for slow models")
    p.add_argument("--test-limit", type=int, default=None,
                   help="a random N JPEG test images, seeded (default: all 10,000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --test-limit draw (0)")
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(RESULTS / "reference_models.md"))
    return p.parse_args(argv)


def _plan(model: torch.nn.Module, x: torch.Tensor, args: argparse.Namespace) -> tuple[int, int]:
    """(warm-up, repeats) fitting ``--max-seconds`` after one probe call (>= 3 unless fewer asked).

    A probe slower than a second is itself the warm-up of a slow model.
    """
    probe = measure_latency(model, x, warmup=0, repeats=1, threads=args.threads)
    fit = int(args.max_seconds * 1e3 / max(probe.median_ms, 1e-3))
    warmup = 0 if probe.median_ms > 1e3 else args.warmup
    return warmup, min(args.repeats, max(3, fit))


def profile_all(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[str]]:
    rows, notes = [], []
    for name in args.models or list_models():
        info = model_info(name)
        try:
            model = create_model(name).eval()
        except UserError as exc:
            notes.append(f"`{name}` skipped: {exc}")
            continue
        torch.manual_seed(0)
        prof = profile_model(model, info.input_shape, name=name, input_dtype=info.input_dtype,
                             batch_sizes=(), threads=args.threads, device=args.device,
                             timing=False)
        latency, memory = {}, {}
        for bs in (1, args.batch_size):
            x = example_input(info.input_shape, bs, info.input_dtype, args.device)
            warm, reps = _plan(model, x, args)
            latency[bs] = measure_latency(model, x, warmup=warm, repeats=reps,
                                          threads=args.threads, device=args.device)
            memory[bs] = peak_memory(model, x, device=args.device)
        rows.append({"name": name, "input_shape": list(info.input_shape),
                     "input_dtype": info.input_dtype, "cost": prof.cost.to_dict(),
                     "latency": {str(b): r.to_dict(with_times=False) for b, r in latency.items()},
                     "peak_memory": {str(b): r.to_dict() for b, r in memory.items()}})
        log(f"{name}: {format_count(prof.cost.macs)} MACs, b1 {latency[1].median_ms:.2f} ms, "
            f"b{args.batch_size} {latency[args.batch_size].median_ms:.1f} ms")
    return rows, notes


def _accuracy(model: torch.nn.Module, dataset: Any, device: str) -> float:
    loader = torch.utils.data.DataLoader(dataset, batch_size=256, shuffle=False)
    correct = total = 0
    with torch.inference_mode():
        for x, y in loader:
            pred = model(x.to(device)).argmax(1).cpu()
            correct += int((pred == y).sum())
            total += len(y)
    return 100.0 * correct / total


def accuracy_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    from frugalnn.data import get_dataset, resolve_data_dir
    from frugalnn.data.splits import load_test_split

    data_dir = resolve_data_dir(args.data_dir)
    exact = get_dataset("cifar10-exact", "test", data_dir)
    jpeg = load_test_split("cifar10", str(data_dir), limit=args.test_limit, seed=args.seed)
    out = []
    for depth in (20, 32, 44, 56):
        files = sorted((data_dir / "pretrained" / "resnet-cifar10").glob(f"resnet{depth}-*.th"))
        if not files:
            continue
        model = create_model(f"resnet{depth}", checkpoint=str(files[0])).eval().to(args.device)
        t0 = time.perf_counter()
        row = {"model": f"resnet{depth}", "checkpoint": files[0].name,
               "exact_acc": _accuracy(model, exact, args.device), "exact_n": len(exact),
               "jpeg_acc": _accuracy(model, jpeg, args.device), "jpeg_n": len(jpeg),
               "published_acc": 100.0 - PUBLISHED_ERROR[depth]}
        log(f"resnet{depth}: exact {row['exact_acc']:.2f} %, jpeg {row['jpeg_acc']:.2f} % "
            f"({time.perf_counter() - t0:.0f} s)")
        out.append(row)
    return out


def markdown(args: argparse.Namespace, machine: dict[str, Any], rows: list[dict[str, Any]],
             notes: list[str], acc: list[dict[str, Any]]) -> str:
    bs = args.batch_size
    lines = [
        results_header("Reference models: cost, latency and pretrained accuracy",
                       device=args.device),
        "Static cost per example, counted from the dispatched ops "
        "(`frugalnn.cost.count.measure`: matmuls, convolutions and SDPA attention; "
        "elementwise ops, norms, softmax and pooling are not counted; FLOPs = 2 x MACs). "
        "Activations: bytes of all newly allocated forward outputs per example. "
        f"Latency: measured median wall-clock of one forward on {args.device}, "
        f"{args.threads} thread(s), under `torch.inference_mode()`, "
        f"one probe call then {args.warmup} warm-up calls (none after a probe over 1 s), "
        f"up to {args.repeats} repeats (fewer for slow models, "
        f"to fit {args.max_seconds:.0f} s per cell); [p10, p90] in brackets. "
        "Peak memory: peak live tensor bytes allocated by the forward (see docs/cost.md). "
        "Load average = 1-minute load before/after the timing; this CPU is shared, so "
        "timings taken under load are upper bounds.",
        "",
        f"| model | input | params | MACs/ex | FLOPs/ex | activations/ex | latency b1 (ms) | "
        f"latency b{bs} (ms) | ms/example b{bs} | peak mem b{bs} | repeats b1/b{bs} | load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        c, l1, lb = r["cost"], r["latency"]["1"], r["latency"][str(bs)]
        shape = "x".join(map(str, r["input_shape"])) + (" ids" if r["input_dtype"] == "long"
                                                        else "")
        lines.append(
            f"| {r['name']} | {shape} | {format_count(c['params'])} | {format_count(c['macs'])} | "
            f"{format_count(c['flops'])} | {format_bytes(c['activation_bytes'])} | "
            f"{l1['median_ms']:.2f} [{l1['p10_ms']:.2f}, {l1['p90_ms']:.2f}] | "
            f"{lb['median_ms']:.1f} [{lb['p10_ms']:.1f}, {lb['p90_ms']:.1f}] | "
            f"{lb['per_example_ms']:.3f} | "
            f"{format_bytes(r['peak_memory'][str(bs)]['peak_bytes'])} | "
            f"{l1['repeats']}/{lb['repeats']} | {l1['loadavg_before']}-{lb['loadavg_after']} |"
        )
    lines += ["", *[f"- {n}" for n in notes]] if notes else []
    loads = [r["latency"][k][f] for r in rows for k in r["latency"]
             for f in ("loadavg_before", "loadavg_after") if r["latency"][k][f] is not None]
    cores = machine.get("usable_cores") or machine.get("cores") or 1
    if loads and max(loads) > cores:
        lines += ["", f"**Warning:** the 1-minute load average reached {max(loads):.1f} on "
                  f"{cores} usable cores while timing: other processes shared the CPU, so these "
                  "latencies are inflated and noisy (compare p10 with the median). Re-run the "
                  "command on a quiet machine for reference timings; the counts and accuracies "
                  "do not depend on load."]
    lines += [
        "",
        "Published reference: ResNet-20 0.27 M parameters and 40.9 M MACs (fvcore, which also "
        "counts BatchNorm), ResNet-56 0.85 M and 126.6 M; our conv + linear count is within "
        "1 % of these.",
    ]
    if acc:
        lines += [
            "",
            "### Pretrained CIFAR-10 ResNets (akamaster checkpoints), top-1 accuracy",
            "",
            "`cifar10-exact`: the first 932 official test images, pixel-exact. `cifar10`: the "
            "JPEG re-encoded test set (quality ~75"
            + (f"; a random {args.test_limit}, seed {args.seed}" if args.test_limit else "")
            + "), on which models trained on the original images lose accuracy. Published: "
            "100 % minus the paper's test error on the full original test set.",
            "",
            "| model | exact subset (%) | n | JPEG test (%) | n | published (%) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for a in acc:
            lines.append(f"| {a['model']} | {a['exact_acc']:.2f} | {a['exact_n']} | "
                         f"{a['jpeg_acc']:.2f} | {a['jpeg_n']} | {a['published_acc']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    machine = describe_machine(args.device)
    machine["torch_threads"] = args.threads
    rows, notes = profile_all(args)
    acc = [] if args.skip_accuracy else accuracy_all(args)
    out = Path(args.out)
    write_json_atomic(out.with_suffix(".json"),
                      {"machine": machine, "models": rows, "accuracy": acc, "argv": sys.argv})
    write_results(out, markdown(args, machine, rows, notes, acc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
