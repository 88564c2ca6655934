"""``frugalnn train``: train a registered model on a named dataset into a run directory.

Options come from the command line or a YAML experiment file (``--config``;
keys are the option names, ``-`` or ``_``); flags given on the command line
override the file. The run directory receives ``config.json`` (the resolved
options), ``checkpoint/`` and ``train_history.json``; it is never reused
without ``--force`` (start over) or ``--resume`` (continue a killed run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from frugalnn.cli.common import check_device, parse_model_args, tokenizer_of_model
from frugalnn.errors import UserError
from frugalnn.utils.rundir import MARKER, is_run_dir

__all__ = ["register", "resolve_config", "run_train"]

# Option name -> (default, type, help). The single source of truth for flags,
# YAML keys and config.json.
OPTIONS: dict[str, tuple[Any, Any, str]] = {
    "model": (None, str, "model: a registry name (see `frugalnn models`), "
              "path/to/file.py:FACTORY, package.module:FACTORY or hf:DIR"),
    "data": ("digits", str, "dataset name (digits, mnist, cifar10, tinyshakespeare, ...)"),
    "data_dir": (None, str, "data directory (default $FRUGALNN_DATA; digits needs none)"),
    "epochs": (10, int, "training epochs (default 10)"),
    "batch_size": (64, int, "examples per batch and per process (default 64)"),
    "optimizer": ("sgd", str, "sgd or adamw (default sgd)"),
    "lr": (0.05, float, "peak learning rate (default 0.05)"),
    "momentum": (0.9, float, "SGD momentum (default 0.9)"),
    "nesterov": (False, bool, "Nesterov momentum for SGD"),
    "schedule": ("cosine", str, "cosine, step or none (default cosine)"),
    "schedule_unit": ("step", str, "advance the schedule every step or epoch (default step)"),
    "warmup_epochs": (0.0, float, "linear warm-up of the cosine schedule, in epochs"),
    "step_size": (None, int, "period of the step schedule in epochs (default epochs/3)"),
    "gamma": (0.1, float, "factor of the step schedule (default 0.1)"),
    "weight_decay": (5e-4, float, "weight decay (default 5e-4)"),
    "label_smoothing": (0.0, float, "label smoothing in [0, 1) (default 0)"),
    "grad_clip": (None, float, "clip the gradient norm to this value (default off)"),
    "seed": (0, int, "seed for weights, data order and dropout (default 0)"),
    "device": ("cpu", str, "cpu or cuda[:i] (default cpu)"),
    "checkpoint": (
        None,
        str,
        "initial weights: a frugalnn checkpoint (its model and "
        "transformations are rebuilt) or a resnet*.th file",
    ),  # fmt: skip
    "weights": (None, str, "initial weights of --model: a state dict (.pt/.pth read with "
                "weights_only=True, or .safetensors) or a directory holding one"),
    "augment": (False, bool, "random crop/flip augmentation for image datasets"),
    "val_fraction": (
        0.1,
        float,
        "part of the training split held out as validation and never trained on; later "
        "commands choose operating points on it with the same --seed (default 0.1; 0 = none)",
    ),  # fmt: skip
    "train_limit": (None, int, "train on N random examples of the rest (seeded)"),
    "eval_limit": (None, int, "evaluate on N random examples (seeded)"),
    "train_split": ("train", str, "training split, validation carved from it (default train)"),
    "eval_split": ("test", str, "evaluation split, or 'none' to skip (default test)"),
    "workers": (0, int, "DataLoader worker processes (default 0)"),
    "checkpoint_every": (None, int, "also checkpoint every N steps inside an epoch"),
    "model_args": ({}, dict, "model argument KEY=VALUE, repeatable (YAML: model_args mapping)"),
    "threads": (None, int, "torch CPU threads (default: torch's choice)"),
}
# Options that may differ when a run is resumed (the rest must match).
RESUME_OVERRIDES = {"epochs", "device", "data_dir", "workers", "threads"}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model on a dataset into a run directory (resumable, torchrun-aware)",
        description="Train a registered model on a named dataset. Writes RUN_DIR/config.json, "
        "RUN_DIR/checkpoint/ and RUN_DIR/train_history.json. Under torchrun the same "
        "command trains with DistributedDataParallel.",
    )
    p.add_argument("--config", help="YAML experiment file; its keys are the options below")
    p.add_argument("--out", help="run directory to create (required)")
    p.add_argument("--force", action="store_true", help="delete an existing run directory first")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or epoch lines")
    for name, (_default, typ, text) in OPTIONS.items():
        flag = "--" + name.replace("_", "-")
        if typ is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif typ is dict:  # --model-arg KEY=VALUE, repeatable: one flag per entry
            p.add_argument(flag.removesuffix("s"), dest=name, action="append", default=None,
                           metavar="KEY=VALUE", help=text)
        else:
            p.add_argument(flag, type=typ, default=None, help=text)
    p.set_defaults(func=run_train)


# ------------------------------------------------------------------ config


def _parse_model_args(items: list[str]) -> dict[str, Any]:
    import yaml

    # numbers, lists, booleans as YAML reads them
    return parse_model_args(items, "--model-arg", value=yaml.safe_load)


def _load_yaml(path: str) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise UserError(
            f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must be a mapping of option: value")
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name == "out":
            out["out"] = value
            continue
        if name not in OPTIONS:
            raise UserError(f"unknown key {key!r} in {path}; known keys: out, {', '.join(OPTIONS)}")
        out[name] = value
    return out


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults, then the YAML file, then flags given on the command line."""
    config = {name: spec[0] for name, spec in OPTIONS.items()}
    config["out"] = None
    if args.config:
        config.update(_load_yaml(args.config))
    for name in OPTIONS:
        value = getattr(args, name, None)
        if value is None:
            continue
        config[name] = _parse_model_args(value) if name == "model_args" else value
    if args.out:
        config["out"] = args.out
    for name, (_, typ, _) in OPTIONS.items():
        value = config[name]
        if value is None or typ in (str, dict):
            continue
        try:
            config[name] = bool(value) if typ is bool else typ(value)
        except (TypeError, ValueError):
            raise UserError(f"option {name} must be {typ.__name__}, got {value!r}") from None
    if not isinstance(config["model_args"], dict):
        raise UserError("model_args must be a mapping of model argument names to values")
    return config


