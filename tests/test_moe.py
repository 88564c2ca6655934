"""Dense-to-MoE conversion: exactness at full budget, costs, knob, checkpoints, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from frugalnn.budget import has_budget
from frugalnn.cost.count import count_flops
from frugalnn.cost.ledger import CostLedger
from frugalnn.errors import UserError
from frugalnn.methods.moe import (
    MoEFFN,
    balanced_kmeans,
    convert_to_moe,
    expert_layout,
    hoyer_squared,
    relu_ffn,
    select_dynamic_k,
    select_top_k,
    split_neurons,
)
from frugalnn.models import create_model
from frugalnn.models.base import FeedForward

DIM, HIDDEN = 16, 48


def tiny_vit(activation: str = "relu") -> nn.Module:
    return create_model(
        "vit_tiny", image_size=8, patch_size=2, in_channels=1, dim=DIM, depth=2, heads=2,
        mlp_ratio=HIDDEN / DIM, activation=activation,
    ).eval()


def loader(n_batches: int = 3, batch: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(batch, 1, 8, 8, generator=g), torch.randint(0, 10, (batch,), generator=g))
        for _ in range(n_batches)
    ]


# -- expert split ------------------------------------------------------------------------
def test_balanced_kmeans_is_balanced_partition():
    pts = torch.randn(50, 4).numpy()
    labels = balanced_kmeans(pts, 7, seed=0)
    counts = sorted(int((labels == c).sum()) for c in range(7))
    assert counts == [7, 7, 7, 7, 7, 7, 8]


def test_kmeans_split_groups_similar_rows():
    # Two clear directions: the split must not mix them.
    base = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1.0]])
    w = base.repeat_interleave(6, 0) + 0.01 * torch.randn(12, 4)
    experts = split_neurons(w, 2, method="kmeans")
    groups = sorted(sorted(e.tolist()) for e in experts)
    assert groups == [list(range(6)), list(range(6, 12))]


def test_split_is_partition_all_methods():
    w = torch.randn(HIDDEN, DIM)
    acts = torch.relu(torch.randn(100, HIDDEN))
    for method in ("kmeans", "coactivation", "sequential"):
        experts = split_neurons(w, 5, method=method, activations=acts)
        assert sorted(torch.cat(experts).tolist()) == list(range(HIDDEN))


def test_expert_layout_and_errors():
    assert expert_layout(48, num_experts=6) == (6, 8)
    assert expert_layout(48, expert_size=12) == (4, 12)
    assert expert_layout(50, num_experts=4) == (4, 13)
    with pytest.raises(UserError, match="hidden neurons"):
        expert_layout(48, num_experts=49)
    with pytest.raises(UserError):
        expert_layout(48)
    with pytest.raises(UserError):
        expert_layout(48, num_experts=4, expert_size=12)


# -- selection rules ---------------------------------------------------------------------
def test_dynamic_k_rule():
    scores = torch.tensor([[4.0, 3.0, 1.0, 0.0]])
    assert select_dynamic_k(scores, 1.0).all()
    assert select_dynamic_k(scores, 0.0).tolist() == [[True, False, False, False]]
    assert select_dynamic_k(scores, 0.5).tolist() == [[True, True, False, False]]
    assert select_top_k(scores, 3).tolist() == [[True, True, True, False]]


# -- the layer ----------------------------------------------------------------------------
def _layer(hidden: int = HIDDEN, experts: int = 6) -> tuple[FeedForward, MoEFFN]:
    ffn = FeedForward(DIM, hidden, nn.GELU()).eval()
    parts = split_neurons(ffn.fc1.weight, experts, method="kmeans")
    return ffn, MoEFFN.from_dense(ffn.fc1, nn.GELU(), ffn.fc2, parts, name="f").eval()


@pytest.mark.parametrize("impl", ["gather", "bmm"])
def test_all_experts_equal_dense(impl):
    ffn, layer = _layer(hidden=50, experts=4)  # uneven: padded experts
    layer.set_impl(impl)
    x = torch.randn(3, 5, DIM)
    ref = ffn(x)
    torch.testing.assert_close(layer(x), ref, rtol=1e-5, atol=1e-6)  # full budget: dense path
    # The expert path with every expert selected also equals dense.
    mask = torch.ones(15, 4, dtype=torch.bool)
    out = layer.run_experts(x.reshape(15, DIM), mask).reshape(3, 5, DIM)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_gather_and_bmm_agree_on_sparse_masks():
    _, layer = _layer()
    x = torch.randn(40, DIM)
    mask = torch.rand(40, 6) > 0.6
    mask[0] = False  # a token with no expert gets just the bias
    a = (layer.set_impl("gather"), layer.run_experts(x, mask))[1]
    b = (layer.set_impl("bmm"), layer.run_experts(x, mask))[1]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a[0], layer.fc2_bias.detach())
    # Reference: mask hidden neurons of unselected experts in the dense computation.
    h = nn.functional.gelu(x @ layer.fc1_weight.t() + layer.fc1_bias)
    h = h * mask.repeat_interleave(layer.expert_size, 1)
    torch.testing.assert_close(a, h @ layer.fc2_weight_t + layer.fc2_bias, rtol=1e-5, atol=1e-5)


def test_costs_charged_per_token_match_hand_count():
    ffn, layer = _layer()
    s = layer.expert_size
    assert layer.expert_flops == 2 * DIM * s + 2 * s * DIM
    assert layer.router_flops == 2 * DIM * 128 + 2 * 128 * 6
    x = torch.randn(2, 4, DIM)
    led = CostLedger(2)
    with led:
        layer(x)
    dense = count_flops(ffn, x[:1])  # one example = 4 tokens
    assert led.flops.tolist() == [dense, dense]
    layer.set_mode("topk", k=2)
    led = CostLedger(2)
    with led:
        layer(x)
    per_token = layer.router_flops + 2 * layer.expert_flops
    assert led.flops.tolist() == [4 * per_token, 4 * per_token]
    assert led.decisions["experts_per_token/f"].tolist() == [2.0, 2.0]


def test_dynamic_charges_follow_selection():
    _, layer = _layer()
    layer.set_tau(0.5)
    x = torch.randn(3, 5, DIM)
    led = CostLedger(3)
    with led:
        layer(x)
    mask = layer.select(layer.scores(x.reshape(-1, DIM))).reshape(3, 5, -1)
    per_ex = mask.sum((1, 2)).double() * layer.expert_flops + 5 * layer.router_flops
    torch.testing.assert_close(led.flops, per_ex)
    torch.testing.assert_close(
        led.decisions["experts_per_token/f"], mask.sum(2).double().mean(1)
    )


def test_knob_errors():
    _, layer = _layer()
    with pytest.raises(UserError, match="tau"):
        layer.set_tau(1.5)
    with pytest.raises(UserError, match="tau"):
        layer.set_tau(-0.1)
    with pytest.raises(UserError):
        layer.set_k(7)
    with pytest.raises(UserError):
        layer.set_impl("loop")


# -- the converted model --------------------------------------------------------------------
def test_convert_full_budget_reproduces_and_knob_reduces_cost():
    model = tiny_vit("gelu")
    x = loader(1)[0][0]
    ref = model(x)
    moe = convert_to_moe(
        model, num_experts=6, loader=loader(), router_epochs=2, router_hidden=8
    ).eval()
    assert has_budget(moe) and moe.budget_name == "tau"
    assert moe.full_budget() == 1.0
    torch.testing.assert_close(moe(x), ref, rtol=1e-5, atol=1e-5)
    costs = []
    for tau in moe.budget_values():
        moe.set_budget(tau)
        led = CostLedger(x.shape[0])
        with led:
            moe(x)
        costs.append(float(led.flops.mean()))
    assert costs[0] < costs[-1]  # tau=0 runs one expert per token
    with pytest.raises(UserError):
        moe.set_budget(2.0)
    moe.set_mode("topk")
    assert moe.budget_name == "k" and moe.full_budget() == 6.0
    moe.set_budget(6)
    torch.testing.assert_close(moe(x), ref, rtol=1e-5, atol=1e-5)
    moe.set_budget(1)
    moe.reset_stats()
    moe(x)
    assert moe.ffn_flops_fraction() == pytest.approx(1 / 6)


def test_routers_learn_expert_norms():
    model = tiny_vit()
    moe_a = convert_to_moe(model, num_experts=6, loader=loader(4), router_epochs=0)
    from frugalnn.methods.moe import train_routers

    first = train_routers(moe_a, loader(4), epochs=1, lr=3e-3)
    last = train_routers(moe_a, loader(4), epochs=10, lr=3e-3)
    assert all(last[k] < first[k] for k in first)


def test_checkpoint_roundtrip(tmp_path):
    from frugalnn.train.checkpoint import load_model, save_checkpoint

    model = relu_ffn(tiny_vit("gelu"))
    moe = convert_to_moe(model, expert_size=8, loader=loader(), router_epochs=1).eval()
    moe.set_budget(0.5)
    x = loader(1)[0][0]
    out = moe(x)
    save_checkpoint(tmp_path / "ckpt", moe, {})
    loaded = load_model(tmp_path / "ckpt")
    assert [t["name"] for t in loaded.frugalnn_transforms] == ["ffn_relu", "moe"]
    assert isinstance(loaded.base.blocks[0].mlp.act, nn.ReLU)
    loaded.set_budget(0.5)
    torch.testing.assert_close(loaded(x), out)


def test_model_without_ffn_is_refused():
    with pytest.raises(UserError, match="no feed-forward"):
        convert_to_moe(create_model("cnn_small"), num_experts=2, router_epochs=0)


def test_too_many_experts_is_refused():
    with pytest.raises(UserError, match="hidden neurons"):
        convert_to_moe(tiny_vit(), num_experts=HIDDEN + 1, router_epochs=0)


def test_hoyer_measure_bounds():
    dense = torch.ones(3, 10)
    one_hot = torch.zeros(3, 10)
    one_hot[:, 2] = 5.0
    assert hoyer_squared(dense).item() == pytest.approx(1.0)
    assert hoyer_squared(one_hot).item() == pytest.approx(0.1)


def test_sparsity_enforcement_increases_zeros():
    from torch.utils.data import DataLoader, TensorDataset

    from frugalnn.analysis.sparsity import activation_sparsity
    from frugalnn.methods.moe import enforce_sparsity

    g = torch.Generator().manual_seed(0)
    xs = torch.randn(64, 1, 8, 8, generator=g)
    ys = torch.randint(0, 10, (64,), generator=g)
    dl = DataLoader(TensorDataset(xs, ys), batch_size=16)
    model = tiny_vit("gelu")
    before = activation_sparsity(model, dl).to_dict()["overall_zero_fraction"]
    enforce_sparsity(model, dl, epochs=3, lam=5.0, warmup_steps=4, lr=3e-3, progress=False)
    assert isinstance(model.blocks[0].mlp.act, nn.ReLU)
    after = activation_sparsity(model, dl).to_dict()["overall_zero_fraction"]
    assert before < 0.01 and after > 0.6
    assert not model.blocks[0].mlp.act._forward_hooks  # loss hooks removed


def test_full_budget_cost_equals_dense_count():
    from frugalnn.cost.count import flops_per_example, static_flops_excluding_dynamic

    model = tiny_vit()
    x = loader(1)[0][0]
    dense_flops = flops_per_example(model, x)
    moe = convert_to_moe(model, num_experts=4, split="coactivation", loader=loader(2),
                         router_epochs=0).eval()
    led = CostLedger(x.shape[0])
    with led:
        moe(x)
    total = static_flops_excluding_dynamic(moe, x) + led.flops
    torch.testing.assert_close(total, torch.full_like(total, dense_flops))


def test_sparsity_enforcement_on_a_cnn_penalises_every_relu():
    """No FFN layers: the functional ReLUs of a ResNet are captured and made sparser."""
    from torch.utils.data import DataLoader, TensorDataset

    from frugalnn.analysis.sparsity import activation_sparsity
    from frugalnn.methods.moe import SparsityLoss, enforce_sparsity
    from frugalnn.methods.moe.sparsify import _ReluCapture

    probe = create_model("resnet20", num_classes=10)
    assert SparsityLoss(probe, None).sites == "relu"
    acts: list[torch.Tensor] = []
    with torch.no_grad(), _ReluCapture(acts):
        probe.eval()(torch.randn(2, 3, 32, 32))
    assert len(acts) == 19  # ResNet-20: the stem ReLU + 2 per basic block, all functional

    # The penalty (not just the fine-tuning) is what makes a ReLU network sparser.
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(64, 1, 8, 8, generator=g)
    ys = torch.randint(0, 10, (64,), generator=g)
    dl = DataLoader(TensorDataset(xs, ys), batch_size=16)
    zeros = {}
    for lam in (0.0, 5.0):
        torch.manual_seed(0)
        model = create_model("mlp", input_shape=(1, 8, 8), hidden=64, depth=3)
        enforce_sparsity(model, dl, epochs=4, lam=lam, warmup_steps=2, lr=1e-2, progress=False)
        zeros[lam] = activation_sparsity(model, dl).to_dict()["overall_zero_fraction"]
    assert zeros[5.0] > zeros[0.0] + 0.2, zeros


def test_sparsity_enforcement_refuses_models_without_relu():
    from torch.utils.data import DataLoader, TensorDataset

    from frugalnn.methods.moe import enforce_sparsity

    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    dl = DataLoader(TensorDataset(torch.randn(4, 4), torch.randint(0, 2, (4,))), batch_size=2)
    with pytest.raises(UserError, match="calls no ReLU"):
        enforce_sparsity(model, dl, epochs=1, progress=False)
    with pytest.raises(UserError, match="unknown sparsity sites"):
        enforce_sparsity(model, dl, epochs=1, sites="gelu", progress=False)


def _kl_to(model, teacher, xs) -> float:
    import torch.nn.functional as F

    with torch.no_grad():
        return float(sum(F.kl_div(F.log_softmax(model(x), 1), F.log_softmax(teacher(x), 1),
                                  log_target=True, reduction="batchmean") for x in xs))


def test_routed_finetuning_brings_a_low_budget_closer_to_dense():
    import copy

    from frugalnn.methods.moe import finetune_routed

    torch.manual_seed(0)
    data = loader(6, 16)
    moe = convert_to_moe(tiny_vit(), num_experts=6, loader=data, router_epochs=2,
                         router_hidden=8).eval()
    dense = copy.deepcopy(moe).eval()  # at full budget: the dense model
    xs = [x for x, _ in data]
    moe.set_budget(0.3)
    before = _kl_to(moe, dense, xs)
    routers = {k: v.clone() for k, v in moe.state_dict().items() if ".router." in k}
    finetune_routed(moe, as_loader(data), taus=[0.3], epochs=8, lr=3e-3, kd_weight=1.0,
                    router_epochs=0)
    assert moe.budget_name == "tau"
    assert all(m.tau == 1.0 for m in moe.moe_layers())  # returned at full budget
    for k, v in moe.state_dict().items():
        if ".router." in k:
            assert torch.equal(v, routers[k]), k  # routers frozen while the experts train
    moe.set_budget(0.3)
    after = _kl_to(moe, dense, xs)
    assert after < 0.3 * before


def test_routed_finetuning_refits_routers_and_validates():
    from frugalnn.methods.moe import RoutedLoss, finetune_routed

    data = loader(2, 8)
    moe = convert_to_moe(tiny_vit(), num_experts=4, loader=data, router_epochs=1,
                         router_hidden=8).eval()
    routers = {k: v.clone() for k, v in moe.state_dict().items() if ".router." in k}
    finetune_routed(moe, as_loader(data), taus=[0.5], epochs=1, router_epochs=1)
    assert any(not torch.equal(v, routers[k]) for k, v in moe.state_dict().items()
               if ".router." in k)
    with pytest.raises(UserError, match="converted MoE"):
        finetune_routed(tiny_vit(), data)
    with pytest.raises(UserError, match="tau"):
        finetune_routed(moe, data, taus=[1.5])
    with pytest.raises(UserError, match="epochs"):
        finetune_routed(moe, data, epochs=0)
    with pytest.raises(UserError, match="at least one tau"):
        RoutedLoss(moe, [])
    # A training step runs at a tau drawn from the list; evaluation keeps the budget.
    loss_fn = RoutedLoss(copy_of(moe), [0.25], kd_weight=0.0)
    moe.train()
    loss_fn(moe, data[0])
    assert all(m.tau == 0.25 for m in moe.moe_layers())
    moe.eval().set_budget(1.0)
    loss_fn(moe, data[0])
    assert all(m.tau == 1.0 for m in moe.moe_layers())


def as_loader(batches):
    from torch.utils.data import DataLoader, TensorDataset

    xs = torch.cat([x for x, _ in batches])
    ys = torch.cat([y for _, y in batches])
    return DataLoader(TensorDataset(xs, ys), batch_size=len(batches[0][0]), shuffle=True)


def copy_of(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).eval()


def test_embedding_objective_measures_cosine_distance_to_the_teacher():
    import copy

    from frugalnn.methods.moe import RoutedLoss, SparsityLoss

    model = tiny_vit()
    x = torch.randn(4, 1, 8, 8)
    same = SparsityLoss(model, copy.deepcopy(model), objective="embedding", lam=0.0)
    assert float(same(model, (x,))[0]) == pytest.approx(0.0, abs=1e-5)
    other = tiny_vit()
    assert float(SparsityLoss(model, other, objective="embedding", lam=0.0)(model, (x,))[0]) > 0.01
    moe = convert_to_moe(copy.deepcopy(model), num_experts=4, router_epochs=0).eval()
    routed = RoutedLoss(copy_of(moe), [1.0], objective="embedding")
    assert float(routed(moe, (x,))[0]) == pytest.approx(0.0, abs=1e-5)
