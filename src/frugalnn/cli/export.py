"""``frugalnn export``: a run's model as ONNX, an exported program or TorchScript, checked."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from frugalnn.errors import UserError

__all__ = ["register"]

FORMATS = ("onnx", "exported-program", "torchscript")  # frugalnn.runtime.graphs.FORMATS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a run's model (ONNX, exported program, TorchScript), checked on real data",
        description="Export the model of RUN (a run directory or checkpoint) for use outside "
        "PyTorch. Static models become one graph; early-exit models become segments driven "
        "by a small loop that drops exited rows, their threshold still settable. The export "
        "is compared with the PyTorch model on real data at every budget before it is "
        "written; the comparison is saved as OUT/check.json.",
    )
    p.add_argument("run", help="run directory or checkpoint directory")
    p.add_argument("--format", default="onnx",
                   help=f"graph format: {', '.join(FORMATS)} (onnx)")
    p.add_argument("--out", help="export directory (default RUN/export/FORMAT)")
    p.add_argument("--data", help="dataset to check on (default: the run's config.json)")
    p.add_argument("--data-dir", help="dataset directory (default $FRUGALNN_DATA)")
    p.add_argument("--split", default="test", help="split to check on (default test)")
    p.add_argument("--check-limit", type=int, default=256,
                   help="examples to check on, a seeded random subset (default 256)")
    p.add_argument("--atol", type=float, default=1e-4, help="absolute tolerance (1e-4)")
    p.add_argument("--rtol", type=float, default=1e-4, help="relative tolerance (1e-4)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (17)")
    p.add_argument("--layout", default="auto",
                   choices=("auto", "segments", "in-graph", "one-graph"),
                   help="input-dependent models: one ONNX graph that routes rows itself "
                        "(in-graph, the ONNX default), graph segments driven by a runtime "
                        "loop (segments) or the gather form in one graph (one-graph) (auto)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the checked subset and of the int8 calibration subset (0)")
    p.add_argument("--int8", action="store_true",
                   help="static models, ONNX: quantise the graph to ONNX Runtime's QDQ int8 "
                        "(per-channel weights), calibrated on the run's training split; "
                        "checked by top-1 agreement with the float PyTorch model")
    p.add_argument("--calibration-size", type=int, default=256,
                   help="--int8: training examples to calibrate on, a seeded subset (256)")
    p.add_argument("--min-agreement", type=float, default=0.95,
                   help="--int8: top-1 agreement with the float model needed (0.95)")
    p.add_argument("--force", action="store_true", help="overwrite an existing export")
    p.add_argument("--time", dest="time_batches", metavar="SIZES",
                   help="also time the PyTorch model and the export at every budget at these "
                        "batch sizes (e.g. 1,32; one thread), written to OUT/timing.json")
    p.add_argument("--repeats", type=int, default=10, help="timed calls with --time (10)")
    p.add_argument("--time-runtime",
                   help="--time: the runtime the export is timed on (default: its format's; "
                        "an exported program also runs on compile, torch.compile)")
    p.set_defaults(func=_export)


def _run_setting(run: Path, key: str) -> Any:
    """``key`` from the run's config.json (top level or one level down), if recorded."""
    try:
        config = json.loads((run / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if key in config:
        return config[key]
    for value in config.values():
        if isinstance(value, dict) and key in value:
            return value[key]
    return None


def _export(args: argparse.Namespace) -> int:
    from frugalnn.cli.common import resolve_checkpoint
    from frugalnn.data.splits import load_splits
    from frugalnn.runtime.deps import require
    from frugalnn.runtime.export import ExportConfig, export
    from frugalnn.runtime.graphs import RUNTIMES_OF, check_format
    from frugalnn.train.checkpoint import has_checkpoint, load_model

    check_format(args.format)
    if args.check_limit < 1:
        raise UserError(f"--check-limit must be positive, got {args.check_limit}")
    if args.time_batches:
        _sizes(args.time_batches)
    if args.time_runtime:
        if not args.time_batches:
            raise UserError("--time-runtime says where --time times the export; pass --time")
        if args.time_runtime not in RUNTIMES_OF[args.format]:
            raise UserError(f"a {args.format} export runs on "
                            f"{', '.join(RUNTIMES_OF[args.format])}, not {args.time_runtime}")
    if args.int8 and args.format != "onnx":
        raise UserError(f"--int8 quantises an ONNX graph for ONNX Runtime; use --format onnx, "
                        f"not {args.format}")
    if args.format == "onnx":
        require("onnx", "ONNX export")
        require("onnxruntime", "checking the ONNX export")
    run = Path(args.run)
    ckpt = resolve_checkpoint(run, "a run directory or checkpoint")
    if not has_checkpoint(ckpt):
        raise UserError(f"{run} has no checkpoint (model.safetensors + meta.json) to export; "
                        "pass a run written with a checkpoint")
    run_dir = ckpt.parent if ckpt.name == "checkpoint" else run
    data = args.data or _run_setting(run_dir, "data")
    if not data:
        raise UserError(f"{run} does not record its dataset; pass --data to check the export on")
    data_dir = args.data_dir or _run_setting(run_dir, "data_dir")
    out = Path(args.out) if args.out else run_dir / "export" / args.format
    if out.exists() and not args.force:
        raise UserError(f"{out} already exists; pass --force to overwrite it")
    model = load_model(ckpt)
    splits = load_splits(data, data_dir, test_limit=args.check_limit, test_split=args.split,
                         seed=args.seed)
    config = ExportConfig(format=args.format, opset=args.opset, layout=args.layout,
                          atol=args.atol, rtol=args.rtol, check_limit=args.check_limit,
                          seed=args.seed, int8=args.int8,
                          calibration_size=args.calibration_size,
                          int8_min_agreement=args.min_agreement)
    config.validate()
    calibration = None
    if args.int8:
        calibration = splits.train
        if calibration is None or len(calibration) == 0:
            raise UserError(f"{data} has no training split to calibrate the int8 graph on")
    result = export(model, out, config, check_data=splits.test, force=args.force,
                    source={"run": str(run), "checkpoint": str(ckpt), "data": data,
                            "split": args.split}, calibration_data=calibration)
    check = result.check
    int8 = result.manifest.get("int8")
    print(f"exported {result.manifest['kind']} model to {out} ({args.format}"
          f"{', QDQ int8' if int8 else ''}, {len(result.manifest['graphs'])} graph(s))")
    if int8:
        print(f"calibrated on {int8['calibration_examples']} {data} training examples; graph "
              f"{int8['graph_bytes']:,} bytes (float {int8['float_graph_bytes']:,})")
        print(f"checked on {check['examples']} {data} {args.split} examples on "
              f"{check['runtime']}: top-1 agreement with the float model "
              f"{check['argmax_agreement']:.1%}, largest logit difference "
              f"{check['max_abs_diff']:.3g}")
    else:
        print(f"checked on {check['examples']} {data} {args.split} examples at "
              f"{len(check['points'])} budget(s) on {check['runtime']}: "
              f"{check['match']:.1%} of rows within tolerance, largest difference "
              f"{check['max_abs_diff']:.3g}")
    if args.time_batches:
        _time(model, out, result, splits.test, args)
    return 0


def _time(model: Any, out: Path, result: Any, data: Any, args: argparse.Namespace) -> None:
    """Time eager and the export side by side at every budget; write OUT/timing.json."""
    import torch

    from frugalnn.cost.machine import describe_machine
    from frugalnn.runtime.measure import time_budgets_on_runtimes
    from frugalnn.runtime.package import load_exported
    from frugalnn.utils.batch import batch_len, split_batch, take
    from frugalnn.utils.io import write_json_atomic

    sizes = _sizes(args.time_batches)
    runtime = args.time_runtime or result.manifest["runtime"]
    runner = load_exported(out, runtime=runtime, threads=1)
    budgets = result.manifest["budget_values"] or [None]
    loader = torch.utils.data.DataLoader(data, batch_size=max(sizes))
    x_all, _ = split_batch(next(iter(loader)))
    rows = []
    for bs in sizes:
        x = take(x_all, bs)
        n = batch_len(x)
        for row in time_budgets_on_runtimes(model, runner, runtime, x, budgets,
                                            repeats=args.repeats):
            rows.append({"batch_size": n, **row})
            lat = row["latency"]
            print(f"  batch {n:>3} budget {row['budget']}: {row['platform']:<16} "
                  f"{lat['median_ms']:.3f} ms")
    write_json_atomic(out / "timing.json", {"format": args.format, "runtime": runtime,
                                            "rows": rows, "machine": describe_machine("cpu")})
    print(f"wrote {out / 'timing.json'}")


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise UserError(f"--time takes positive batch sizes like 1,32, got {text!r}")
    return sizes
