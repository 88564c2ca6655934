"""Rank selection: VBMF, spectral energy, compression targets, parsing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from frugalnn.errors import UserError
from frugalnn.methods.lowrank.costs import chain_flops, chain_params
from frugalnn.methods.lowrank.geometry import ConvSpec
from frugalnn.methods.lowrank.rank import (
    Criterion,
    energy_rank,
    ranks_for_ratio,
    select_ranks,
    unfoldings,
)
from frugalnn.methods.lowrank.vbmf import _tau_bar, evbmf


def test_tau_bar_matches_published_approximation() -> None:
    # Nakajima et al. give tau_bar ~ 2.5129 sqrt(alpha) for square matrices.
    assert _tau_bar(1.0) == pytest.approx(2.5129, abs=1e-3)


@pytest.mark.parametrize("shape,rank", [((60, 80), 5), ((100, 40), 10), ((30, 30), 3)])
def test_vbmf_recovers_rank_of_noisy_low_rank_matrix(shape, rank) -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=(shape[0], rank)) @ rng.normal(size=(rank, shape[1]))
    y += 0.3 * rng.normal(size=shape)
    assert evbmf(y).rank == rank


def test_vbmf_sees_no_structure_in_noise() -> None:
    assert evbmf(np.random.default_rng(1).normal(size=(50, 70))).rank == 0


def test_energy_rank() -> None:
    s = np.sqrt(np.array([50.0, 30.0, 15.0, 5.0]))
    assert energy_rank(s, 0.5) == 1
    assert energy_rank(s, 0.8) == 2
    assert energy_rank(s, 0.95) == 3
    assert energy_rank(s, 1.0) == 4


def test_unfoldings_shapes() -> None:
    w = torch.randn(8, 6, 3, 3)
    assert [u.shape for u in unfoldings("tucker", w)] == [(6, 72), (8, 54)]
    assert [u.shape for u in unfoldings("tt", w)] == [(6, 72), (18, 24), (54, 8)]


@pytest.mark.parametrize("method", ["cp", "tucker", "tt"])
@pytest.mark.parametrize("measure", ["flops", "params"])
def test_ratio_target_is_met_and_tight(method: str, measure: str) -> None:
    spec = ConvSpec(32, 64, (3, 3), (1, 1), (1, 1), (1, 1), False)
    hw = (16, 16)
    ranks = ranks_for_ratio(method, spec, hw, measure, 3.0)
    assert ranks is not None

    def cost(r):
        if measure == "params":
            return chain_params(method, spec, r)
        return chain_flops(method, spec, r, *hw)

    dense = spec.dense_params() if measure == "params" else spec.dense_flops(*hw)
    assert cost(ranks) <= dense / 3.0
    bigger = tuple(r + 1 for r in ranks)
    assert cost(bigger) > dense / 3.0 * 0.9  # no much larger ranks would fit


def test_tt_ladder_keeps_end_ranks_full() -> None:
    # Compression targets climb only the middle TT rank: the chain is Kx1 -> 1xK
    # with every channel kept, 3 r (in + out) multiply-adds per output pixel.
    spec = ConvSpec(16, 16, (3, 3), (1, 1), (1, 1), (1, 1), False)
    assert ranks_for_ratio("tt", spec, (32, 32), "flops", 2.0) == (16, 12, 16)
    assert ranks_for_ratio("tt", spec, (32, 32), "flops", 3.0) == (16, 8, 16)
    down = ConvSpec(16, 32, (3, 3), (2, 2), (1, 1), (1, 1), False)
    assert ranks_for_ratio("tt", down, (32, 32), "params", 2.0) == (16, 16, 32)


def test_ratio_impossible_keeps_layer_dense() -> None:
    spec = ConvSpec(3, 4, (3, 3), padding=(1, 1), bias=False)
    assert ranks_for_ratio("tucker", spec, (8, 8), "flops", 50.0) is None


def test_select_ranks_vbmf_on_planted_tucker_structure() -> None:
    torch.manual_seed(0)
    core = torch.randn(5, 4, 3, 3)
    u_out, u_in = torch.randn(48, 5), torch.randn(40, 4)
    w = torch.einsum("bahw,ob,ia->oihw", core, u_out, u_in)
    w = w + 0.01 * torch.randn_like(w)
    conv = nn.Conv2d(40, 48, 3, padding=1, bias=False)
    spec = ConvSpec.of(conv)
    assert select_ranks("tucker", spec, w, (8, 8), Criterion.parse("vbmf")) == (4, 5)
    assert select_ranks("tucker", spec, w, (8, 8), Criterion.parse("energy=0.999")) == (4, 5)


def test_fixed_rank_that_does_not_pay_is_left_dense_and_bad_rank_refused() -> None:
    spec = ConvSpec(8, 8, (3, 3), padding=(1, 1))
    w = torch.randn(8, 8, 3, 3)
    assert select_ranks("tucker", spec, w, (8, 8), Criterion.parse("rank=8")) is None
    assert select_ranks("tucker", spec, w, (8, 8), Criterion.parse("rank=2")) == (2, 2)
    with pytest.raises(UserError):
        select_ranks("tt", spec, w, (8, 8), Criterion.parse("rank=1,2"))


@pytest.mark.parametrize("text", ["flops=0.5", "energy=2", "speed=3", "rank=a", "flops"])
def test_bad_targets_are_user_errors(text: str) -> None:
    with pytest.raises(UserError):
        Criterion.parse(text)


def test_criterion_round_trip() -> None:
    for text in ("flops=2", "params=3.5", "energy=0.9", "vbmf", "latency=0.6", "rank=4,8"):
        assert str(Criterion.parse(text)) == text


def test_rank_multiple_rounds_down_and_keeps_target() -> None:
    spec = ConvSpec(32, 32, (3, 3), (1, 1), (1, 1), (1, 1), False)
    hw = (16, 16)
    # 2.5x: 9*32 / (6 r) <= 1/2.5 of the dense cost -> r = 19 unaligned.
    assert ranks_for_ratio("tt", spec, hw, "flops", 2.5) == (32, 19, 32)
    assert ranks_for_ratio("tt", spec, hw, "flops", 2.5, multiple=8) == (32, 16, 32)
    assert ranks_for_ratio("tt", spec, hw, "flops", 2.0, multiple=8) == (32, 24, 32)
    small = ConvSpec(16, 16, (3, 3), (1, 1), (1, 1), (1, 1), False)
    # No multiple of 16 fits a 3x budget (r <= 8): the unaligned rank is kept.
    assert ranks_for_ratio("tt", small, (32, 32), "flops", 3.0, multiple=16) == (16, 8, 16)
    for method in ("tucker", "tt"):
        for ratio in (1.5, 2.0, 3.0):
            ranks = ranks_for_ratio(method, spec, hw, "flops", ratio, multiple=8)
            assert chain_flops(method, spec, ranks, *hw) <= spec.dense_flops(*hw) / ratio
            assert max(ranks[:2] if method == "tucker" else ranks[1:2]) % 8 == 0
    with pytest.raises(UserError, match="multiple"):
        ranks_for_ratio("tt", spec, hw, "flops", 2.0, multiple=0)
