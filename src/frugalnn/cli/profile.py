"""``frugalnn profile`` and ``frugalnn models``: what a model costs, what models exist."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from frugalnn.cli.common import MODEL_SPEC_HELP, add_weights_flag, check_device, parse_model_args
from frugalnn.errors import UserError

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "profile",
        help="parameters, MACs/FLOPs, activation memory and measured latency of a model",
        description="Count a model's static cost per example (FLOPs = 2 x MACs) and measure "
        "its latency at batch 1 and at --batch-size.",
    )
    p.add_argument("model", help=MODEL_SPEC_HELP + "; or a checkpoint or run directory")
    p.add_argument("--input-shape", help="one example's shape without batch, e.g. 3,32,32 "
                   "(default: the model's registered shape; needed for a factory that does "
                   "not declare input_shape)")
    p.add_argument("--batch-size", type=int, default=64, help="larger batch to time (default 64)")
    p.add_argument("--checkpoint", help="weights: a resnet*.th file or a frugalnn checkpoint")
    add_weights_flag(p)
    p.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                   help="model constructor (or factory) argument (repeatable)")
    p.add_argument("--depth", type=int, default=2, help="module depth of the table (default 2)")
    p.add_argument("--json", dest="json_out", help="also write the whole profile as JSON here")
    p.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    p.add_argument("--threads", type=int, help="torch threads while timing (default: current)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls first (default 5)")
    p.add_argument("--repeats", type=int, default=20, help="timed calls (default 20)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    p.add_argument("--no-timing", action="store_true", help="count only, skip latency/memory")
    p.add_argument("--runtime", default="eager",
                   choices=("eager", "compile", "onnxruntime", "torchscript"),
                   help="where to time it: eager PyTorch, torch.compile, ONNX Runtime (the "
                        "model exported and checked first) or TorchScript (default eager)")
    p.add_argument("--retain-freed-memory", action="store_true",
                   help="time with glibc keeping freed memory (no page faults for re-allocated "
                        "activations; see docs/cost.md)")
    p.set_defaults(func=_profile)

    m = subparsers.add_parser("models", help="list the registered models")
    m.add_argument("--no-params", action="store_true", help="skip building models to count "
                   "parameters (faster)")
    m.set_defaults(func=_models)


def _check_args(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {args.batch_size}")
    if args.depth < 0:
        raise UserError(f"--depth must be >= 0, got {args.depth}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be positive, got {args.threads}")
    if args.repeats < 1 or args.warmup < 0:
        raise UserError("--repeats must be >= 1 and --warmup >= 0")
    if args.json_out and Path(args.json_out).exists() and not args.force:
        raise UserError(f"{args.json_out} exists; pass --force to overwrite it")
    check_device(args.device)


def _profile(args: argparse.Namespace) -> int:
    from frugalnn.cost.count import format_bytes
    from frugalnn.cost.profile import parse_shape, profile_model
    from frugalnn.utils.io import write_json_atomic

    _check_args(args)
    from frugalnn.runtime.onnx_cost import is_graph_path

    if is_graph_path(args.model):
        return _profile_graph(args)
    retained = False
    if args.retain_freed_memory:
        from frugalnn.cost.allocator import retain_freed_memory

        retained = retain_freed_memory()
        if not retained:
            print("note: --retain-freed-memory needs glibc; timing with this platform's allocator")
    model, name, info, recorded = _load(args)
    shape = parse_shape(args.input_shape) if args.input_shape else (recorded or info.input_shape)
    if not shape:
        raise UserError(f"the input shape of model {name!r} is unknown; pass "
                        "--input-shape, e.g. --input-shape 3,32,32")
    batch_sizes = (1,) if args.batch_size == 1 else (1, args.batch_size)
    prof = profile_model(
        model,
        shape,
        name=name,
        input_dtype=info.input_dtype,
        batch_sizes=batch_sizes,
        depth=args.depth,
        threads=args.threads,
        warmup=args.warmup,
        repeats=args.repeats,
        device=args.device,
        timing=not args.no_timing and args.runtime == "eager",
    )
    if not args.no_timing and args.runtime != "eager":
        _time_on_runtime(prof, model, args, shape, info.input_dtype, batch_sizes)
    cost = prof.cost
    print(f"{name}  input {tuple(shape)} ({info.input_dtype})"
          + (f"  checkpoint {args.checkpoint}" if args.checkpoint else "")
          + (f"  weights {args.weights}" if args.weights else ""))
    print(cost.summary())
    print()
    print(cost.table(args.depth))
    if prof.latency:
        print()
        print(f"latency on {prof.machine.get('device')}, runtime {args.runtime} "
              f"(median of {args.repeats}, "
              f"load average {prof.machine.get('loadavg')}"
              + (", freed memory retained" if retained else "") + "):")
        for bs, rec in prof.latency.items():
            mem = prof.memory[bs]
            print(f"  batch {bs:>4}: {rec.median_ms:9.3f} ms  "
                  f"(p10 {rec.p10_ms:.3f}, p90 {rec.p90_ms:.3f}; "
                  f"{rec.median_ms / bs:.4f} ms/example; {rec.threads} threads; "
                  f"peak memory {format_bytes(mem.peak_bytes)}, {mem.method})")
    if args.json_out:
        write_json_atomic(args.json_out, prof.to_dict())
        print(f"\nwrote {args.json_out}")
    return 0


def _load(args: argparse.Namespace) -> tuple[Any, str, Any, tuple[int, ...] | None]:
    """``(model, name, model info, input shape of its recorded data or None)``: MODEL is
    a registry name or model spec, or a checkpoint or run directory (then its model)."""
    from frugalnn.models import model_info
    from frugalnn.train.checkpoint import has_checkpoint, load_model, load_named_model

    source = Path(args.model)
    if source.is_dir() and not args.model.startswith("hf:"):
        ckpt = source / "checkpoint" if has_checkpoint(source / "checkpoint") else source
        if has_checkpoint(ckpt):
            if args.checkpoint or args.weights:
                raise UserError(f"{args.model} is a checkpoint already; drop --checkpoint "
                                "and --weights")
            model = load_model(ckpt)
            name = str((getattr(model, "frugalnn_spec", None) or {}).get("name", args.model))
            data = getattr(model, "frugalnn_data", None) or {}
            shape = tuple(data.get("input_shape") or ()) or None
            return model, name, model_info(name), shape
    model = load_named_model(args.model, args.checkpoint, weights=args.weights,
                             kwargs=parse_model_args(args.model_arg))
    return model, args.model, model_info(args.model), None


def _profile_graph(args: argparse.Namespace) -> int:
    """``frugalnn profile model.onnx`` (or an export directory): the cost counted from the
    graph, the latency measured on ONNX Runtime."""
    from frugalnn.cost.count import format_bytes
    from frugalnn.cost.machine import describe_machine
    from frugalnn.cost.profile import ModelProfile, parse_shape
    from frugalnn.runtime.onnx_cost import first_input, measure_onnx
    from frugalnn.utils.io import write_json_atomic

    if args.checkpoint or getattr(args, "weights", None):
        raise UserError("an ONNX graph holds its weights; drop --checkpoint/--weights")
    if args.runtime not in ("eager", "onnxruntime"):
        raise UserError(f"an ONNX graph runs on onnxruntime, not {args.runtime!r}")
    args.runtime = "onnxruntime"
    name, dims, dtype = first_input(args.model)
    if args.input_shape:
        shape = parse_shape(args.input_shape)
    elif all(d is not None for d in dims[1:]):
        shape = tuple(int(d) for d in dims[1:] if d is not None)
    else:
        raise UserError(f"input {name} of {args.model} has symbolic dimensions; give one "
                        "example's shape with --input-shape")
    prof = ModelProfile(str(args.model), shape, measure_onnx(args.model, 1,
                                                             input_shapes={name: shape}),
                        machine=describe_machine(args.device))
    if not args.no_timing:
        batch_sizes = (1,) if args.batch_size == 1 else (1, args.batch_size)
        _time_on_runtime(prof, args.model, args, shape, dtype, batch_sizes)
    print(f"{args.model}  input {shape} ({dtype}), ONNX graph")
    print(prof.cost.summary())
    print()
    print(prof.cost.table(min(args.depth, 1)))
    if prof.latency:
        print(f"\nlatency on {prof.machine.get('device')}, runtime onnxruntime "
              f"(median of {args.repeats}):")
        for bs, rec in prof.latency.items():
            print(f"  batch {bs:>4}: {rec.median_ms:9.3f} ms  ({rec.median_ms / bs:.4f} "
                  f"ms/example; peak memory {format_bytes(prof.memory[bs].peak_bytes)}, "
                  f"{prof.memory[bs].method})")
    if args.json_out:
        write_json_atomic(args.json_out, prof.to_dict())
        print(f"\nwrote {args.json_out}")
    return 0


def _time_on_runtime(prof: object, model: object, args: argparse.Namespace,
                     shape: tuple[int, ...], dtype: str, batch_sizes: tuple[int, ...]) -> None:
    """Fill ``prof.latency`` / ``prof.memory`` with timings on ``--runtime``."""
    from frugalnn.cost.memory import MemoryRecord
    from frugalnn.cost.profile import example_input
    from frugalnn.runtime.measure import measure_on_runtime, on_runtime

    def batch(n: int) -> Any:  # a graph of several inputs (input_ids, attention_mask): a dict
        if not isinstance(model, str):
            return example_input(shape, n, dtype, args.device)
        from frugalnn.runtime.onnx_cost import example_feeds, first_input

        return example_feeds(model, n, {first_input(model)[0]: shape}, args.device)

    example = batch(2)
    if isinstance(model, str) and model.endswith(".onnx"):  # a bare graph file
        from frugalnn.runtime.graphs import load_graph

        fn = load_graph(model, "onnxruntime", device=args.device, threads=args.threads)
    else:
        fn = on_runtime(model, args.runtime, example, device=args.device, threads=args.threads)
    for bs in batch_sizes:
        x = batch(bs)
        m = measure_on_runtime(fn, args.runtime, x, warmup=args.warmup, repeats=args.repeats,
                               threads=args.threads, device=args.device)
        prof.latency[bs] = m.latency
        prof.memory[bs] = MemoryRecord(m.peak_bytes or 0, 0, str(args.device), m.memory_method)
    prof.machine["runtime"] = args.runtime
    prof.machine["torch_threads"] = next(iter(prof.latency.values())).threads


def _models(args: argparse.Namespace) -> int:
    from frugalnn.cost.count import format_count
    from frugalnn.models import create_model, list_models, model_info

    rows = [("name", "input", "dtype", "task", "params", "description")]
    for name in list_models():
        info = model_info(name)
        params = "-"
        # The published models load their real weights (seconds for SmolLM2): their
        # sizes are in the description instead.
        if not args.no_params and info.builder.__module__ != "frugalnn.models.published":
            try:
                model = create_model(name)
                params = format_count(sum(p.numel() for p in model.parameters()))
            except UserError:
                params = "unavailable"
        shape = "x".join(str(s) for s in info.input_shape)
        rows.append((name, shape, info.input_dtype, info.task, params, info.description))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for i, r in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5])
        if i == 0:
            print("-" * (sum(widths) + 2 * 5 + len(r[5])))
    return 0
