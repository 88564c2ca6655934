"""Reference models behind one registry: ``create_model(name, **kw)``.

See ``docs/models.md``; every model is a :class:`~frugalnn.models.base.StagedModel`.
"""

from frugalnn.models.base import FeedForward, FFNSite, StagedModel, WrappedModel
from frugalnn.models.registry import (
    ModelInfo,
    create_model,
    example_batch,
    list_models,
    model_info,
    register_model,
)

__all__ = [
    "FFNSite",
    "FeedForward",
    "ModelInfo",
    "StagedModel",
    "WrappedModel",
    "create_model",
    "example_batch",
    "list_models",
    "model_info",
    "register_model",
]
