"""Checkpoints: safetensors weights + a JSON description, written atomically.

A checkpoint is a directory::

    model.safetensors   the state dict (tied tensors stored once)
    meta.json           how to rebuild the model (registry name, kwargs,
                        transformations) plus step/epoch/metrics/anything else
    train_state.pt      optional: optimizer/scheduler/loop state for resuming

Why this format: safetensors cannot execute code on load, and
``train_state.pt`` is only ever read with ``torch.load(weights_only=True)``,
so opening a checkpoint from somewhere else is safe. Why a directory swap:
the files are written into a hidden sibling directory and only then moved
into place, so a process killed half-way never leaves a half-written
checkpoint under the real name.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model as _st_load_model
from safetensors.torch import save_model as _st_save_model
from torch import nn

from frugalnn.errors import UserError
from frugalnn.transforms import apply_transforms

WEIGHTS = "model.safetensors"
META = "meta.json"
TRAIN_STATE = "train_state.pt"
FORMAT = "frugalnn-checkpoint"
FORMAT_VERSION = 1


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside a DistributedDataParallel/DataParallel wrapper."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    return model.module if isinstance(model, wrappers) else model


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON to ``path`` via a temp file in the same directory + ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, _umask_mode(0o666))
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=False, default=_json_default)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask_mode(mode: int) -> int:
    """``mode`` filtered by the process umask (mkstemp/mkdtemp create private files)."""
    current = os.umask(0)
    os.umask(current)
    return mode & ~current


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _old_name(path: Path) -> Path:
    return path.parent / f".{path.name}.old"


def save_checkpoint(
    directory: str | os.PathLike,
    model: nn.Module,
    metadata: dict[str, Any] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    extra_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint of ``model`` to ``directory`` atomically; return its path.

    ``metadata`` (JSON-serialisable: step, epoch, metrics, ...) goes into
    ``meta.json`` beside the model's registry spec and transformation list.
    ``optimizer``/``scheduler`` state dicts and ``extra_state`` (tensors,
    numbers, strings, lists, dicts only, so that ``weights_only`` loading
    accepts them) go into ``train_state.pt``. An existing checkpoint at
    ``directory`` is replaced as a whole.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    model = unwrap(model)
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "model": getattr(model, "frugalnn_spec", None),
        "transforms": list(getattr(model, "frugalnn_transforms", [])),
        **(metadata or {}),
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
        os.chmod(tmp, _umask_mode(0o777))
        _st_save_model(model, str(tmp / WEIGHTS))
        if optimizer is not None or scheduler is not None or extra_state is not None:
            state = {
                "optimizer": optimizer.state_dict() if optimizer is not None else None,
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "extra": extra_state,
            }
            torch.save(state, tmp / TRAIN_STATE)
        # meta.json last: a directory with it is complete (see load_meta).
        write_json_atomic(tmp / META, meta)
        _swap_into_place(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _swap_into_place(tmp: Path, directory: Path) -> None:
    """Move the finished ``tmp`` directory to ``directory``.

    ``os.replace`` cannot overwrite a non-empty directory, so the old
    checkpoint is first renamed aside; if the process dies between the two
    renames, :func:`resolve_checkpoint` finds the aside copy.
    """
    old = _old_name(directory)
    if old.exists():
        shutil.rmtree(old)
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(directory.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint directory for ``path`` (a directory or its ``model.safetensors``).

    Falls back to the aside copy left by a save that was killed between its
    two renames. Raises ``UserError`` if no complete checkpoint is there.
    """
    path = Path(path)
    if path.is_file() and path.name in (WEIGHTS, META):
        path = path.parent
    for candidate in (path, _old_name(path)):
        if (candidate / WEIGHTS).is_file() and (candidate / META).is_file():
            return candidate
    raise UserError(
        f"{path} is not a frugalnn checkpoint: expected {WEIGHTS} and {META} "
        "(pass the checkpoint directory written by `frugalnn train`)"
    )


