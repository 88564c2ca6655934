"""Models that are not in the registry: a factory in a file or a module, or a Hugging
Face model directory, plus plain weight files (state dicts) for any model.

Model specs (what ``create_model`` and the CLI's ``MODEL`` accept besides registry names):

* ``path/to/file.py:factory`` - the callable ``factory`` of a Python file;
* ``package.module:factory`` - the callable ``factory`` of an importable module;
* ``hf:DIR`` - the Hugging Face model saved in ``DIR`` (``config.json`` + weights),
  built with the ``transformers`` class named in ``config.architectures``, offline.

A built model records its spec in ``model.frugalnn_spec`` (the file path made
absolute, the file's SHA-256), so a checkpoint rebuilds it in another process.
Weight files: :func:`load_weights_file` (``.pt``/``.pth`` read with
``weights_only=True``, ``.safetensors``, or a directory holding either).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from frugalnn.errors import UserError

__all__ = [
    "HF_PREFIX",
    "build_external",
    "canonical_spec",
    "external_input",
    "hf_dir_has_weights",
    "is_external",
    "load_factory",
    "load_state_file",
    "load_weights_file",
    "rebuild_external",
]

HF_PREFIX = "hf:"
#: Weight files looked for, in order, inside a weights or Hugging Face directory.
DIR_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.pt", "model.pth")
_STATE_KEYS = ("state_dict", "model_state_dict", "model")
_FORMS = "path/to/file.py:factory, package.module:factory or hf:DIR"


def is_external(spec: str) -> bool:
    """Whether ``spec`` names a factory or a Hugging Face directory (not a registry name)."""
    return ":" in str(spec)


def _split(spec: str) -> tuple[str, str, str]:
    """``(kind, target, attr)``: kind ``"hf"``, ``"file"`` or ``"module"``."""
    spec = str(spec)
    if spec.startswith(HF_PREFIX):
        target = spec[len(HF_PREFIX):]
        if not target:
            raise UserError(f"model {spec!r} names no directory; use hf:DIR")
        return "hf", target, ""
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise UserError(f"model {spec!r} is not a model spec; use a registry name or {_FORMS}")
    is_file = target.endswith(".py") or "/" in target or os.sep in target
    if not attr.isidentifier():
        raise UserError(f"model {spec!r}: {attr!r} is not a Python name; use {_FORMS}")
    return ("file" if is_file else "module"), target, attr


def hf_dir_has_weights(spec: str) -> bool:
    """Whether ``spec`` is ``hf:DIR`` with a weights file (or a sharded index) in DIR."""
    if not str(spec).startswith(HF_PREFIX):
        return False
    folder = Path(str(spec)[len(HF_PREFIX):]).expanduser()
    return any((folder / name).is_file() for name in DIR_WEIGHTS) or any(
        folder.glob("*.safetensors.index.json")) or any(folder.glob("*.bin.index.json"))


def canonical_spec(spec: str) -> str:
    """``spec`` with its file or directory made absolute (module specs unchanged)."""
    kind, target, attr = _split(spec)
    if kind == "hf":
        return HF_PREFIX + str(Path(target).expanduser().resolve())
    if kind == "file":
        return f"{Path(target).expanduser().resolve()}:{attr}"
    return f"{target}:{attr}"


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (recorded to notice a factory file that changed later)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


_LOADED: dict[tuple[str, float, int], Any] = {}


def _import_file(path: Path, spec: str) -> Any:
    """Import the Python file ``path`` as a module (once per file version per process)."""
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise UserError(f"model {spec!r}: {path} {what}; pass an existing .py file "
                        "as path/to/file.py:factory")
    stat = path.stat()
    key = (str(path), stat.st_mtime, stat.st_size)
    if key in _LOADED:
        return _LOADED[key]
    name = "frugalnn_user_" + hashlib.sha256(str(path).encode()).hexdigest()[:16]
    loader_spec = importlib.util.spec_from_file_location(name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise UserError(f"model {spec!r}: {path} cannot be imported as Python")
    module = importlib.util.module_from_spec(loader_spec)
    folder = str(path.parent)
    if folder not in sys.path:  # sibling imports work as when running the file itself
        sys.path.append(folder)
    sys.modules[name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's file: its error, one line
        sys.modules.pop(name, None)
        raise UserError(f"model {spec!r}: importing {path} failed ({_first_line(exc)})") from None
    _LOADED[key] = module
    return module


def load_factory(spec: str) -> Callable[..., Any]:
    """The callable a ``file.py:factory`` or ``package.module:factory`` spec names."""
    kind, target, attr = _split(spec)
    if kind == "hf":
        raise UserError(f"model {spec!r} is a Hugging Face directory, not a factory")
    if kind == "file":
        module = _import_file(Path(target).expanduser().resolve(), spec)
        where = str(Path(target))
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            raise UserError(f"model {spec!r}: no module named {exc.name or target!r}; "
                            "install it or pass path/to/file.py:factory") from None
        except Exception as exc:  # noqa: BLE001 - the user's module failed on import
            raise UserError(f"model {spec!r}: importing {target} failed "
                            f"({_first_line(exc)})") from None
        where = target
    factory = getattr(module, attr, None)
    if factory is None:
        found = sorted(n for n, v in vars(module).items()
                       if callable(v) and not n.startswith("_")
                       and getattr(v, "__module__", None) == module.__name__)
        hint = f" (callables there: {', '.join(found[:8])})" if found else ""
        raise UserError(f"model {spec!r}: {where} has no {attr!r}{hint}")
    if not callable(factory):
        raise UserError(f"model {spec!r}: {where}.{attr} is a {type(factory).__name__}, "
                        "not a callable that returns a model")
    return factory


def _call_factory(spec: str, factory: Callable[..., Any], kwargs: Mapping[str, Any]) -> nn.Module:
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as exc:
        raise UserError(f"bad arguments for model {spec!r}: {exc}") from None
    except ValueError:
        pass  # no signature to check (a builtin): the call itself will tell
    try:
        model = factory(**kwargs)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's factory failed
        raise UserError(f"model {spec!r}: the factory raised {_first_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model {spec!r}: the factory returned {type(model).__name__!r}, "
                        "not a torch.nn.Module")
    return model


# ------------------------------------------------------------------ Hugging Face


def _hf_config(directory: Path, spec: str) -> dict[str, Any]:
    file = directory / "config.json"
    if not directory.is_dir():
        raise UserError(f"model {spec!r}: {directory} is not a directory; pass hf:DIR with "
                        "a model saved by save_pretrained")
    if not file.is_file():
        raise UserError(f"model {spec!r}: {directory} has no config.json; pass a directory "
                        "written by save_pretrained")
    try:
        config = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"model {spec!r}: {file} is unreadable ({_first_line(exc)})") from None
    if not isinstance(config, dict):
        raise UserError(f"model {spec!r}: {file} is not a JSON mapping")
    return config


def _hf_class(config: dict[str, Any], spec: str) -> Any:
    """The ``transformers`` class ``config.architectures`` names, else ``AutoModel``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise UserError(f"model {spec!r} needs the transformers package; "
                        "pip install transformers") from None
    for arch in config.get("architectures") or []:
        cls = getattr(transformers, str(arch), None)
        if cls is not None:
            return cls
    return transformers.AutoModel


