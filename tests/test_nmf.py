"""NMF token mixing: the decomposition, the drop-in mixer, costs and checkpoints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from frugalnn.cost.count import count_flops
from frugalnn.errors import UserError
from frugalnn.methods.lowrank.nmf import (
    NMFMixer,
    nmf_reconstruct,
    projective_reconstruct,
    replace_attention,
)
from frugalnn.models import create_model
from frugalnn.train.checkpoint import load_model, save_checkpoint


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_nmf_error_decreases_with_steps_on_low_rank_input() -> None:
    x = torch.rand(2, 16, 4) @ torch.rand(2, 4, 40)
    bases = F.normalize(torch.rand(2, 16, 4), dim=1)
    errs = [_rel(nmf_reconstruct(x, bases, s), x) for s in (0, 5, 50, 300)]
    assert all(b <= a + 1e-6 for a, b in zip(errs, errs[1:]))
    assert errs[-1] < 0.5 * errs[0]


def test_projective_nmf_error_decreases() -> None:
    # The stabilised multiplicative rule descends, but only to a local optimum.
    torch.manual_seed(0)
    basis = torch.zeros(1, 16, 4)
    for r in range(4):
        basis[0, 4 * r : 4 * r + 4, r] = torch.rand(4) + 0.5
    x = basis @ torch.rand(1, 4, 40)
    init = F.normalize(torch.rand(1, 16, 4), dim=1)
    errs = [_rel(projective_reconstruct(x, init, s), x) for s in (0, 10, 100, 300)]
    assert all(b <= a + 1e-5 for a, b in zip(errs, errs[1:]))
    assert errs[-1] < 0.5 * errs[0]


def test_one_step_gradient_only() -> None:
    # Gradients reach the input only through the final update: the graph does
    # not grow with the number of no-grad steps.
    x = (torch.rand(1, 8, 12) @ torch.ones(1, 12, 12) / 12).requires_grad_()
    bases = F.normalize(torch.rand(1, 8, 3), dim=1)
    y = nmf_reconstruct(x, bases, steps=50)
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


@pytest.mark.parametrize("variant", ["nmf", "projective"])
def test_mixer_is_a_drop_in_and_deterministic(variant: str) -> None:
    mixer = NMFMixer(32, rank=4, heads=2, variant=variant).eval()
    x = torch.randn(3, 10, 32)
    y = mixer(x)
    assert y.shape == x.shape
    torch.testing.assert_close(mixer(x), y)
    mixer.train()
    y.sum()  # training mode uses `steps` instead of `eval_steps`
    out = mixer(x)
    out.sum().backward()
    assert mixer.proj_in.weight.grad is not None and mixer.proj_out.weight.grad is not None


def test_bad_configuration_is_user_error() -> None:
    with pytest.raises(UserError, match="rank"):
        NMFMixer(16, rank=20)
    with pytest.raises(UserError, match="divisible"):
        NMFMixer(16, rank=2, heads=3)
    with pytest.raises(UserError, match="variant"):
        NMFMixer(16, variant="svd")
    with pytest.raises(UserError, match="attn"):
        replace_attention(create_model("cnn_small", image_size=8))


def _vit() -> torch.nn.Module:
    return create_model("vit_tiny", image_size=8, patch_size=2, in_channels=1, dim=32, depth=2,
                        heads=2).eval()


def test_nmf_cost_is_linear_in_tokens_attention_quadratic() -> None:
    dim, rank, steps = 32, 4, 3
    mixer = NMFMixer(dim, rank=rank, steps=steps, eval_steps=steps).eval()
    f = {n: count_flops(mixer, torch.randn(1, n, dim)) for n in (16, 32, 64)}
    assert f[64] - f[32] == 2 * (f[32] - f[16])  # affine in n: constant cost per token
    attn = _vit().blocks[0].attn
    a = {n: count_flops(attn, torch.randn(1, n, dim)) for n in (16, 32, 64)}
    assert a[64] - a[32] > 2 * (a[32] - a[16])  # superlinear


def test_nmf_flops_hand_count() -> None:
    # One head, d=8, n=5 tokens, R=2, K=1 eval step (+1 gradient step) plus the two Linears.
    d, n, r, k = 8, 5, 2, 1
    mixer = NMFMixer(d, rank=r, steps=k, eval_steps=k).eval()
    init = 2 * n * d * r  # X^T D
    step = (2 * n * d * r + 2 * d * d * r * 0 + 2 * r * d * r + 2 * n * r * r  # C update
            + 2 * d * n * r + 2 * r * n * r + 2 * d * r * r)  # D update
    out = 2 * d * r * n
    linears = 2 * (2 * n * d * d)
    assert count_flops(mixer, torch.randn(1, n, d)) == init + (k + 1) * step + out + linears


@pytest.mark.parametrize("variant", ["nmf", "projective"])
def test_vit_with_nmf_checkpoint_round_trip(tmp_path, variant: str) -> None:
    model = replace_attention(_vit(), rank=4, steps=2, variant=variant)
    assert all(isinstance(b.attn, NMFMixer) for b in model.blocks)
    x = torch.randn(3, 1, 8, 8)
    ref = model(x)
    save_checkpoint(tmp_path / "ckpt", model)
    loaded = load_model(tmp_path / "ckpt")
    torch.testing.assert_close(loaded(x), ref)
