"""A staged view (``embed / blocks / classify``) of any classification model.

Early exits need a model as a sequence of blocks with a state passed from one
to the next (:class:`~frugalnn.models.base.StagedModel`). :func:`as_staged`
builds that view of a user's model without copying anything: the view's parts
call the model's own modules, so the model's weights are the view's.

What is recognised:

* a frugalnn :class:`StagedModel`: returned as it is (a
  :class:`~frugalnn.models.base.WrappedModel` around another model: the view
  of that model);
* Hugging Face encoders for classification (``BertForSequenceClassification``
  and BERT-like text classifiers; ``ViTForImageClassification`` and ViT-like
  image classifiers): the embeddings, one block per encoder layer, and the
  model's own head (BERT: pooler, dropout, classifier; ViT: final LayerNorm,
  CLS token, classifier). Text inputs are the model's own dict
  (``input_ids``, optional ``attention_mask`` / ``token_type_ids``),
  ``(B, T)`` token ids or a ``(B, 2, T)`` ids+mask tensor; the state is
  ``{"hidden", "mask"}``. The view returns the logits;
* any other model ``torch.fx`` can trace whose blocks are found: the children
  of ``layer1``, ``layer2``, ... ``Sequential`` stages (torchvision-style
  ResNets), of a ``blocks`` / ``features`` / ``layers`` / ``stages``
  ``ModuleList`` or ``Sequential`` (timm-style ViTs, VGG-style CNNs), or of a
  plain ``nn.Sequential``: composite children (blocks, stages), else, in a
  flat list of layers, the pooling layers, else the activations. The traced
  graph is cut at the input of the first block and at every block's output:
  ``embed`` is everything before the first block, each block one segment,
  ``classify`` everything after the last block;
* exit points named by the user (``exit_after``: a pattern such as
  ``"layer1.*"``, where ``*`` matches one name component, or a list of module
  names): the graph is cut after each named module; the segments between the
  cuts are the blocks and the last block includes the model's own head
  (``embed`` and ``classify`` are identities), so every named module is an exit.

A cut is valid when exactly one value crosses it (that value is the state;
batch sizes, ``x.size(0)``, are taken from the state instead);
the blocks are traced as single calls (not through), so their own code, its
training-mode switches included, runs unchanged. The parts find the model's
modules by path at every call (:class:`LivePart`), so a module replaced in the
model later is the one that runs. A decoder language model has no classifier
to exit from and is refused in one line.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from frugalnn.errors import UserError
from frugalnn.models.adapters.hf_view import hf_view, is_hf, refuse_language_model
from frugalnn.models.adapters.traced_view import (
    TracedPart,
    example_pattern,
    find_blocks,
    fx_view,
    pattern_view,
)
from frugalnn.models.adapters.view import LivePart, StagedView, feature_kind_of
from frugalnn.models.base import StagedModel, WrappedModel

__all__ = ["LivePart", "StagedView", "TracedPart", "as_staged", "feature_kind_of",
           "parse_exit_after"]


def parse_exit_after(exit_after: str | Sequence[str] | None) -> list[str] | None:
    """The patterns of ``exit_after`` (a comma-separated string or a list), or ``None``."""
    if exit_after is None:
        return None
    items = exit_after.split(",") if isinstance(exit_after, str) else list(exit_after)
    patterns = [str(p).strip() for p in items if str(p).strip()]
    if not patterns:
        raise UserError("exit_after names no module; give a pattern like 'layer1.*' or module "
                        "names like 'layer1.0,layer2.0'")
    return patterns


def as_staged(model: nn.Module, exit_after: str | Sequence[str] | None = None) -> StagedModel:
    """An ``embed / blocks / classify`` view of ``model`` (see the module docstring).

    ``exit_after``: a pattern (``"layer1.*"``; ``*`` matches one name
    component) or module names after which to exit, instead of the automatic
    choice. A :class:`StagedModel` is returned as it is.
    """
    patterns = parse_exit_after(exit_after)
    base = getattr(model, "base", None)
    if isinstance(model, WrappedModel) and isinstance(base, nn.Module) \
            and not isinstance(base, StagedModel):
        # A conversion that installed its layers inside a user's model (MoE, ACM): the
        # view is of that model, whose modules now include the installed layers.
        return as_staged(base, exit_after)
    if isinstance(model, StagedModel):
        if patterns is not None:
            raise UserError(f"{type(model).__name__} is already staged (embed/blocks/classify); "
                            "choose its exits with positions= (--positions), not exit_after")
        return model
    if not isinstance(model, nn.Module):
        raise UserError(f"early exits need a torch nn.Module, got {type(model).__name__}")
    if is_hf(model):
        refuse_language_model(model)
        if patterns is None:
            view = hf_view(model)
            if view is not None:
                return view
    if patterns is not None:
        return pattern_view(model, patterns)
    blocks = find_blocks(model)
    if blocks is None:
        raise UserError(
            f"{type(model).__name__} is not a staged model and its blocks are not recognised; "
            "name the exit points with exit_after= (CLI: --exit-after), e.g. "
            f"{example_pattern(model)!r}")
    return fx_view(model, blocks)
