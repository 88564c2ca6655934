"""CLI: ``frugalnn lowrank plan|compress|nmf``.

``plan`` prints the ranks and costs a target would give (no data, no
training). ``compress`` factorises a trained model (``--checkpoint``; random
weights only with an explicit ``--random-init``), fine-tunes it with
distillation from the original and writes one run directory::

    RUN_DIR/config.json       the command's arguments and the recipe config
    RUN_DIR/checkpoint/       the compressed model (load_model rebuilds it)
    RUN_DIR/records.csv ...   evaluation over the rank_fraction knob
    RUN_DIR/report/           the run's cost-accuracy report
    RUN_DIR/extras/           per-layer and whole-model tables (latency, memory)

``nmf`` swaps a ViT's attention for NMF token mixing, trains it and
evaluates it the same way. Both are thin: flags -> config -> splits ->
:mod:`frugalnn.methods.lowrank.recipe`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from frugalnn.cli.common import (
    add_data_flags,
    add_model_argument,
    add_run_flags,
    args_config,
    check_positive,
    load_base_model,
    load_model_for_data,
    load_splits_from_args,
    parse_model_args,
    start_run,
)
from frugalnn.errors import UserError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                   help="extra model argument (JSON value), repeatable")
    add_data_flags(p)
    p.add_argument("--latency-batch-sizes", default="1,64")
    p.add_argument("--latency-repeats", type=int, default=20)
    add_run_flags(p)


def _targeting(p: argparse.ArgumentParser) -> None:
    add_model_argument(p, "registry model (resnet56, cnn_small, vit_tiny, ...)")
    p.add_argument("--method", required=True, choices=("cp", "tucker", "tt", "svd",
                                                          "tucker-nl", "tt-nl", "svd-nl"))
    p.add_argument("--target", default="flops=2",
                   help="rank=R | flops=X | params=X (per layer) | model-flops=X | model-params=X "
                        "(whole model, ranks allocated across layers) | energy=E | vbmf | "
                        "latency=F (default flops=2)")
    p.add_argument("--depthwise", default="separable", choices=("separable", "kxk"),
                   help="CP middle: Kx1 + 1xK depthwise (default) or one KxK depthwise")
    p.add_argument("--include", action="append", help="only layers matching this pattern")
    p.add_argument("--exclude", action="append", help="skip layers matching this pattern")
    p.add_argument("--layer-target", action="append", metavar="PATTERN:TARGET",
                   help="another target for layers matching PATTERN, e.g. 'blocks.2*:flops=3' "
                        "(repeatable; the first match wins)")
    p.add_argument("--rank-multiple", type=int, default=1, metavar="M",
                   help="flops/params targets: round ranks down to multiples of M, which "
                        "kernels run faster (e.g. 8 or 16; default 1)")


def register(subparsers: argparse._SubParsersAction) -> None:
    top = subparsers.add_parser(
        "lowrank", help="low-rank compression (SVD, CP, Tucker-2, TT) and NMF token mixing",
        description="Factorise layers where it really pays, fine-tune, and measure.",
    )
    sub = top.add_subparsers(dest="lowrank_command", metavar="ACTION")
    top.set_defaults(func=lambda _args: (top.print_help(), 2)[1])

    p = sub.add_parser("plan", help="show the ranks and costs a target gives (no training)")
    _targeting(p)
    p.add_argument("--model-arg", action="append", metavar="KEY=VALUE")
    p.add_argument("--checkpoint")
    p.add_argument("--data", default=None, help="dataset whose input shape to use")
    p.add_argument("--data-dir")
    p.add_argument("--latency-batch", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_plan)

    c = sub.add_parser("compress", help="factorise, fine-tune with distillation, evaluate")
    _targeting(c)
    c.add_argument("--checkpoint", help="the trained model: a frugalnn checkpoint / run dir, "
                   "or a resnet*.th file for resnet models (required unless --random-init)")
    c.add_argument("--random-init", action="store_true",
                   help="compress a randomly initialised MODEL (no --checkpoint): for timing "
                        "and cost studies only; the run says so in its config and report")
    _common(c)
    c.add_argument("--finetune-epochs", type=int, default=1)
    c.add_argument("--layerwise-steps", type=int, help="steps fitting each factorised layer "
                   "to its original before fine-tuning (default 200 for *-nl methods, else 0)")
    c.add_argument("--lr", type=float, help="fine-tuning learning rate (default 0.01; 0.001 "
                   "for cp, whose factors diverged at 0.01 in benchmarks/results/lowrank.md)")
    c.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"))
    c.add_argument("--alpha", type=float, default=0.5, help="weight of the distillation loss")
    c.add_argument("--latency-batch", type=int, default=1,
                   help="batch size of the latency table for --target latency=F (default 1)")
    c.add_argument("--data-aware", action="store_true",
                   help="--method svd: ranks and factors from the layers' outputs on training "
                        "examples, not from the weights alone")
    c.add_argument("--calibration-examples", type=int, default=512,
                   help="training examples --data-aware calibrates on (default 512)")
    c.add_argument("--gain-examples", type=int, default=0,
                   help="a model-* target: weigh the allocation by each layer's output "
                        "gain measured on the first N training examples, one forward pass "
                        "per layer (default 0: by spectral energy alone)")
    c.add_argument("--retain-freed-memory", action="store_true",
                   help="time (original, compressed, latency table) with glibc keeping freed "
                        "memory: no page faults for re-allocated activations (docs/cost.md)")
    c.set_defaults(func=_compress)

    n = sub.add_parser("nmf", help="ViT with NMF token mixing instead of attention")
    n.add_argument("--model", default="vit_tiny")
    n.add_argument("--checkpoint", help="start from this trained ViT (default: a fresh one, "
                   "trained here for --epochs)")
    _common(n)
    n.add_argument("--rank", type=int, default=8)
    n.add_argument("--steps", type=int, default=6, help="no-grad updates in training")
    n.add_argument("--eval-steps", type=int, help="updates at evaluation (default steps+1)")
    n.add_argument("--heads", type=int, default=1)
    n.add_argument("--variant", default="nmf", choices=("nmf", "projective", "ntf"))
    n.add_argument("--epochs", type=int, default=10)
    n.add_argument("--lr", type=float, default=1e-3)
    n.set_defaults(func=_nmf)


def _prepare(args: argparse.Namespace, model_name: str) -> tuple[Any, Any, Path]:
    """Validate, seed, load the splits and the model; return (model, splits, out)."""
    check_positive((getattr(args, flag, None), f"--{flag.replace('_', '-')}")
                   for flag in ("batch_size", "train_limit", "val_limit", "eval_limit",
                                "threads", "latency_repeats"))
    out = start_run(args)
    splits = load_splits_from_args(args)
    model = load_model_for_data(model_name, args.checkpoint, splits.info, args.model_arg,
                                args.device, check_name=False)
    return model, splits, out


def _plan(args: argparse.Namespace) -> int:
    import torch

    from frugalnn.methods.lowrank.compress import compress_model, plan_markdown, plan_totals
    from frugalnn.models import model_info

    shape = model_info(args.model).input_shape
    kwargs = parse_model_args(args.model_arg)
    if args.data:
        from frugalnn.data import dataset_info
        from frugalnn.models.registry import model_kwargs_for

        info = dataset_info(args.data)
        shape = tuple(info.input_shape)
        kwargs = model_kwargs_for(args.model, info, kwargs)
    model = load_base_model(args.model, args.checkpoint, kwargs, args.device, allow_th=True,
                            check_name=False).eval()
    x = torch.randn(2, *shape, device=args.device)
    _, plan = compress_model(model, args.method, args.target, x, include=args.include,
                             exclude=args.exclude, depthwise=args.depthwise,
                             latency={"batch_size": args.latency_batch, "device": args.device},
                             layer_targets=args.layer_target, rank_multiple=args.rank_multiple)
    print(plan_markdown(plan))
    t = plan_totals(plan)
    print(f"{t['layers_factorised']}/{t['layers_eligible']} layers factorised; eligible layers: "
          f"{t['params_ratio']:.2f}x fewer parameters, {t['flops_ratio']:.2f}x fewer FLOPs")
    return 0


def _sizes(args: argparse.Namespace) -> tuple[int, ...]:
    from frugalnn.cli.evaluate import parse_ints

    return tuple(parse_ints(args.latency_batch_sizes, "--latency-batch-sizes"))


def compress_config(args: argparse.Namespace) -> Any:
    """The :class:`~frugalnn.methods.lowrank.recipe.LowRankConfig` of ``lowrank compress``."""
    from frugalnn.methods.lowrank.recipe import LowRankConfig

    config = LowRankConfig(
        method=args.method, target=args.target, depthwise=args.depthwise,
        include=args.include, exclude=args.exclude, layer_targets=args.layer_target,
        rank_multiple=args.rank_multiple, finetune_epochs=args.finetune_epochs, lr=args.lr,
        layerwise_steps=args.layerwise_steps,
        optimizer=args.optimizer, alpha=args.alpha, batch_size=args.batch_size,
        latency_batch=args.latency_batch, latency_batch_sizes=_sizes(args),
        latency_repeats=args.latency_repeats, seed=args.seed,
        data_aware=getattr(args, "data_aware", False),
        calibration_examples=getattr(args, "calibration_examples", 512),
        gain_examples=getattr(args, "gain_examples", 0))
    config.validate()
    return config


def _compress(args: argparse.Namespace) -> int:
    from frugalnn.methods.lowrank.recipe import run_lowrank
    from frugalnn.models.registry import comes_trained

    trained = (args.checkpoint is not None or getattr(args.model, "weights", None) is not None
               or comes_trained(str(args.model)))
    if not trained and not args.random_init:
        raise UserError("lowrank compress needs the trained model: pass --checkpoint or --weights "
                        "(or --random-init to compress random weights, for cost studies only)")
    if trained and args.random_init:
        raise UserError("--random-init excludes --checkpoint and --weights; pass one")
    config = compress_config(args)
    if args.retain_freed_memory:
        from frugalnn.cost.allocator import retain_freed_memory

        if not retain_freed_memory():
            print("note: --retain-freed-memory needs glibc; timing with this platform's allocator")
    model, splits, out = _prepare(args, args.model)
    run = run_lowrank(model, config, splits, out, device=args.device, threads=args.threads,
                      progress=not args.no_progress, force=args.force,
                      random_init=args.random_init,
                      run_config=args_config(args, "lowrank compress"))
    if args.random_init:
        from frugalnn.methods.lowrank.recipe import RANDOM_WEIGHTS_WARNING

        print(RANDOM_WEIGHTS_WARNING)
    print((out / "extras" / "lowrank_model.md").read_text())
    _print_paths(run.out)
    return 0


def _print_paths(out: Path) -> None:
    print(f"checkpoint: {out / 'checkpoint'}")
    print(f"records:    {out / 'records.csv'}")
    print(f"report:     {out / 'report'}")


def _nmf(args: argparse.Namespace) -> int:
    from frugalnn.methods.lowrank.recipe import NMFConfig, run_nmf

    config = NMFConfig(rank=args.rank, steps=args.steps, eval_steps=args.eval_steps,
                       heads=args.heads, variant=args.variant, epochs=args.epochs, lr=args.lr,
                       batch_size=args.batch_size, latency_batch_sizes=_sizes(args),
                       latency_repeats=args.latency_repeats, seed=args.seed,
        data_aware=getattr(args, "data_aware", False),
        calibration_examples=getattr(args, "calibration_examples", 512))
    config.validate()
    model, splits, out = _prepare(args, args.model)
    run_nmf(model, config, splits, out, device=args.device, threads=args.threads,
            progress=not args.no_progress, force=args.force,
            run_config=args_config(args, "lowrank nmf"))
    _print_paths(out)
    return 0
