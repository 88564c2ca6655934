"""Evaluation at budgets: records equal hand-computed predictions, losses and costs."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from frugalnn.cost.ledger import DynamicModule, charge, record, subset
from frugalnn.errors import UserError
from frugalnn.evaluation import evaluate, load_records, load_summary, time_budgets


class Deep(DynamicModule):
    """Charges its own Linear(4, 3): 24 FLOPs per row it runs on."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        charge(2 * 4 * 3)
        return self.fc(x)


class ToyExit(nn.Module):
    """A two-stage toy with a confidence threshold knob (an early exit in miniature).

    Stage one (static, 24 FLOPs) runs on every example; examples whose
    confidence is below the budget go on to the dynamic stage (24 FLOPs more).
    """

    budget_name = "threshold"

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(4, 3)
        self.deep = Deep()
        self.threshold = 2.0

    def budget_values(self) -> list[float]:
        return [0.0, 0.5, 2.0]

    def set_budget(self, value: float) -> None:
        self.threshold = float(value)

    def full_budget(self) -> float:
        return 2.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.first(x)
        conf = out.softmax(dim=1).amax(dim=1)
        idx = (conf < self.threshold).nonzero().squeeze(1)
        record("exit", torch.zeros(x.shape[0]))
        if idx.numel():
            with subset(idx):
                deep = self.deep(x[idx])
                record("exit", torch.ones(idx.numel()))
            out = out.clone()
            out[idx] = deep
        return out


def _data(n: int = 13, lm: bool = False) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return TensorDataset(x, y)


def _loader(ds: TensorDataset, bs: int = 5) -> DataLoader:
    return DataLoader(ds, batch_size=bs, shuffle=False)


def test_static_model_matches_direct_computation() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    ds = _data()
    rec = evaluate(model, _loader(ds), progress=False, method="baseline")
    x, y = ds.tensors
    with torch.no_grad():
        logits = model(x)
    assert len(rec) == 13
    assert math.isnan(rec.budgets()[0]) and len(rec.budgets()) == 1
    np.testing.assert_array_equal(rec.columns["example_id"], np.arange(13))
    np.testing.assert_array_equal(rec.columns["label"], y.numpy())
    np.testing.assert_array_equal(rec.columns["pred"], logits.argmax(1).numpy())
    np.testing.assert_allclose(
        rec.columns["loss"], F.cross_entropy(logits, y, reduction="none").numpy(), rtol=1e-6
    )
    # Linear(4, 8) + Linear(8, 3): 2*4*8 + 2*8*3 FLOPs per example.
    np.testing.assert_array_equal(rec.columns["flops"], np.full(13, 112.0))
    (row,) = rec.per_budget_summary()
    assert row["label"] == "static" and row["macs"] == 56.0
    assert row["accuracy"] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    # A static model given no baseline records none: its saving is unknown, not 0 %.
    assert row["flops_ratio"] is None and rec.meta["baseline_flops"] is None
    assert rec.meta["baseline_source"] == "none"
    assert row["batches"] == 3 and row["throughput"] > 0
    assert [bs for _, bs, _ in rec.batch_times] == [5, 5, 3]


def test_budgeted_model_costs_and_decisions() -> None:
    torch.manual_seed(3)
    model = ToyExit()
    ds = _data(17)
    rec = evaluate(model, _loader(ds, 4), progress=False, method="toy")
    assert model.threshold == 2.0  # restored to full
    x, y = ds.tensors
    with torch.no_grad():
        conf = model.first(x).softmax(1).amax(1).numpy()
    for b in model.budget_values():
        mask = rec.rows_for(b)
        assert mask.sum() == 17
        deep = conf < b
        np.testing.assert_array_equal(rec.columns["flops"][mask], 24.0 + 24.0 * deep)
        np.testing.assert_array_equal(rec.columns["exit"][mask], deep.astype(float))
    summary = {r["label"]: r for r in rec.per_budget_summary()}
    assert summary["0"]["flops"] == 24.0 and summary["2"]["flops"] == 48.0
    assert summary["0"]["flops_ratio"] == 0.5  # baseline defaults to the full budget
    assert summary["2"]["decisions"] == {"exit": 1.0}
    assert summary["0"]["decisions"] == {"exit": 0.0}
    # At full budget every example runs the deep stage: predictions are deep's.
    with torch.no_grad():
        full_pred = model.deep.fc(x).argmax(1).numpy()
    np.testing.assert_array_equal(rec.columns["pred"][rec.rows_for(2.0)], full_pred)
    rows = [r["label"] for r in rec.per_budget_summary()]
    assert rows[0] == "0" and rows[-1] == "2"  # cheapest first


