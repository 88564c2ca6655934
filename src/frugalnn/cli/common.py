"""Plumbing shared by the ``commands`` modules: flag checks, run directories,
base models, data subsets and loaders.

One implementation of the steps every method CLI repeats, so that their
messages (which tests assert) cannot drift apart. Imports of torch and the
model registry stay inside the functions: ``frugalnn --help`` must stay fast.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from frugalnn.errors import UserError

__all__ = [
    "add_data_flags",
    "add_model_argument",
    "MODEL_SPEC_HELP",
    "ModelRef",
    "add_model_flags",
    "add_run_flags",
    "add_weights_flag",
    "args_config",
    "available_devices",
    "check_device",
    "check_out",
    "check_positive",
    "load_base_model",
    "load_model_for_data",
    "load_splits_from_args",
    "load_subsets",
    "parse_model_args",
    "positive",
    "print_budget_summary",
    "random_subset",
    "resolve_checkpoint",
    "start_run",
    "tokenizer_of_model",
]


#: How every command describes the model specs it accepts (docs/your_model.md).
MODEL_SPEC_HELP = ("registry name (see `frugalnn models`), path/to/file.py:FACTORY, "
                   "package.module:FACTORY or hf:DIR (a Hugging Face model directory)")
WEIGHTS_HELP = ("weights of MODEL: a state dict (.pt/.pth, read with weights_only=True, or "
                ".safetensors) or a directory holding one")


class ModelRef(str):
    """The ``MODEL`` text of a command, carrying its ``--weights`` file (or None).

    :func:`add_model_flags` attaches ``--weights`` to ``MODEL`` whatever their order
    on the command line, so :func:`load_base_model` and :func:`load_model_for_data`
    load the weights for every command that takes a model.
    """

    weights: str | None = None

    def __new__(cls, text: str, weights: str | None = None) -> ModelRef:
        ref = super().__new__(cls, text)
        ref.weights = weights
        return ref


class _ModelAction(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, ModelRef(values, getattr(namespace, "weights", None)))


class _WeightsAction(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        model = getattr(namespace, "model", None)
        if isinstance(model, str):
            namespace.model = ModelRef(model, values)


def add_model_flags(p: argparse.ArgumentParser, model_help: str = MODEL_SPEC_HELP) -> None:
    """``MODEL``, ``--checkpoint``, ``--weights`` and ``--model-arg`` of a command that
    converts a model. ``MODEL`` is a registry name or a model spec
    (:mod:`frugalnn.models.external`); ``args.model.weights`` is ``--weights``."""
    add_model_argument(p, model_help)
    p.add_argument("--checkpoint", help="trained checkpoint or run directory of MODEL")
    p.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                   help="model constructor (or factory) argument when no checkpoint is given "
                        "(repeatable)")


def add_model_argument(p: argparse.ArgumentParser, model_help: str = MODEL_SPEC_HELP) -> None:
    """Positional ``MODEL`` (a registry name or model spec) and ``--weights`` for it:
    ``args.model`` is a :class:`ModelRef` whose ``weights`` is the ``--weights`` file."""
    if model_help != MODEL_SPEC_HELP:
        model_help = f"{model_help}; or a model spec: file.py:FACTORY, module:FACTORY, hf:DIR"
    p.add_argument("model", metavar="MODEL", action=_ModelAction, help=model_help)
    add_weights_flag(p)


def add_weights_flag(p: argparse.ArgumentParser) -> None:
    """``--weights FILE_OR_DIR``: a plain state dict for the command's model."""
    p.add_argument("--weights", metavar="FILE_OR_DIR", action=_WeightsAction, help=WEIGHTS_HELP)