def _build_hf(spec: str, kwargs: Mapping[str, Any], pretrained: bool) -> nn.Module:
    """The model in ``hf:DIR``; ``kwargs`` override its config (e.g. ``num_labels``)."""
    directory = Path(_split(spec)[1]).expanduser()
    config = _hf_config(directory, spec)
    cls = _hf_class(config, spec)
    import transformers
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a command's output stays one line per result
    try:
        if pretrained:
            model = cls.from_pretrained(str(directory), local_files_only=True, **kwargs)
        else:
            cfg = transformers.AutoConfig.from_pretrained(str(directory), local_files_only=True,
                                                          **kwargs)
            model = (cls.from_config(cfg) if cls is transformers.AutoModel
                     else cls._from_config(cfg))
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged or unsupported directory
        raise UserError(f"model {spec!r}: transformers cannot load {directory} "
                        f"({_first_line(exc)})") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return model


def _hf_info(spec: str) -> dict[str, Any]:
    """Input shape, dtype and task of ``hf:DIR`` read from its ``config.json``."""
    config = _hf_config(Path(_split(spec)[1]).expanduser(), spec)
    archs = [str(a) for a in config.get("architectures") or []]
    task = "lm" if any(a.endswith("ForCausalLM") for a in archs) else "classification"
    vision = config.get("image_size")
    if vision and not config.get("vocab_size"):
        size = vision if isinstance(vision, int) else int(vision[0])
        return {"input_shape": (int(config.get("num_channels", 3)), size, size),
                "input_dtype": "float", "task": task}
    length = int(config.get("max_position_embeddings") or 128)
    return {"input_shape": (min(length, 128),), "input_dtype": "long", "task": task}


# ------------------------------------------------------------------ build


def build_external(spec: str, kwargs: Mapping[str, Any] | None = None, *,
                   pretrained: bool = True) -> nn.Module:
    """Build the model ``spec`` names, with ``kwargs`` for its factory (or config).

    ``pretrained`` (Hugging Face only): load the directory's weights; without it
    only the structure is built (a checkpoint then supplies the weights).
    The model's ``frugalnn_spec`` records the canonical spec, so that
    :func:`frugalnn.train.checkpoint.load_model` can rebuild it.
    """
    kwargs = dict(kwargs or {})
    canonical = canonical_spec(spec)
    kind, target, _ = _split(canonical)
    record: dict[str, Any] = {"name": canonical}
    if kind == "hf":
        model = _build_hf(canonical, kwargs, pretrained)
        record["hf_dir"] = target
    else:
        model = _call_factory(spec, load_factory(canonical), kwargs)
        record["factory"] = canonical
        if kind == "file":
            record["sha256"] = file_digest(target)
    record["kwargs"] = kwargs
    model.frugalnn_spec = record
    model.frugalnn_transforms = []
    return model


