"""CLI: ``frugalnn acm convert MODEL --checkpoint RUN --data NAME --out RUN_DIR``.

Reads its flags into an :class:`~frugalnn.methods.acm.recipe.ACMConfig`, loads
the splits (validation carved from train) and calls
:func:`~frugalnn.methods.acm.recipe.run_acm`: the FFNs of a trained
transformer become adaptive computation modules, the three training stages
run, and the checkpoint (loadable by ``frugalnn evaluate``), the records of
the ``q`` sweep on the test and validation splits, the compute maps, the
operating point chosen on validation and the report land in one run directory.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from frugalnn.cli.common import (
    add_data_flags,
    add_model_flags,
    add_run_flags,
    args_config,
    check_positive,
    load_base_model,
    load_splits_from_args,
    parse_model_args,
    print_budget_summary,
    start_run,
)

if TYPE_CHECKING:
    from frugalnn.methods.acm.recipe import ACMConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    acm = subparsers.add_parser("acm", help="adaptive computation modules (per-token learners)")
    sub = acm.add_subparsers(dest="acm_command", metavar="SUBCOMMAND")
    c = sub.add_parser("convert", help="FFNs -> N learners + gate, train 3 stages, sweep q")
    add_model_flags(c)
    add_data_flags(c)
    c.add_argument("--learners", type=int, default=4, help="learners per FFN (4)")
    c.add_argument("--gate-hidden", type=int, help="gate hidden width (default dim/4)")
    c.add_argument("--sites", nargs="+", help="FFN sites to convert (default all)")
    c.add_argument("--ffn-pattern", metavar="PATTERN",
                   help="module names of the FFNs (fnmatch), for a model whose FFNs are not "
                        "recognised, e.g. 'encoder.layer.*.intermediate' or 'model.layers.*.mlp'")
    c.add_argument("--distill-epochs", type=int, default=2, help="stage I epochs (2)")
    c.add_argument("--gate-epochs", type=int, default=1, help="stage II epochs (1)")
    c.add_argument("--finetune-epochs", type=int, default=1, help="stage III epochs (1)")
    c.add_argument("--distill-lr", type=float, default=1e-3, help="stage I learning rate")
    c.add_argument("--gate-lr", type=float, default=3e-3, help="stage II learning rate")
    c.add_argument("--finetune-lr", type=float, default=1e-4, help="stage III learning rate")
    c.add_argument("--ratio", type=float, default=1.2,
                   help="gate label: smallest k with err(k)/err(k+1) < RATIO (1.2)")
    c.add_argument("--target", type=float, default=0.5,
                   help="stage III target fraction of learners run (0.5)")
    c.add_argument("--budget-weight", type=float, default=1.0, help="weight of the budget loss")
    c.add_argument("--kd-weight", type=float, default=0.5,
                   help="stage III: weight of distillation from the dense model's logits (0.5)")
    c.add_argument("--kd-temperature", type=float, default=2.0,
                   help="stage III distillation temperature (2)")
    c.add_argument("--budgets", nargs="+", help="q values to sweep (default 0,0.1,...,1)")
    c.add_argument("--map-images", type=int, default=8, help="images in the compute maps (8)")
    c.add_argument("--tolerance", type=float, default=1.0,
                   help="operating point: the cheapest q within this many accuracy points of "
                        "the full budget, chosen on the validation split (1)")
    c.add_argument("--latency-repeats", type=int, default=10, help="timed calls per budget")
    add_run_flags(c)
    c.set_defaults(func=_convert)
    acm.set_defaults(func=lambda _a: acm.print_help() or 2)


def config_from_args(args: argparse.Namespace) -> ACMConfig:
    """The :class:`ACMConfig` of the ``acm convert`` flags (checked)."""
    from frugalnn.cli.evaluate import parse_floats
    from frugalnn.methods.acm.convert import DEFAULT_QS
    from frugalnn.methods.acm.recipe import ACMConfig

    return ACMConfig(
        learners=args.learners, gate_hidden=args.gate_hidden, sites=args.sites,
        distill_epochs=args.distill_epochs, gate_epochs=args.gate_epochs,
        finetune_epochs=args.finetune_epochs, distill_lr=args.distill_lr,
        gate_lr=args.gate_lr, finetune_lr=args.finetune_lr, ratio=args.ratio,
        target=args.target, budget_weight=args.budget_weight, kd_weight=args.kd_weight,
        kd_temperature=args.kd_temperature, qs=parse_floats(args.budgets) or list(DEFAULT_QS),
        batch_size=args.batch_size, latency_repeats=args.latency_repeats,
        map_images=args.map_images, tolerance_points=args.tolerance, seed=args.seed,
        ffn_pattern=args.ffn_pattern,
    ).validate()


def _convert(args: argparse.Namespace) -> int:
    from frugalnn.methods.acm.recipe import run_acm

    check_positive(((args.train_limit, "--train-limit"), (args.val_limit, "--val-limit"),
                    (args.eval_limit, "--eval-limit"), (args.threads, "--threads")))
    config = config_from_args(args)
    out = start_run(args)
    model = load_base_model(args.model, args.checkpoint, parse_model_args(args.model_arg),
                            args.device).eval()
    splits = load_splits_from_args(args)
    print(f"training ACM layers ({config.learners} learners each): distil "
          f"{config.distill_epochs}, gate {config.gate_epochs}, fine-tune "
          f"{config.finetune_epochs} epochs")
    run = run_acm(model, config, splits, out, device=args.device, threads=args.threads,
                  progress=not args.no_progress, force=args.force,
                  run_config=args_config(args, "acm convert"))
    print_budget_summary(run.records, "q", width=5)
    if run.point:
        print(f"operating point (chosen on validation): q {run.point['label']}, test accuracy "
              f"{100 * run.point['test']['accuracy']:.2f} %")
    print(f"checkpoint: {out / 'checkpoint'}")
    print(f"report:     {out / 'report'}  (compute maps in {out / 'extras'})")
    return 0
