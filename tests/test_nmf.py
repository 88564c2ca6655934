"""NMF token mixing: the decomposition, the drop-in mixer, costs and checkpoints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from frugalnn.cost.count import count_flops
from frugalnn.errors import UserError
from frugalnn.methods.lowrank.nmf import (
    NMFMixer,
    khatri_rao,
    nmf_reconstruct,
    ntf_reconstruct,
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


# -- NTF: non-negative CP of the tokens x channels x heads tensor -------------------------


def _cp_tensor(n: int = 2) -> torch.Tensor:
    torch.manual_seed(0)
    a, b, c = torch.rand(n, 20, 3), torch.rand(n, 8, 3), torch.rand(n, 4, 3)
    return torch.einsum("nir,njr,nkr->nijk", a, b, c)


def _ntf_init(n: int = 2, rank: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return (F.normalize(torch.rand(n, 8, rank, generator=gen), dim=1),
            F.normalize(torch.rand(n, 4, rank, generator=gen), dim=1))


def test_ntf_error_decreases_on_an_exact_cp_tensor() -> None:
    x, init = _cp_tensor(), _ntf_init()
    errs = [_rel(ntf_reconstruct(x, init, s), x) for s in (0, 5, 50, 300)]
    assert all(b <= a + 1e-6 for a, b in zip(errs, errs[1:]))
    assert errs[-1] < 0.25 * errs[0]


def test_ntf_khatri_rao_unfolding_matches_einsum() -> None:
    # The MTTKRP as a matmul with the Khatri-Rao product is the CP contraction.
    x, (b, c) = _cp_tensor(), _ntf_init()
    n, i, j, k = x.shape
    mttkrp = x.reshape(n, i, j * k) @ khatri_rao(b, c)
    torch.testing.assert_close(mttkrp, torch.einsum("nijk,njr,nkr->nir", x, b, c))


def test_ntf_one_step_gradient_and_factors_stay_non_negative() -> None:
    x = _cp_tensor(1).requires_grad_()
    y = ntf_reconstruct(x, _ntf_init(1), steps=40)
    assert (y >= 0).all()
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


@pytest.mark.parametrize("fn", ["nmf", "projective", "ntf"])
def test_negative_input_is_user_error_naming_its_source(fn: str) -> None:
    if fn == "ntf":
        x = _cp_tensor(1)
        x[0, 3, 2, 1] = -0.5
        with pytest.raises(UserError, match=r"ntf_reconstruct \(x\).*\[0, 3, 2, 1\].*ReLU"):
            ntf_reconstruct(x, _ntf_init(1), 2)
        bad_b = (-_ntf_init(1)[0], _ntf_init(1)[1])
        with pytest.raises(UserError, match="mode-2 factor"):
            ntf_reconstruct(_cp_tensor(1), bad_b, 2)
        return
    x = torch.rand(1, 8, 6)
    x[0, 1, 2] = -1.0
    bases = F.normalize(torch.rand(1, 8, 2), dim=1)
    call = nmf_reconstruct if fn == "nmf" else projective_reconstruct
    with pytest.raises(UserError, match=rf"{call.__name__} \(x\).*\[0, 1, 2\]"):
        call(x, bases, 2)


def test_ntf_mixer_handles_negative_block_inputs_and_trains() -> None:
    # A transformer block's input is signed; the mixer's ReLU after proj_in makes it valid.
    mixer = NMFMixer(32, rank=6, heads=4, variant="ntf").eval()
    x = torch.randn(3, 10, 32) - 1.0
    y = mixer(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    torch.testing.assert_close(mixer(x), y)
    mixer.train()
    mixer(x).sum().backward()
    assert mixer.proj_in.weight.grad is not None and mixer.proj_in.weight.grad.abs().sum() > 0


def test_ntf_rank_is_bounded_by_the_tensor() -> None:
    NMFMixer(16, rank=16, heads=4, variant="ntf")  # R up to channels x heads
    with pytest.raises(UserError, match="NTF rank 17"):
        NMFMixer(16, rank=17, heads=4, variant="ntf")


def test_ntf_flops_hand_count() -> None:
    # tokens n, d channels per head, s heads, rank R, K eval steps (+1 gradient step).
    n, d, s, r, k = 5, 8, 4, 4, 2
    dim = d * s
    mixer = NMFMixer(dim, rank=r, steps=k, eval_steps=k, heads=s, variant="ntf").eval()
    init = 2 * n * dim * r + 2 * d * r * r + 2 * s * r * r  # X_(1) (C kr B), B^T B, C^T C
    # per step: three MTTKRPs (n*d*s*R multiply-adds each), three denominators and
    # three Gram matrices (R^2 per row of the updated factor each)
    step = 3 * 2 * n * dim * r + 2 * 2 * r * r * (n + d + s)
    out = 2 * n * dim * r  # A (C kr B)^T
    linears = 2 * (2 * n * dim * dim)
    assert count_flops(mixer, torch.randn(1, n, dim)) == init + (k + 1) * step + out + linears
    f = {t: count_flops(mixer, torch.randn(1, t, dim)) for t in (16, 32, 64)}
    assert f[64] - f[32] == 2 * (f[32] - f[16])  # linear in tokens


def test_vit_with_ntf_checkpoint_round_trip(tmp_path) -> None:
    model = replace_attention(_vit(), rank=4, steps=2, heads=2, variant="ntf")
    assert all(b.attn.variant == "ntf" for b in model.blocks)
    x = torch.randn(3, 1, 8, 8)
    ref = model(x)
    save_checkpoint(tmp_path / "ckpt", model)
    loaded = load_model(tmp_path / "ckpt")
    torch.testing.assert_close(loaded(x), ref)
    torch.testing.assert_close(loaded.blocks[0].attn.head_bases, model.blocks[0].attn.head_bases)


def test_ntf_from_the_cli(tmp_path) -> None:
    from frugalnn.cli import main

    out = tmp_path / "ntf"
    argv = ["lowrank", "nmf", "--model-arg", "dim=32", "--model-arg", "depth=1",
            "--model-arg", "heads=2", "--model-arg", "patch_size=2", "--data", "digits",
            "--variant", "ntf", "--heads", "4", "--epochs", "1", "--rank", "6", "--steps", "2",
            "--train-limit", "64", "--eval-limit", "32", "--latency-repeats", "2",
            "--latency-batch-sizes", "1", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    model = load_model(out / "checkpoint")
    assert model.blocks[0].attn.variant == "ntf" and model.blocks[0].attn.heads == 4