def test_explicit_budgets_and_baseline() -> None:
    rec = evaluate(ToyExit(), _loader(_data()), budgets=[0.0], progress=False,
                   baseline_flops=96.0, baseline_accuracy=0.9)
    (row,) = rec.per_budget_summary()
    assert row["flops_ratio"] == 0.25 and row["flops_saving"] == 0.75
    assert rec.meta["baseline_accuracy"] == 0.9


def test_save_and_load_round_trip(tmp_path) -> None:
    rec = evaluate(ToyExit(), _loader(_data()), progress=False, method="toy")
    rec.latency = [{"budget": 0.0, "batch_size": 1, "median_ms": 0.5}]
    rec.save(tmp_path / "run")
    back = load_records(tmp_path / "run")
    assert list(back.columns) == list(rec.columns)
    for name in rec.columns:
        np.testing.assert_array_equal(back.columns[name], rec.columns[name])
    assert back.batch_times == rec.batch_times
    assert back.per_budget_summary() == rec.per_budget_summary()
    summary = load_summary(tmp_path / "run")
    assert summary["method"] == "toy" and summary["budget_name"] == "threshold"
    assert summary["latency"][0]["median_ms"] == 0.5
    assert "machine" in summary and summary["batch_size"] == 5
    json.dumps(summary, allow_nan=False)  # strict JSON
    with pytest.raises(UserError, match="--force"):
        rec.save(tmp_path / "run")
    rec.save(tmp_path / "run", force=True)


