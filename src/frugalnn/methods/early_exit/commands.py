"""CLI: ``frugalnn early-exit train ...``.

Attaches exit heads to a backbone (a registry model, optionally loaded from a
frugalnn checkpoint or a ResNet-CIFAR ``.th`` file), trains them (heads only
on the frozen backbone, or jointly SDN-style), optionally adds the
Zero-Time-Waste cascade and ensemble, and writes one run directory::

    RUN_DIR/config.json       the command's arguments
    RUN_DIR/checkpoint/       loadable by `frugalnn evaluate` and load_model
    RUN_DIR/records.csv ...   the threshold sweep on the evaluation split
    RUN_DIR/report/           the run's cost-accuracy report
    RUN_DIR/extras/           per-exit table, accuracy at 25/50/75 % FLOPs, plot

The sweep runs the real batched inference at every threshold (with
wall-clock latency) unless ``--offline-sweep`` asks for the one-pass
simulation, which gives identical predictions and FLOPs but no timings.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from frugalnn.cli.common import (
    add_run_flags,
    args_config,
    check_positive,
    load_model_for_data,
    load_subsets,
    print_budget_summary,
    random_subset,
    start_run,
)
from frugalnn.errors import UserError


def split_dataset(dataset: Any, fraction: float, seed: int) -> tuple[Any, Any]:
    """A seeded random ``(held_out, rest)`` split with ``fraction`` of the examples held out."""
    import torch
    from torch.utils.data import Subset

    n = len(dataset)
    k = int(round(fraction * n))
    if k < 1 or k >= n:
        raise UserError(f"cannot hold out {fraction} of {n} evaluation examples; use a larger "
                        "--eval-limit or another --final-ensemble-holdout")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7)).tolist()
    parts = []
    for idx in (sorted(order[:k]), sorted(order[k:])):
        part = Subset(dataset, idx)
        part.info = getattr(dataset, "info", None)  # type: ignore[attr-defined]
        parts.append(part)
    return parts[0], parts[1]


def register(subparsers: argparse._SubParsersAction) -> None:
    top = subparsers.add_parser(
        "early-exit", help="early-exit networks: attach, train and sweep exit heads",
        description="Early-exit networks (SDN heads, Zero-Time-Waste) that really exit.",
    )
    sub = top.add_subparsers(dest="early_exit_command", metavar="ACTION")
    top.set_defaults(func=lambda _args: (top.print_help(), 2)[1])
    t = sub.add_parser("train", help="attach heads to a backbone, train them, sweep thresholds")
    t.add_argument("--model", required=True, help="registry model (resnet56, vit_tiny, ...)")
    t.add_argument("--model-args", "--model-arg", dest="model_arg", action="append",
                   metavar="KEY=VALUE",
                   help="extra model argument (JSON value), repeatable")
    t.add_argument("--checkpoint", help="trained backbone: a frugalnn checkpoint / run dir, or a "
                   "resnet*.th file for resnet models")
    t.add_argument("--data", required=True, help="dataset name (digits, mnist, cifar10, ...)")
    t.add_argument("--data-dir", help="data directory (default: $FRUGALNN_DATA)")
    t.add_argument("--positions", default="every",
                   help="heads after which blocks: every | every:K | 0,3,7 (default every)")
    t.add_argument("--head", default="auto", choices=("auto", "pool", "cls", "mean", "linear"))
    t.add_argument("--pool-size", type=int, default=4, help="image heads pool to KxK (default 4)")
    t.add_argument("--cascade", action="store_true", help="ZTW cascade: each head also gets "
                   "the previous head's logits")
    t.add_argument("--ensemble", action="store_true", help="ZTW geometric ensemble of heads, "
                   "trained afterwards on the frozen cascade")
    t.add_argument("--final-ensemble", action="store_true",
                   help="rows reaching the end get a learned weighted geometric mean of every "
                        "exit and the backbone, fitted on --final-ensemble-holdout of the "
                        "evaluation split (kept out of the evaluation)")
    t.add_argument("--final-ensemble-holdout", type=float, default=0.5,
                   help="with --final-ensemble: fraction of the evaluation examples used to "
                        "fit it and not evaluated (default 0.5)")
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
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--train-limit", type=int, help="random subset of the train split")
    t.add_argument("--eval-split", default="test")
    t.add_argument("--eval-limit", type=int, help="random subset of the evaluation split")
    t.add_argument("--budgets", nargs="+", help="thresholds to sweep (default: the policy's)")
    t.add_argument("--offline-sweep", action="store_true", help="sweep from one all-heads pass "
                   "(same predictions and FLOPs, no wall-clock)")
    t.add_argument("--latency-batch-sizes", default="1,64")
    t.add_argument("--latency-repeats", type=int, default=10)
    t.add_argument("--method", default="", help="name shown in reports")
    add_run_flags(t)
    t.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    import torch
    from torch.utils.data import DataLoader

    from frugalnn.cli.evaluate import parse_floats, parse_ints
    from frugalnn.data import get_dataset
    from frugalnn.evaluation import evaluate_into
    from frugalnn.methods.early_exit import attach_heads
    from frugalnn.methods.early_exit.offline import collect_trace, sweep
    from frugalnn.methods.early_exit.report import write_extras
    from frugalnn.methods.early_exit.training import (
        FeatureCache,
        cache_augmented_passes,
        cache_features,
        train_ensemble,
        train_final_ensemble,
        train_heads,
        train_joint,
        train_ztw_crossfit,
    )
    from frugalnn.report import write_run_report
    from frugalnn.train.checkpoint import save_checkpoint, write_json_atomic

    check_positive(((args.epochs, "--epochs"), (args.batch_size, "--batch-size"),
                    (args.train_limit, "--train-limit"), (args.eval_limit, "--eval-limit"),
                    (args.threads, "--threads"), (args.ensemble_epochs, "--ensemble-epochs"),
                    (args.latency_repeats, "--latency-repeats")))
    if args.ensemble and not args.cascade:
        print("frugalnn: note: --ensemble without --cascade ensembles independent heads",
              file=sys.stderr)
    if args.augment and args.mode != "joint":
        raise UserError("--augment applies to --mode joint; heads mode trains on cached "
                        "features of un-augmented images")
    if args.augment_passes < 0:
        raise UserError(f"--augment-passes must be >= 0, got {args.augment_passes}")
    if args.augment_passes and args.mode != "heads":
        raise UserError("--augment-passes applies to --mode heads (joint mode augments with "
                        "--augment)")
    if args.kd_weight and args.mode != "joint":
        raise UserError("--kd-weight applies to --mode joint (heads mode leaves the backbone "
                        "as it is)")
    if not 0.0 <= args.kd_weight <= 1.0:
        raise UserError(f"--kd-weight must lie in [0, 1], got {args.kd_weight}")
    if args.kd_temperature <= 0:
        raise UserError(f"--kd-temperature must be positive, got {args.kd_temperature}")
    if args.final_weight != 1.0 and args.mode != "joint":
        raise UserError("--final-weight applies to --mode joint (heads mode does not train "
                        "the final exit)")
    if args.final_weight <= 0:
        raise UserError(f"--final-weight must be positive, got {args.final_weight}")
    if args.ensemble_folds and (args.ensemble_folds < 2 or not args.ensemble
                                or args.mode != "heads"):
        raise UserError(f"--ensemble-folds {args.ensemble_folds}: cross-fitting needs "
                        "--ensemble, --mode heads and at least 2 folds (0 turns it off)")
    if args.mode == "heads" and args.checkpoint is None:
        raise UserError("--mode heads freezes the backbone, so it needs a trained one: pass "
                        "--checkpoint, or use --mode joint")
    if not 0.0 < args.final_ensemble_holdout < 1.0:
        raise UserError("--final-ensemble-holdout must lie in (0, 1), got "
                        f"{args.final_ensemble_holdout}")
    budgets = parse_floats(args.budgets)
    sizes = parse_ints(args.latency_batch_sizes, "--latency-batch-sizes")
    out = start_run(args)
    progress = not args.no_progress

    train_ds, eval_ds, info = load_subsets(args, args.eval_split, augment=args.augment,
                                           seed=args.seed)
    fit_ds = None
    if args.final_ensemble:
        # The backbone saw the whole train split; only unseen examples show how far to
        # trust it, so the fit takes a seeded part of the evaluation split instead.
        fit_ds, eval_ds = split_dataset(eval_ds, args.final_ensemble_holdout, args.seed)
    backbone = load_model_for_data(args.model, args.checkpoint, info, args.model_arg,
                                   args.device)
    model = attach_heads(backbone, args.positions, args.head, cascade=args.cascade,
                         policy=args.policy, pool_size=args.pool_size,
                         example_input=torch.stack([eval_ds[0][0]]).to(args.device))
    out.mkdir(parents=True, exist_ok=True)
    config = args_config(args, "early-exit train")
    write_json_atomic(out / "config.json", config)

    if not 0.0 <= args.ensemble_holdout < 1.0:
        raise UserError(f"--ensemble-holdout must lie in [0, 1), got {args.ensemble_holdout}")
    history: dict[str, Any] = {}
    cache = None
    if args.mode == "heads":
        model.freeze_backbone = True
        cache = cache_features(model, DataLoader(train_ds, batch_size=256),
                               device=args.device, progress=progress)
        # Every augmented pass lists the same images in the same order as ``cache``.
        caches = [cache, *cache_augmented_passes(
            model,
            lambda k: random_subset(get_dataset(args.data, "train", args.data_dir, augment=True,
                                                seed=args.seed + 100 + k),
                                    args.train_limit, args.seed),
            args.augment_passes, device=args.device, progress=progress)]
        if args.ensemble and args.ensemble_folds:
            # Rows of every pass follow the plain images' order: one group per image.
            plain_rows = len(caches[0])
            cache = FeatureCache.concat(caches)
            del caches
            fitted = train_ztw_crossfit(
                model, cache, folds=args.ensemble_folds,
                groups=torch.arange(len(cache)) % plain_rows, epochs=args.epochs,
                lr=args.lr or 2e-3, batch_size=args.batch_size,
                ensemble_epochs=args.ensemble_epochs, seed=args.seed, device=args.device,
                progress=progress)
            history["heads"], history["ensemble"] = fitted["heads"], fitted["ensemble"]
        elif args.ensemble and args.ensemble_holdout > 0:
            # Over-fitted heads look too reliable on their own training rows. One seed
            # holds out the same images in every pass.
            parts = [c.split(args.ensemble_holdout, seed=args.seed) for c in caches]
            head_cache = FeatureCache.concat([h for h, _ in parts])
            cache = FeatureCache.concat([e for _, e in parts])
            del parts
        else:
            head_cache = cache = FeatureCache.concat(caches)
        if "heads" not in history:
            history["heads"] = train_heads(model, head_cache, epochs=args.epochs,
                                           lr=args.lr or 2e-3, batch_size=args.batch_size,
                                           seed=args.seed, device=args.device,
                                           progress=progress)
    else:
        loader = DataLoader(train_ds, batch_size=args.batch_size, shuffle=True)
        res = train_joint(model, loader, epochs=args.epochs, lr=args.lr or 0.01,
                          seed=args.seed, progress=progress, device=args.device,
                          kd_weight=args.kd_weight, kd_temperature=args.kd_temperature,
                          final_weight=args.final_weight)
        history["joint"] = res.history
    if args.ensemble and "ensemble" not in history:
        if cache is None:
            plain = get_dataset(args.data, "train", args.data_dir)
            plain = random_subset(plain, args.train_limit, args.seed)
            cache = cache_features(model, DataLoader(plain, batch_size=256),
                                   device=args.device, progress=progress)
        history["ensemble"] = train_ensemble(model, cache, epochs=args.ensemble_epochs,
                                             seed=args.seed, device=args.device)
    if fit_ds is not None:
        history["final_ensemble"] = train_final_ensemble(
            model, DataLoader(fit_ds, batch_size=256), seed=args.seed, device=args.device,
            progress=progress)
    model.eval()
    method = args.method or ("early-exit ZTW" if args.cascade else "early-exit SDN")
    if args.final_ensemble and not args.method:
        method += " + final ensemble"
    save_checkpoint(out / "checkpoint", model, {"method": method, "history": history,
                                                "config": config})
    trace = collect_trace(model, DataLoader(eval_ds, batch_size=256), device=args.device,
                          progress=progress)
    if args.offline_sweep:
        from frugalnn.report import write_report

        records = sweep(trace, args.policy, budgets, method=method, model_name=args.model,
                        meta={"transforms": model.frugalnn_transforms, "config": config})
        records.save(out, force=args.force)
        write_report([out], out / "report", title=method, force=True)
    else:
        records = evaluate_into(
            model, eval_ds, out, method=method, batch_size=64, budgets=budgets,
            threads=args.threads, device=args.device, latency_batch_sizes=sizes,
            latency_repeats=args.latency_repeats, config=config, force=args.force,
            progress=progress,
        )
    nums = write_extras(trace, args.policy, out / "extras", title=method)
    write_run_report(out)
    print_budget_summary(records, model.budget_name)
    for drop, row in nums["saving_within"].items():
        print(f"within {100 * drop:.1f} pt of the backbone: {100 * row['flops_saving']:.1f} % "
              f"FLOPs saved (threshold {row['threshold']:.4g})")
    print(f"checkpoint: {out / 'checkpoint'}")
    print(f"records:    {out / 'records.csv'}")
    return 0
