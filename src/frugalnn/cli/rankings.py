"""CLI: ``frugalnn rankings RUN_DIR... --out DIR`` and ``frugalnn rankings-reference``.

``rankings`` compares how the runs rank the same examples by difficulty
(see :mod:`frugalnn.analysis.rankings`); ``rankings-reference`` evaluates a
static model into a run directory with the reference columns (loss,
prediction entropy, fraction of zero ReLU outputs) to compare against.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from frugalnn.cli.common import check_device
from frugalnn.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    r = subparsers.add_parser(
        "rankings", help="do methods agree on which examples are hard? (rank correlations)")
    r.add_argument("runs", nargs="+", metavar="RUN_DIR", help="evaluated run directories")
    r.add_argument("--out", required=True, help="output directory")
    r.add_argument("--relative-cost", type=float, default=0.5,
                   help="rank a swept run at the budget whose mean cost is closest to this "
                        "fraction of its baseline cost (0.5)")
    r.add_argument("--budget", action="append", metavar="RUN=VALUE",
                   help="rank RUN (directory as given, or method label) at this budget value")
    r.add_argument("--top", type=float, default=0.1,
                   help="fraction of hardest/easiest examples compared for overlap (0.1)")
    r.add_argument("--data", help="dataset name, to draw the easiest/hardest examples")
    r.add_argument("--data-dir", help="data directory (default: $FRUGALNN_DATA)")
    r.add_argument("--split", "--eval-split", dest="split", default="test",
                   help="split the runs were evaluated on (test)")
    r.add_argument("--eval-limit", "--limit", dest="limit", type=int,
                   help="the --eval-limit the runs were evaluated with")
    r.add_argument("--seed", type=int, default=0, help="the --seed the runs were evaluated with")
    r.add_argument("--grid", type=int, default=12, help="examples per grid row (12)")
    r.add_argument("--force", action="store_true", help="overwrite existing rankings in --out")
    r.set_defaults(func=_rankings)

    f = subparsers.add_parser(
        "rankings-reference",
        help="evaluate a static model with per-example loss, entropy and ReLU zero fraction")
    f.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint or run directory")
    f.add_argument("--data", required=True, help="dataset name")
    f.add_argument("--data-dir", help="data directory (default: $FRUGALNN_DATA)")
    f.add_argument("--split", "--eval-split", dest="split", default="test", help="split (test)")
    f.add_argument("--eval-limit", "--limit", dest="limit", type=int,
                   help="evaluate N random examples (seeded, as `frugalnn evaluate` draws them)")
    f.add_argument("--seed", type=int, default=0, help="seed of the --eval-limit draw (0)")
    f.add_argument("--batch-size", type=int, default=64, help="batch size (64)")
    f.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    f.add_argument("--out", required=True, help="run directory to write")
    f.add_argument("--force", action="store_true", help="overwrite an existing --out")
    f.set_defaults(func=_reference)


def _budgets(items: list[str] | None) -> dict[str, float]:
    out = {}
    for item in items or []:
        run, sep, value = item.rpartition("=")
        try:
            out[run] = float(value)
        except ValueError:
            run = ""
        if not sep or not run:
            raise UserError(f"--budget expects RUN=VALUE (e.g. runs/acm=0.5), got {item!r}")
    return out


def _rankings(args: argparse.Namespace) -> int:
    from frugalnn.analysis.rankings import write_rankings

    if args.limit is not None and args.limit < 1:
        raise UserError(f"--eval-limit must be positive, got {args.limit}")
    path = write_rankings(
        args.runs, args.out, relative_cost=args.relative_cost, budgets=_budgets(args.budget),
        top_fraction=args.top, data=args.data, data_dir=args.data_dir, split=args.split,
        limit=args.limit, seed=args.seed, grid=args.grid, force=args.force,
    )
    print(f"written: {path}")
    return 0


def _reference(args: argparse.Namespace) -> int:
    from frugalnn.analysis.rankings import reference_run
    from frugalnn.data.splits import load_test_split
    from frugalnn.train.checkpoint import has_checkpoint, load_model

    if args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        raise UserError("--batch-size and --eval-limit must be positive")
    check_device(args.device)
    path = Path(args.checkpoint)
    if not path.exists():
        raise UserError(f"{path} does not exist; pass a checkpoint or run directory")
    ckpt = path / "checkpoint" if has_checkpoint(path / "checkpoint") else path
    model = load_model(ckpt, map_location=args.device).eval()
    data = load_test_split(args.data, args.data_dir, split=args.split, limit=args.limit,
                           seed=args.seed)
    config = {"command": "rankings-reference", "checkpoint": str(ckpt), "data": args.data,
              "split": args.split, "limit": args.limit, "seed": args.seed}
    run = reference_run(model, data, args.out, batch_size=args.batch_size, device=args.device,
                        config=config, force=args.force)
    print(f"written: {run} (records with loss, entropy and zero_fraction per example)")
    return 0
