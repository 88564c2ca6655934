"""CLI: ``frugalnn prune MODEL --checkpoint CKPT --data D --target flops=2 --out RUN``.

Removes channels with torch-pruning to the target, fine-tunes with
distillation from the unpruned model and writes one run directory::

    RUN_DIR/config.json               the command's arguments and the recipe config
    RUN_DIR/checkpoint/               the pruned model (load_model rebuilds it)
    RUN_DIR/records.csv ...           test records, validation records in validation/
    RUN_DIR/extras/prune_model.md     parameters, FLOPs, accuracy, channels per layer
    RUN_DIR/report/                   the run's report

Flags -> :class:`~frugalnn.methods.prune.recipe.PruneConfig` -> splits ->
:func:`~frugalnn.methods.prune.recipe.run_prune`.
"""

from __future__ import annotations

import argparse

from frugalnn.cli.common import (
    add_data_flags,
    add_model_flags,
    add_run_flags,
    args_config,
    check_positive,
    load_model_for_data,
    load_splits_from_args,
    start_run,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prune", help="structured (channel) pruning through torch-pruning: the peer baseline",
        description="Prune a trained model's channels to a FLOPs budget, fine-tune, evaluate.")
    add_model_flags(p, "registry name (resnet56, cnn_small, ...)")
    add_data_flags(p)
    p.add_argument("--target", default="flops=2",
                   help="flops=X (X-fold fewer FLOPs) or ratio=R (channels removed per layer)")
    p.add_argument("--include", action="append",
                   help="only layers matching this pattern lose output channels "
                        "(repeatable; e.g. 'blocks.*.conv1' keeps a ResNet's residual stream)")
    p.add_argument("--exclude", action="append", help="layers matching this pattern keep "
                   "their output channels (repeatable)")
    p.add_argument("--importance", default="l2", choices=("l1", "l2"))
    p.add_argument("--global-pruning", action="store_true",
                   help="rank channels across layers (default: per layer)")
    p.add_argument("--round-to", type=int, help="keep channel counts multiples of N")
    p.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs (1)")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the distillation loss")
    p.add_argument("--latency-batch-sizes", default="1,64")
    p.add_argument("--latency-repeats", type=int, default=20)
    add_run_flags(p)
    p.set_defaults(func=_prune)


def _prune(args: argparse.Namespace) -> int:
    from frugalnn.cli.evaluate import parse_ints
    from frugalnn.methods.prune.recipe import PruneConfig, run_prune

    check_positive((getattr(args, flag, None), f"--{flag.replace('_', '-')}")
                   for flag in ("batch_size", "train_limit", "val_limit", "eval_limit",
                                "threads", "latency_repeats", "round_to"))
    config = PruneConfig(
        target=args.target, include=args.include, exclude=args.exclude,
        importance=args.importance, global_pruning=args.global_pruning,
        round_to=args.round_to, epochs=args.epochs, lr=args.lr, alpha=args.alpha,
        batch_size=args.batch_size,
        latency_batch_sizes=tuple(parse_ints(args.latency_batch_sizes,
                                             "--latency-batch-sizes")),
        latency_repeats=args.latency_repeats, seed=args.seed)
    config.validate()
    out = start_run(args)
    splits = load_splits_from_args(args)
    model = load_model_for_data(args.model, args.checkpoint, splits.info, args.model_arg,
                                args.device, check_name=False)
    run = run_prune(model, config, splits, out, device=args.device, threads=args.threads,
                    progress=not args.no_progress, force=args.force,
                    run_config=args_config(args, "prune"))
    print((run.out / "extras" / "prune_model.md").read_text())
    print(f"checkpoint: {run.out / 'checkpoint'}")
    print(f"report:     {run.out / 'report'}")
    return 0
