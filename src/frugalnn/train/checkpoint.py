"""Checkpoints: safetensors weights + a JSON description, written atomically.

A checkpoint is a directory::

    model.safetensors   the state dict (tied tensors stored once)
    meta.json           how to rebuild the model (registry name or model spec,
                        kwargs, transformations) plus step/epoch/metrics/anything else
    train_state.pt      optional: optimizer/scheduler/loop state for resuming

Why this format: safetensors cannot execute code on load, and
``train_state.pt`` is only ever read with ``torch.load(weights_only=True)``,
so opening a checkpoint from somewhere else is safe. Why a directory swap:
the files are written into a hidden sibling directory and only then moved
into place, so a process killed half-way never leaves a half-written
checkpoint under the real name.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import tempfile
import warnings
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
    _remove_stale_temps(directory)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
        os.chmod(tmp, _umask_mode(0o777))
        _reported_as_os_error(lambda: _st_save_model(model, str(tmp / WEIGHTS)), tmp)
        if optimizer is not None or scheduler is not None or extra_state is not None:
            state = {
                "optimizer": optimizer.state_dict() if optimizer is not None else None,
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "extra": extra_state,
            }
            buffer = io.BytesIO()  # serialised in memory: a full disk then fails as an OSError
            torch.save(state, buffer)
            with open(tmp / TRAIN_STATE, "wb") as fh:
                fh.write(buffer.getbuffer())
        # meta.json last: a directory with it is complete (see load_meta).
        write_json_atomic(tmp / META, meta)
        _swap_into_place(tmp, directory)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        from frugalnn.utils.rundir import USER_ERRNOS, os_error_message

        if exc.errno not in USER_ERRNOS:
            raise
        kept = (f"the previous checkpoint in {directory} is intact" if has_checkpoint(directory)
                else "no earlier checkpoint was there")
        raise UserError(f"{os_error_message(exc, f'save checkpoint {directory}')}; {kept}; "
                        "free some space and resume with --resume") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _reported_as_os_error(write: Any, where: Path) -> None:
    """Run ``write``; a library error raised while the disk is full becomes ENOSPC
    (safetensors and torch report a short write in their own exception types)."""
    try:
        write()
    except OSError:
        raise
    except Exception:
        try:
            st = os.statvfs(where)
            full = st.f_bavail * st.f_frsize < 1 << 20
        except OSError:
            full = False
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(where)) from None
        raise


def _remove_stale_temps(directory: Path) -> None:
    """Delete what earlier saves killed half-way left beside ``directory``: their temp
    directories and temp files of atomic writes (one writer per run, see rundir)."""
    parent = directory.parent
    if not parent.is_dir():
        return
    for p in parent.glob(f".{directory.name}.*.tmp"):
        if p.is_dir() and not _complete(p):
            shutil.rmtree(p, ignore_errors=True)
    for p in parent.glob(".*.json.*.tmp"):
        if p.is_file():
            p.unlink(missing_ok=True)


def _complete(path: Path) -> bool:
    return (path / WEIGHTS).is_file() and (path / META).is_file()


def _swap_into_place(tmp: Path, directory: Path) -> None:
    """Move the finished ``tmp`` directory to ``directory``.

    ``os.replace`` cannot overwrite a non-empty directory, so the old
    checkpoint is first renamed aside; if the process dies between the two
    renames, :func:`resolve_checkpoint` finds the aside copy.
    """
    old = _old_name(directory)
    if old.exists():
        if not _complete(directory) and _complete(old):
            # An earlier save died between its two renames: the aside copy is the only
            # complete one, so put it back before anything is deleted.
            if directory.exists():
                shutil.rmtree(directory)
            os.replace(old, directory)
        else:
            shutil.rmtree(old)
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    _fsync_dir(directory.parent)
    shutil.rmtree(old, ignore_errors=True)
    for leftover in directory.parent.glob(f".{directory.name}.*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True)  # complete copies older than this save


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
    temps = sorted(path.parent.glob(f".{path.name}.*.tmp"), key=_mtime, reverse=True)
    for candidate in (path, _old_name(path), *temps):
        if _complete(candidate):
            return candidate
    raise UserError(
        f"{path} is not a frugalnn checkpoint: expected {WEIGHTS} and {META} "
        "(pass the checkpoint directory written by `frugalnn train`)"
    )


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def checkpoint_problems(path: str | os.PathLike, *, train_state: bool = False) -> list[str]:
    """What keeps ``path`` from being a complete checkpoint (empty when nothing does).

    ``train_state``: a resumable checkpoint also needs ``train_state.pt``.
    """
    path = Path(path)
    try:
        directory = resolve_checkpoint(path)
    except UserError:
        directory = path
    needed = (WEIGHTS, META, TRAIN_STATE) if train_state else (WEIGHTS, META)
    return [f"{name} is missing" for name in needed if not (directory / name).is_file()]


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
    _check_meta(meta, directory / META)
    return meta


#: Largest model a checkpoint may describe, in parameters (refused before allocation).
MAX_PARAMETERS = 4_000_000_000


def _check_meta(meta: dict[str, Any], file: Path) -> None:
    """Refuse a ``meta.json`` whose fields have the wrong types (a crafted or damaged file)."""
    def bad(what: str) -> UserError:
        return UserError(f"{file} is malformed: {what}; re-create the checkpoint")

    spec = meta.get("model")
    if spec is not None:
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise bad("'model' must be a mapping with a string 'name'")
        if not isinstance(spec.get("kwargs", {}), dict):
            raise bad("'model.kwargs' must be a mapping")
        for key in ("factory", "hf_dir", "weights", "sha256"):
            if key in spec and not isinstance(spec[key], str):
                raise bad(f"'model.{key}' must be a string")
    transforms = meta.get("transforms", [])
    if not isinstance(transforms, list) or not all(isinstance(t, dict) for t in transforms):
        raise bad("'transforms' must be a list of mappings")
    for key in ("epoch", "step", "epochs", "seed", "world_size", "version"):
        value = meta.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 0):
            raise bad(f"{key!r} must be a non-negative integer, got {value!r}")
    for key in ("metrics", "data"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise bad(f"{key!r} must be a mapping")


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _check_size(spec: dict[str, Any], transforms: list[Any], where: Path) -> None:
    """Build the described model on the ``meta`` device (no memory) and refuse one whose
    parameters exceed :data:`MAX_PARAMETERS` or half of this machine's memory."""
    from frugalnn.models.registry import rebuild_model

    name = spec.get("name")
    try:
        with torch.device("meta"):
            model = apply_transforms(rebuild_model(spec, str(where)), transforms)
    except UserError:
        raise
    except Exception:  # noqa: BLE001 - a model that cannot be built on meta is checked on build
        return
    numel = sum(p.numel() for p in model.parameters())
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    memory = _memory_bytes()
    if numel > MAX_PARAMETERS or (memory and nbytes > memory // 2):
        raise UserError(
            f"checkpoint {where} describes a {name!r} model of {numel:,} parameters "
            f"({nbytes / 2**30:.1f} GiB); refusing to build it (limit {MAX_PARAMETERS:,} "
            "parameters or half of this machine's memory)")


def _check_tensors(directory: Path, model: nn.Module) -> None:
    """Refuse NaN/Inf weights; warn when a stored dtype is cast to the model's."""
    from safetensors import safe_open

    params = dict(unwrap(model).state_dict())
    with safe_open(str(directory / WEIGHTS), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
            t = f.get_tensor(key)
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise UserError(f"checkpoint {directory} holds NaN or infinite values in "
                                f"{key!r}; it cannot be used, re-create it")
            target = params.get(key)
            if target is not None and target.dtype != t.dtype:
                warnings.warn(f"checkpoint {directory}: {key!r} is stored as {t.dtype} and "
                              f"cast to the model's {target.dtype}", stacklevel=3)


def load_weights(
    model: nn.Module, path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> nn.Module:
    """Load a checkpoint's weights into an existing ``model`` (strict; shapes must match)."""
    directory = resolve_checkpoint(path)
    target = unwrap(model)
    try:
        _check_tensors(directory, target)
    except (SafetensorError, OSError) as exc:
        raise UserError(
            f"{directory / WEIGHTS} is corrupt or unreadable ({exc}); re-create the checkpoint"
        ) from None
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

    The base model comes from ``meta.json`` ``model``: a registry name, or a
    model spec outside the registry (a factory file or module, a Hugging Face
    directory; see :mod:`frugalnn.models.external`), built again without its
    original weights. The recorded transformations are re-applied
    structurally, then the checkpoint's weights are loaded strictly. The model
    is returned in eval mode on ``map_location``.
    """
    from frugalnn.models.external import factory_changed
    from frugalnn.models.registry import rebuild_model

    meta = load_meta(path)
    spec = meta.get("model")
    if not isinstance(spec, dict) or "name" not in spec:
        raise UserError(
            f"checkpoint {path} does not record a registry model; build the model yourself "
            "and call frugalnn.train.checkpoint.load_weights(model, path)"
        )
    _check_size(spec, meta.get("transforms", []), Path(path))
    changed = factory_changed(spec)
    try:
        model = rebuild_model(spec, str(path))
        model = apply_transforms(model, meta.get("transforms", []))
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - the recipe comes from a file: its fault
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        since = f" (its factory file {changed} changed since it was saved)" if changed else ""
        raise UserError(f"checkpoint {path} describes a model that cannot be built{since} "
                        f"({type(exc).__name__}: {first}); re-create the checkpoint") from None
    model.to(map_location)
    try:
        load_weights(model, path, map_location=map_location)
    except UserError as exc:
        if not changed:
            raise
        raise UserError(f"checkpoint {path}: its factory file {changed} changed since the "
                        f"checkpoint was saved and no longer builds the same model ({exc})"
                        ) from None
    if changed:
        warnings.warn(f"checkpoint {path}: factory file {changed} changed since the checkpoint "
                      "was saved; its weights still fit the model it builds", stacklevel=2)
    model.frugalnn_transforms = list(meta.get("transforms", []))
    if isinstance(meta.get("data"), dict):
        model.frugalnn_data = dict(meta["data"])  # what check_data_fit compares
    return model.eval()


def load_named_model(name: str, checkpoint: str | os.PathLike | None = None, *,
                     weights: str | os.PathLike | None = None,
                     kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Build model ``name`` (a registry name or a model spec), with weights from
    ``checkpoint`` or from a plain ``weights`` file if given.

    A ``.th`` file for a ResNet goes through the zoo's loader of the published
    CIFAR checkpoints; any other ``checkpoint`` must be a frugalnn checkpoint
    (:func:`load_model`) of the same model. ``weights`` is a state dict file
    (:func:`frugalnn.models.external.load_weights_file`); ``kwargs`` go to the
    builder. Returned in eval mode.
    """
    from frugalnn.models import create_model, model_info
    from frugalnn.models.external import canonical_spec, is_external, load_weights_file

    model_info(name)  # unknown name -> UserError listing the known ones
    if checkpoint is not None and weights is not None:
        raise UserError("pass either --checkpoint (a frugalnn checkpoint) or --weights "
                        "(a plain state dict), not both")
    if checkpoint is None:
        model = create_model(name, **(kwargs or {}))
        if weights is not None:
            load_weights_file(model, weights)
        return model.eval()
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
    if is_external(name):
        name = canonical_spec(name)
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


def data_signature(info: Any) -> dict[str, Any]:
    """What a checkpoint records about the data it was trained on (``meta.json`` ``data``):
    classes, input shape, task, and the class names where the data names them."""
    out = {"num_classes": info.num_classes, "input_shape": list(info.input_shape),
           "task": info.task}
    classes = getattr(info, "classes", None)
    if classes:
        out["classes"] = [str(c) for c in classes]
    return out


def check_data_fit(model: nn.Module, info: Any, where: str | os.PathLike) -> None:
    """Refuse a model whose recorded data (or whose inputs) do not fit dataset ``info``.

    Compares the ``data`` a checkpoint recorded (classes, input shape, task),
    else the model's ``num_classes`` argument, then runs one zero example of
    ``info``'s shape through the model: a mismatch is a one-line ``UserError``.
    """
    mine = data_signature(info)
    recorded = getattr(model, "frugalnn_data", None)
    if not isinstance(recorded, dict):
        kwargs = (getattr(model, "frugalnn_spec", None) or {}).get("kwargs") or {}
        recorded = {"num_classes": kwargs.get("num_classes")}
    for key, value in recorded.items():
        if key in mine and value is not None and mine[key] is not None and value != mine[key]:
            raise UserError(
                f"checkpoint {where} was trained on data with {key} {value}, but the dataset "
                f"given has {mine[key]}; pass the dataset it was trained on")
    target = unwrap(model)
    labels = getattr(getattr(target, "config", None), "num_labels", None)
    head = type(target).__name__.endswith(("ForSequenceClassification", "ForImageClassification"))
    if (head and info.task == "classification" and isinstance(labels, int)
            and info.num_classes and labels != info.num_classes):
        raise UserError(
            f"model {where} has {labels} labels but the dataset given has {info.num_classes} "
            f"classes; pass the matching dataset, or --model-arg num_labels={info.num_classes} "
            "--model-arg ignore_mismatched_sizes=true for a new, untrained classifier head")
    if info.task != "classification" or info.input_dtype != "float" or not info.input_shape:
        return
    try:
        device = next(target.parameters()).device
    except StopIteration:
        return
    training = target.training
    target.eval()
    try:
        with torch.no_grad():
            target(torch.zeros(1, *info.input_shape, device=device))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"checkpoint {where} does not accept inputs of shape {tuple(info.input_shape)} "
            f"from the dataset given ({first}); pass the dataset it was trained on") from None
    finally:
        target.train(training)
