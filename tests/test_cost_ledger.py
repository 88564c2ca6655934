"""Per-example ledger: agreement with static counts, the toy dynamic module, rows."""

from __future__ import annotations

import torch
from torch import nn

from frugalnn.cost.count import count_flops, measure, static_flops_excluding_dynamic
from frugalnn.cost.ledger import CostLedger, DynamicModule, charge, record, subset


class MaybeDeep(DynamicModule):
    """The ledger docstring's example: the deep branch runs only where x[:, 0] > 0."""

    def __init__(self):
        super().__init__()
        self.cheap = nn.Linear(8, 8)
        self.deep = nn.Linear(8, 8)

    def forward(self, x):
        out = self.cheap(x)
        charge(2 * 8 * 8)
        idx = (x[:, 0] > 0).nonzero().squeeze(1)
        if idx.numel():
            with subset(idx):
                out = out.index_add(0, idx, self.deep(x[idx]))
                charge(2 * 8 * 8)
                record("deep", 1.0)
        return out


def test_static_model_ledger_equals_measured_flops():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    x = torch.randn(6, 3, 8, 8)
    ledger = CostLedger(batch_size=6)
    with ledger:
        model(x)
        charge(static_flops_excluding_dynamic(model, x))
    assert torch.allclose(
        ledger.flops, torch.full((6,), measure(model, x).flops / 6.0, dtype=torch.float64)
    )


def test_toy_dynamic_module_matches_hand_count():
    model = nn.Sequential(nn.Linear(8, 8), MaybeDeep())
    x = torch.randn(10, 8)
    x[::2, 0] = 1.0  # half the rows take the deep branch...
    x[1::2, 0] = -1.0  # ...but the first layer changes them, so decide on its output
    h = model[0](x)
    deep = h[:, 0] > 0
    static = static_flops_excluding_dynamic(model, x)
    assert static == 2 * 8 * 8  # only the first Linear is outside the dynamic module
    ledger = CostLedger(batch_size=10)
    with ledger:
        model(x)
        charge(static)
    expected = 2 * 8 * 8 + 2 * 8 * 8 + deep.double() * 2 * 8 * 8
    assert torch.equal(ledger.flops, expected)
    assert torch.equal(torch.isnan(ledger.decisions["deep"]), ~deep)
    # the ledger's total agrees with what really ran, as counted from the ops
    assert ledger.flops.sum().item() == count_flops(model, x)


def test_no_ledger_means_no_effect():
    module = MaybeDeep()
    x = torch.randn(4, 8)
    assert torch.equal(module(x), module(x))  # charge/record/subset are no-ops


def test_nested_subsets_map_rows_to_examples():
    ledger = CostLedger(batch_size=6)
    with ledger, subset(torch.tensor([1, 3, 5])):
        with subset(torch.tensor([2, 0])):  # rows 2, 0 of [1, 3, 5] -> examples 5, 1
            charge(torch.tensor([10.0, 20.0]))
            record("exit", torch.tensor([2.0, 0.0]))
        charge(1.0, rows=torch.tensor([0, 0, 2]))  # per-token rows repeat
    assert ledger.flops.tolist() == [0, 22, 0, 0, 0, 11]
    exit_col = ledger.decisions["exit"]
    assert exit_col[5] == 2 and exit_col[1] == 0 and torch.isnan(exit_col[[0, 2, 3, 4]]).all()


def test_record_overwrites_and_stays_per_example():
    ledger = CostLedger(batch_size=3)
    with ledger:
        record("k", 1.0)
        record("k", torch.tensor([4.0]), rows=torch.tensor([2]))
    assert ledger.decisions["k"].tolist() == [1.0, 1.0, 4.0]
