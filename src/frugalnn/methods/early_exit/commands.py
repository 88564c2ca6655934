"""CLI: ``frugalnn early-exit train ...``.

Flags -> :class:`~frugalnn.methods.early_exit.recipe.EarlyExitConfig`, the
splits (:func:`frugalnn.cli.common.load_splits_from_args`: validation carved
from train) and the backbone (a registry model, optionally loaded from a
frugalnn checkpoint or a ResNet-CIFAR ``.th`` file; or a model spec: a factory
file or module or a Hugging Face directory, optionally with a state dict
``--weights``; ``--exit-after`` names exit points not found automatically), then
:func:`~frugalnn.methods.early_exit.recipe.run_early_exit` writes the run
directory (config, checkpoint, test and validation records, extras, report).

The sweep runs the real batched inference at every threshold (with
wall-clock latency) unless ``--offline-sweep`` asks for the one-pass
simulation, which gives identical predictions and FLOPs but no timings.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from frugalnn.cli.common import (
    MODEL_SPEC_HELP,
    ModelRef,
    add_data_flags,
    add_run_flags,
    add_weights_flag,
    args_config,
    check_positive,
    load_model_for_data,
    load_splits_from_args,
    print_budget_summary,
    start_run,
)
from frugalnn.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    top = subparsers.add_parser(
        "early-exit", help="early-exit networks: attach, train and sweep exit heads",
        description="Early-exit networks (SDN heads, Zero-Time-Waste) that really exit.",
    )
    sub = top.add_subparsers(dest="early_exit_command", metavar="ACTION")
    top.set_defaults(func=lambda _args: (top.print_help(), 2)[1])
    t = sub.add_parser("train", help="attach heads to a backbone, train them, sweep thresholds")
    t.add_argument("--model", required=True, help=f"the backbone: {MODEL_SPEC_HELP}")
    t.add_argument("--model-arg", dest="model_arg", action="append",
                   metavar="KEY=VALUE",
                   help="extra model argument (JSON value), repeatable")
    add_weights_flag(t)
    t.add_argument("--checkpoint", help="trained backbone: a frugalnn checkpoint / run dir, or a "
                   "resnet*.th file for resnet models")
    t.add_argument("--positions", default="every",
                   help="heads after which blocks: every | every:K | 0,3,7 (default every)")
    t.add_argument("--exit-after", dest="exit_after", metavar="PATTERN",
                   help="exit points of a model that is not a frugalnn staged model: module "
                        "names or patterns, comma-separated ('layer1.*': '*' matches one name "
                        "part); default: found automatically (ResNet stages, blocks, ...)")
    t.add_argument("--head", default="auto", choices=("auto", "pool", "cls", "mean", "linear"))
    t.add_argument("--pool-size", type=int, default=4, help="image heads pool to KxK (default 4)")
    t.add_argument("--cascade", action="store_true", help="ZTW cascade: each head also gets "
                   "the previous head's logits")
    t.add_argument("--ensemble", action="store_true", help="ZTW geometric ensemble of heads, "
                   "trained afterwards on the frozen cascade")
    t.add_argument("--final-ensemble", action="store_true",
                   help="rows reaching the end get a learned weighted geometric mean of every "
                        "exit and the backbone, fitted on --final-ensemble-holdout of the "
                        "validation split (the rest chooses the thresholds)")
    t.add_argument("--final-ensemble-holdout", type=float, default=0.5,
                   help="with --final-ensemble: fraction of the validation examples used to "
                        "fit it (default 0.5)")
    t.add_argument("--policy", default="maxprob", choices=("maxprob", "entropy", "patience"))
    t.add_argument("--mode", default="heads", choices=("heads", "joint"),
                   help="heads: frozen backbone (default); joint: backbone and heads, SDN losses")
    t.add_argument("--epochs", type=int, default=20, help="head (or joint) epochs (default 20)")
    t.add_argument("--lr", type=float, help="learning rate (default 2e-3 heads, 0.01 joint)")
    t.add_argument("--ensemble-epochs", type=int, default=30)
    t.add_argument("--ensemble-holdout", type=float, default=0.2,
                   help="with --ensemble: fraction of the training examples kept out of head "
                        "training and used to fit the ensemble (default 0.2; 0 = reuse them)")
    t.add_argument("--ensemble-folds", type=int, default=0,
                   help="with --ensemble in heads mode: cross-fit instead of holding out; the "
                        "heads train on every example and the ensemble on out-of-fold "
                        "predictions of K fold models (K+1 head trainings; default 0 = off)")
    t.add_argument("--augment", action="store_true", help="augment images (joint mode only)")
    t.add_argument("--augment-passes", type=int, default=0,
                   help="heads mode: also train the heads on this many augmented (crop + "
                        "flip) passes over the training images (default 0)")
    t.add_argument("--kd-weight", type=float, default=0.0,
                   help="joint mode: distil every exit from a frozen copy of the starting "
                        "backbone with this weight in [0, 1] (default 0: plain SDN losses)")
    t.add_argument("--kd-temperature", type=float, default=2.0,
                   help="distillation temperature (default 2)")
    t.add_argument("--final-weight", type=float, default=1.0,
                   help="joint mode: loss weight of the final exit; the internal exits weigh "
                        "their share of the backbone's FLOPs (default 1, as in SDN)")
    t.add_argument("--budgets", nargs="+", help="thresholds to sweep (default: the policy's)")
    t.add_argument("--offline-sweep", action="store_true", help="sweep from one all-heads pass "
                   "(same predictions and FLOPs, no wall-clock)")
    t.add_argument("--latency-batch-sizes", default="1,64")
    t.add_argument("--latency-repeats", type=int, default=10)
    t.add_argument("--method", default="", help="name shown in reports")
    add_data_flags(t)
    add_run_flags(t)
    t.set_defaults(func=_train, batch_size=128)


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~frugalnn.methods.early_exit.recipe.EarlyExitConfig` of the flags."""
    from frugalnn.cli.evaluate import parse_floats, parse_ints
    from frugalnn.methods.early_exit.recipe import EarlyExitConfig

    return EarlyExitConfig(
        positions=args.positions, exit_after=args.exit_after, head=args.head,
        pool_size=args.pool_size,
        cascade=args.cascade, ensemble=args.ensemble, final_ensemble=args.final_ensemble,
        final_ensemble_holdout=args.final_ensemble_holdout, policy=args.policy,
        mode=args.mode, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
        ensemble_epochs=args.ensemble_epochs, ensemble_holdout=args.ensemble_holdout,
        ensemble_folds=args.ensemble_folds, augment=args.augment,
        augment_passes=args.augment_passes, kd_weight=args.kd_weight,
        kd_temperature=args.kd_temperature, final_weight=args.final_weight,
        budgets=parse_floats(args.budgets), offline_sweep=args.offline_sweep,
        latency_batch_sizes=parse_ints(args.latency_batch_sizes, "--latency-batch-sizes"),
        latency_repeats=args.latency_repeats, method=args.method, seed=args.seed,
    ).validate()


