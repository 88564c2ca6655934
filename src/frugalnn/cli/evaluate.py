"""``frugalnn evaluate``, ``frugalnn report`` and ``frugalnn demo``.

Thin argument handling around :func:`frugalnn.evaluation.evaluate_into`,
:func:`frugalnn.report.write_report` and :func:`frugalnn.demo.run_demo`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from frugalnn.cli.common import (
    MODEL_SPEC_HELP,
    add_weights_flag,
    args_config,
    check_device,
    check_out,
    check_positive,
    positive,
    print_budget_summary,
    resolve_checkpoint,
    tokenizer_of_model,
)
from frugalnn.errors import UserError

__all__ = ["parse_floats", "parse_ints", "register"]


def parse_floats(values: list[str] | None, what: str = "--budgets") -> list[float] | None:
    """``["0.5,0.8", "0.9"]`` -> ``[0.5, 0.8, 0.9]`` (commas or spaces)."""
    if not values:
        return None
    out = []
    for v in values:
        for part in v.replace(",", " ").split():
            try:
                out.append(float(part))
            except ValueError:
                raise UserError(f"{what} takes numbers, got {part!r}; e.g. {what} 0.5,0.8,0.9") \
                    from None
    return out


def parse_ints(text: str, what: str) -> list[int]:
    """``"1,64"`` -> ``[1, 64]``; ``"none"`` or ``""`` -> ``[]``."""
    if text.strip().lower() in ("", "none", "0"):
        return []
    try:
        out = [int(p) for p in text.replace(",", " ").split()]
    except ValueError:
        raise UserError(f"{what} takes integers separated by commas, got {text!r}") from None
    if any(v < 1 for v in out):
        raise UserError(f"{what} values must be positive, got {text!r}")
    return out


def register(subparsers: argparse._SubParsersAction) -> None:
    e = subparsers.add_parser(
        "evaluate",
        help="evaluate a checkpoint at every budget; write records, summary and a report",
        description="Evaluate a trained (and possibly transformed) model at each value of its "
        "budget knob, recording per example the prediction, loss, FLOPs and the method's "
        "decisions, and time it per budget. Writes RUN_DIR/records.csv, summary.json and "
        "report/. The validation split (carved from the training data, --val-fraction) is "
        "evaluated too, into RUN_DIR/validation/: operating points are chosen there and "
        "scored on the evaluated split.",
    )
    e.add_argument("checkpoint", metavar="CHECKPOINT_OR_RUN_DIR", nargs="?",
                   help="a checkpoint directory, or a run directory holding checkpoint/ "
                        "(or give --model instead)")
    e.add_argument("--model", help="evaluate this model instead of a checkpoint: "
                   f"{MODEL_SPEC_HELP}; its checkpoint is saved in OUT/checkpoint so later "
                   "commands can rebuild it")
    add_weights_flag(e)
    e.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                   help="argument of --model's constructor or factory (repeatable)")
    e.add_argument("--data", required=True, help="dataset name (digits, mnist, cifar10, ...)")
    e.add_argument("--data-dir", help="data directory (default: $FRUGALNN_DATA)")
    e.add_argument("--split", "--eval-split", dest="split", default="test",
                   help="split to evaluate (default test)")
    e.add_argument("--budgets", nargs="+", help="knob values to sweep, e.g. 0.5,0.8,0.9 "
                   "(default: the model's own sweep)")
    e.add_argument("--batch-size", type=int, default=64, help="evaluation batch (default 64)")
    e.add_argument("--limit", "--eval-limit", dest="eval_limit", type=int,
                   help="evaluate N random examples of the split (seeded)")
    e.add_argument("--val-fraction", type=float, default=0.1,
                   help="part of the training split held out as validation, where operating "
                        "points are chosen (0.1; 0 = no validation)")
    e.add_argument("--val-limit", type=int, help="use N random validation examples (seeded)")
    e.add_argument("--seed", type=int, default=0, help="seed of the validation split and the "
                   "random subsets (0; use the one the model was trained with)")
    e.add_argument("--threads", type=int, help="torch threads (default: current setting)")
    e.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    e.add_argument("--method", default="", help="name shown in reports (default: the last "
                   "transformation applied, or 'baseline')")
    e.add_argument("--baseline", metavar="RUN_DIR", help="an evaluated run of the static "
                   "baseline model to compare with (its FLOPs and accuracy, on test and "
                   "validation); without it a static model records no baseline")
    e.add_argument("--latency-batch-sizes", default="1,64", help="batch sizes to time per "
                   "budget, or 'none' (default 1,64)")
    e.add_argument("--latency-repeats", type=int, default=20, help="timed calls (default 20)")
    e.add_argument("--out", required=True, help="run directory to write")
    e.add_argument("--force", action="store_true", help="overwrite an existing --out")
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    e.set_defaults(func=_evaluate)

    r = subparsers.add_parser(
        "report",
        help="plots and tables for one or more evaluated runs on one cost-accuracy plane",
        description="Regenerate a report (report.md, report.html, PNG plots, frontier.json) "
        "from saved run directories, without running any model.",
    )
    r.add_argument("runs", nargs="+", metavar="RUN_DIR", help="evaluated run directories")
    r.add_argument("--out", required=True, help="report directory to write")
    r.add_argument("--title", default="frugalnn report", help="report title")
    r.add_argument("--force", action="store_true", help="overwrite an existing --out")
    r.add_argument("--allow-mixed-examples", action="store_true", help="put runs evaluated "
                   "on different examples on one plane (refused by default)")
    r.set_defaults(func=_report)

    d = subparsers.add_parser(
        "demo",
        help="train a small baseline, run every available method, write one report",
        description="The whole pipeline in a few minutes on a CPU: train a small baseline on "
        "the embedded digits (or MNIST with --data mnist --data-dir DIR), profile and "
        "evaluate it, run each available method's demo, and write a single report with all "
        "of them on one plot against the baseline.",
    )
    d.add_argument("--data", default="digits", choices=("digits", "mnist"),
                   help="digits (embedded, default) or mnist (needs --data-dir)")
    d.add_argument("--data-dir", help="data directory for mnist (default: $FRUGALNN_DATA)")
    d.add_argument("--model", default="cnn_small", choices=("cnn_small", "mlp"),
                   help="baseline model (default cnn_small)")
    d.add_argument("--out", help="output directory (default: runs/demo/<UTC time>)")
    d.add_argument("--force", action="store_true", help="replace an existing --out that an "
                   "earlier demo wrote")
    d.add_argument("--quick", action="store_true", help="fewer epochs and examples (tests)")
    d.add_argument("--strict", action="store_true", help="fail if any method's demo fails")
    d.add_argument("--only", nargs="+", metavar="HOOK", help="run only these method demos "
                   "(module names or their last parts, e.g. early_exit lowrank)")
    d.add_argument("--no-methods", action="store_true", help="baseline only, no method demos")
    d.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    d.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the "
                   "demo's models are tiny, and one thread times them most stably)")
    d.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.set_defaults(func=_demo)


def _eval_splits(args: argparse.Namespace) -> tuple[Any, Any, str | None]:
    """``(evaluated split, validation split or None, why a wanted validation is missing)``.

    Uses :func:`frugalnn.cli.common.load_splits_from_args`, so ``--eval-limit``,
    ``--val-fraction``, ``--val-limit`` and ``--seed`` pick the same examples as
    in training and in the method commands. A dataset without a training split
    is evaluated without validation.
    """
    from frugalnn.cli.common import load_splits_from_args
    from frugalnn.data.splits import load_test_split

    if not 0.0 <= args.val_fraction < 1.0:
        raise UserError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    why = None
    if args.val_fraction > 0:
        try:
            splits = load_splits_from_args(args, eval_split=args.split)
            return splits.test, splits.val, None
        except (UserError, OSError) as exc:
            why = f"no validation split from {args.data!r} train ({exc})"
    test = load_test_split(args.data, args.data_dir, split=args.split, limit=args.eval_limit,
                           seed=args.seed)  # the same seeded subset as load_splits draws
    return test, None, why


def _evaluate(args: argparse.Namespace) -> int:
    from frugalnn.evaluation import evaluate_into
    from frugalnn.report import write_run_report
    from frugalnn.train.checkpoint import load_model

    check_positive(((args.batch_size, "--batch-size"), (args.eval_limit, "--limit"),
                    (args.val_limit, "--val-limit"), (args.threads, "--threads"),
                    (args.latency_repeats, "--latency-repeats")))
    check_device(args.device)
    if (args.checkpoint is None) == (args.model is None):
        raise UserError("pass a CHECKPOINT_OR_RUN_DIR or --model MODEL (with --weights), "
                        "exactly one of them")
    if args.model is None and (args.weights or args.model_arg):
        raise UserError("--weights and --model-arg go with --model; a checkpoint holds its "
                        "own model and weights")
    out = Path(args.out)
    check_out(out, args.force, empty_ok=False)
    budgets = parse_floats(args.budgets)
    sizes = parse_ints(args.latency_batch_sizes, "--latency-batch-sizes")
    if args.model is None:
        ckpt = resolve_checkpoint(args.checkpoint)
        model = load_model(ckpt, map_location=args.device)
        tokenizer_of_model(args, (getattr(model, "frugalnn_spec", None) or {}).get("name"))
    else:
        tokenizer_of_model(args)
    dataset, val_dataset, no_val = _eval_splits(args)
    if args.model is None:
        if getattr(dataset, "info", None) is not None:  # a model of other data: one line
            from frugalnn.train.checkpoint import check_data_fit

            check_data_fit(model, dataset.info, ckpt)
    else:
        from frugalnn.cli.common import ModelRef, load_model_for_data

        ckpt = out / "checkpoint"
        model = load_model_for_data(ModelRef(args.model, args.weights), None, dataset.info,
                                    args.model_arg, args.device).eval()
    if no_val is not None:
        print(f"note: evaluating without validation ({no_val}); operating points will be "
              "chosen on the evaluated split itself (oracle)", file=sys.stderr)
    config: dict[str, Any] = {"command": "evaluate", **args_config(args),
                              "checkpoint": str(ckpt)}
    records = evaluate_into(
        model, dataset, out, val_dataset=val_dataset, method=args.method,
        batch_size=args.batch_size, budgets=budgets, threads=args.threads, device=args.device,
        latency_batch_sizes=sizes, latency_repeats=args.latency_repeats,
        baseline_run=args.baseline, split=args.split, config=config, force=args.force,
        progress=not args.no_progress,
    )
    if args.model is not None:  # later commands rebuild the model from the run directory
        from frugalnn.train.checkpoint import data_signature, save_checkpoint

        save_checkpoint(ckpt, model, {"data": data_signature(dataset.info)})
    write_run_report(out)
    print_budget_summary(records, "budget", task=getattr(dataset.info, "task", None))
    print(f"records: {out / 'records.csv'}")
    print(f"report:  {out / 'report' / 'report.html'}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from frugalnn.report import write_report

    path = write_report(args.runs, args.out, title=args.title, force=args.force,
                        allow_mixed_examples=args.allow_mixed_examples)
    print(f"report: {path}")
    print(f"        {path.with_suffix('.html')}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from frugalnn.demo import run_demo

    positive(args.threads, "--threads")
    check_device(args.device)
    report = run_demo(
        out=args.out, data=args.data, data_dir=args.data_dir, model=args.model,
        quick=args.quick, strict=args.strict, force=args.force, seed=args.seed,
        threads=args.threads, device=args.device, only=[] if args.no_methods else args.only,
        progress=not args.no_progress,
    )
    print(f"report: {report}")
    print(f"        {report.with_suffix('.html')}")
    sys.stdout.flush()
    return 0