def add_data_flags(p: argparse.ArgumentParser, *, train_help: str = "split to train on (train)",
                   random: bool = True) -> None:
    """``--data``, ``--data-dir``, the splits (validation carved from train), their
    limits and ``--batch-size``. Limits always draw seeded random subsets."""
    del random  # every limit is a seeded random subset (frugalnn.data.splits)
    p.add_argument("--data", required=True, help="dataset name (digits, cifar10, ...)")
    p.add_argument("--data-dir", help="data directory (default: $FRUGALNN_DATA)")
    p.add_argument("--train-split", default="train", help=train_help)
    p.add_argument("--eval-split", default="test", help="split to evaluate on (test)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="part of the training split held out as validation, where operating "
                        "points are chosen (0.1; 0 = none)")
    p.add_argument("--train-limit", type=int, help="use N random training examples (seeded)")
    p.add_argument("--val-limit", type=int, help="use N random validation examples (seeded)")
    p.add_argument("--eval-limit", type=int, help="evaluate N random examples (seeded)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (64)")


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """``--threads``, ``--device``, ``--seed``, ``--out``, ``--force``, ``--no-progress``."""
    p.add_argument("--threads", type=int, help="torch threads (default: current setting)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def positive(value: int | None, flag: str) -> None:
    """Refuse a given ``value`` below 1 (``None`` means the flag was not given)."""
    if value is not None and value < 1:
        raise UserError(f"{flag} must be positive, got {value}")


def check_positive(pairs: Iterable[tuple[int | None, str]]) -> None:
    """:func:`positive` for each ``(value, flag)`` pair, in order."""
    for value, flag in pairs:
        positive(value, flag)


#: Device types a model can run on (``meta`` and the like hold no data).
COMPUTE_DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def available_devices() -> list[str]:
    """The devices torch can use on this machine: ``cpu``, then ``cuda:i`` and ``mps``."""
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def check_device(device: str, flag: str = "--device") -> str:
    """Refuse, in one line, a malformed device name (``gpu``) or one this machine lacks
    (``mps`` on Linux, ``cuda`` without CUDA, ``cuda:7`` on a one-GPU machine)."""
    import torch

    where = f"; available here: {', '.join(available_devices())}"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise UserError(f"{flag} {device!r} is not a device name{where}") from None
    if dev.type not in COMPUTE_DEVICE_TYPES:
        raise UserError(f"{flag} {device!r} is not a device to run a model on{where}")
    if dev.type != "cpu":
        try:
            torch.empty(1, device=dev)
        except Exception:  # noqa: BLE001 - each backend fails with its own exception type
            raise UserError(f"{flag} {device} asked for, but torch sees no such device"
                            f"{where}") from None
    return device


def check_out(out: Path, force: bool, *, empty_ok: bool = True,
              command: str | None = None) -> None:
    """Take run directory ``out`` for this command (see :mod:`frugalnn.utils.rundir`).

    Refuses an existing directory without ``--force`` (an empty one is accepted
    unless ``empty_ok`` is false), and with it anything that is not a marked
    frugalnn run; refuses a run another process is writing (naming its PID).
    The directory is locked and marked until the command ends; a replaced run
    is deleted only once the new one holds results, and a command that wrote
    nothing leaves nothing behind.
    """
    from frugalnn.utils.rundir import open_run

    open_run(out, force=force, empty_ok=empty_ok, command=command)


def start_run(args: argparse.Namespace) -> Path:
    """Check ``--device`` and ``--out``, apply ``--threads`` and seed torch; return the out dir."""
    import torch

    check_device(args.device)
    out = Path(args.out)
    check_out(out, args.force, command=getattr(args, "command", None))
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return out


def args_config(args: argparse.Namespace, command: str | None = None) -> dict[str, Any]:
    """The command's arguments as a JSON-able config (``command`` first when given)."""
    config: dict[str, Any] = {"command": command} if command else {}
    config.update({k: v for k, v in vars(args).items() if k != "func"})
    return config


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def parse_model_args(items: list[str] | None, flag: str = "--model-arg",
                     value: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """``["depth=3", "name=x"]`` -> ``{"depth": 3, "name": "x"}``.

    Values are read as JSON (falling back to the text itself) unless ``value``
    parses them otherwise (e.g. ``yaml.safe_load``).
    """
    parse = value or _json_or_text
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UserError(f"{flag} expects KEY=VALUE, got {item!r}")
        out[key.strip()] = parse(text)
    return out


def resolve_checkpoint(source: str | Path, hint: str = "a checkpoint or run directory") -> Path:
    """The checkpoint directory of ``source``: itself, or ``source/checkpoint`` in a run dir."""
    from frugalnn.train.checkpoint import has_checkpoint

    path = Path(source)
    if not path.exists():
        raise UserError(f"{path} does not exist; pass {hint}")
    return path / "checkpoint" if has_checkpoint(path / "checkpoint") else path


def load_base_model(name: str, checkpoint: str | None, kwargs: dict[str, Any], device: str, *,
                    allow_th: bool = False, check_name: bool = True,
                    weights: str | None = None) -> Any:
    """Model ``name`` (a registry name or a model spec): from a frugalnn checkpoint or
    run dir, freshly built when ``checkpoint`` is None (with the state dict of
    ``weights``, by default ``name.weights`` of a :class:`ModelRef`), or
    (``allow_th``) from a ResNet-CIFAR ``.th`` file.

    With ``check_name`` a checkpoint holding another model is refused.
    """
    from frugalnn.models import create_model
    from frugalnn.models.external import canonical_spec, is_external, load_weights_file
    from frugalnn.train.checkpoint import load_model

    weights = weights or getattr(name, "weights", None)
    name = str(name)
    if checkpoint is not None and weights is not None:
        raise UserError("pass either --checkpoint (a frugalnn checkpoint) or --weights "
                        "(a plain state dict), not both")
    if checkpoint is None:
        model = create_model(name, **kwargs)
        if weights is not None:
            load_weights_file(model, weights)
        return model.to(device)
    if is_external(name):
        name = canonical_spec(name)
    hint = "a checkpoint, run directory or .th file" if allow_th else None
    path = Path(checkpoint)
    if allow_th and path.is_file() and path.suffix == ".th":
        return create_model(name, checkpoint=str(path), **kwargs).to(device)
    ckpt = resolve_checkpoint(path, hint) if hint else resolve_checkpoint(path)
    model = load_model(ckpt, map_location=device)
    if check_name:
        spec = getattr(model, "frugalnn_spec", None) or {}
        if spec.get("name") not in (None, name):
            raise UserError(
                f"checkpoint {ckpt} holds a {spec.get('name')!r} model, not {name!r}")
    return model


def load_model_for_data(name: str, checkpoint: str | None, info: Any,
                        model_arg: list[str] | None, device: str, *,
                        check_name: bool = True) -> Any:
    """Model ``name`` sized for dataset ``info`` (unless a frugalnn checkpoint
    rebuilds its own structure), from a checkpoint, a ``.th`` file or fresh."""
    from frugalnn.models.registry import model_kwargs_for
    from frugalnn.train.checkpoint import check_data_fit

    if checkpoint and not str(checkpoint).endswith(".th"):
        kwargs: dict[str, Any] = {}  # a frugalnn checkpoint rebuilds its own structure
    else:
        kwargs = model_kwargs_for(str(name), info, parse_model_args(model_arg))
    model = load_base_model(name, checkpoint, kwargs, device, allow_th=True,
                            check_name=check_name)
    from frugalnn.models.external import is_external

    weights = getattr(name, "weights", None)
    if checkpoint or weights or is_external(str(name)):
        check_data_fit(model, info, checkpoint or weights or str(name))
    return model


def load_subsets(args: argparse.Namespace, eval_split: str = "test",
                 **train_options: Any) -> tuple[Any, Any, Any]:
    """``(train, eval, info)`` of ``--data``: random ``--train-limit`` / ``--eval-limit``
    subsets (seeds ``--seed`` and ``--seed + 1``) and the dataset's info."""
    from frugalnn.data import get_dataset

    train = get_dataset(args.data, "train", args.data_dir, **train_options)
    evaluation = get_dataset(args.data, eval_split, args.data_dir)
    info = train.info
    return (random_subset(train, args.train_limit, args.seed),
            random_subset(evaluation, args.eval_limit, args.seed + 1), info)


def load_splits_from_args(args: argparse.Namespace, eval_split: str | None = None,
                          **train_options: Any) -> Any:
    """:class:`frugalnn.data.splits.Splits` of ``--data`` from the flags of
    :func:`add_data_flags`: validation carved from train (``--val-fraction``),
    seeded random subsets for the three limits."""
    from frugalnn.data.splits import load_splits

    tokenizer_of_model(args)
    return load_splits(
        args.data, args.data_dir, val_fraction=getattr(args, "val_fraction", 0.1),
        train_limit=getattr(args, "train_limit", None),
        val_limit=getattr(args, "val_limit", None),
        test_limit=getattr(args, "eval_limit", None),
        test_split=eval_split or getattr(args, "eval_split", "test"), seed=args.seed,
        **train_options)


#: Files that mark a directory as holding a Hugging Face tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")


def tokenizer_of_model(args: argparse.Namespace, model: str | None = None) -> None:
    """``--data textfile`` without a tokenizer, for ``--model hf:DIR`` whose directory
    holds one: tokenise with it, at most as many tokens as the model has positions
    (``args.data`` gains ``tokenizer=DIR,max_length=N``, so the run records them; a
    tokenizer named without ``max_length`` gains the same limit).
    ``model`` is the model spec when it is not ``args.model`` (a checkpoint's)."""
    from frugalnn.data.catalog import split_options

    data = getattr(args, "data", None)
    model = str(model or getattr(args, "model", "") or "")
    if not data or not model.startswith("hf:"):
        return
    base, options = split_options(data)
    directory = Path(model[3:]).expanduser().resolve()
    if base != "textfile" or ("tokenizer" in options and "max_length" in options):
        return
    if "tokenizer" in options or any((directory / name).is_file() for name in TOKENIZER_FILES):
        extra = "" if "tokenizer" in options else f"tokenizer={directory}"
        if "max_length" not in options:  # no longer than the model's positions
            from frugalnn.models.external import external_input

            shape = external_input(model)["input_shape"]
            if len(shape) == 1:
                extra += f"{',' if extra else ''}max_length={shape[0]}"
        if extra:
            args.data = f"{data}{',' if ':' in data else ':'}{extra}"


def random_subset(dataset: Any, limit: int | None, seed: int) -> Any:
    """:func:`frugalnn.data.splits.random_subset`, imported on use (``--help`` stays fast)."""
    from frugalnn.data.splits import random_subset as draw

    return draw(dataset, limit, seed)


def print_budget_summary(records: Any, name: str, width: int = 8, task: str | None = None) -> None:
    """One line per budget: knob value, accuracy and FLOPs per example; for a language
    model (``task="lm"``, equal-length windows) also the perplexity, exp(mean token loss)."""
    import math

    for row in records.per_budget_summary():
        ppl = f"  perplexity {math.exp(row['loss']):.2f}" if task == "lm" else ""
        print(f"{name} {row['label']:>{width}}: accuracy {100 * row['accuracy']:6.2f} %  "
              f"{row['flops'] / 1e6:10.3f} MFLOPs/example{ppl}")
