"""Whole-model targets (``model-flops=X`` / ``model-params=X``): the model meets the target,
the cut goes where the spectrum is cheap to lose, bad targets are one clear error."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from frugalnn.cost.count import count_flops
from frugalnn.errors import UserError
from frugalnn.methods.lowrank.compress import compress_model, find_layers, plan_totals
from frugalnn.methods.lowrank.rank import Criterion
from frugalnn.models import create_model


def test_model_flops_target_is_met_on_the_whole_model_and_counted() -> None:
    model, x = create_model("resnet20").eval(), torch.randn(2, 3, 32, 32)
    dense = count_flops(model, x[:1])
    model, plan = compress_model(model, "tucker", "model-flops=2", x)
    counted = count_flops(model, x[:1])
    assert 2.0 <= dense / counted < 2.1  # met, and not overshot by much
    totals = plan_totals(plan)
    assert dense - counted == totals["dense_flops"] - totals["flops"]
    assert all(row.reason.startswith(("model-flops=2", "kept dense")) for row in plan)


def _two_layers(low_rank: int = 4) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    with torch.no_grad():  # the first layer's weight has rank 4: losing rank 5+ costs nothing
        model[0].weight.copy_(torch.randn(64, low_rank) @ torch.randn(low_rank, 64))
    return model.eval()


def test_the_cut_goes_to_the_layer_whose_spectrum_it_costs_least() -> None:
    model, x = _two_layers(), torch.randn(3, 64)
    # Per example: each layer 2*64*64 = 8192 FLOPs (+ the ReLU, uncounted). The rank-4 layer
    # at rank 4 costs 2*4*128 = 1024: 1.78x for the model at no loss of energy.
    model, plan = compress_model(model, "svd", "model-flops=1.5", x)
    rows = {row.name: row for row in plan}
    assert rows["2"].ranks is None
    assert rows["0"].ranks is not None and rows["0"].ranks[0] >= 4
    assert rows["0"].extra["energy_lost"] < 1e-9
    assert count_flops(model, x[:1]) <= 2 * 8192 / 1.5


def test_model_params_target_and_uniform_target_differ_where_spectra_differ() -> None:
    x = torch.randn(3, 64)
    by_model, _ = compress_model(_two_layers(), "svd", "model-params=1.5", x)
    params = sum(p.numel() for p in by_model.parameters())
    assert params <= (2 * 64 * 64 + 2 * 64) / 1.5
    # The per-layer target cuts both layers alike, so it drops energy of the full-rank one.
    _, uniform = compress_model(_two_layers(), "svd", "params=1.5", x)
    assert all(row.ranks is not None for row in uniform)


def test_out_of_reach_and_misplaced_model_targets_are_user_errors() -> None:
    with pytest.raises(UserError, match="out of reach"):
        compress_model(_two_layers(), "svd", "model-flops=50", torch.randn(3, 64))
    with pytest.raises(UserError, match="whole-model"):
        compress_model(_two_layers(), "svd", "flops=2", torch.randn(3, 64),
                       layer_targets=["0:model-flops=2"])
    with pytest.raises(UserError, match="must be > 1"):
        Criterion.parse("model-flops=1")


def test_ladder_costs_are_cheaper_than_dense_and_sorted() -> None:
    from frugalnn.methods.lowrank.allocate import ladder

    model, x = create_model("resnet20").eval(), torch.randn(1, 3, 32, 32)
    target = find_layers(model, "tt", x)[3]
    steps = ladder("tt", target, "flops")
    dense = target.spec.dense_flops(*target.hw)
    assert steps and all(s.cost < dense for s in steps)
    assert [s.cost for s in steps] == sorted(s.cost for s in steps)
    assert all(0.0 <= s.error <= 1.0 for s in steps)


class _Branches(nn.Module):
    """Two equal linear layers whose outputs reach the model's output with weights
    ``big`` and ``small``: their spectra are alike, their effect on the output is not."""

    def __init__(self, big: float = 10.0, small: float = 0.1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(32, 32), nn.Linear(32, 32)
        with torch.no_grad():
            self.b.weight.copy_(self.a.weight)
            self.b.bias.copy_(self.a.bias)
        self.big, self.small = big, small

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.big * self.a(x) + self.small * self.b(x)


def test_output_gain_is_the_measured_change_per_unit_of_dropped_energy() -> None:
    from frugalnn.methods.lowrank.sensitivity import output_sensitivity

    model, x = _Branches().eval(), torch.randn(16, 32)
    original_b = model.b
    torch.manual_seed(1)
    probe = nn.Linear(32, 32)
    with torch.no_grad():
        ref = model(x)
        by_hand = float((0.1 * (probe(x) - model.b(x))).double().pow(2).sum()
                        / ref.double().pow(2).sum()) / 0.25
    gains = output_sensitivity(model, {"a": (copy.deepcopy(model.a), 0.5),
                                       "b": (probe, 0.25)}, x)
    assert gains["a"] == 0.0  # an identical probe changes nothing
    assert gains["b"] == pytest.approx(by_hand, rel=1e-6)
    assert model.b is original_b  # every layer put back
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=0, atol=0)


def test_data_aware_allocation_cuts_the_layer_the_output_feels_least() -> None:
    """Equal spectra and costs: without gains the allocation cannot tell the layers apart;
    with calibration data it measures that ``b`` reaches the output 100x weaker than
    ``a`` and cuts ``b`` deeper."""
    x = torch.randn(256, 32)
    calibration = [(x, None)]
    _, plan = compress_model(_Branches().eval(), "svd", "model-flops=1.5", x[:2],
                             calibration=calibration, gain_examples=32)
    _, blind = compress_model(_Branches().eval(), "svd", "model-flops=1.5", x[:2],
                              calibration=calibration)  # gains off by default
    assert "output_gain" not in blind[0].extra
    rows = {row.name: row for row in plan}
    assert rows["a"].extra["output_gain"] > 100 * rows["b"].extra["output_gain"]
    rank = {n: (r.ranks[0] if r.ranks else 32) for n, r in rows.items()}
    assert rank["b"] < rank["a"]


class _ConvBranches(nn.Module):
    """:class:`_Branches` with two equal 3x3 convolutions (Tucker / tensor-train layers)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(16, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        with torch.no_grad():
            self.b.weight.copy_(self.a.weight)
            self.b.bias.copy_(self.a.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 10.0 * self.a(x) + 0.1 * self.b(x)


@pytest.mark.parametrize("method", ["tucker", "tt"])
def test_gains_weigh_the_allocation_of_every_method_without_data_aware_svd(
        method: str) -> None:
    x = torch.randn(16, 16, 8, 8)
    _, plan = compress_model(_ConvBranches().eval(), method, "model-flops=1.5", x[:2],
                             gain_data=[(x, None)], gain_examples=16)
    _, blind = compress_model(_ConvBranches().eval(), method, "model-flops=1.5", x[:2])
    rows, blind_rows = {r.name: r for r in plan}, {r.name: r for r in blind}
    assert rows["a"].extra["output_gain"] > 100 * rows["b"].extra["output_gain"]
    assert "output_gain" not in blind_rows["a"].extra
    # equal spectra: blind, the two layers are cut alike; with gains b (felt 100x less)
    # is cut deeper than a, which may stay dense
    assert blind_rows["a"].ranks == blind_rows["b"].ranks
    assert rows["b"].ranks is not None
    assert rows["a"].ranks is None or sum(rows["b"].ranks) < sum(rows["a"].ranks)


def test_recipe_measures_gains_on_training_examples_for_any_method() -> None:
    from torch.utils.data import TensorDataset

    from frugalnn.methods.lowrank.recipe import LowRankConfig, compress

    x = torch.randn(32, 16, 8, 8)
    data = TensorDataset(x, torch.zeros(32, dtype=torch.long))
    config = LowRankConfig(method="tucker", target="model-flops=1.5", finetune_epochs=0,
                           gain_examples=8)
    _, plan, _ = compress(_ConvBranches().eval(), config, train_data=data, example=x[:2])
    assert all("output_gain" in row.extra for row in plan)
    with pytest.raises(UserError, match="--gain-examples measures each layer on training"):
        compress(_ConvBranches().eval(), config, example=x[:2])
    per_layer = LowRankConfig(method="tucker", target="flops=1.5", gain_examples=8)
    with pytest.raises(UserError, match="needs a model-flops / model-params target, not"):
        compress(_ConvBranches().eval(), per_layer, train_data=data, example=x[:2])


def test_every_probe_drops_about_the_same_small_share_and_never_nothing() -> None:
    """A probe chosen by cost can drop no energy on a short (calibrated) spectrum, and a
    zero change over zero energy read as a gain of zero: the layer looked free to cut.
    Probes are the steps closest to PROBE_ENERGY among those that drop something."""
    from frugalnn.methods.lowrank.allocate import Candidate
    from frugalnn.methods.lowrank.sensitivity import PROBE_ENERGY, probe_modules

    steps = [Candidate((r,), float(r), e) for r, e in
             ((1, 0.6), (4, 0.03), (8, 0.012), (16, 0.0), (24, 0.0))]
    built: list[tuple[str, tuple[int, ...]]] = []

    def build(target: str, ranks: tuple[int, ...]) -> nn.Module:
        built.append((target, ranks))
        return nn.Identity()

    probes = probe_modules({"short": ("short", steps), "lossless": ("lossless", steps[3:]),
                            "none": ("none", [])}, build)
    assert PROBE_ENERGY == 0.01
    assert built == [("short", (8,))] and probes["short"][1] == 0.012
    assert set(probes) == {"short"}  # no lossy step: no probe, no gain (weighs 1)
    probes = probe_modules({"short": ("short", steps)}, build, energy=0.5)
    assert probes["short"][1] == 0.6


@pytest.mark.parametrize("target, aware", [("flops=1.5", True), ("model-flops=1.5", False)])
def test_gain_examples_without_a_data_aware_whole_model_target_is_one_clear_error(
        target: str, aware: bool) -> None:
    x = torch.randn(64, 32)
    with pytest.raises(UserError, match="--gain-examples weighs a whole-model allocation"):
        compress_model(_Branches().eval(), "svd", target, x[:2],
                       calibration=[(x, None)] if aware else None, gain_examples=8)
