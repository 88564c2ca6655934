"""Model registry: ``@register_model`` on a builder, ``create_model(name, **kw)``.

Names containing ``:`` are model specs outside the registry (a factory in a file
or module, or ``hf:DIR``): see :mod:`frugalnn.models.external`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from frugalnn.errors import UserError


@dataclass(frozen=True)
class ModelInfo:
    """What the toolkit needs to know about a registered model.

    ``input_shape`` is one example's shape (no batch dimension); ``input_dtype``
    is ``"float"`` for images or ``"long"`` for token ids; ``task`` is
    ``"classification"`` or ``"lm"``.
    """

    name: str
    builder: Callable[..., nn.Module]
    input_shape: tuple[int, ...]
    task: str = "classification"
    input_dtype: str = "float"
    description: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)
    # Arguments that only choose where initial weights come from (e.g. ``checkpoint``);
    # left out of ``model.frugalnn_spec`` because a saved checkpoint carries the weights.
    weight_args: tuple[str, ...] = ()
    # Built with trained weights by default (published models): ready for frozen-backbone use.
    pretrained: bool = False


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str,
    *,
    input_shape: tuple[int, ...],
    task: str = "classification",
    input_dtype: str = "float",
    description: str = "",
    weight_args: tuple[str, ...] = (),
    pretrained: bool = False,
    **defaults: Any,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a model builder under ``name``."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelInfo(
            name,
            builder,
            tuple(input_shape),
            task,
            input_dtype,
            description,
            dict(defaults),
            tuple(weight_args),
            pretrained,
        )
        return builder

    return wrap


def _ensure_loaded() -> None:
    # Importing the model modules runs their @register_model decorators.
    import frugalnn.models.capsnet  # noqa: F401
    import frugalnn.models.published  # noqa: F401  (pretrained models frugalnn did not define)
    import frugalnn.models.zoo  # noqa: F401


def list_models() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    """The registered model ``name``, or what can be known of a model spec without
    building it (an unknown input shape is ``()``; see
    :func:`frugalnn.models.external.external_input`)."""
    from frugalnn.models import external

    if external.is_external(name):
        found = external.external_input(name)
        return ModelInfo(name, _spec_builder(name), tuple(found["input_shape"]),
                         found["task"], found["input_dtype"], "model outside the registry")
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(
            f"unknown model {name!r}{_spec_hint(name)}; `frugalnn models` lists the available "
            f"ones ({', '.join(sorted(_REGISTRY))})"
        ) from None


def example_batch(model: Any, *datasets: Any) -> Any:
    """One input batch for tracing ``model``: the first example of the first non-empty
    dataset given (a dict of tensors for Hugging Face style examples), else a random
    input of the registry model's shape and dtype."""
    from frugalnn.utils.batch import example_inputs

    for data in datasets:
        if data is not None and len(data) > 0:
            return example_inputs(data)
    spec = getattr(model, "frugalnn_spec", None) or {}
    shape = (spec.get("kwargs") or {}).get("input_shape")
    info = model_info(spec["name"]) if spec.get("name") else None
    if shape is None and info is not None:
        shape = info.input_shape
    if shape is None:
        raise UserError("cannot tell the model's input shape; pass example_input= or data")
    if info is not None and info.input_dtype == "long":
        return torch.zeros(1, *shape, dtype=torch.long)
    return torch.randn(1, *shape)


def comes_trained(name: str) -> bool:
    """Whether model ``name`` is built with trained weights: a published registry model,
    or a Hugging Face directory (``hf:DIR``) holding a weights file; ``False`` for unknown
    names and factory specs (the caller decides about those)."""
    from frugalnn.models.external import hf_dir_has_weights

    if hf_dir_has_weights(str(name)):
        return True
    _ensure_loaded()
    info = _REGISTRY.get(str(name))
    return bool(info and info.pretrained)


def _spec_hint(name: str) -> str:
    """How to write ``name`` as a model spec when it looks like a file or directory."""
    from pathlib import Path

    path = Path(name).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return f" (a Hugging Face model directory is given as hf:{name})"
    if name.endswith(".py"):
        return f" (name the function that builds the model: {name}:FACTORY)"
    return ""


def _spec_builder(spec: str) -> Callable[..., nn.Module]:
    """A builder of ``spec`` whose signature is its factory's keyword arguments."""
    from frugalnn.models import external

    accepted = external.factory_parameters(spec)

    def build(**kwargs: Any) -> nn.Module:
        return external.build_external(spec, kwargs)

    build.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY) for n in sorted(accepted)])
    return build


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model (keyword arguments override its defaults), or the model
    a spec names (``file.py:factory``, ``package.module:factory``, ``hf:DIR``: keyword
    arguments go to the factory, or override the Hugging Face config)."""
    from frugalnn.models import external

    if external.is_external(name):
        return external.build_external(name, kwargs)
    info = model_info(name)
    args = {**info.defaults, **kwargs}
    try:
        model = info.builder(**args)
    except TypeError as exc:
        raise UserError(f"bad arguments for model {name!r}: {exc}") from None
    # Recorded so that checkpoints can rebuild the model (see frugalnn.transforms).
    # Weight-source arguments are dropped: the rebuilt structure gets the saved weights.
    kept = {k: v for k, v in kwargs.items() if k not in info.weight_args}
    model.frugalnn_spec = {"name": name, "kwargs": kept}
    model.frugalnn_transforms = []
    return model


def rebuild_model(record: dict[str, Any], where: str = "") -> nn.Module:
    """The structure a checkpoint's ``model`` record describes (weights come from the
    checkpoint): a registry model, or a spec's model without its pretrained weights."""
    from frugalnn.models import external

    name = str(record.get("name"))
    if external.is_external(name):
        return external.rebuild_external(record, where)
    return create_model(name, **(record.get("kwargs") or {}))


def model_kwargs_for(name: str, info: Any, explicit: dict[str, Any]) -> dict[str, Any]:
    """Arguments telling model ``name`` the dataset's input shape and class count.

    Only arguments the model's builder accepts are passed, and the user's
    ``model_args`` always win.
    """
    accepted = set(inspect.signature(model_info(name).builder).parameters)
    shape = tuple(info.input_shape)
    derived: dict[str, Any] = {}
    if info.task == "lm":
        derived["vocab_size"] = info.num_classes
        if shape:
            derived["context"] = shape[0]
    else:
        derived["num_classes"] = info.num_classes
        derived["input_shape"] = list(shape)
        if len(shape) == 3:
            derived["in_channels"] = shape[0]
            if shape[1] == shape[2]:
                derived["image_size"] = shape[1]
    kwargs = {k: v for k, v in derived.items() if k in accepted and v is not None}
    kwargs.update(explicit)
    return kwargs
