"""Difficulty rankings across runs, reference runs, and per-token compute maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from frugalnn.analysis.rankings import (
    compare_signals,
    load_signals,
    overlap,
    reference_run,
    write_rankings,
)
from frugalnn.errors import UserError
from frugalnn.evaluation import EvalRecords

N = 40


def _save(path, flops_by_budget, *, labels=None, budget_name="q", loss=None, extra=None,
          ids=None, data=None):
    """A run directory with records at the given budgets (NaN key = static)."""
    labels = np.arange(N) % 3 if labels is None else labels
    ids = np.arange(N) if ids is None else ids
    cols: dict[str, list] = {k: [] for k in ("budget", "example_id", "label", "pred", "correct",
                                             "loss", "flops")}
    for b, flops in flops_by_budget.items():
        cols["budget"].append(np.full(N, b))
        cols["example_id"].append(ids)
        cols["label"].append(labels)
        cols["pred"].append(labels)
        cols["correct"].append(np.ones(N))
        cols["loss"].append(np.zeros(N) if loss is None else loss)
        cols["flops"].append(np.asarray(flops, dtype=np.float64))
    columns = {k: np.concatenate(v) for k, v in cols.items()}
    for k, v in (extra or {}).items():
        columns[k] = v
    full = max(float(np.mean(f)) for f in flops_by_budget.values())
    meta = {"method": path.name, "budget_name": budget_name, "baseline_flops": full,
            "config": {"data": data} if data else {}}
    EvalRecords(columns, meta=meta).save(path)
    return path


def test_identical_and_reversed_rankings(tmp_path):
    cost = np.arange(N, dtype=float) + 10
    a = _save(tmp_path / "a", {0.5: cost, 1.0: np.full(N, 100.0)})
    b = _save(tmp_path / "b", {1.0: cost * 2})
    c = _save(tmp_path / "c", {1.0: cost[::-1].copy()})
    study = compare_signals(load_signals([a, b, c], relative_cost=0.3), top_fraction=0.25)
    assert [s.kind for s in study.signals] == ["compute"] * 3
    assert study.signals[0].budget == 0.5  # the varying budget nearest 30 % of the cost
    assert study.spearman[0, 1] == pytest.approx(1.0)
    assert study.kendall[0, 1] == pytest.approx(1.0)
    assert study.spearman[0, 2] == pytest.approx(-1.0)
    assert study.top_overlap[0, 1] == 1.0 and study.top_overlap[0, 2] == 0.0
    assert study.bottom_overlap[0, 1] == 1.0
    assert np.allclose(np.diag(study.top_overlap), 1.0)


def test_overlap_hand_count_and_static_signals(tmp_path):
    a = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], dtype=float)
    b = np.array([10, 9, 3, 4, 5, 6, 7, 8, 2, 1], dtype=float)
    # hardest 20 %: a -> {8, 9}, b -> {0, 1}: no overlap; hardest 30 %: a adds 7, b adds 7.
    assert overlap(a, b, 0.2) == 0.0
    assert overlap(a, b, 0.3) == pytest.approx(1 / 3)
    loss = np.linspace(0, 1, N)
    zero = np.linspace(1, 0, N)
    ref = _save(tmp_path / "ref", {math.nan: np.full(N, 5.0)}, budget_name="static", loss=loss,
                extra={"entropy": loss ** 2, "zero_fraction": zero})
    study = compare_signals(load_signals([ref]))
    assert [s.kind for s in study.signals] == ["loss", "entropy", "active_fraction"]
    np.testing.assert_allclose(study.signals[2].values, 1 - zero)
    assert study.spearman[0, 1] == pytest.approx(1.0)  # monotone transform
    assert study.spearman[0, 2] == pytest.approx(1.0)


def test_different_data_and_missing_flops_are_refused(tmp_path):
    cost = np.arange(N, dtype=float)
    a = _save(tmp_path / "a", {1.0: cost})
    b = _save(tmp_path / "b", {1.0: cost}, labels=np.arange(N) % 5)
    with pytest.raises(UserError, match="different data"):
        load_signals([a, b])
    c = _save(tmp_path / "c", {1.0: cost}, data="mnist")
    d = _save(tmp_path / "d", {1.0: cost}, data="digits")
    with pytest.raises(UserError, match="different data"):
        load_signals([c, d])
    e = _save(tmp_path / "e", {1.0: np.full(N, np.nan)})
    with pytest.raises(UserError, match="no per-example FLOPs"):
        load_signals([a, e])
    with pytest.raises(UserError, match="was not evaluated"):
        load_signals([a], budgets={str(a): 0.7})


def test_write_rankings_files_grids_and_no_overwrite(tmp_path):
    cost = np.arange(N, dtype=float)
    a = _save(tmp_path / "a", {1.0: cost})
    b = _save(tmp_path / "b", {1.0: cost ** 0.5 + np.sin(cost)})
    images = torch.randn(N, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    data = TensorDataset(images, torch.as_tensor(np.arange(N) % 3))
    out = write_rankings([a, b], tmp_path / "out", dataset=data, grid=4)
    text = out.read_text()
    assert "Spearman" in text and "Kendall" in text
    for name in ("correlation.png", "scatter.png", "grid_00_compute.png", "per_example.csv",
                 "rankings.json"):
        assert (tmp_path / "out" / name).is_file()
    with pytest.raises(UserError, match="--force"):
        write_rankings([a, b], tmp_path / "out")
    bad = TensorDataset(images[:10], torch.zeros(10, dtype=torch.long))
    with pytest.raises(UserError, match="--eval-limit"):
        write_rankings([a, b], tmp_path / "out", dataset=bad, force=True)


def test_reference_run_columns_match_hand_computation(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    x = torch.randn(10, 1, 2, 2)
    y = torch.randint(0, 3, (10,))
    run = reference_run(model, TensorDataset(x, y), tmp_path / "ref", batch_size=4)
    from frugalnn.evaluation import load_records

    rec = load_records(run)
    with torch.no_grad():
        h = torch.relu(model[1](x.flatten(1)))
        p = model(x).softmax(-1)
    np.testing.assert_allclose(rec.columns["zero_fraction"], (h == 0).double().mean(1).numpy())
    np.testing.assert_allclose(rec.columns["entropy"], (-(p * p.log()).sum(-1)).double().numpy(),
                               rtol=1e-5)
    study = load_signals([run])
    assert [s.kind for s in study.signals] == ["loss", "entropy", "active_fraction"]


def test_cli_rankings(tmp_path, capsys):
    from frugalnn.cli import main

    cost = np.arange(N, dtype=float)
    a = _save(tmp_path / "a", {0.5: cost, 1.0: cost + 5})
    b = _save(tmp_path / "b", {1.0: cost})
    assert main(["rankings", str(a), str(b), "--out", str(tmp_path / "o"),
                 "--budget", f"{a}=1"]) == 0
    assert (tmp_path / "o" / "rankings.md").is_file()
    assert main(["rankings", str(a), "--out", str(tmp_path / "o2"), "--budget", "oops"]) == 2
    assert main(["rankings", str(tmp_path / "missing"), "--out", str(tmp_path / "o3")]) == 2


def test_compute_maps(tmp_path):
    from frugalnn.report.compute_maps import save_compute_maps, token_grid

    counts = torch.arange(2 * 17, dtype=torch.float64).reshape(2, 17)  # CLS + 4x4 patches
    grid = token_grid(counts)
    assert grid.shape == (2, 4, 4) and grid[0, 0, 0] == 1 and grid[1, 3, 3] == 33
    assert token_grid(counts[:, 1:]).shape == (2, 4, 4)
    with pytest.raises(UserError, match="square"):
        token_grid(torch.zeros(2, 7))
    path = save_compute_maps(counts, torch.randn(2, 3, 8, 8), tmp_path / "m.png", vmin=0)
    assert path.is_file() and path.stat().st_size > 1000
    with pytest.raises(UserError, match="one map per image"):
        save_compute_maps(counts, torch.randn(3, 3, 8, 8), tmp_path / "n.png")


def test_input_dependent_tells_dynamic_from_static_runs(tmp_path):
    from frugalnn.analysis.rankings import input_dependent

    cost = np.arange(N, dtype=float)
    assert input_dependent(_save(tmp_path / "dyn", {0.5: cost, 1.0: np.full(N, 9.0)}))
    assert not input_dependent(_save(tmp_path / "knob", {0.5: np.full(N, 3.0),
                                                         1.0: np.full(N, 9.0)}))


def test_reference_evaluates_the_examples_evaluate_draws(tmp_path):
    """``--eval-limit`` and ``--seed`` pick the same examples as every other command."""
    from frugalnn.cli import main
    from frugalnn.data.splits import load_splits
    from frugalnn.evaluation import load_records
    from frugalnn.models import create_model
    from frugalnn.train.checkpoint import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "ckpt", create_model("mlp", input_shape=[1, 8, 8],
                                                           hidden=8, depth=1))
    assert main(["rankings-reference", str(ckpt), "--data", "digits", "--eval-limit", "30",
                 "--seed", "2", "--out", str(tmp_path / "ref")]) == 0
    test = load_splits("digits", seed=2, test_limit=30).test
    labels = [int(test[i][1]) for i in range(len(test))]
    assert load_records(tmp_path / "ref").columns["label"].tolist() == labels
