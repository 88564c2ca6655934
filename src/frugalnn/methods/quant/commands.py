"""CLI: ``frugalnn quant MODEL --data D --mode dynamic|static|weight_only``.

Quantises a trained model (``--checkpoint``: a frugalnn checkpoint or run
directory, or a ``resnet*.th`` file) to int8 and writes one run directory::

    RUN_DIR/config.json       the command's arguments, the recipe config, what was decided
    RUN_DIR/checkpoint/       the int8 model (load_model rebuilds it and loads its int8 weights)
    RUN_DIR/records.csv ...   evaluation on the test split (validation/ for the validation split)
    RUN_DIR/extras/           quant_model.md: float against int8 (size, FLOPs by precision,
                              latency on the int8 runtime, accuracy)
    RUN_DIR/report/           the run's report

Thin: flags -> :class:`~frugalnn.methods.quant.recipe.QuantConfig` -> splits ->
:func:`~frugalnn.methods.quant.recipe.run_quant`.
"""

from __future__ import annotations

import argparse
from typing import Any

from frugalnn.cli.common import (
    add_data_flags,
    add_model_argument,
    add_run_flags,
    args_config,
    check_positive,
    load_model_for_data,
    load_splits_from_args,
    start_run,
)
from frugalnn.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("quant", help="int8 quantisation (dynamic, static, weight-only)",
                              description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_model_argument(p, "registry model (resnet56, cnn_small, bert_minilm, ...)")
    p.add_argument("--checkpoint",
                   help="the trained model: a frugalnn checkpoint / run dir, or a resnet*.th file")
    p.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                   help="extra model argument (JSON value), repeatable")
    p.add_argument("--mode", default="dynamic", choices=("dynamic", "static", "weight_only"))
    p.add_argument("--backend", default="x86", help="int8 engine: x86 | fbgemm | onednn | "
                   "qnnpack (x86)")
    p.add_argument("--observer", default="histogram",
                   choices=("histogram", "minmax", "moving_average"),
                   help="activation observer of static calibration (histogram)")
    p.add_argument("--per-tensor", action="store_true",
                   help="one weight scale per layer instead of per output channel")
    p.add_argument("--activation-bits", default="auto", choices=("auto", "7", "8"),
                   help="8, or 7 (reduce_range: for x86 CPUs without VNNI, whose int8 "
                        "kernels saturate); auto picks by CPU (auto)")
    p.add_argument("--embeddings", choices=("uint8",),
                   help="also store embedding tables in 8 bits (per-row scale and offset)")
    p.add_argument("--calibration-size", type=int, default=512,
                   help="training examples for static calibration (512, seeded random subset)")
    p.add_argument("--qat-epochs", type=int, default=0,
                   help="quantisation-aware fine-tuning epochs with distillation (static)")
    p.add_argument("--qat-if-drop", type=float, metavar="PT",
                   help="only fine-tune when post-training int8 loses more than PT points "
                        "of validation accuracy")
    p.add_argument("--lr", type=float, default=1e-4, help="QAT learning rate (1e-4)")
    add_data_flags(p)
    p.add_argument("--latency-batch-sizes", default="1,64")
    p.add_argument("--latency-repeats", type=int, default=20)
    add_run_flags(p)
    p.set_defaults(func=_quant)


def quant_config(args: argparse.Namespace) -> Any:
    """The :class:`~frugalnn.methods.quant.recipe.QuantConfig` of ``frugalnn quant``."""
    from frugalnn.cli.evaluate import parse_ints
    from frugalnn.methods.quant.recipe import QuantConfig

    config = QuantConfig(
        mode=args.mode, backend=args.backend, observer=args.observer,
        per_channel=not args.per_tensor,
        reduce_range={"auto": None, "7": True, "8": False}[args.activation_bits],
        calibration_size=args.calibration_size, embeddings=args.embeddings,
        qat_epochs=args.qat_epochs, qat_if_drop_pt=args.qat_if_drop, lr=args.lr,
        batch_size=args.batch_size,
        latency_batch_sizes=tuple(parse_ints(args.latency_batch_sizes, "--latency-batch-sizes")),
        latency_repeats=args.latency_repeats, seed=args.seed)
    config.validate()
    return config


def _quant(args: argparse.Namespace) -> int:
    from frugalnn.methods.quant.recipe import run_quant
    from frugalnn.models.registry import comes_trained

    check_positive((getattr(args, flag, None), f"--{flag.replace('_', '-')}")
                   for flag in ("batch_size", "train_limit", "val_limit", "eval_limit",
                                "threads", "latency_repeats", "calibration_size"))
    if args.device != "cpu":
        raise UserError(f"int8 models run on the CPU quantised kernels; got --device "
                        f"{args.device} (pass --device cpu)")
    if (args.checkpoint is None and getattr(args.model, "weights", None) is None
            and not comes_trained(str(args.model))):
        raise UserError("quant needs the trained model: pass --checkpoint or --weights")
    config = quant_config(args)
    out = start_run(args)
    splits = load_splits_from_args(args)
    model = load_model_for_data(args.model, args.checkpoint, splits.info, args.model_arg,
                                "cpu", check_name=False)
    run = run_quant(model, config, splits, out, threads=args.threads,
                    progress=not args.no_progress, force=args.force,
                    run_config=args_config(args, "quant"))
    print((out / "extras" / "quant_model.md").read_text())
    print(f"checkpoint: {run.out / 'checkpoint'}")
    print(f"records:    {run.out / 'records.csv'}")
    print(f"report:     {run.out / 'report'}")
    return 0
