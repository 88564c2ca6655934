"""CLI: ``frugalnn text train ...``, a budgeted text model trained into a run directory.

The flags become a :class:`~frugalnn.methods.text.recipe.NgramConfig`; the splits come
from ``load_splits_from_args`` (validation carved from train, where the epoch is chosen);
:func:`~frugalnn.methods.text.recipe.run_ngram` writes the run directory.
"""

from __future__ import annotations

import argparse

from frugalnn.cli.common import (
    add_data_flags,
    add_run_flags,
    args_config,
    check_positive,
    load_splits_from_args,
    start_run,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    text = subparsers.add_parser("text", help="small hashed-feature text models under a "
                                              "memory budget (language ID, POS tagging)")
    sub = text.add_subparsers(dest="text_command", metavar="SUBCOMMAND")
    t = sub.add_parser("train", help="train a model that fits --budget bytes, write a run dir")
    add_data_flags(t, train_help="split to train on (train); --data langid or pos-turkish")
    t.add_argument("--task", choices=("langid", "pos"), help="langid (one label per "
                   "sentence) or pos (one tag per token); default from --data")
    t.add_argument("--budget", type=int, default=100_000, help="model bytes (100000)")
    t.add_argument("--bits", type=int, default=8, choices=(8, 32),
                   help="embedding storage: 8 (uint8 + per-row scale/offset) or 32 (8)")
    t.add_argument("--orders", help="character n-gram orders, e.g. 1,2,3,4")
    t.add_argument("--max-chars", type=int, default=256, help="characters read per sentence")
    t.add_argument("--hidden-layers", type=int, default=1, choices=(0, 1, 2))
    t.add_argument("--reduce", default="mean", choices=("mean", "sum"))
    t.add_argument("--tags", default="upos", choices=("upos", "xpos"), help="pos tag column")
    t.add_argument("--epochs", type=int, default=8, help="epochs (best on validation kept)")
    t.add_argument("--lr", type=float, default=5e-3, help="Adam learning rate")
    add_run_flags(t)
    t.set_defaults(func=_train)
    text.set_defaults(func=lambda _a: text.print_help() or 2)


def _train(args: argparse.Namespace) -> int:
    from frugalnn.errors import UserError
    from frugalnn.methods.text.recipe import NgramConfig, run_ngram

    check_positive(((args.train_limit, "--train-limit"), (args.val_limit, "--val-limit"),
                    (args.eval_limit, "--eval-limit"), (args.threads, "--threads")))
    task = args.task or ("pos" if args.data.startswith("pos") else "langid")
    try:
        orders = [int(v) for v in args.orders.split(",")] if args.orders else None
    except ValueError:
        raise UserError(f"--orders must be comma-separated integers, got {args.orders!r}") \
            from None
    config = NgramConfig(task=task, budget_bytes=args.budget, bits=args.bits, orders=orders,
                         max_chars=args.max_chars, hidden_layers=args.hidden_layers,
                         reduce=args.reduce, tag_column=args.tags, epochs=args.epochs,
                         lr=args.lr, batch_size=args.batch_size, seed=args.seed).validate()
    out = start_run(args)
    splits = load_splits_from_args(args)
    run = run_ngram(config, splits, out, threads=args.threads, progress=not args.no_progress,
                    force=args.force, run_config=args_config(args, "text train"))
    f = run.figures
    acc = f["accuracy"].get("test", {})
    print(f"model: {f['bytes']} bytes ({args.bits}-bit tables; float {f['float_bytes']}), "
          f"epoch {f['chosen_epoch']} chosen on {f['chosen_on']}")
    if acc:
        print(f"test accuracy: {100 * acc['8bit']:.2f} % (8-bit tables), "
              f"{100 * acc['float']:.2f} % (float)")
    print(f"written: {out / 'model.pt'}, {out / 'extras' / 'text.json'}")
    return 0
