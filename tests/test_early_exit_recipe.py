"""The early-exit recipe: config, public entry point, CLI/recipe/demo agreement,
thresholds chosen on validation, and the cost of a freshly loaded model's first call."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import frugalnn
from frugalnn.cli import main
from frugalnn.data.splits import load_splits
from frugalnn.errors import UserError
from frugalnn.evaluation import VALIDATION_DIR, load_records
from frugalnn.methods.early_exit.offline import ExitTrace, operating_points
from frugalnn.methods.early_exit.recipe import EarlyExitConfig, run_early_exit
from frugalnn.models import create_model, model_info
from frugalnn.train.checkpoint import load_model, save_checkpoint

LIMITS = {"train_limit": 300, "val_limit": 80, "test_limit": 100}


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """A briefly trained cnn_small run (validation carved from train, seed 0)."""
    base = tmp_path_factory.mktemp("ee_recipe") / "base"
    assert main(["train", "--model", "cnn_small", "--data", "digits", "--epochs", "1",
                 "--train-limit", "300", "--eval-limit", "50", "--out", str(base),
                 "--no-progress", "--threads", "1"]) == 0
    return base


def _splits():
    return load_splits("digits", seed=0, **LIMITS)


def test_config_defaults_match_the_cli_and_validate():
    from frugalnn.cli import build_parser

    args = build_parser().parse_args(["early-exit", "train", "--model", "cnn_small", "--data",
                                      "digits", "--out", "x"])
    from frugalnn.methods.early_exit.commands import config_from_args

    assert config_from_args(args) == EarlyExitConfig()
    assert frugalnn.EarlyExitConfig is EarlyExitConfig
    ztw = EarlyExitConfig.ztw(epochs=3)
    assert ztw.cascade and ztw.ensemble and ztw.epochs == 3
    assert ztw.method_name() == "early-exit ZTW"
    for bad, message in (({"epochs": 0}, "--epochs must be positive"),
                         ({"policy": "nope"}, "unknown policy"),
                         ({"mode": "both"}, "unknown mode"),
                         ({"kd_weight": 0.5}, "--kd-weight applies"),
                         ({"ensemble_folds": 3}, "cross-fitting needs")):
        with pytest.raises(UserError, match=message):
            EarlyExitConfig(**bad).validate()


def test_public_entry_point_trains_heads_and_keeps_the_backbone(base_run):
    splits = _splits()
    backbone = frugalnn.load(base_run / "checkpoint")
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    ee = frugalnn.early_exit(backbone, frugalnn.EarlyExitConfig(epochs=2),
                             train_data=splits.train)
    assert ee.num_internal == len(backbone.blocks) - 1 and not ee.training
    assert ee.at_full_budget()
    for k, v in ee.backbone.state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.raises(UserError, match="pass val_data"):
        frugalnn.early_exit(frugalnn.load(base_run / "checkpoint"),
                            EarlyExitConfig(final_ensemble=True), train_data=splits.train)


def _fake_demo_ctx(tmp_path: Path, backbone: torch.nn.Module, splits) -> SimpleNamespace:
    import copy

    def run_dir(name: str) -> Path:
        path = tmp_path / name
        path.mkdir(parents=True)
        return path

    return SimpleNamespace(
        train_set=splits.train, val_set=splits.val, test_set=splits.test, quick=True,
        seed=0, batch_size=64, device="cpu", threads=None, progress=False,
        baseline_flops=None, baseline_accuracy=None, run_dir=run_dir,
        train_baseline=lambda: (copy.deepcopy(backbone), None))


def _same_records(a: Path, b: Path) -> None:
    ra, rb = load_records(a), load_records(b)
    for col in ("budget", "example_id", "label", "pred", "flops", "exit_index"):
        np.testing.assert_array_equal(ra.columns[col], rb.columns[col], err_msg=col)


def test_cli_recipe_and_demo_hook_give_the_same_run(tmp_path, base_run):
    from frugalnn.methods.early_exit import demo

    config = demo.configs(True, 0, 64)["early-exit-sdn"]
    config = EarlyExitConfig(**{**config.to_dict(), "offline_sweep": True,
                                "budgets": [0.6, 0.9, 1.0]})
    # The CLI with the same settings.
    cli_run = tmp_path / "cli"
    assert main(["early-exit", "train", "--model", "cnn_small", "--data", "digits",
                 "--checkpoint", str(base_run), "--epochs", str(config.epochs), "--lr",
                 str(config.lr), "--train-limit", "300", "--val-limit", "80",
                 "--eval-limit", "100", "--budgets", "0.6", "0.9", "1.0", "--offline-sweep",
                 "--latency-batch-sizes", "1,64", "--latency-repeats", "5",
                 "--out", str(cli_run), "--no-progress"]) == 0
    # The recipe.
    splits = _splits()
    backbone = load_model(base_run / "checkpoint")
    rec = run_early_exit(backbone, config, splits, tmp_path / "recipe", report=False)
    _same_records(cli_run, rec.out)
    _same_records(cli_run / VALIDATION_DIR, rec.out / VALIDATION_DIR)
    cli_nums = json.loads((cli_run / "extras" / "early_exit.json").read_text())
    assert cli_nums == json.loads((rec.out / "extras" / "early_exit.json").read_text())
    assert cli_nums["chosen_on"] == "validation" and cli_nums["val_examples"] == 80
    assert (cli_run / "report").is_dir()  # written last, after the extras
    # The demo hook (real inference instead of the offline sweep: same predictions).
    ctx = _fake_demo_ctx(tmp_path / "demo", load_model(base_run / "checkpoint"), splits)
    demo_runs = demo.run_demo(ctx)
    demo_records, cli_records = load_records(demo_runs[0]), load_records(cli_run)
    for b in (0.6, 0.9, 1.0):
        d = demo_records.columns["budget"] == b
        c = cli_records.columns["budget"] == b
        np.testing.assert_array_equal(demo_records.columns["pred"][d],
                                      cli_records.columns["pred"][c])
        np.testing.assert_allclose(demo_records.columns["flops"][d],
                                   cli_records.columns["flops"][c])
    demo_nums = json.loads((demo_runs[0] / "extras" / "early_exit.json").read_text())
    assert demo_nums["saving_within"] == cli_nums["saving_within"]


def _trace(conf_right: list[float], n: int = 100, flops: tuple = (1.0, 4.0)) -> ExitTrace:
    """Two exits, 10 classes: the early exit is right with confidence ``conf_right[i]``
    on example ``i`` and wrong with confidence 0.55 otherwise; the final exit always right."""
    labels = torch.arange(n) % 10
    early = torch.empty(n, 10)
    final = torch.full((n, 10), -10.0)
    for i in range(n):
        p = abs(conf_right[i])
        guess = labels[i] if conf_right[i] > 0 else (labels[i] + 1) % 10
        early[i] = float(np.log((1 - p) / 9))
        early[i, guess] = float(np.log(p))
        final[i, labels[i]] = 10.0
    exit_flops = torch.tensor([[flops[0]] * n, [flops[1]] * n], dtype=torch.float64)
    return ExitTrace(torch.stack([early, final]), labels, exit_flops,
                     torch.full((n,), flops[1] - 0.5, dtype=torch.float64))


def test_thresholds_are_chosen_on_validation_and_scored_on_test():
    # Validation: the early exit is right whenever it is confident (>= 0.9), so a low
    # threshold looks safe. Test: confident and wrong on half the examples.
    val = _trace([0.95] * 50 + [-0.6] * 50)
    test = _trace([0.95] * 50 + [-0.95] * 50)
    chosen = operating_points(test, "maxprob", val_trace=val, drops=(0.01,), fractions=(0.5,))
    oracle = operating_points(test, "maxprob", drops=(0.01,), fractions=(0.5,))
    assert chosen["chosen_on"] == "validation" and oracle["chosen_on"] == "test (oracle)"
    row = chosen["saving_within"][0.01]
    assert row["val_accuracy"] == pytest.approx(1.0) and row["val_flops_saving"] > 0
    assert 0.6 <= row["threshold"] <= 0.95
    # Scored on test: the threshold lets the confidently wrong half exit.
    assert row["accuracy"] == pytest.approx(0.5)
    assert row["flops_saving"] == pytest.approx(1 - 1.0 / 3.5)
    # The oracle, chosen on test, keeps the backbone's accuracy and saves nothing.
    assert oracle["saving_within"][0.01]["accuracy"] == pytest.approx(1.0)
    assert oracle["saving_within"][0.01]["flops_saving"] < row["flops_saving"]
    at = chosen["accuracy_at_flops"][0.5]
    assert at["val_flops_ratio"] <= 0.5 and at["accuracy"] == pytest.approx(0.5)


def test_first_measure_of_a_freshly_loaded_model_counts_one_call(tmp_path):
    from frugalnn.methods.early_exit import attach_heads

    torch.manual_seed(0)
    ee = attach_heads(create_model("cnn_small"), "every")
    save_checkpoint(tmp_path / "ckpt", ee, {})
    x = torch.randn(1, *model_info("cnn_small").input_shape)
    for threshold in (None, 0.5):
        loaded = load_model(tmp_path / "ckpt").eval()
        if threshold is not None:
            loaded.set_budget(threshold)
        first = frugalnn.measure(loaded, x)
        second = frugalnn.measure(loaded, x)
        assert first.flops == second.flops
        assert first.activation_bytes == second.activation_bytes
        # At the full budget one call costs exactly the backbone.
        if threshold is None:
            assert first.flops == loaded.stage_costs(x).backbone()