def has_checkpoint(path: str | os.PathLike) -> bool:
    try:
        resolve_checkpoint(path)
    except UserError:
        return False
    return True


def load_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``meta.json`` of a checkpoint."""
    directory = resolve_checkpoint(path)
    try:
        meta = json.loads((directory / META).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(
            f"{directory} is not a frugalnn checkpoint: {META} is unreadable ({exc}); "
            "re-create it with `frugalnn train`"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{directory} is not a frugalnn checkpoint: {META} lacks format={FORMAT!r}")
    return meta


def load_weights(
    model: nn.Module, path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> nn.Module:
    """Load a checkpoint's weights into an existing ``model`` (strict; shapes must match)."""
    directory = resolve_checkpoint(path)
    target = unwrap(model)
    try:
        _st_load_model(target, str(directory / WEIGHTS), strict=True, device=str(map_location))
    except (SafetensorError, OSError) as exc:
        raise UserError(
            f"{directory / WEIGHTS} is corrupt or unreadable ({exc}); re-create the checkpoint"
        ) from None
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise UserError(
            f"checkpoint {directory} does not fit this model ({detail}); "
            "load it with load_model() so its architecture is rebuilt"
        ) from None
    return model


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights.

    The base model comes from the registry (``meta.json`` ``model``), the
    recorded transformations are re-applied structurally, then the weights
    are loaded strictly. The model is returned in eval mode on ``map_location``.
    """
    from frugalnn.models.registry import create_model

    meta = load_meta(path)
    spec = meta.get("model")
    if not isinstance(spec, dict) or "name" not in spec:
        raise UserError(
            f"checkpoint {path} does not record a registry model; build the model yourself "
            "and call frugalnn.train.checkpoint.load_weights(model, path)"
        )
    model = create_model(spec["name"], **spec.get("kwargs", {}))
    model = apply_transforms(model, meta.get("transforms", []))
    model.to(map_location)
    load_weights(model, path, map_location=map_location)
    model.frugalnn_transforms = list(meta.get("transforms", []))
    return model.eval()


def load_named_model(name: str, checkpoint: str | os.PathLike | None = None) -> nn.Module:
    """Build registry model ``name``, with weights from ``checkpoint`` if given.

    A ``.th`` file for a ResNet goes through the zoo's loader of the published
    CIFAR checkpoints; anything else must be a frugalnn checkpoint
    (:func:`load_model`) of the same model. Returned in eval mode.
    """
    from frugalnn.models import create_model, model_info

    model_info(name)  # unknown name -> UserError listing the known ones
    if checkpoint is None:
        return create_model(name).eval()
    path = Path(checkpoint)
    if not path.exists():
        raise UserError(f"checkpoint {path} not found; pass an existing file or directory")
    if name.startswith("resnet") and path.suffix == ".th":
        return create_model(name, checkpoint=str(path)).eval()
    try:
        model = load_model(path)
    except UserError:
        raise
    except Exception as exc:  # unreadable or corrupt checkpoint
        raise UserError(
            f"cannot load checkpoint {path} ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            "pass a frugalnn checkpoint directory or a resnet*.th file"
        ) from None
    saved = getattr(model, "frugalnn_spec", {}).get("name")
    if saved is not None and saved != name:
        raise UserError(f"checkpoint {path} holds model {saved!r}, not {name!r}; use {saved}")
    return model.eval()


def load_train_state(path: str | os.PathLike) -> dict[str, Any] | None:
    """The optimizer/scheduler/loop state of a checkpoint, or None if it has none.

    Loaded with ``weights_only=True``: a file carrying arbitrary pickled
    objects is refused rather than executed.
    """
    directory = resolve_checkpoint(path)
    file = directory / TRAIN_STATE
    if not file.is_file():
        return None
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError on corrupt zip, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"{file} is corrupt or holds objects that are not plain tensors/numbers ({first}); "
            "delete the checkpoint or restart training with --force"
        ) from None
