"""benchmarks/smollm2_ffn_bound.py: the oracle FFNs keep what they say and, keeping
everything, equal the FFN they wrap (no model download)."""

from __future__ import annotations

import pytest
import torch
from bench_scripts import load_benchmark
from torch import nn

from frugalnn.methods.moe.layer import MoEFFN

bound = load_benchmark("smollm2_ffn_bound")


class GatedMLP(nn.Module):
    """The attribute names of a Llama MLP."""

    def __init__(self, dim: int = 6, hidden: int = 8) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)
        self.act_fn = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


@pytest.fixture(autouse=True)
def _reset_skip():
    yield
    bound.SKIP.update(s=0.0, pooled=False)


def test_keep_mask_per_token_and_pooled():
    score = torch.tensor([[4.0, 3.0, 2.0, 1.0], [1.0, 1.0, 1.0, 5.0]])
    assert bound.keep_mask(score, 0.5, False).tolist() == [
        [True, True, False, False], [True, True, True, True]]  # ties at the cut are kept
    # Pooled: relative to each row's total (0.4 0.3 0.2 0.1 | 0.125 x3, 0.625), 4 of 8 kept.
    assert bound.keep_mask(score, 0.5, True).tolist() == [
        [True, True, True, False], [False, False, False, True]]
    assert bound.keep_mask(score, 0.0, True).all()


def test_neuron_oracle_keeps_everything_at_skip_zero_and_the_top_neurons_otherwise():
    torch.manual_seed(0)
    mlp = GatedMLP()
    x = torch.randn(2, 5, 6)
    oracle = bound.NeuronOracle(mlp, lambda g, h: h.abs())
    torch.testing.assert_close(oracle(x), mlp(x))
    bound.SKIP.update(s=0.75)
    h = mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
    top = h.abs().topk(2, dim=-1).indices
    kept = torch.zeros_like(h).scatter(-1, top, 1.0)
    torch.testing.assert_close(oracle(x), mlp.down_proj(h * kept))


def test_expert_oracle_equals_the_moe_layer_at_skip_zero_and_drops_the_weakest_experts():
    torch.manual_seed(0)
    layer = MoEFFN(6, 6, num_experts=4, expert_size=3, act=nn.SiLU(), gated=True)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    x = torch.randn(2, 5, 6)
    oracle = bound.ExpertOracle(layer)
    torch.testing.assert_close(oracle(x), layer.dense(x.reshape(-1, 6)).reshape(2, 5, 6))
    bound.SKIP.update(s=0.75)  # one expert of four per token: the one of largest output
    x2 = x.reshape(-1, 6)
    h = layer.hidden(x2)
    ys = torch.stack([h[:, 3 * e:3 * e + 3] @ layer.fc2_weight_t[3 * e:3 * e + 3]
                      for e in range(4)], 1)
    best = ys.norm(dim=-1).argmax(-1)
    want = ys[torch.arange(10), best] + layer.fc2_bias
    torch.testing.assert_close(oracle(x), want.reshape(2, 5, 6))


def test_swap_in_replaces_nested_matches():
    model = nn.Sequential(GatedMLP(), nn.Sequential(nn.ReLU(), GatedMLP()))
    n = bound.swap_in(model, lambda c: bound.NeuronOracle(c, lambda g, h: h.abs())
                      if isinstance(c, GatedMLP) else None)
    assert n == 2
    assert isinstance(model[0], bound.NeuronOracle)
    assert isinstance(model[1][1], bound.NeuronOracle)


def test_output_subspace_is_the_best_rank_r_map_on_the_inputs():
    torch.manual_seed(0)
    layer = nn.Linear(6, 8, bias=False)
    x = torch.randn(50, 6)
    v = bound.output_subspace(x, layer, 3)
    y = layer(x)
    err = (y - y @ v @ v.T).pow(2).sum()
    # Eckart-Young: the error is the energy beyond the top 3 singular values of y.
    sv = torch.linalg.svdvals(y)
    torch.testing.assert_close(err, sv[3:].pow(2).sum(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(v.T @ v, torch.eye(3), rtol=1e-5, atol=1e-5)


def test_neuron_predictor_at_full_rank_keeps_the_oracle_neurons():
    torch.manual_seed(0)
    mlp = GatedMLP(dim=6, hidden=8)
    fit, x = torch.randn(100, 6), torch.randn(2, 5, 6)
    predicted = bound.NeuronPredicted(mlp, fit, rank=8)  # the whole output space: exact
    oracle = bound.NeuronOracle(mlp, lambda g, h: h.abs())
    torch.testing.assert_close(predicted(x), mlp(x))
    bound.SKIP.update(s=0.5)
    torch.testing.assert_close(predicted(x), oracle(x), rtol=1e-4, atol=1e-5)
    low = bound.NeuronPredicted(mlp, fit, rank=1)  # a rank-1 guess keeps other neurons
    assert not torch.allclose(low(x), oracle(x))


def test_ffn_inputs_records_what_each_gated_ffn_saw():
    torch.manual_seed(0)

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 6)
            self.mlp = GatedMLP()

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.mlp(self.emb(ids))

    model = Tiny()
    data = torch.utils.data.TensorDataset(torch.randint(0, 10, (5, 4)), torch.zeros(5, 4))
    seen = bound.ffn_inputs(model, torch.utils.data.Subset(data, range(5)), batch_size=2)
    torch.testing.assert_close(seen[model.mlp], model.emb(data.tensors[0]).reshape(-1, 6))
