"""``frugalnn.nas`` / ``NASConfig`` / ``run_nas``: the NAS recipe and its data splits."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import TensorDataset

import frugalnn
from frugalnn.cli import main
from frugalnn.evaluation import load_summary
from frugalnn.methods.nas import commands
from frugalnn.methods.nas import pipeline as nas_pipeline
from frugalnn.methods.nas.recipe import NASConfig, run_nas

SPACE = dict(stem_channels=8, first_channels=8, stages=[(8, 2, 1), (16, 1, 2)],
             head_channels=16, candidates=["mb3_e3", "sep3", "zero"])
TIMING = dict(repeats=2, rounds=1, calibrate=0)


@pytest.fixture
def table(tmp_path):
    return str(tmp_path / "table.json")


def test_limit_flag_is_gone_and_the_shared_data_flags_draw_the_library_splits(capsys) -> None:
    assert not hasattr(commands, "_random_subset")
    argv = ["nas", "search", "--data", "digits", "--latency-target", "1", "--out", "x"]
    with pytest.raises(SystemExit):  # argparse: unrecognised argument
        main([*argv, "--limit", "10"])
    assert "unrecognized arguments: --limit" in capsys.readouterr().err
    from frugalnn.cli import build_parser
    from frugalnn.cli.common import load_splits_from_args
    from frugalnn.data.splits import load_splits

    args = build_parser().parse_args([*argv, "--train-limit", "50", "--val-limit", "20",
                                      "--eval-limit", "30", "--seed", "4"])
    got = load_splits_from_args(args)
    want = load_splits("digits", train_limit=50, val_limit=20, test_limit=30, seed=4)
    for a, b in ((got.train, want.train), (got.val, want.val), (got.test, want.test)):
        assert a.indices == b.indices


def test_architecture_steps_use_the_validation_split_never_test(tmp_path, table,
                                                                monkeypatch) -> None:
    splits = frugalnn.load_splits("digits", train_limit=96, val_limit=32, test_limit=32)
    seen = {}
    real = nas_pipeline.run_search

    def spy(net, latency, train_loader, arch_loader, cfg, **kw):
        seen["weights"], seen["arch"] = train_loader.dataset, arch_loader.dataset
        return real(net, latency, train_loader, arch_loader, cfg, **kw)

    monkeypatch.setattr(nas_pipeline, "run_search", spy)
    config = NASConfig(latency_target_ms=50, epochs=1, warmup_epochs=0, retrain_epochs=0,
                       batch_size=32, space=SPACE, table=table, **TIMING)
    run = run_nas(config, splits, tmp_path / "run", progress=False)
    assert seen["arch"] is splits.val and seen["weights"] is splits.train
    assert run.model is None and (run.out / "arch.json").exists()
    assert json.loads((run.out / "config.json").read_text())["architecture_chosen_on"] == \
        "validation"
    no_val = frugalnn.load_splits("digits", val_fraction=0, train_limit=64, test_limit=32)
    with pytest.raises(frugalnn.UserError, match="validation split"):
        run_nas(config, no_val, tmp_path / "run2", progress=False)
    assert not (tmp_path / "run2").exists()


def test_cli_and_recipe_give_the_same_architecture_and_records(tmp_path, table) -> None:
    space = tmp_path / "space.json"
    space.write_text(json.dumps(SPACE))
    assert main(["nas", "search", "--data", "digits", "--space", str(space), "--table", table,
                 "--repeats", "2", "--rounds", "1", "--calibrate", "0", "--epochs", "2",
                 "--warmup-epochs", "1", "--retrain-epochs", "1", "--train-limit", "96",
                 "--val-limit", "32", "--eval-limit", "32", "--batch-size", "32",
                 "--latency-target", "50", "--seed", "2", "--out", str(tmp_path / "cli"),
                 "--no-progress"]) == 0
    splits = frugalnn.load_splits("digits", train_limit=96, val_limit=32, test_limit=32,
                                  seed=2, augment=True)
    config = NASConfig(latency_target_ms=50, epochs=2, warmup_epochs=1, retrain_epochs=1,
                       batch_size=32, space=SPACE, table=table, seed=2, **TIMING)
    torch.set_num_threads(1)  # as the CLI's --threads 1
    run_nas(config, splits, tmp_path / "api", progress=False)
    arch = [json.loads((tmp_path / d / "arch.json").read_text())["ops"] for d in ("cli", "api")]
    assert arch[0] == arch[1]
    for sub in ("", "validation"):
        rows = [load_summary(tmp_path / d / sub)["budgets"] for d in ("cli", "api")]
        assert [r["accuracy"] for r in rows[0]] == [r["accuracy"] for r in rows[1]]


def test_public_nas_returns_a_network_without_validation_data(table) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 1, 8, 8, generator=g)
    data = TensorDataset(x, (x.mean((1, 2, 3)) > 0).long())
    config = frugalnn.NASConfig(latency_target_ms=50, epochs=1, warmup_epochs=0,
                                retrain_epochs=1, batch_size=16, table=table,
                                space={**SPACE, "input_size": 8, "in_channels": 1,
                                       "num_classes": 2}, **TIMING)
    model = frugalnn.nas(config, train_data=data)  # arch steps on a carved 20 % of train
    assert model(x[:3]).shape == (3, 2)
    with pytest.raises(frugalnn.UserError, match="latency target"):
        frugalnn.nas(frugalnn.NASConfig(), train_data=data)