def _check(config: dict[str, Any]) -> None:
    if not config["model"] and not config["checkpoint"]:
        raise UserError("no model given; pass --model NAME (see `frugalnn models`)")
    for name in ("epochs", "batch_size"):
        if config[name] < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {config[name]}")
    for name in ("train_limit", "eval_limit", "threads"):
        if config[name] is not None and config[name] < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {config[name]}")
    if not 0.0 <= config["val_fraction"] < 1.0:
        raise UserError(f"--val-fraction must be in [0, 1), got {config['val_fraction']}")
    if config["workers"] < 0:
        raise UserError(f"--workers must be >= 0, got {config['workers']}")
    check_device(config["device"])


# ------------------------------------------------------------------ model


def _build_model(config: dict[str, Any], info: Any):
    import torch

    from frugalnn.models import create_model, model_info
    from frugalnn.models.external import canonical_spec, is_external, load_weights_file
    from frugalnn.train.checkpoint import check_data_fit, has_checkpoint, load_meta, load_model

    init = config["checkpoint"]
    if init and config.get("weights"):
        raise UserError("pass either --checkpoint (a frugalnn checkpoint) or --weights "
                        "(a plain state dict), not both")
    if init and has_checkpoint(init):
        meta = load_meta(init)
        saved = (meta.get("model") or {}).get("name")
        wanted = config["model"]
        if wanted and is_external(wanted):
            wanted = canonical_spec(wanted)
        if wanted and saved and wanted != saved:
            raise UserError(
                f"--checkpoint {init} holds a {saved!r} model, not {config['model']!r}; "
                "drop --model or pass the matching checkpoint"
            )
        config["model"] = saved
        model = load_model(init)
        check_data_fit(model, info, init)
        return model.train(), {"from_checkpoint": str(init)}
    if init and not Path(init).is_file():
        raise UserError(f"--checkpoint {init} does not exist")
    name = config["model"]
    minfo = model_info(name)
    if minfo.task != info.task:
        raise UserError(
            f"model {name!r} is for {minfo.task} but dataset {config['data']!r} is {info.task}; "
            "pick a matching pair (e.g. lm_tiny with tinyshakespeare)"
        )
    from frugalnn.models.registry import model_kwargs_for

    kwargs = model_kwargs_for(name, info, config["model_args"])
    torch.manual_seed(config["seed"])
    model = create_model(name, **kwargs)
    if config.get("weights"):
        load_weights_file(model, config["weights"])
        check_data_fit(model, info, config["weights"])
    if init:  # a bare file: the pretrained ResNet-CIFAR format
        if not name.startswith("resnet"):
            raise UserError(
                f"--checkpoint {init} is not a frugalnn checkpoint directory; only resnet* "
                "models accept a plain .th file"
            )
        from frugalnn.models.resnet import load_resnet_cifar_checkpoint

        model = load_resnet_cifar_checkpoint(model, init)
    return model, kwargs


