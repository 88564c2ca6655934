"""CLI: ``frugalnn acm convert MODEL --checkpoint RUN --data NAME --out RUN_DIR``.

Converts the FFNs of a trained transformer into adaptive computation modules,
runs the three training stages, writes the checkpoint (loadable by
``frugalnn evaluate``), sweeps the knob ``q`` on the evaluation split and
writes records, summary, report and compute maps into one run directory.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

from frugalnn.errors import UserError


def _positive(value: int | None, flag: str) -> None:
    if value is not None and value < 1:
        raise UserError(f"{flag} must be positive, got {value}")


def _model_args(items: list[str] | None) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--model-arg expects KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _load(name: str, checkpoint: str | None, model_args: dict[str, Any], device: str) -> Any:
    from frugalnn.models import create_model
    from frugalnn.train.checkpoint import has_checkpoint, load_model

    if checkpoint is None:
        return create_model(name, **model_args).to(device).eval()
    path = Path(checkpoint)
    if not path.exists():
        raise UserError(f"{path} does not exist; pass a checkpoint or run directory")
    ckpt = path / "checkpoint" if has_checkpoint(path / "checkpoint") else path
    model = load_model(ckpt, map_location=device)
    spec = getattr(model, "frugalnn_spec", None) or {}
    if spec.get("name") not in (None, name):
        raise UserError(f"checkpoint {ckpt} holds a {spec.get('name')!r} model, not {name!r}")
    return model.eval()


def register(subparsers: argparse._SubParsersAction) -> None:
    acm = subparsers.add_parser("acm", help="adaptive computation modules (per-token learners)")
    sub = acm.add_subparsers(dest="acm_command", metavar="SUBCOMMAND")
    c = sub.add_parser("convert", help="FFNs -> N learners + gate, train 3 stages, sweep q")
    c.add_argument("model", metavar="MODEL", help="registry name (vit_tiny, lm_tiny, bert_minilm)")
    c.add_argument("--checkpoint", help="trained checkpoint or run directory of MODEL")
    c.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                   help="model constructor argument when no checkpoint is given (repeatable)")
    c.add_argument("--data", required=True, help="dataset name (digits, cifar10, ...)")
    c.add_argument("--data-dir", help="data directory (default: $FRUGALNN_DATA)")
    c.add_argument("--train-split", default="train", help="split to train on (train)")
    c.add_argument("--eval-split", default="test", help="split to evaluate on (test)")
    c.add_argument("--train-limit", type=int, help="use the first N training examples")
    c.add_argument("--eval-limit", type=int, help="evaluate the first N examples")
    c.add_argument("--batch-size", type=int, default=64, help="batch size (64)")
    c.add_argument("--learners", type=int, default=4, help="learners per FFN (4)")
    c.add_argument("--gate-hidden", type=int, help="gate hidden width (default dim/4)")
    c.add_argument("--sites", nargs="+", help="FFN sites to convert (default all)")
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
    c.add_argument("--budgets", nargs="+", help="q values to sweep (default 0,0.1,...,1)")
    c.add_argument("--map-images", type=int, default=8, help="images in the compute maps (8)")
    c.add_argument("--latency-repeats", type=int, default=10, help="timed calls per budget")
    c.add_argument("--threads", type=int, help="torch threads (default: current setting)")
    c.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    c.add_argument("--seed", type=int, default=0, help="random seed (0)")
    c.add_argument("--out", required=True, help="run directory to write")
    c.add_argument("--force", action="store_true", help="overwrite an existing --out")
    c.add_argument("--no-progress", action="store_true", help="no progress bars")
    c.set_defaults(func=_convert)
    acm.set_defaults(func=lambda _a: acm.print_help() or 2)


def _convert(args: argparse.Namespace) -> int:
    import torch
    from torch.utils.data import DataLoader

    from frugalnn.data import get_dataset
    from frugalnn.dynamic.acm.convert import DEFAULT_QS, convert_to_acm
    from frugalnn.dynamic.acm.report import write_extras
    from frugalnn.dynamic.acm.training import ACMTrainConfig, train_acm
    from frugalnn.evaluate import evaluate_into
    from frugalnn.evaluate_commands import parse_floats
    from frugalnn.train.checkpoint import save_checkpoint

    for value, flag in ((args.train_limit, "--train-limit"), (args.eval_limit, "--eval-limit"),
                        (args.batch_size, "--batch-size"), (args.threads, "--threads"),
                        (args.latency_repeats, "--latency-repeats"), (args.learners, "--learners")):
        _positive(value, flag)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but torch sees no CUDA device; use cpu")
    cfg = ACMTrainConfig(
        distill_epochs=args.distill_epochs, gate_epochs=args.gate_epochs,
        finetune_epochs=args.finetune_epochs, distill_lr=args.distill_lr, gate_lr=args.gate_lr,
        finetune_lr=args.finetune_lr, ratio=args.ratio, target=args.target,
        budget_weight=args.budget_weight,
    )
    cfg.check()
    qs = parse_floats(args.budgets) or list(DEFAULT_QS)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise UserError(
            f"{out} already exists; pass --force to overwrite it or choose another --out")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = _load(args.model, args.checkpoint, _model_args(args.model_arg), args.device)
    train = get_dataset(args.data, args.train_split, args.data_dir, limit=args.train_limit)
    test = get_dataset(args.data, args.eval_split, args.data_dir, limit=args.eval_limit)
    gen = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, generator=gen)
    teacher = copy.deepcopy(model)
    acm = convert_to_acm(model, num_learners=args.learners, gate_hidden=args.gate_hidden,
                         sites=args.sites, qs=qs, seed=args.seed)
    print(f"training {len(acm.acm_layers())} ACM layers ({args.learners} learners each): "
          f"distil {cfg.distill_epochs}, gate {cfg.gate_epochs}, fine-tune {cfg.finetune_epochs} "
          "epochs")
    train_acm(acm, teacher, loader, cfg, seed=args.seed, device=args.device,
              progress=not args.no_progress)
    config = {"command": "acm convert", **{k: v for k, v in vars(args).items() if k != "func"}}
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / "checkpoint", acm, {"config": config})
    records = evaluate_into(
        acm, test, out, method="acm", batch_size=args.batch_size, threads=args.threads,
        device=args.device, latency_batch_sizes=(1, args.batch_size),
        latency_repeats=args.latency_repeats, config=config, force=args.force,
        progress=not args.no_progress,
    )
    write_extras(acm, out, test, device=args.device, images=args.map_images)
    for row in records.per_budget_summary():
        print(f"q {row['label']:>5}: accuracy {100 * row['accuracy']:6.2f} %  "
              f"{row['flops'] / 1e6:10.3f} MFLOPs/example")
    print(f"checkpoint: {out / 'checkpoint'}")
    print(f"report:     {out / 'report'}  (compute maps in {out / 'extras'})")
    return 0
