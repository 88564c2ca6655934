"""The MoE recipe: public API, CLI == recipe, operating points chosen on validation, flags."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import frugalnn
from frugalnn.cli import main
from frugalnn.data.splits import load_splits
from frugalnn.errors import UserError
from frugalnn.methods.moe.recipe import MoEConfig, run_moe

VIT = {"image_size": 8, "patch_size": 2, "in_channels": 1, "dim": 16, "depth": 1, "heads": 2}
VIT_ARGS = [a for k, v in VIT.items() for a in ("--model-arg", f"{k}={v}")]


def _vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return frugalnn.create_model("vit_tiny", **VIT).eval()


def test_full_budget_reproduces_the_dense_model_through_the_public_api():
    dense = _vit()
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        want = dense(x)
    converted = frugalnn.moe(copy.deepcopy(dense), frugalnn.MoEConfig(experts=4, router_epochs=0),
                             train_data=[(x, torch.zeros(5, dtype=torch.long))])
    assert converted.budget_name == "tau" and converted.budget_values()[-1] == 1.0
    with torch.no_grad():
        torch.testing.assert_close(converted(x), want, rtol=1e-5, atol=1e-5)


def test_cli_and_recipe_write_the_same_records(tmp_path):
    flags = ["--experts", "4", "--router-epochs", "1", "--router-hidden", "8",
             "--budgets", "0.5,1", "--latency-repeats", "1", "--batch-size", "32"]
    limits = ["--train-limit", "96", "--val-limit", "48", "--eval-limit", "40", "--seed", "3"]
    cli = tmp_path / "cli"
    assert main(["moe", "convert", "vit_tiny", *VIT_ARGS, "--data", "digits", *flags, *limits,
                 "--no-progress", "--out", str(cli)]) == 0

    torch.manual_seed(3)  # as the CLI: seeded before the model is built
    model = frugalnn.create_model("vit_tiny", **VIT).eval()
    splits = load_splits("digits", train_limit=96, val_limit=48, test_limit=40, seed=3)
    config = MoEConfig(experts=4, router_epochs=1, router_hidden=8, taus=[0.5, 1.0],
                       latency_repeats=1, batch_size=32, seed=3)
    api = tmp_path / "api"
    run = run_moe(model, config, splits, api)
    for name in ("records.csv", "validation/records.csv"):
        assert (cli / name).read_text() == (api / name).read_text(), name
    assert run.points[str(api)] == json.loads((cli / "extras" / "operating_point.json")
                                              .read_text())
    assert (api / "report").is_dir() and (api / "checkpoint" / "model.safetensors").is_file()


def test_operating_point_is_chosen_on_validation(tmp_path):
    splits = load_splits("digits", train_limit=64, val_limit=32, test_limit=32, seed=0)
    config = MoEConfig(experts=4, router_epochs=1, router_hidden=8, taus=[0.25, 0.5, 1.0],
                       latency_repeats=1, batch_size=32, tolerance_points=100.0)
    run = run_moe(_vit(), config, splits, tmp_path / "r")
    point = json.loads((tmp_path / "r" / "extras" / "operating_point.json").read_text())
    # Any budget is within 100 points: the cheapest (on validation) is chosen.
    assert point["chosen_on"] == "validation" and point["scored_on"] == "test"
    assert point["label"] == "0.25"
    test_rows = {r["label"]: r for r in json.loads((tmp_path / "r" / "summary.json")
                                                   .read_text())["budgets"]}
    assert point["test"]["accuracy"] == test_rows["0.25"]["accuracy"]
    assert "chosen on validation" in (tmp_path / "r" / "extras" / "moe.md").read_text()
    assert run.points[str(tmp_path / "r")] == point
    # In memory: the model comes back at the budget chosen on val_data.
    converted = frugalnn.moe(_vit(), config, train_data=splits.train, val_data=splits.val)
    assert converted.operating_point["chosen_on"] == "validation"
    assert converted.operating_point["budget"] == 0.25


@pytest.mark.parametrize("kwargs, message", [
    ({"experts": None}, "exactly one of"),
    ({"expert_size": 4}, "exactly one of"),
    ({"expert_split": "random"}, "unknown expert split"),
    ({"taus": [1.5]}, "[0, 1]"),
    ({"finetune_epochs": 1, "router_epochs": 0}, "needs trained routers"),
    ({"mode": "fast"}, "routing mode"),
])
def test_config_is_validated(kwargs, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        MoEConfig(**kwargs).validate()


def test_expert_split_flag_is_the_clustering_method(tmp_path, capsys):
    base = ["moe", "convert", "vit_tiny", *VIT_ARGS, "--data", "digits", "--experts", "2",
            "--router-epochs", "0", "--eval-limit", "16", "--val-fraction", "0",
            "--budgets", "1", "--latency-repeats", "1", "--no-progress"]
    with pytest.raises(SystemExit):  # the old spelling is refused, not taken as a data split
        main([*base, "--split", "sequential", "--out", str(tmp_path / "old")])
    capsys.readouterr()
    assert main([*base, "--expert-split", "sequential", "--out", str(tmp_path / "new")]) == 0
    config = json.loads((tmp_path / "new" / "config.json").read_text())
    assert config["moe"]["expert_split"] == "sequential"
    assert config["expert_split"] == "sequential"


def test_model_arg_is_the_one_spelling(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["sparsity", "cnn_small", "--model-args", "image_size=8", "--data", "digits",
              "--out", str(tmp_path / "s")])
    assert "--model-args" in capsys.readouterr().err


def test_sparsity_limit_draws_the_seeded_random_test_subset(tmp_path, capsys):
    out = tmp_path / "sp"
    assert main(["sparsity", "cnn_small", "--model-arg", "in_channels=1", "--model-arg",
                 "image_size=8", "--data", "digits", "--eval-limit", "30", "--seed", "5",
                 "--out", str(out)]) == 0
    data = json.loads((out / "sparsity.json").read_text())
    assert data["examples"] == 30 and data["seed"] == 5
    # The help says what the flag does.
    with pytest.raises(SystemExit):
        main(["sparsity", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "N random examples" in text and "--seed" in text
    assert "--limit " not in text and "--split " not in text
