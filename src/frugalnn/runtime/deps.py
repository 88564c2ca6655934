"""The optional ``onnx`` extra: import onnx / onnxruntime, or say in one line how to get them."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from frugalnn.errors import UserError

__all__ = ["EXTRA_HINT", "available", "require"]

#: How to install what ONNX export and ONNX Runtime need (versions pinned in pyproject.toml).
EXTRA_HINT = "install the optional extra: pip install 'frugalnn[onnx]' (or `make onnx`)"


def available(module: str) -> bool:
    """Whether ``module`` (``"onnx"``, ``"onnxruntime"``) can be imported."""
    return importlib.util.find_spec(module) is not None


def require(module: str, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise a one-line :class:`UserError` naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        what = f" ({purpose})" if purpose else ""
        raise UserError(f"{module} is not installed{what}; {EXTRA_HINT}") from None