def test_static_summary_json_uses_static_label(tmp_path) -> None:
    rec = evaluate(nn.Linear(4, 3), _loader(_data()), progress=False)
    rec.save(tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["budgets"][0]["budget"] == "static"
    assert summary["budget_name"] == "static"
    back = load_records(tmp_path)
    assert math.isnan(back.budgets()[0])


def test_language_model_loss_is_mean_over_tokens() -> None:
    class TinyLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(7, 7)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.emb(x)

    model = TinyLM()
    x = torch.randint(0, 7, (6, 5))
    y = torch.randint(0, 7, (6, 5))
    rec = evaluate(model, DataLoader(TensorDataset(x, y), batch_size=4), progress=False)
    with torch.no_grad():
        logits = model(x)
    loss = F.cross_entropy(logits.reshape(-1, 7), y.reshape(-1), reduction="none")
    np.testing.assert_allclose(rec.columns["loss"], loss.reshape(6, 5).mean(1).numpy(), rtol=1e-6)
    np.testing.assert_allclose(
        rec.columns["correct"], (logits.argmax(2) == y).double().mean(1).numpy()
    )
    # Padding targets (-100) are left out of both loss and token accuracy.
    y_pad = y.clone()
    y_pad[:, 3:] = -100
    rec = evaluate(model, DataLoader(TensorDataset(x, y_pad), batch_size=4), progress=False)
    loss3 = F.cross_entropy(logits[:, :3].reshape(-1, 7), y[:, :3].reshape(-1), reduction="none")
    np.testing.assert_allclose(rec.columns["loss"], loss3.reshape(6, 3).mean(1).numpy(),
                               rtol=1e-6)
    np.testing.assert_allclose(
        rec.columns["correct"], (logits[:, :3].argmax(2) == y[:, :3]).double().mean(1).numpy()
    )


def test_bad_input_raises_user_error() -> None:
    with pytest.raises(UserError, match="no budget knob"):
        evaluate(nn.Linear(4, 3), _loader(_data()), budgets=[0.5], progress=False)
    with pytest.raises(UserError, match="empty"):
        evaluate(nn.Linear(4, 3), _loader(_data(0)), progress=False)
    with pytest.raises(UserError, match="not found"):
        load_records("/nonexistent/run")


def test_budget_restored_after_error() -> None:
    model = ToyExit()

    def bad_forward(x):
        raise RuntimeError("boom")

    model.deep.forward = bad_forward
    with pytest.raises(RuntimeError):
        evaluate(model, _loader(_data()), budgets=[0.5], progress=False)
    assert model.threshold == 2.0


def test_time_budgets_rows_per_budget_and_batch_size() -> None:
    model = ToyExit()
    rows = time_budgets(model, _loader(_data(20)), batch_sizes=(1, 4), warmup=1, repeats=3,
                        progress=False)
    assert [(r["budget"], r["batch_size"]) for r in rows] == [
        (b, bs) for b in (0.0, 0.5, 2.0) for bs in (1, 4)
    ]
    for r in rows:
        assert r["median_ms"] > 0 and r["distinct_batches"] == 3
        assert r["per_example_ms"] == pytest.approx(r["median_ms"] / r["batch_size"])
    assert model.threshold == 2.0
    with pytest.raises(UserError, match="fewer than"):
        time_budgets(model, _loader(_data(3)), batch_sizes=(8,), progress=False)


def test_time_budgets_interleaves_a_reference_model() -> None:
    model = ToyExit()
    calls: list[str] = []

    class Reference(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append("reference")
            time.sleep(0.002)  # clearly slower than the toy model's cheap budget
            return x

    rows = time_budgets(model, _loader(_data(20)), budgets=[0.0], batch_sizes=(4,),
                        warmup=0, repeats=3, progress=False, reference=Reference(), rounds=2)
    inter = rows[0]["interleaved"]
    assert inter["rounds"] == 2 and len(inter["model_ms"]) == len(inter["reference_ms"]) == 2
    assert inter["speedup"] == pytest.approx(min(inter["reference_ms"]) / min(inter["model_ms"]))
    assert inter["speedup"] > 1.0
    assert len(calls) == 2 * 3  # two rounds of three timed calls, no warm-up
    with pytest.raises(UserError, match="rounds"):
        time_budgets(model, _loader(_data(20)), batch_sizes=(4,), progress=False,
                     reference=Reference(), rounds=0)


def test_max_batches_and_single_batch_timing() -> None:
    model = ToyExit()
    rec = evaluate(model, _loader(_data(20), 4), budgets=[0.5], max_batches=2, progress=False)
    assert len(rec) == 8 and rec.meta["examples"] == 8
    x = _data(12).tensors[0]
    rows = time_budgets(model, x, budgets=[0.0], batch_sizes=(4,), warmup=0, repeats=5,
                        progress=False)
    assert rows[0]["distinct_batches"] == 3 and rows[0]["batch_size"] == 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_records_match_cpu() -> None:
    torch.manual_seed(5)
    model = ToyExit()
    cpu = evaluate(model, _loader(_data()), progress=False)
    gpu = evaluate(model, _loader(_data()), device="cuda", progress=False)
    for col in ("pred", "flops", "exit"):
        np.testing.assert_array_equal(cpu.columns[col], gpu.columns[col])
    np.testing.assert_allclose(cpu.columns["loss"], gpu.columns["loss"], rtol=1e-4)
    assert gpu.meta["device"] == "cuda"
    assert gpu.meta["fingerprint"] == cpu.meta["fingerprint"]  # the same examples


def test_fingerprint_identifies_the_examples_not_the_batching() -> None:
    model = nn.Linear(4, 3)
    ds = _data(13)
    a = evaluate(model, _loader(ds, 5), progress=False).meta["fingerprint"]
    b = evaluate(model, _loader(ds, 4), progress=False).meta["fingerprint"]
    assert a == b and a["count"] == 13 and len(a["sha256"]) == 64
    # Budgets do not count twice: a budgeted model fingerprints the examples once.
    c = evaluate(ToyExit(), _loader(ds, 5), progress=False).meta["fingerprint"]
    assert c == a
    x, y = ds.tensors
    other_labels = evaluate(model, _loader(TensorDataset(x, (y + 1) % 3)), progress=False)
    other_inputs = evaluate(model, _loader(TensorDataset(x + 1e-3, y)), progress=False)
    fewer = evaluate(model, _loader(TensorDataset(x[:12], y[:12])), progress=False)
    shas = {r.meta["fingerprint"]["sha256"] for r in (other_labels, other_inputs, fewer)}
    assert len(shas) == 3 and a["sha256"] not in shas
    # Labels of another integer type are the same labels.
    same = evaluate(model, _loader(TensorDataset(x, y.int())), progress=False)
    assert same.meta["fingerprint"] == a


def test_dict_inputs_are_fingerprinted_per_key() -> None:
    from frugalnn.evaluation import ExampleFingerprint

    x = {"ids": torch.arange(12).reshape(6, 2), "mask": torch.ones(6, 2)}
    y = torch.arange(6)
    whole, parts = ExampleFingerprint(), ExampleFingerprint()
    whole.update(x, y)
    for s in (slice(0, 4), slice(4, 6)):
        parts.update({k: v[s] for k, v in x.items()}, y[s])
    assert whole.to_dict() == parts.to_dict() and whole.count == 6
