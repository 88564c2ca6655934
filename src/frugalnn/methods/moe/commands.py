"""CLI: ``frugalnn moe convert ...`` and ``frugalnn sparsity ...``.

``moe convert`` reads its flags into a :class:`~frugalnn.methods.moe.recipe.MoEConfig`,
loads the splits (validation carved from train) and calls
:func:`~frugalnn.methods.moe.recipe.run_moe`, which writes the checkpoint
(loadable by ``frugalnn evaluate``), the records of the knob sweep on the test
and validation splits, the extras (operating point chosen on validation) and
the report into one run directory. ``sparsity`` writes the activation-sparsity
table and plots of any model.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from frugalnn.cli.common import (
    add_data_flags,
    add_model_flags,
    add_run_flags,
    args_config,
    check_out,
    check_positive,
    load_base_model,
    load_splits_from_args,
    parse_model_args,
    positive,
    print_budget_summary,
    start_run,
    tokenizer_of_model,
)
from frugalnn.errors import UserError

if TYPE_CHECKING:
    from frugalnn.methods.moe.recipe import MoEConfig

#: ``--ffn-pattern`` (see frugalnn.models.adapters.ffn; kept here so the parser imports no torch).
FFN_PATTERN_HELP = (
    "module names of the FFNs (fnmatch), for a model whose FFNs are not recognised, "
    "e.g. 'encoder.layer.*.intermediate' or 'model.layers.*.mlp'"
)

def register(subparsers: argparse._SubParsersAction) -> None:
    moe = subparsers.add_parser("moe", help="dense-to-mixture-of-experts conversion")
    moe_sub = moe.add_subparsers(dest="moe_command", metavar="SUBCOMMAND")
    c = moe_sub.add_parser(
        "convert", help="split FFNs into experts, train routers, sweep tau, write a run dir"
    )
    add_model_flags(c)
    add_data_flags(c, train_help="split for routers/sparsity (train)")
    size = c.add_mutually_exclusive_group(required=True)
    size.add_argument("--experts", type=int, help="experts per FFN")
    size.add_argument("--expert-size", type=int, help="neurons per expert")
    c.add_argument("--expert-split", default="kmeans",
                   choices=("kmeans", "coactivation", "sequential"),
                   help="how the neurons of each FFN are grouped into experts (default kmeans)")
    c.add_argument("--router-epochs", type=int, default=2, help="router training epochs (2)")
    c.add_argument("--router-lr", type=float, default=1e-3, help="router learning rate")
    c.add_argument("--router-hidden", type=int, default=128, help="router hidden width (128)")
    c.add_argument("--sparsify", action="store_true",
                   help="first replace GELU by ReLU and fine-tune with a Hoyer sparsity penalty")
    c.add_argument("--sparsify-epochs", type=int, default=1, help="sparsity fine-tuning epochs")
    c.add_argument("--sparsity-weight", type=float, default=0.2,
                   help="weight of the (width-normalised) squared Hoyer penalty (0.2)")
    c.add_argument("--sparsify-lr", type=float, default=1e-4, help="fine-tuning learning rate")
    c.add_argument("--finetune-epochs", type=int, default=0,
                   help="routed fine-tuning after conversion: train the MoE model at taus "
                        "drawn from --finetune-taus, distilling from the dense model, then "
                        "re-fit the routers (default 0: convert only, as D2DMoE)")
    c.add_argument("--finetune-taus", default="0.4,0.5,0.6",
                   help="comma-separated taus drawn per training step (0.4,0.5,0.6)")
    c.add_argument("--finetune-lr", type=float, default=1e-4, help="fine-tuning learning rate")
    c.add_argument("--finetune-kd-weight", type=float, default=0.5,
                   help="weight of distillation from the dense model in [0, 1] (0.5)")
    c.add_argument("--mode", default="dynamic", choices=("dynamic", "topk"),
                   help="routing rule of the saved model (dynamic-k: knob tau; topk: knob k)")
    c.add_argument("--budgets", nargs="+", help="tau values to sweep (default 0,0.25,...,1)")
    c.add_argument("--compare-topk", action="store_true",
                   help="also evaluate top-k routing into RUN_DIR/topk")
    c.add_argument("--tolerance", type=float, default=1.0,
                   help="operating point: the cheapest budget within this many accuracy points "
                        "of the full budget, chosen on the validation split (1)")
    c.add_argument("--latency-repeats", type=int, default=10, help="timed calls per budget")
    c.add_argument("--ffn-pattern", metavar="PATTERN", help=FFN_PATTERN_HELP)
    add_run_flags(c)
    c.set_defaults(func=_convert)
    moe.set_defaults(func=lambda _a: moe.print_help() or 2)

    s = subparsers.add_parser("sparsity", help="activation-sparsity table and plots of a model")
    add_model_flags(s, model_help="registry name")
    s.add_argument("--data", required=True, help="dataset name")
    s.add_argument("--data-dir", help="data directory (default: $FRUGALNN_DATA)")
    s.add_argument("--eval-split", default="test", help="dataset split analysed (test)")
    s.add_argument("--eval-limit", type=int, default=1024,
                   help="analyse N random examples of the split, drawn with --seed (1024)")
    s.add_argument("--seed", type=int, default=0, help="seed of the random examples (0)")
    s.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    s.add_argument("--eps", type=float, default=1e-3, help="near-zero threshold (1e-3)")
    s.add_argument("--all-activations", action="store_true",
                   help="every activation call, not only FFN activations of transformers")
    s.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--force", action="store_true", help="overwrite an existing --out")
    s.add_argument("--ffn-pattern", metavar="PATTERN", help=FFN_PATTERN_HELP)
    s.set_defaults(func=_sparsity)



def _sparsity(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from frugalnn.analysis.sparsity import activation_sparsity
    from frugalnn.data.splits import load_splits
    from frugalnn.utils.io import write_json_atomic

    positive(args.eval_limit, "--eval-limit")
    positive(args.batch_size, "--batch-size")
    out = Path(args.out)
    check_out(out, args.force)
    model = load_base_model(args.model, args.checkpoint, parse_model_args(args.model_arg),
                            args.device).eval()
    tokenizer_of_model(args)  # --data textfile on hf:DIR: the directory's tokenizer
    # The same random examples as the test split of every other command with this seed.
    data = load_splits(args.data, args.data_dir, val_fraction=0.0, test_limit=args.eval_limit,
                       test_split=args.eval_split, seed=args.seed).test
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=False)
    report = activation_sparsity(
        model, loader, eps=args.eps, device=args.device,
        only_ffn=False if args.all_activations else None, ffn_pattern=args.ffn_pattern,
        meta={"model": args.model, "checkpoint": args.checkpoint, "data": args.data,
              "split": args.eval_split, "seed": args.seed},
    )
    report.save(out)
    write_json_atomic(out / "config.json", args_config(args))
    print(report.table(), end="")
    print(f"written: {out / 'sparsity.md'}, {out / 'sparsity.json'}, plots in {out}")
    return 0


def config_from_args(args: argparse.Namespace) -> MoEConfig:
    """The :class:`MoEConfig` of the ``moe convert`` flags (checked)."""
    from frugalnn.methods.moe.convert import DEFAULT_TAUS
    from frugalnn.methods.moe.recipe import MoEConfig

    try:
        taus = [float(v) for item in (args.budgets or []) for v in item.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--budgets must be numbers, got {args.budgets}") from None
    return MoEConfig(
        experts=args.experts, expert_size=args.expert_size, expert_split=args.expert_split,
        router_epochs=args.router_epochs, router_lr=args.router_lr,
        router_hidden=args.router_hidden, sparsify=args.sparsify,
        sparsify_epochs=args.sparsify_epochs, sparsity_weight=args.sparsity_weight,
        sparsify_lr=args.sparsify_lr, finetune_epochs=args.finetune_epochs,
        finetune_taus=_parse_taus(args.finetune_taus), finetune_lr=args.finetune_lr,
        finetune_kd_weight=args.finetune_kd_weight, mode=args.mode,
        taus=taus or list(DEFAULT_TAUS), compare_topk=args.compare_topk,
        batch_size=args.batch_size, latency_repeats=args.latency_repeats,
        tolerance_points=args.tolerance, seed=args.seed, ffn_pattern=args.ffn_pattern,
    ).validate()


def _convert(args: argparse.Namespace) -> int:
    from frugalnn.methods.moe.recipe import run_moe

    check_positive(((args.train_limit, "--train-limit"), (args.val_limit, "--val-limit"),
                    (args.eval_limit, "--eval-limit"), (args.threads, "--threads")))
    config = config_from_args(args)
    out = start_run(args)
    model = load_base_model(args.model, args.checkpoint, parse_model_args(args.model_arg),
                            args.device).eval()
    splits = load_splits_from_args(args)
    print(f"converting to experts ({config.expert_split} split) and training routers"
          + (", after sparsity enforcement" if config.sparsify else ""))
    run = run_moe(model, config, splits, out, device=args.device, threads=args.threads,
                  progress=not args.no_progress, force=args.force,
                  run_config=args_config(args, "moe convert"))
    print_budget_summary(run.records, run.model.budget_name, width=6)
    point = run.points.get(str(out))
    if point:
        print(f"operating point (chosen on validation): {run.model.budget_name} "
              f"{point['label']}, test accuracy {100 * point['test']['accuracy']:.2f} %")
    print(f"checkpoint: {out / 'checkpoint'}  (frugalnn evaluate {out} --data {args.data} ...)")
    print(f"report:     {out / 'report' / 'report.html'}")
    return 0


def _parse_taus(text: str) -> list[float]:
    """``"0.4,0.6"`` -> ``[0.4, 0.6]``, each checked to lie in [0, 1]."""
    try:
        taus = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--finetune-taus must be comma-separated numbers, got {text!r}") from None
    if not taus or not all(0.0 <= t <= 1.0 for t in taus):
        raise UserError(f"--finetune-taus must be numbers in [0, 1], got {text!r}")
    return taus
