"""Latency table, expected latency, the search loop and the `frugalnn nas` CLI."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from frugalnn.cli import main
from frugalnn.errors import UserError
from frugalnn.methods.nas import latency as lat_mod
from frugalnn.methods.nas.latency import (
    LatencyModel,
    LatencyTable,
    build_latency_table,
    fit_affine,
    resolve_device,
)
from frugalnn.methods.nas.search import SearchConfig, latency_loss, run_search, short_arch
from frugalnn.methods.nas.space import SearchSpace
from frugalnn.methods.nas.supernet import Supernet

TINY = dict(input_size=8, in_channels=1, num_classes=4, stem_channels=8, first_channels=8,
            stages=[(8, 2, 1), (16, 1, 2)], head_channels=16,
            candidates=("mb3_e3", "mb5_e6", "sep3", "zero"))
COST = {"mb3_e3": 1.0, "mb5_e6": 3.0, "sep3": 0.5}


def tiny_space() -> SearchSpace:
    return SearchSpace(**TINY)


def synthetic_table(space: SearchSpace) -> LatencyTable:
    """A table with known entries (no timing), to test the arithmetic exactly."""
    table = LatencyTable({"device": "cpu", "batch_size": 1})
    table.overhead_ms = 0.1
    table.entries[lat_mod._fixed_key("stem", space, 1)] = 0.2
    table.entries[lat_mod._fixed_key("head", space, 1)] = 0.3
    for slot in space.slots():
        for op in slot.candidates:
            if op != "zero":
                table.entries[lat_mod._slot_key(op, slot, 1)] = COST[op] * (slot.index + 1)
    return table


def test_prediction_is_fixed_cost_plus_block_entries():
    space = tiny_space()
    table = synthetic_table(space)
    ops = ["zero", "mb5_e6", "sep3"]
    assert table.predict(space, ops) == pytest.approx(0.1 + 0.2 + 0.3 + 0 + 3.0 * 2 + 0.5 * 3)
    table.scale, table.offset_ms = 2.0, 0.5
    assert table.predict(space, ops) == pytest.approx(2.0 * 8.1 + 0.5)
    model = LatencyModel(space, table)
    assert model.cheapest() == (["zero", "zero", "sep3"], pytest.approx(2.0 * 2.1 + 0.5))
    # expected latency with one-hot probabilities equals the prediction, and has gradients
    net = Supernet(space)
    with torch.no_grad():
        for m, op in zip(net.mixed_ops, ops):
            m.alpha.fill_(-30.0)
            m.alpha[m.names.index(op)] = 30.0
    assert float(model.expected([m.probs() for m in net.mixed_ops]).detach()) == pytest.approx(
        table.predict(space, ops), rel=1e-5)
    for m in net.mixed_ops:
        m.alpha.data.zero_()
    model.expected([m.probs() for m in net.mixed_ops]).backward()
    grad = net.mixed_ops[1].alpha.grad
    names = net.mixed_ops[1].names
    assert grad[names.index("mb5_e6")] > 0 > grad[names.index("zero")]


def test_table_save_load_and_cache(tmp_path, monkeypatch):
    space = tiny_space()
    path = tmp_path / "t.json"
    table = build_latency_table(space, "cpu", repeats=2, rounds=1, warmup=1, path=path,
                                progress=False)
    slots = space.slots()
    n_ops = len({lat_mod._slot_key(o, s, 1) for s in slots for o in s.candidates if o != "zero"})
    assert len(table.entries) == n_ops + 2 and all(v >= 0 for v in table.entries.values())
    loaded = LatencyTable.load(path)
    assert loaded.entries == table.entries and loaded.device == table.device

    def fail(*a, **k):  # a cached table must not be timed again
        if a and a[0]:
            raise AssertionError("re-timed cached entries")
        return {}

    monkeypatch.setattr(lat_mod, "time_interleaved", fail)
    again = build_latency_table(space, "cpu", repeats=2, rounds=1, warmup=1, path=path,
                                progress=False)
    assert again.entries == table.entries
    path.write_text("{not json")
    with pytest.raises(UserError):
        LatencyTable.load(path)


def test_devices_and_calibration_fit():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(UserError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="not present"):
            resolve_device("cuda")
    assert fit_affine([1.0, 2.0, 3.0], [2.5, 4.5, 6.5]) == pytest.approx((2.0, 0.5))


def test_latency_loss_forms():
    ce = torch.tensor(2.0)
    cfg = SearchConfig(latency_target_ms=2.0, log_unit_ms=0.5)
    at_target = latency_loss(ce, torch.tensor(2.0), cfg)
    assert float(at_target) == pytest.approx(2.0)  # (log T/u / log T/u)^beta = 1
    # twice the target: log(8) / log(4) = 1.5
    assert float(latency_loss(ce, torch.tensor(4.0), cfg)) == pytest.approx(2.0 * 1.5 ** 0.6)
    # the loss does not depend on the time unit latencies are written in
    us = SearchConfig(latency_target_ms=2000.0, log_unit_ms=500.0)
    assert float(latency_loss(ce, torch.tensor(4000.0), us)) == pytest.approx(2.0 * 1.5 ** 0.6)
    with pytest.raises(UserError):
        latency_loss(ce, torch.tensor(1.0), SearchConfig(latency_target_ms=0.4, log_unit_ms=0.5))
    add = SearchConfig(latency_target_ms=2.0, loss="add", lam=0.5)
    assert float(latency_loss(ce, torch.tensor(4.0), add)) == pytest.approx(3.0)
    hinge = SearchConfig(latency_target_ms=2.0, loss="hinge", lam=0.5)
    assert float(latency_loss(ce, torch.tensor(1.5), hinge)) == pytest.approx(2.0)
    assert float(latency_loss(ce, torch.tensor(4.0), hinge)) == pytest.approx(2.5)
    with pytest.raises(UserError):
        SearchConfig(latency_target_ms=1.0, loss="max").validate()
    assert short_arch(["mb3_e6", "zero", "shuffle_g2", "sep3"]) == "3/6 - sh2 s3"


def _loaders(n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long() + 2 * (x[:, 0, 0, 0] > 0).long()
    ds = TensorDataset(x, y)
    return DataLoader(ds, batch_size=16, shuffle=True, generator=g), DataLoader(ds, batch_size=16)


def test_search_rejects_target_below_cheapest():
    space = tiny_space()
    model = LatencyModel(space, synthetic_table(space))
    train, valid = _loaders()
    with pytest.raises(UserError, match="below the cheapest"):
        run_search(Supernet(space), model, train, valid,
                   SearchConfig(latency_target_ms=0.5), progress=False)


def test_latency_pressure_moves_architecture_to_cheaper_ops():
    space = tiny_space()
    model = LatencyModel(space, synthetic_table(space))
    train, valid = _loaders()
    net = Supernet(space)
    start = float(model.expected([m.probs() for m in net.mixed_ops]).detach())
    cfg = SearchConfig(latency_target_ms=3.0, epochs=4, warmup_epochs=1, loss="add", lam=5.0,
                       arch_lr=0.05, prune_threshold=0.05)
    result = run_search(net, model, train, valid, cfg, progress=False)
    assert result.expected_ms < start
    assert result.predicted_ms == pytest.approx(model.predict(result.ops))
    assert len(result.history) == 4 and result.history[0]["phase"] == "warm-up"
    assert "mb5_e6" not in result.ops  # the most expensive op lost everywhere
    # warm-up epochs leave alphas untouched; pruned ops have zero probability
    for probs in result.probabilities:
        assert abs(sum(probs.values()) - 1) < 1e-3


# -- CLI ----------------------------------------------------------------------------------


@pytest.fixture
def space_file(tmp_path):
    path = tmp_path / "space.json"
    path.write_text(json.dumps({k: v for k, v in TINY.items() if k not in ("num_classes",
                                                                        "in_channels")}))
    return path


def test_cli_latency_table_and_errors(tmp_path, space_file, capsys):
    table = tmp_path / "table.json"
    args = ["nas", "latency-table", "--device", "cpu", "--space", str(space_file), "--table",
            str(table), "--repeats", "2", "--rounds", "1", "--calibrate", "0", "--no-progress"]
    assert main(args) == 0
    assert "entries" in capsys.readouterr().out and table.exists()
    assert main([*args[:-1], "--candidates", "mb3_e3,conv9", "--no-progress"]) == 2
    assert "unknown operation 'conv9'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["nas", "latency-table", "--device", "cuda", "--no-progress"]) == 2
        assert "not present" in capsys.readouterr().err


def test_cli_search_derive_and_retrain(tmp_path, space_file, capsys):
    out = tmp_path / "run"
    table = tmp_path / "table.json"
    base = ["nas", "search", "--data", "digits", "--space", str(space_file), "--table",
            str(table), "--repeats", "2", "--rounds", "1", "--calibrate", "0", "--epochs", "2",
            "--warmup-epochs", "1", "--train-limit", "192", "--val-limit", "64",
            "--eval-limit", "64", "--no-progress"]
    assert main([*base, "--latency-target", "0.0001", "--out", str(out)]) == 2
    assert "below the cheapest" in capsys.readouterr().err and not out.exists()
    assert main([*base, "--latency-target", "50", "--retrain-epochs", "1",
                 "--out", str(out)]) == 0
    for name in ("config.json", "arch.json", "search.json", "records.csv", "summary.json",
                 "extras/nas_search.md", "extras/nas_probabilities.png", "checkpoint"):
        assert (out / name).exists(), name
    search = json.loads((out / "search.json").read_text())
    assert search["architecture_chosen_on"] == "validation"
    config = json.loads((out / "config.json").read_text())
    assert config["splits"]["train"] == 192 and config["splits"]["test"] == 64
    assert (out / "validation" / "records.csv").exists() and (out / "report").is_dir()
    assert main([*base, "--latency-target", "50", "--out", str(out)]) == 2  # no --force
    arch_out = tmp_path / "derived.yaml"
    assert main(["nas", "derive", str(out), "--out", str(arch_out)]) == 0
    from frugalnn.methods.nas.space import arch_from_dict
    from frugalnn.train.checkpoint import load_model

    _, ops = arch_from_dict(arch_out)
    assert ops == json.loads((out / "arch.json").read_text())["ops"]
    model = load_model(out / "checkpoint")  # the retrained plain network
    assert model.ops == ops
    assert main(["nas", "derive", str(tmp_path), "--out", str(tmp_path / "x.json")]) == 2
