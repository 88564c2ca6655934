"""Registry of model transformations (``model -> cheaper model``).

A checkpoint of a transformed model stores the base model's name and
arguments plus the list of transformations applied, each as
``{"name": ..., "args": {...}}``. To load it, the base model is built, each
transformation is re-applied *structurally* (its ``args`` must be enough to
rebuild the module tree; no data or training needed), and then the saved
weights are loaded. Method packages register their transformation with
``@register_transform("name")``; the builder is called as
``builder(model, **args) -> model``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from frugalnn.errors import UserError

Transform = Callable[..., nn.Module]

_TRANSFORMS: dict[str, Transform] = {}



def register_transform(name: str) -> Callable[[Transform], Transform]:
    def wrap(fn: Transform) -> Transform:
        if name in _TRANSFORMS and _TRANSFORMS[name] is not fn:
            raise ValueError(f"transform {name!r} registered twice")
        _TRANSFORMS[name] = fn
        return fn

    return wrap


def _load_providers() -> None:
    # Method packages register their transformations on import; imported on
    # first lookup so that loading a checkpoint needs no import by the caller.
    from frugalnn.plugins import import_optional, plugin_modules

    for mod in plugin_modules("transforms"):
        import_optional(mod)


def get_transform(name: str) -> Transform:
    if name not in _TRANSFORMS:
        _load_providers()
    if name not in _TRANSFORMS:
        raise UserError(
            f"unknown transformation {name!r}; known: {', '.join(sorted(_TRANSFORMS)) or 'none'}"
        )
    return _TRANSFORMS[name]


def apply_transforms(model: nn.Module, transforms: list[dict[str, Any]]) -> nn.Module:
    """Re-apply recorded transformations (structure only) to a freshly built model."""
    for spec in transforms:
        model = get_transform(spec["name"])(model, **spec.get("args", {}))
    return model


def record_transform(model: nn.Module, name: str, args: dict[str, Any]) -> None:
    """Append a transformation to ``model.frugalnn_transforms`` (saved in checkpoints).

    Call this from the transformation itself, with ``args`` that rebuild the
    structure (JSON-serialisable) when passed to the registered builder.
    """
    history = list(getattr(model, "frugalnn_transforms", []))
    history.append({"name": name, "args": args})
    model.frugalnn_transforms = history