def rebuild_external(record: Mapping[str, Any], where: str | os.PathLike) -> nn.Module:
    """The structure a checkpoint's ``model`` record describes, without its weights.

    A factory file or Hugging Face directory that no longer exists is one line
    naming the checkpoint ``where``.
    """
    spec = str(record.get("name"))
    kind, target, _ = _split(spec)
    if kind in ("hf", "file") and not Path(target).exists():
        what = "Hugging Face directory" if kind == "hf" else "factory file"
        raise UserError(f"checkpoint {where} was built from the {what} {target}, which no "
                        "longer exists; restore it there to load this checkpoint")
    model = build_external(spec, record.get("kwargs") or {}, pretrained=False)
    for key in ("weights", "sha256"):
        if key in record:  # what the checkpoint saw, not what the file holds now
            model.frugalnn_spec[key] = record[key]
    return model


def factory_changed(record: Mapping[str, Any]) -> str | None:
    """The factory file of ``record`` when its bytes changed since it was recorded."""
    spec = str(record.get("name", ""))
    recorded = record.get("sha256")
    if not recorded or not is_external(spec):
        return None
    kind, target, _ = _split(spec)
    if kind != "file" or not Path(target).is_file():
        return None
    return target if file_digest(target) != recorded else None


def external_input(spec: str) -> dict[str, Any]:
    """``input_shape`` / ``input_dtype`` / ``task`` of ``spec`` where they can be known
    without building it: a Hugging Face config, or attributes of the same names on the
    factory. ``input_shape`` is ``()`` when unknown (pass it explicitly)."""
    kind = _split(spec)[0]
    if kind == "hf":
        return _hf_info(spec)
    factory = load_factory(canonical_spec(spec))
    return {"input_shape": tuple(getattr(factory, "input_shape", ()) or ()),
            "input_dtype": str(getattr(factory, "input_dtype", "float")),
            "task": str(getattr(factory, "task", "classification"))}


def factory_parameters(spec: str) -> set[str]:
    """Names of the keyword arguments ``spec``'s factory accepts (none for ``hf:DIR``)."""
    if _split(spec)[0] == "hf":
        return set()
    try:
        params = inspect.signature(load_factory(canonical_spec(spec))).parameters
    except (TypeError, ValueError):
        return set()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {n for n, p in params.items() if p.kind in kinds}


# ------------------------------------------------------------------ weight files


def _weights_file(path: Path) -> Path:
    if path.is_dir():
        for name in DIR_WEIGHTS:
            if (path / name).is_file():
                return path / name
        raise UserError(f"--weights {path}: no {', '.join(DIR_WEIGHTS)} in this directory")
    if not path.is_file():
        raise UserError(f"--weights {path} does not exist; pass a .pt, .pth or .safetensors "
                        "file or a directory holding one")
    return path


def load_state_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict in a weights file (or a directory holding one), read safely.

    ``.safetensors`` through safetensors; anything else with
    ``torch.load(weights_only=True)``, where a dict holding ``state_dict``,
    ``model_state_dict`` or ``model`` is unwrapped. Keys all prefixed ``module.``
    (a DataParallel save) lose the prefix.
    """
    file = _weights_file(Path(path).expanduser())
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(file))
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unreadable, corrupt, or pickled objects
        raise UserError(f"--weights {file} cannot be read as a state dict "
                        f"({_first_line(exc)}); pass tensors saved with torch.save or "
                        "safetensors") from None
    if isinstance(state, dict):
        for key in _STATE_KEYS:
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise UserError(f"--weights {file} does not hold a state dict (a mapping of names to "
                        f"tensors, optionally under {', '.join(_STATE_KEYS)})")
    if state and all(str(k).startswith("module.") for k in state):
        state = {str(k)[len("module."):]: v for k, v in state.items()}
    return {str(k): v for k, v in state.items()}


def _listed(keys: list[str], shown: int = 3) -> str:
    more = f", ... ({len(keys)} in all)" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def weights_mismatch(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str | None:
    """What keeps ``state`` from loading strictly into ``model``, or None."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    parts = []
    if missing:
        parts.append(f"missing {_listed(missing)}")
    if unexpected:
        parts.append(f"unexpected {_listed(unexpected)}")
    if shapes:
        parts.append(f"shape mismatch {_listed(shapes)} (file vs model)")
    return "; ".join(parts) or None


def load_weights_file(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load the state dict in ``path`` into ``model`` strictly; record ``path``.

    Missing and unexpected keys and shape mismatches are one line naming the
    first few of each and their count. The absolute path goes into
    ``model.frugalnn_spec["weights"]``.
    """
    file = _weights_file(Path(path).expanduser())
    state = load_state_file(file)
    problem = weights_mismatch(model, state)
    if problem:
        raise UserError(f"--weights {file} does not fit the model: {problem}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(f"--weights {file} does not fit the model ({_first_line(exc)})") from None
    spec = getattr(model, "frugalnn_spec", None)
    if isinstance(spec, dict):
        spec["weights"] = str(file.resolve())
    return model