# ------------------------------------------------------------------ run dir


def _prepare_run_dir(
    out: Path, config: dict[str, Any], force: bool, resume: bool
) -> dict[str, Any]:
    """Check the run directory (clearing is done by rank 0); return the config to use."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory; choose another --out")
    exists = out.exists() and any(out.iterdir())
    if resume:
        saved_file = out / "config.json"
        if not saved_file.is_file():
            raise UserError(
                f"nothing to resume in {out}: no config.json; start it without --resume"
            )
        try:
            saved = json.loads(saved_file.read_text())["options"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(
                f"{saved_file} is not a frugalnn run config; start over with --force"
            ) from None
        changed = sorted(
            k for k in OPTIONS
            if k not in RESUME_OVERRIDES and config.get(k) != OPTIONS[k][0]
            and config.get(k) != saved.get(k)
        )  # fmt: skip
        if changed:
            raise UserError(
                f"cannot change {', '.join(changed)} when resuming {out}; "
                f"only {', '.join(sorted(RESUME_OVERRIDES))} may differ"
            )
        # An option a run predates is fine when it defaults to off (None).
        missing = sorted(k for k in set(OPTIONS) - set(saved) if OPTIONS[k][0] is not None)
        if missing:
            raise UserError(
                f"{saved_file} has no {', '.join(missing)}; this run cannot be resumed, "
                "start over with --force"
            )
        _check_resumable(out / "checkpoint")
        merged = {**{k: OPTIONS[k][0] for k in OPTIONS}, **saved}
        for k in RESUME_OVERRIDES:
            if config.get(k) != OPTIONS[k][0] and config.get(k) is not None:
                merged[k] = config[k]
        merged["out"] = str(out)
        return merged
    if exists:
        if not force:
            raise UserError(
                f"run directory {out} already exists; pass --force to start over "
                "or --resume to continue it"
            )
        if not is_run_dir(out):
            raise UserError(
                f"refusing to replace {out}: it is not a frugalnn run directory (no {MARKER} "
                "marker), so --force would delete files frugalnn did not write; choose "
                "another --out"
            )
    return config


def _check_resumable(ckpt: Path) -> None:
    """Refuse to resume from a checkpoint that is there but incomplete (rather than
    silently starting over); a run killed before its first checkpoint starts anew."""
    from frugalnn.train.checkpoint import checkpoint_problems

    traces = [ckpt, ckpt.parent / f".{ckpt.name}.old"]
    if not any(p.exists() for p in traces):
        return
    problems = checkpoint_problems(ckpt, train_state=True)
    if problems:
        raise UserError(
            f"cannot resume {ckpt.parent}: its checkpoint is incomplete ({'; '.join(problems)}); "
            "restore the missing files or start over with --force"
        )


# ------------------------------------------------------------------ command


def run_train(args: argparse.Namespace) -> int:
    from frugalnn.utils.rundir import finish_run, open_run

    config = resolve_config(args)
    if not config["out"]:
        raise UserError("no run directory given; pass --out RUN_DIR (or `out:` in the YAML)")
    out = Path(config["out"])
    main_rank = os.environ.get("RANK", "0") in ("", "0")  # torchrun sets RANK
    if main_rank:  # one writer, locked before anything is checked or changed; a replaced
        # run is set aside and deleted only once this one has results
        open_run(out, force=args.force, resume=args.resume, command="train",
                 taken=f"run directory {out} already exists; pass --force to start over "
                       "or --resume to continue it")
    try:
        return _train(args, config, out)
    finally:
        if main_rank:
            finish_run(out)


def _train(args: argparse.Namespace, config: dict[str, Any], out: Path) -> int:
    import torch
    from torch.utils.data import DataLoader

    from frugalnn.data import dataset_info
    from frugalnn.data.base import dataset_fingerprint
    from frugalnn.data.splits import load_splits
    from frugalnn.train import distributed as dist_util
    from frugalnn.train.checkpoint import data_signature, write_json_atomic
    from frugalnn.train.loop import fit
    from frugalnn.utils.rundir import mark_run

    if config["model"] and config["data"]:  # hf:DIR on textfile: the directory's tokenizer
        named = argparse.Namespace(model=config["model"], data=config["data"])
        tokenizer_of_model(named)
        config = {**config, "data": named.data}
    # Every rank checks before rank 0 changes anything.
    config = _prepare_run_dir(out, config, args.force, args.resume)
    _check(config)
    env = dist_util.setup(torch.device(config["device"]))
    try:
        dist_util.barrier(env)
        if config["threads"]:
            torch.set_num_threads(config["threads"])

        # Validation is carved from the training split and never trained on, so a later
        # evaluation with the same --val-fraction and --seed chooses on unseen examples.
        eval_split = config["eval_split"]
        splits = load_splits(
            config["data"], config["data_dir"], val_fraction=config["val_fraction"],
            train_limit=config["train_limit"], test_limit=config["eval_limit"],
            test_split=None if str(eval_split).lower() == "none" else eval_split,
            seed=config["seed"], train_split=config["train_split"], augment=config["augment"],
        )  # fmt: skip
        train_ds, eval_ds = splits.train, splits.test
        info = splits.info or dataset_info(config["data"])
        model, model_kwargs = _build_model(config, info)

        record = {
            "options": config,
            "model_kwargs": model_kwargs,
            "dataset": {
                "num_classes": info.num_classes,
                "input_shape": list(info.input_shape),
                "task": info.task,
                "train_examples": len(train_ds),
                "eval_examples": len(eval_ds) if eval_ds is not None else 0,
                "train_fingerprint": dataset_fingerprint(train_ds),
            },
            "val_spec": splits.val_spec,
            "world_size": env.world_size,
            "command": "frugalnn " + " ".join(sys.argv[1:]),
        }
        if env.is_main:
            out.mkdir(parents=True, exist_ok=True)
            mark_run(out, "train")  # from here on --force may replace it
            if not args.resume:
                write_json_atomic(out / "config.json", record)
        dist_util.barrier(env)

        loader = DataLoader(
            train_ds, batch_size=config["batch_size"], shuffle=True, num_workers=config["workers"]
        )
        eval_loader = (
            DataLoader(eval_ds, batch_size=max(config["batch_size"], 256), shuffle=False)
            if eval_ds is not None
            else None
        )
        result = fit(
            model,
            loader,
            epochs=config["epochs"],
            optimizer=config["optimizer"],
            lr=config["lr"],
            momentum=config["momentum"],
            nesterov=config["nesterov"],
            weight_decay=config["weight_decay"],
            schedule=config["schedule"],
            schedule_unit=config["schedule_unit"],
            warmup_epochs=config["warmup_epochs"],
            step_size=config["step_size"],
            gamma=config["gamma"],
            label_smoothing=config["label_smoothing"],
            grad_clip=config["grad_clip"],
            run_dir=out,
            checkpoint_every=config["checkpoint_every"],
            resume=True,
            seed=config["seed"],
            eval_loader=eval_loader,
            progress=not args.no_progress,
            device=config["device"],
            metadata={"dataset": config["data"], "data": data_signature(info)},
        )
    finally:
        dist_util.teardown(env)
    if env.is_main:
        best = result.best_metrics
        shown = ", ".join(
            f"{k} {best[k]:.4f}" for k in ("eval_acc", "eval_loss", "train_loss") if k in best
        )
        print(f"trained {config['model']} on {config['data']}: best epoch {best.get('epoch')} "
              f"({shown})")  # fmt: skip
        print(out)
    return 0
