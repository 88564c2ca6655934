import torch
from torch import nn

from frugalnn.models.embedding8 import Embedding8, embedding_bytes


def test_lookup_dequantises_within_half_a_step() -> None:
    torch.manual_seed(0)
    emb = nn.Embedding(50, 16)
    q = Embedding8.from_float(emb)
    idx = torch.tensor([[0, 3, 49], [7, 7, 1]])
    got = q(idx)
    assert got.dtype == torch.float32 and got.shape == (2, 3, 16)
    step = (emb.weight.max(1).values - emb.weight.min(1).values) / 255
    err = (got - emb(idx)).abs().amax(-1)
    assert bool((err <= step[idx] * 0.5 + 2e-3).all())
    assert torch.equal(got, q.dequantize()[idx])


def test_storage_is_uint8_with_exact_bytes() -> None:
    q = Embedding8.from_float(torch.randn(10, 8))
    assert q.q.dtype == torch.uint8 and q.scale.dtype == torch.float16
    assert q.nbytes == 10 * (8 + 4) == embedding_bytes(10, 8, bits=8)
    assert embedding_bytes(10, 8, bits=32) == 320
    stored = sum(b.numel() * b.element_size() for b in q.buffers())
    assert stored == q.nbytes


def test_constant_rows_survive() -> None:
    w = torch.full((3, 4), 0.25)
    assert torch.allclose(Embedding8.from_float(w).dequantize(), w, atol=1e-3)


def test_state_dict_round_trip() -> None:
    a = Embedding8.from_float(torch.randn(5, 4))
    b = Embedding8(5, 4)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.dequantize(), b.dequantize())
