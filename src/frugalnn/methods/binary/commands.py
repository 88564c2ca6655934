"""CLI: ``frugalnn binary MODEL --checkpoint CKPT --data D --out RUN``.

Binarises a trained model (weights, and inputs unless ``--weights-only``),
trains it with the straight-through estimator and distillation, packs the
signs one bit each and writes one run directory::

    RUN_DIR/config.json               the command's arguments and the recipe config
    RUN_DIR/checkpoint/               the packed model (load_model rebuilds it)
    RUN_DIR/records.csv ...           test records, validation records in validation/
    RUN_DIR/extras/binary_model.md    bytes, binary operations, packed kernel vs float layer
    RUN_DIR/report/                   the run's report

Flags -> :class:`~frugalnn.methods.binary.recipe.BinaryConfig` -> splits ->
:func:`~frugalnn.methods.binary.recipe.run_binarize`.
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
        "binary", help="binary / XNOR layers: 1-bit packed weights, XNOR-popcount kernel",
        description="Binarise a trained model's layers, train with a straight-through "
                    "estimator and distillation, pack, evaluate and time the packed kernel.")
    add_model_flags(p, "registry name (cnn_small, resnet20, ...)")
    add_data_flags(p)
    p.add_argument("--weights-only", action="store_true",
                   help="binarise the weights only (inputs stay float; no XNOR kernel)")
    p.add_argument("--word-bits", type=int, default=64, choices=(8, 16, 32, 64),
                   help="packing word; layer widths must be multiples of it (64)")
    p.add_argument("--kernel", default="auto", choices=("auto", "c", "numpy"),
                   help="XNOR-popcount kernel (auto: compiled C when cc exists, else numpy)")
    p.add_argument("--include", action="append", help="only layers matching this pattern")
    p.add_argument("--exclude", action="append", help="skip layers matching this pattern")
    p.add_argument("--binarize-first-last", action="store_true",
                   help="binarise the first and last layers too (kept float by default)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the distillation loss")
    p.add_argument("--latency-batch-sizes", default="1,64")
    p.add_argument("--latency-repeats", type=int, default=20)
    p.add_argument("--layer-repeats", type=int, default=20,
                   help="timed calls per layer, packed kernel vs float layer (0: untimed)")
    add_run_flags(p)
    p.set_defaults(func=_binary)


def _binary(args: argparse.Namespace) -> int:
    from frugalnn.cli.evaluate import parse_ints
    from frugalnn.methods.binary.recipe import BinaryConfig, run_binarize

    check_positive((getattr(args, flag, None), f"--{flag.replace('_', '-')}")
                   for flag in ("batch_size", "train_limit", "val_limit", "eval_limit",
                                "threads", "latency_repeats"))
    config = BinaryConfig(
        activations=not args.weights_only, word_bits=args.word_bits, kernel=args.kernel,
        include=args.include, exclude=args.exclude,
        keep_first_last=not args.binarize_first_last, epochs=args.epochs, lr=args.lr,
        alpha=args.alpha, batch_size=args.batch_size,
        latency_batch_sizes=tuple(parse_ints(args.latency_batch_sizes,
                                             "--latency-batch-sizes")),
        latency_repeats=args.latency_repeats, layer_repeats=args.layer_repeats,
        seed=args.seed)
    config.validate()
    out = start_run(args)
    splits = load_splits_from_args(args)
    model = load_model_for_data(args.model, args.checkpoint, splits.info, args.model_arg,
                                args.device, check_name=False)
    run = run_binarize(model, config, splits, out, device=args.device, threads=args.threads,
                       progress=not args.no_progress, force=args.force,
                       run_config=args_config(args, "binary"))
    print((run.out / "extras" / "binary_model.md").read_text())
    print(f"checkpoint: {run.out / 'checkpoint'}")
    print(f"report:     {run.out / 'report'}")
    return 0
