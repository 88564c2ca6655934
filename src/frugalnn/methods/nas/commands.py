"""``frugalnn nas latency-table | search | derive``.

* ``latency-table`` times every candidate op of the search space on a device
  and caches the table (optionally calibrated and validated on random
  architectures);
* ``search`` runs the ProxylessNAS loop on a dataset for a latency target
  (weight steps on the training split, architecture steps on the validation
  split), then (unless ``--retrain-epochs 0``) trains the derived network from
  scratch and evaluates it into the run directory, so it joins the report.
  It takes the shared data flags (``--train-limit`` / ``--val-limit`` /
  ``--eval-limit``: seeded random subsets) and runs
  :func:`frugalnn.methods.nas.recipe.run_nas`;
* ``derive`` writes the most probable architecture of a search run as
  JSON/YAML for ``create_model("nas_net", arch=...)``.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

from frugalnn.cli.common import (
    add_data_flags,
    args_config,
    check_device,
    check_positive,
    load_splits_from_args,
)
from frugalnn.errors import UserError

__all__ = ["register"]


def _space_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The search-space fields of ``--space FILE`` and ``--input-size``."""
    kw: dict[str, Any] = {}
    if getattr(args, "space", None):
        path = Path(args.space)
        if not path.is_file():
            raise UserError(f"search-space file {path} not found")
        import yaml

        kw = dict(yaml.safe_load(path.read_text()) or {})
    if getattr(args, "input_size", None):
        kw["input_size"] = args.input_size
    return kw


def _candidates(args: argparse.Namespace) -> list[str] | None:
    if not getattr(args, "candidates", None):
        return None
    return [c.strip() for c in args.candidates.split(",") if c.strip()]


def nas_config(args: argparse.Namespace) -> Any:
    """The :class:`~frugalnn.methods.nas.recipe.NASConfig` of the timing (and search) flags."""
    from frugalnn.methods.nas.recipe import NASConfig

    config = NASConfig(space=_space_fields(args), candidates=_candidates(args),
                       table=args.table, latency_batch=args.latency_batch,
                       threads=args.threads, repeats=args.repeats, rounds=args.rounds,
                       calibrate=args.calibrate)
    if getattr(args, "latency_target", None) is None:
        return config
    return replace(
        config, latency_target_ms=args.latency_target, epochs=args.epochs,
        warmup_epochs=args.warmup_epochs, weight_lr=args.weight_lr, arch_lr=args.arch_lr,
        arch_every=args.arch_every, latency_loss=args.latency_loss, beta=args.beta,
        log_unit_ms=args.log_unit, lam=args.lam, prune_threshold=args.prune_threshold,
        retrain_epochs=args.retrain_epochs, batch_size=args.batch_size, seed=args.seed)


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

    p = sub.add_parser(
        "search", help="search an architecture for a latency target",
        description="Weight steps on the training split, architecture steps on the "
                    "validation split (carved from train, --val-fraction); the test split "
                    "only scores the retrained network.")
    add_data_flags(p)
    p.add_argument("--latency-target", type=float, required=True, help="target latency in ms")
    p.add_argument("--epochs", type=int, default=10, help="search epochs (default 10)")
    p.add_argument("--warmup-epochs", type=int, default=2, help="weight-only epochs (default 2)")
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
    from frugalnn.methods.nas.recipe import latency_table, search_space

    config = nas_config(args)
    config.validate()
    space = search_space(config)
    progress = not args.no_progress
    if args.refresh and args.table and Path(args.table).exists():
        Path(args.table).unlink()
    table = latency_table(config, space, args.device, progress)
    model = LatencyModel(space, table)
    _, cheap = model.cheapest()
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


def _cmd_search(args: argparse.Namespace) -> int:
    import torch

    from frugalnn.methods.nas.recipe import run_nas

    config = nas_config(args)
    config.validate()
    check_positive([(args.train_limit, "--train-limit"), (args.val_limit, "--val-limit"),
                    (args.eval_limit, "--eval-limit")])
    check_device(args.device)
    torch.set_num_threads(args.threads)
    splits = load_splits_from_args(args, augment=True)
    run = run_nas(config, splits, args.out, device=args.device,
                  progress=not args.no_progress, force=args.force,
                  run_config=args_config(args, "nas search"))
    result = run.search.result
    print(f"found: {' '.join(result.ops)}; predicted {result.predicted_ms:.3f} ms "
          f"(target {config.latency_target_ms:.3f} ms), chosen on {len(splits.val)} "
          f"validation examples; architecture in {run.out / 'arch.json'}")
    if run.model is not None:
        print(f"retrained {config.epochs_to_retrain} epochs; measured latency "
              f"{run.measured_ms:.3f} ms (predicted {result.predicted_ms:.3f} ms); report in "
              f"{run.out / 'report'}")
    return 0


def _cmd_derive(args: argparse.Namespace) -> int:
    from frugalnn.methods.nas.derive import derive_arch, load_search_state, save_arch

    run = Path(args.run_dir)
    net = load_search_state(run / "supernet" if (run / "supernet").is_dir() else run)
    path = save_arch(derive_arch(net), args.out, force=args.force)
    print(f"wrote {path}: {' '.join(net.argmax_arch())}")
    return 0
