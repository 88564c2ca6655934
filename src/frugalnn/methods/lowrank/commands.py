"""CLI: ``frugalnn lowrank plan|compress|nmf``.

``plan`` prints the ranks and costs a target would give (no data, no
training). ``compress`` factorises a trained model, fine-tunes it with
distillation from the original and writes one run directory::

    RUN_DIR/config.json       the command's arguments
    RUN_DIR/checkpoint/       the compressed model (load_model rebuilds it)
    RUN_DIR/records.csv ...   evaluation over the rank_fraction knob
    RUN_DIR/report/           the run's cost-accuracy report
    RUN_DIR/extras/           per-layer and whole-model tables (latency, memory)

``nmf`` swaps a ViT's attention for NMF token mixing, trains it and
evaluates it the same way.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from frugalnn.cli.common import (
    add_run_flags,
    args_config,
    check_positive,
    load_base_model,
    load_model_for_data,
    load_subsets,
    parse_model_args,
    shuffled_loader,
    start_run,
)
from frugalnn.errors import UserError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                   help="extra model argument (JSON value), repeatable")
    p.add_argument("--checkpoint", help="trained model: a frugalnn checkpoint / run dir, or a "
                   "resnet*.th file for resnet models")
    p.add_argument("--data", default="digits", help="dataset (digits, mnist, cifar10, ...)")
    p.add_argument("--data-dir", help="data directory (default: $FRUGALNN_DATA)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--train-limit", type=int, help="random subset of the train split")
    p.add_argument("--eval-limit", type=int, help="random subset of the test split")
    p.add_argument("--latency-batch-sizes", default="1,64")
    p.add_argument("--latency-repeats", type=int, default=20)
    add_run_flags(p)


def _targeting(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="registry model (resnet56, cnn_small, vit_tiny, ...)")
    p.add_argument("--method", required=True, choices=("cp", "tucker", "tt", "svd"))
    p.add_argument("--target", default="flops=2",
                   help="rank=R | flops=X | params=X | energy=E | vbmf | latency=F "
                        "(default flops=2)")
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
    _common(c)
    c.add_argument("--finetune-epochs", type=int, default=1)
    c.add_argument("--lr", type=float, help="fine-tuning learning rate (default 0.01; 0.001 "
                   "for cp, whose factors diverged at 0.01 in benchmarks/results/lowrank.md)")
    c.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"))
    c.add_argument("--alpha", type=float, default=0.5, help="weight of the distillation loss")
    c.add_argument("--latency-batch", type=int, default=1,
                   help="batch size of the latency table for --target latency=F (default 1)")
    c.add_argument("--retain-freed-memory", action="store_true",
                   help="time (original, compressed, latency table) with glibc keeping freed "
                        "memory: no page faults for re-allocated activations (docs/cost.md)")
    c.set_defaults(func=_compress)

    n = sub.add_parser("nmf", help="ViT with NMF token mixing instead of attention")
    n.add_argument("--model", default="vit_tiny")
    _common(n)
    n.add_argument("--rank", type=int, default=8)
    n.add_argument("--steps", type=int, default=6, help="no-grad updates in training")
    n.add_argument("--eval-steps", type=int, help="updates at evaluation (default steps+1)")
    n.add_argument("--heads", type=int, default=1)
    n.add_argument("--variant", default="nmf", choices=("nmf", "projective"))
    n.add_argument("--epochs", type=int, default=10)
    n.add_argument("--lr", type=float, default=1e-3)
    n.set_defaults(func=_nmf)


def _prepare(args: argparse.Namespace, model_name: str):
    """Validate, seed, load data and the model; return (model, train_ds, eval_ds, out)."""
    check_positive((getattr(args, flag, None), f"--{flag.replace('_', '-')}")
                   for flag in ("batch_size", "train_limit", "eval_limit", "threads",
                                "latency_repeats"))
    out = start_run(args)
    train_ds, eval_ds, info = load_subsets(args)
    model = load_model_for_data(model_name, args.checkpoint, info, args.model_arg, args.device,
                                check_name=False)
    return model, train_ds, eval_ds, out


def _plan(args: argparse.Namespace) -> int:
    import torch

    from frugalnn.methods.lowrank.compress import compress_model, plan_markdown, plan_totals
    from frugalnn.models import model_info

    shape = model_info(args.model).input_shape
    kwargs = parse_model_args(args.model_arg)
    if args.data:
        from frugalnn.cli.train import model_kwargs_for
        from frugalnn.data import dataset_info

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


def _finish(args: argparse.Namespace, original, model, plan, eval_ds, out: Path, method: str,
            config: dict[str, Any], history: dict[str, Any]) -> None:
    """Save, evaluate over the knob, compare with the original, write extras."""
    import torch
    from torch.utils.data import DataLoader

    from frugalnn.cli.evaluate import parse_ints
    from frugalnn.evaluation import evaluate_into
    from frugalnn.methods.lowrank.pipeline import accuracy, compare, write_extras
    from frugalnn.report import write_run_report
    from frugalnn.train.checkpoint import save_checkpoint

    sizes = parse_ints(args.latency_batch_sizes, "--latency-batch-sizes")
    loader = DataLoader(eval_ds, batch_size=256)
    x = torch.stack([eval_ds[0][0]]).to(args.device)
    base_acc = base_flops = None
    if plan is not None:  # compared with the dense original it was made from
        from frugalnn.cost.count import flops_per_example

        base_acc = accuracy(original, loader, args.device)
        base_flops = flops_per_example(original.eval(), x)
    save_checkpoint(out / "checkpoint", model, {"method": method, "history": history,
                                                "config": config})
    evaluate_into(model, eval_ds, out, method=method, batch_size=args.batch_size,
                  threads=args.threads, device=args.device, latency_batch_sizes=sizes,
                  latency_repeats=args.latency_repeats, baseline_flops=base_flops,
                  baseline_accuracy=base_acc, config=config, force=args.force,
                  progress=not args.no_progress)
    if plan is not None:
        result = compare(original, model, plan, x, batch_sizes=sizes or (1,), device=args.device,
                         repeats=args.latency_repeats, threads=args.threads, eval_loader=loader,
                         layer_batch=(sizes or [1])[-1])
        write_extras(out, plan, result, method, sizes or (1,))
        print((out / "extras" / "lowrank_model.md").read_text())
    write_run_report(out)
    print(f"checkpoint: {out / 'checkpoint'}")
    print(f"records:    {out / 'records.csv'}")


def _compress(args: argparse.Namespace) -> int:

    from frugalnn.methods.lowrank.pipeline import compress_and_finetune
    from frugalnn.train.checkpoint import write_json_atomic

    if args.finetune_epochs < 0:
        raise UserError(f"--finetune-epochs must be >= 0, got {args.finetune_epochs}")
    if args.retain_freed_memory:
        from frugalnn.cost.allocator import retain_freed_memory

        if not retain_freed_memory():
            print("note: --retain-freed-memory needs glibc; timing with this platform's allocator")
    original, train_ds, eval_ds, out = _prepare(args, args.model)
    original.eval()
    import torch

    example = torch.stack([eval_ds[i][0] for i in range(min(2, len(eval_ds)))])
    out.mkdir(parents=True, exist_ok=True)
    config = args_config(args, "lowrank compress")
    write_json_atomic(out / "config.json", config)
    loader = shuffled_loader(train_ds, args.batch_size, args.seed)
    model, plan, history = compress_and_finetune(
        original, args.method, args.target, example, loader,
        finetune_epochs=args.finetune_epochs,
        lr=args.lr if args.lr is not None else (1e-3 if args.method == "cp" else 1e-2),
        optimizer=args.optimizer,
        alpha=args.alpha, depthwise=args.depthwise, include=args.include, exclude=args.exclude,
        latency={"batch_size": args.latency_batch, "device": args.device,
                 "threads": args.threads},
        layer_targets=args.layer_target, rank_multiple=args.rank_multiple,
        device=args.device, seed=args.seed, progress=not args.no_progress,
    )
    method = f"lowrank {args.method} {args.target}"
    _finish(args, original, model, plan, eval_ds, out, method, config, history)
    return 0


def _nmf(args: argparse.Namespace) -> int:

    from frugalnn.methods.lowrank.nmf import replace_attention
    from frugalnn.train import fit
    from frugalnn.train.checkpoint import write_json_atomic

    if args.epochs < 0:
        raise UserError(f"--epochs must be >= 0, got {args.epochs}")
    model, train_ds, eval_ds, out = _prepare(args, args.model)
    model = replace_attention(model, rank=args.rank, steps=args.steps,
                              eval_steps=args.eval_steps, heads=args.heads,
                              variant=args.variant, seed=args.seed)
    out.mkdir(parents=True, exist_ok=True)
    config = args_config(args, "lowrank nmf")
    write_json_atomic(out / "config.json", config)
    history: dict[str, Any] = {}
    if args.epochs:
        loader = shuffled_loader(train_ds, args.batch_size, args.seed)
        res = fit(model, loader, epochs=args.epochs, optimizer="adamw", lr=args.lr,
                  weight_decay=0.05, schedule="cosine", seed=args.seed,
                  progress=not args.no_progress, device=args.device)
        history = {"train": res.history}
    model.eval()
    _finish(args, None, model, None, eval_ds, out, f"NMF mixing ({args.variant})", config,
            history)
    return 0
