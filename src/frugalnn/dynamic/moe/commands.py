"""CLI: ``frugalnn moe convert ...`` and ``frugalnn sparsity ...``.

``moe convert`` turns a trained transformer into a mixture-of-experts model
(optionally enforcing activation sparsity first), trains its routers, writes
the checkpoint (loadable by ``frugalnn evaluate``), sweeps the knob on the
evaluation split and writes records, summary and report into one run
directory. ``sparsity`` writes the activation-sparsity table and plots of any
model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from frugalnn.errors import UserError


def _model_args(pairs: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise UserError(f"--model-arg expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and any(out.iterdir()) and not force:
        raise UserError(
            f"{out} already exists; pass --force to overwrite it or choose another --out"
        )


def _positive(value: int | None, flag: str) -> None:
    if value is not None and value < 1:
        raise UserError(f"{flag} must be positive, got {value}")


def random_subset(dataset: Any, limit: int | None, seed: int) -> Any:
    """``limit`` examples drawn at random (seeded), or the whole set.

    Random rather than the first ``limit``: image folders are sorted by class,
    so their first examples would all share one label.
    """
    import torch
    from torch.utils.data import Subset

    if limit is None or limit >= len(dataset):
        return dataset
    idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:limit]
    subset = Subset(dataset, sorted(idx.tolist()))
    subset.info = getattr(dataset, "info", None)  # type: ignore[attr-defined]
    return subset


def load_or_create(name: str, checkpoint: str | None, model_args: dict[str, Any], device: str):
    """The model named ``name``: loaded from ``checkpoint`` if given, else freshly built."""
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
    moe = subparsers.add_parser("moe", help="dense-to-mixture-of-experts conversion")
    moe_sub = moe.add_subparsers(dest="moe_command", metavar="SUBCOMMAND")
    c = moe_sub.add_parser(
        "convert", help="split FFNs into experts, train routers, sweep tau, write a run dir"
    )
    c.add_argument("model", metavar="MODEL", help="registry name (vit_tiny, lm_tiny, bert_minilm)")
    c.add_argument("--checkpoint", help="trained checkpoint or run directory of MODEL")
    c.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                   help="model constructor argument when no checkpoint is given (repeatable)")
    c.add_argument("--data", required=True, help="dataset name (digits, cifar10, ...)")
    c.add_argument("--data-dir", help="data directory (default: $FRUGALNN_DATA)")
    c.add_argument("--train-split", default="train", help="split for routers/sparsity (train)")
    c.add_argument("--eval-split", default="test", help="split to evaluate on (test)")
    c.add_argument("--train-limit", type=int, help="use N random training examples")
    c.add_argument("--eval-limit", type=int, help="evaluate N random examples")
    c.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    size = c.add_mutually_exclusive_group(required=True)
    size.add_argument("--experts", type=int, help="experts per FFN")
    size.add_argument("--expert-size", type=int, help="neurons per expert")
    c.add_argument("--split", default="kmeans", choices=("kmeans", "coactivation", "sequential"),
                   help="how neurons are grouped into experts (default kmeans)")
    c.add_argument("--router-epochs", type=int, default=2, help="router training epochs (2)")
    c.add_argument("--router-lr", type=float, default=1e-3, help="router learning rate")
    c.add_argument("--router-hidden", type=int, default=128, help="router hidden width (128)")
    c.add_argument("--sparsify", action="store_true",
                   help="first replace GELU by ReLU and fine-tune with a Hoyer sparsity penalty")
    c.add_argument("--sparsify-epochs", type=int, default=1, help="sparsity fine-tuning epochs")
    c.add_argument("--sparsity-weight", type=float, default=0.2,
                   help="weight of the (width-normalised) squared Hoyer penalty (0.2)")
    c.add_argument("--sparsify-lr", type=float, default=1e-4, help="fine-tuning learning rate")
    c.add_argument("--mode", default="dynamic", choices=("dynamic", "topk"),
                   help="routing rule of the saved model (dynamic-k: knob tau; topk: knob k)")
    c.add_argument("--budgets", nargs="+", help="tau values to sweep (default 0,0.25,...,1)")
    c.add_argument("--compare-topk", action="store_true",
                   help="also evaluate top-k routing into RUN_DIR/topk")
    c.add_argument("--latency-repeats", type=int, default=10, help="timed calls per budget")
    c.add_argument("--threads", type=int, help="torch threads (default: current setting)")
    c.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    c.add_argument("--seed", type=int, default=0, help="random seed (0)")
    c.add_argument("--out", required=True, help="run directory to write")
    c.add_argument("--force", action="store_true", help="overwrite an existing --out")
    c.add_argument("--no-progress", action="store_true", help="no progress bars")
    c.set_defaults(func=_convert)
    moe.set_defaults(func=lambda _a: moe.print_help() or 2)

    s = subparsers.add_parser("sparsity", help="activation-sparsity table and plots of a model")
    s.add_argument("model", metavar="MODEL", help="registry name")
    s.add_argument("--checkpoint", help="trained checkpoint or run directory of MODEL")
    s.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                   help="model constructor argument when no checkpoint is given (repeatable)")
    s.add_argument("--data", required=True, help="dataset name")
    s.add_argument("--data-dir", help="data directory (default: $FRUGALNN_DATA)")
    s.add_argument("--split", default="test", help="split (default test)")
    s.add_argument("--limit", type=int, default=1024,
                   help="random examples analysed (default 1024)")
    s.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    s.add_argument("--eps", type=float, default=1e-3, help="near-zero threshold (1e-3)")
    s.add_argument("--all-activations", action="store_true",
                   help="every activation call, not only FFN activations of transformers")
    s.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--force", action="store_true", help="overwrite an existing --out")
    s.set_defaults(func=_sparsity)


def _sparsity(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from frugalnn.analysis.sparsity import activation_sparsity
    from frugalnn.cost._io import write_json_atomic
    from frugalnn.data import get_dataset

    _positive(args.limit, "--limit")
    _positive(args.batch_size, "--batch-size")
    out = Path(args.out)
    _check_out(out, args.force)
    model = load_or_create(args.model, args.checkpoint, _model_args(args.model_arg), args.device)
    data = random_subset(get_dataset(args.data, args.split, args.data_dir), args.limit, 0)
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=False)
    report = activation_sparsity(
        model, loader, eps=args.eps, device=args.device,
        only_ffn=False if args.all_activations else None,
        meta={"model": args.model, "checkpoint": args.checkpoint, "data": args.data,
              "split": args.split},
    )
    report.save(out)
    write_json_atomic(out / "config.json", {k: v for k, v in vars(args).items() if k != "func"})
    print(report.table(), end="")
    print(f"written: {out / 'sparsity.md'}, {out / 'sparsity.json'}, plots in {out}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    import torch
    from torch.utils.data import DataLoader

    from frugalnn.data import get_dataset
    from frugalnn.dynamic.moe.convert import DEFAULT_TAUS, convert_to_moe
    from frugalnn.dynamic.moe.report import write_extras
    from frugalnn.dynamic.moe.sparsify import enforce_sparsity
    from frugalnn.evaluate import evaluate_into
    from frugalnn.train.checkpoint import save_checkpoint

    for value, flag in ((args.train_limit, "--train-limit"), (args.eval_limit, "--eval-limit"),
                        (args.batch_size, "--batch-size"), (args.threads, "--threads"),
                        (args.latency_repeats, "--latency-repeats")):
        _positive(value, flag)
    if args.router_epochs < 0 or args.sparsify_epochs < 0:
        raise UserError("--router-epochs and --sparsify-epochs must be >= 0")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but torch sees no CUDA device; use cpu")
    taus = [float(v) for item in (args.budgets or []) for v in item.split(",") if v.strip()]
    taus = taus or list(DEFAULT_TAUS)
    out = Path(args.out)
    _check_out(out, args.force)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    model = load_or_create(args.model, args.checkpoint, _model_args(args.model_arg), args.device)
    train = random_subset(
        get_dataset(args.data, args.train_split, args.data_dir), args.train_limit, args.seed
    )
    test = random_subset(
        get_dataset(args.data, args.eval_split, args.data_dir), args.eval_limit, args.seed
    )
    gen = torch.Generator().manual_seed(args.seed)
    train_loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, generator=gen)
    progress = not args.no_progress
    out.mkdir(parents=True, exist_ok=True)
    if args.sparsify:
        print("enforcing activation sparsity (GELU -> ReLU, Hoyer penalty, distillation)")
        enforce_sparsity(
            model, train_loader, epochs=args.sparsify_epochs, lam=args.sparsity_weight,
            lr=args.sparsify_lr, device=args.device, seed=args.seed, progress=progress,
        )
    print("splitting FFNs into experts and training routers")
    moe = convert_to_moe(
        model, num_experts=args.experts, expert_size=args.expert_size, split=args.split,
        loader=train_loader, router_epochs=args.router_epochs, router_lr=args.router_lr,
        router_hidden=args.router_hidden, mode=args.mode, taus=taus, seed=args.seed,
        device=args.device, progress=progress,
    )
    config = {"command": "moe convert", **{k: v for k, v in vars(args).items() if k != "func"}}
    save_checkpoint(out / "checkpoint", moe, {"config": config})
    records = evaluate_into(
        moe, test, out, method=f"moe-{args.mode}", batch_size=args.batch_size,
        threads=args.threads, device=args.device, latency_batch_sizes=(1, args.batch_size),
        latency_repeats=args.latency_repeats, config=config, force=args.force,
        progress=progress,
    )
    runs = [out]
    if args.compare_topk and args.mode == "dynamic":
        moe.set_mode("topk")
        evaluate_into(
            moe, test, out / "topk", method="moe-topk", batch_size=args.batch_size,
            threads=args.threads, device=args.device, latency_batch_sizes=(1, args.batch_size),
            latency_repeats=args.latency_repeats, config={**config, "mode": "topk"},
            force=args.force, progress=progress,
        )
        moe.set_mode(args.mode)
        runs.append(out / "topk")
    write_extras(moe, runs, out / "extras")
    for row in records.per_budget_summary():
        print(f"{moe.budget_name} {row['label']:>6}: accuracy {100 * row['accuracy']:6.2f} %  "
              f"{row['flops'] / 1e6:10.3f} MFLOPs/example")
    print(f"checkpoint: {out / 'checkpoint'}  (frugalnn evaluate {out} --data {args.data} ...)")
    print(f"report:     {out / 'report' / 'report.html'}")
    return 0