def _train(args: argparse.Namespace) -> int:
    from frugalnn.methods.early_exit.recipe import run_early_exit
    from frugalnn.models.registry import comes_trained

    check_positive(((args.train_limit, "--train-limit"), (args.eval_limit, "--eval-limit"),
                    (args.val_limit, "--val-limit"), (args.threads, "--threads")))
    config = config_from_args(args)
    if config.ensemble and not config.cascade:
        print("frugalnn: note: --ensemble without --cascade ensembles independent heads",
              file=sys.stderr)
    # A registry model is built untrained unless it is a published pretrained one; a
    # factory or Hugging Face directory may well bring its own trained weights.
    untrained = (":" not in str(args.model) and not args.weights
                 and not comes_trained(str(args.model)))
    if config.mode == "heads" and args.checkpoint is None and untrained:
        raise UserError("--mode heads freezes the backbone, so it needs a trained one: pass "
                        "--checkpoint or --weights, or use --mode joint")
    out = start_run(args)
    splits = load_splits_from_args(args)
    model = ModelRef(str(args.model), args.weights)
    backbone = load_model_for_data(model, args.checkpoint, splits.info, args.model_arg,
                                   args.device)
    run = run_early_exit(
        backbone, config, splits, out, device=args.device, threads=args.threads,
        progress=not args.no_progress, force=args.force, model_name=args.model,
        run_config=args_config(args, "early-exit train"))
    print_budget_summary(run.records, run.model.budget_name)
    for drop, row in run.numbers["saving_within"].items():
        print(f"within {100 * drop:.1f} pt of the backbone: {100 * row['flops_saving']:.1f} % "
              f"FLOPs saved on test (threshold {row['threshold']:.4g}, chosen on "
              f"{run.numbers['chosen_on']})")
    oracle = run.numbers["oracle"]
    print(f"oracle with these heads (each example stops at the first exit that is right): "
          f"{100 * oracle['accuracy']:.1f} % accuracy at {100 * oracle['flops_ratio']:.1f} % "
          "of the backbone's FLOPs on test (no exit policy reaches that accuracy for less)")
    print(f"checkpoint: {out / 'checkpoint'}")
    print(f"records:    {out / 'records.csv'}")
    return 0
