"""``frugalnn nas latency-table | search | derive``.

* ``latency-table`` times every candidate op of the search space on a device
  and caches the table (optionally calibrated and validated on random
  architectures);
* ``search`` runs the ProxylessNAS loop on a dataset for a latency target,
  then (unless ``--retrain-epochs 0``) trains the derived network from scratch
  and evaluates it into the run directory, so it joins the report;
* ``derive`` writes the most probable architecture of a search run as
  JSON/YAML for ``create_model("nas_net", arch=...)``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path
from typing import Any

from frugalnn.cli.common import args_config, random_subset
from frugalnn.errors import UserError

__all__ = ["register"]


def _space_from_args(args: argparse.Namespace, input_shape: tuple[int, ...] | None = None,
                     num_classes: int | None = None) -> Any:
    from frugalnn.methods.nas.space import SearchSpace

    kw: dict[str, Any] = {}
    if getattr(args, "space", None):
        path = Path(args.space)
        if not path.is_file():
            raise UserError(f"search-space file {path} not found")
        import yaml

        kw = dict(yaml.safe_load(path.read_text()) or {})
    if getattr(args, "candidates", None):
        kw["candidates"] = [c.strip() for c in args.candidates.split(",") if c.strip()]
    if input_shape is not None:
        c, h, _ = input_shape
        kw.setdefault("in_channels", c)
        kw.setdefault("input_size", h)
        if h <= 12:
            base = SearchSpace.for_input(input_shape, num_classes or 10).to_dict()
            for key in ("stages", "stem_channels", "first_channels", "head_channels"):
                kw.setdefault(key, base[key])
    if num_classes is not None:
        kw.setdefault("num_classes", num_classes)
    if getattr(args, "input_size", None):
        kw["input_size"] = args.input_size
    return SearchSpace.from_dict(kw)


def _add_timing_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (must be present)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads while timing (default 1)")
    p.add_argument("--latency-batch", type=int, default=1,
                   help="batch size the latency is measured at (default 1)")
    p.add_argument("--table", help="latency table JSON (default: per-device cache file)")
    p.add_argument("--calibrate", type=int, default=10,
                   help="random architectures timed end to end to calibrate (default 10, 0=off)")
    p.add_argument("--repeats", type=int, default=30, help="timed calls per round (default 30)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (default 3)")
    p.add_argument("--space", help="YAML/JSON file with search-space fields (widths, stages...)")
    p.add_argument("--candidates", help="comma-separated candidate ops, e.g. mb3_e3,mb5_e6,zero")


def _table(args: argparse.Namespace, space: Any, progress: bool) -> Any:
    from frugalnn.methods.nas.latency import build_latency_table

    if args.threads < 1 or args.latency_batch < 1 or args.repeats < 1 or args.rounds < 1:
        raise UserError("--threads, --latency-batch, --repeats and --rounds must be >= 1")
    return build_latency_table(space, args.device, batch_size=args.latency_batch,
                               threads=args.threads, repeats=args.repeats, rounds=args.rounds,
                               path=Path(args.table) if args.table else None,
                               calibrate=args.calibrate, progress=progress)


def register(subparsers: argparse._SubParsersAction) -> None:
    nas = subparsers.add_parser(
        "nas", help="hardware-aware architecture search (ProxylessNAS-style)",
        description="Search a network for a latency target on this device.")
    sub = nas.add_subparsers(dest="nas_command", metavar="NAS_COMMAND")
    nas.set_defaults(func=lambda a: (nas.print_help(), 2)[1])

    p = sub.add_parser("latency-table", help="time every candidate op on a device")
    _add_timing_args(p)
    p.add_argument("--input-size", type=int, default=None, help="input height = width (32)")
    p.add_argument("--validate", type=int, default=0,
                   help="also time N held-out random architectures and report the error")
    p.add_argument("--refresh", action="store_true", help="re-time entries already cached")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_table)

    p = sub.add_parser("search", help="search an architecture for a latency target")
    p.add_argument("--data", default="cifar10", help="dataset name (default cifar10)")
    p.add_argument("--data-dir", help="data directory (default $FRUGALNN_DATA)")
    p.add_argument("--latency-target", type=float, required=True, help="target latency in ms")
    p.add_argument("--epochs", type=int, default=10, help="search epochs (default 10)")
    p.add_argument("--warmup-epochs", type=int, default=2, help="weight-only epochs (default 2)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--limit", type=int, help="use N random training examples (seeded)")
    p.add_argument("--eval-limit", type=int, help="evaluate on N random test examples (seeded)")
    p.add_argument("--arch-fraction", type=float, default=0.2,
                   help="share of the training set held out for architecture steps")
    p.add_argument("--latency-loss", choices=("mul", "add", "hinge"), default="mul",
                   help="latency term: ProxylessNAS mul/add, or hinge (penalty above target)")
    p.add_argument("--beta", type=float, default=0.6, help="exponent of the mul loss")
    p.add_argument("--log-unit", type=float, default=None,
                   help="ms unit of the logs in the mul loss (default: half the cheapest "
                   "architecture's latency)")
    p.add_argument("--lam", type=float, default=0.1, help="weight of the add/hinge loss")
    p.add_argument("--arch-lr", type=float, default=0.01)
    p.add_argument("--weight-lr", type=float, default=0.05)
    p.add_argument("--arch-every", type=int, default=1, help="weight steps per arch step")
    p.add_argument("--prune-threshold", type=float, default=0.02)
    p.add_argument("--retrain-epochs", type=int, default=None,
                   help="train the found net from scratch for N epochs and evaluate it "
                   "(default: --epochs; 0 = skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="run directory to create")
    p.add_argument("--force", action="store_true", help="replace an existing run directory")
    p.add_argument("--no-progress", action="store_true")
    _add_timing_args(p)
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("derive", help="write the most probable architecture of a search run")
    p.add_argument("run_dir", help="run directory of `frugalnn nas search`")
    p.add_argument("--out", required=True, help="architecture file (.json, .yaml or .yml)")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=_cmd_derive)


def _cmd_table(args: argparse.Namespace) -> int:
    from frugalnn.methods.nas.latency import LatencyModel, measure_networks_ms, random_archs

    space = _space_from_args(args)
    progress = not args.no_progress
    if args.refresh and args.table and Path(args.table).exists():
        Path(args.table).unlink()
    table = _table(args, space, progress)
    model = LatencyModel(space, table)
    cheap_ops, cheap = model.cheapest()
    _, dear = model.most_expensive()
    print(f"latency table: {table.path} ({len(table.entries)} entries, "
          f"{table.device['hardware']}, {table.device['device']}, "
          f"batch {table.batch_size}, threads {table.device['threads']})")
    print(f"calibration: measured = {table.scale:.3f} * table_sum + {table.offset_ms:.3f} ms")
    print(f"architectures in this space: {cheap:.3f} ms (cheapest) .. {dear:.3f} ms")
    if args.validate:
        archs = random_archs(space, args.validate, seed=12345)
        measured = measure_networks_ms(archs, space, device=args.device,
                                       batch_size=args.latency_batch, threads=args.threads,
                                       repeats=args.repeats, rounds=args.rounds,
                                       progress=progress)
        errors = [abs(table.predict(space, a) - m) / m * 100 for a, m in zip(archs, measured)]
        print(f"held-out validation on {len(archs)} random architectures: median absolute "
              f"error {statistics.median(errors):.1f} %, max {max(errors):.1f} %")
    return 0


def _prepare_run_dir(out: str, force: bool) -> Path:
    path = Path(out)
    if path.exists():
        if not force:
            raise UserError(f"{path} exists; pass --force to replace it or choose another --out")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def _cmd_search(args: argparse.Namespace) -> int:
    import torch

    from frugalnn.data import dataset_info, get_dataset
    from frugalnn.evaluation import evaluate_into
    from frugalnn.methods.nas.latency import LatencyModel, measure_network_ms, resolve_device
    from frugalnn.methods.nas.pipeline import retrain, search, write_search_extras
    from frugalnn.methods.nas.search import SearchConfig
    from frugalnn.report import write_run_report

    dev = resolve_device(args.device)
    cfg = SearchConfig(
        latency_target_ms=args.latency_target, epochs=args.epochs,
        warmup_epochs=args.warmup_epochs, weight_lr=args.weight_lr, arch_lr=args.arch_lr,
        arch_every=args.arch_every, loss=args.latency_loss, beta=args.beta, lam=args.lam,
        prune_threshold=args.prune_threshold, log_unit_ms=args.log_unit, seed=args.seed)
    cfg.validate()
    if args.batch_size < 1:
        raise UserError("--batch-size must be >= 1")
    info = dataset_info(args.data)
    if info.task != "classification" or len(info.input_shape) != 3:
        raise UserError(f"nas search needs an image classification dataset, not {args.data!r}")
    space = _space_from_args(args, tuple(info.input_shape), info.num_classes)
    progress = not args.no_progress
    table = _table(args, space, progress)
    cheap = LatencyModel(space, table).cheapest()[1]
    if cfg.latency_target_ms < cheap:
        raise UserError(f"latency target {cfg.latency_target_ms:.3g} ms is below the cheapest "
                        f"architecture in this space ({cheap:.3g} ms on {args.device}); "
                        "raise --latency-target")
    run_dir = _prepare_run_dir(args.out, args.force)
    config = args_config(args)
    (run_dir / "config.json").write_text(json.dumps(config, indent=1, default=str))
    torch.set_num_threads(args.threads)
    train_set = get_dataset(args.data, "train", data_dir=args.data_dir, augment=True)
    train_set = _random_subset(train_set, args.limit, args.seed)
    net, result = search(space, table, train_set, cfg, batch_size=args.batch_size,
                         arch_fraction=args.arch_fraction, device=dev, progress=progress)
    arch_path = write_search_extras(run_dir, net, result, cfg, table)
    print(f"found: {' '.join(result.ops)}; predicted {result.predicted_ms:.3f} ms "
          f"(target {cfg.latency_target_ms:.3f} ms); architecture in {arch_path}")
    epochs = args.epochs if args.retrain_epochs is None else args.retrain_epochs
    if epochs > 0:
        arch = json.loads(arch_path.read_text())
        model = retrain(arch, train_set, epochs=epochs, batch_size=args.batch_size,
                        lr=args.weight_lr, seed=args.seed, device=dev, run_dir=run_dir,
                        progress=progress)
        measured = measure_network_ms(model, space, device=dev, batch_size=args.latency_batch,
                                      threads=args.threads, repeats=args.repeats)
        test_set = get_dataset(args.data, "test", data_dir=args.data_dir)
        test_set = _random_subset(test_set, args.eval_limit, args.seed)
        evaluate_into(model, test_set, run_dir, method="nas", batch_size=args.batch_size,
                      threads=args.threads, device=dev,
                      config={**config, "predicted_ms": result.predicted_ms,
                              "measured_ms": measured}, force=True, progress=progress)
        write_run_report(run_dir)
        print(f"retrained {epochs} epochs; measured latency {measured:.3f} ms "
              f"(predicted {result.predicted_ms:.3f} ms); report in {run_dir / 'report'}")
    return 0


def _random_subset(dataset: Any, limit: int | None, seed: int) -> Any:
    """A seeded random subset (image folders are stored class by class, so never the head)."""
    if limit is not None and limit < 1:
        raise UserError(f"limits must be positive, got {limit}")
    return random_subset(dataset, limit, seed)


def _cmd_derive(args: argparse.Namespace) -> int:
    from frugalnn.methods.nas.derive import derive_arch, load_search_state, save_arch

    run = Path(args.run_dir)
    net = load_search_state(run / "supernet" if (run / "supernet").is_dir() else run)
    path = save_arch(derive_arch(net), args.out, force=args.force)
    print(f"wrote {path}: {' '.join(net.argmax_arch())}")
    return 0
