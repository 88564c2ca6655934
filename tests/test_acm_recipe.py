"""The ACM recipe: public API, CLI == recipe, operating point chosen on validation."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import frugalnn
from frugalnn.cli import main
from frugalnn.data.splits import load_splits
from frugalnn.errors import UserError
from frugalnn.methods.acm.recipe import ACMConfig, run_acm

VIT = {"image_size": 8, "patch_size": 2, "in_channels": 1, "dim": 16, "depth": 1, "heads": 2}
VIT_ARGS = [a for k, v in VIT.items() for a in ("--model-arg", f"{k}={v}")]
NO_TRAINING = {"distill_epochs": 0, "gate_epochs": 0, "finetune_epochs": 0}


def test_full_budget_reproduces_the_dense_model_through_the_public_api():
    torch.manual_seed(0)
    dense = frugalnn.create_model("vit_tiny", **VIT).eval()
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        want = dense(x)
    converted = frugalnn.acm(copy.deepcopy(dense), frugalnn.ACMConfig(learners=4, **NO_TRAINING),
                             train_data=[(x, torch.zeros(5, dtype=torch.long))])
    assert converted.budget_name == "q"
    converted.set_budget(converted.full_budget())
    with torch.no_grad():
        torch.testing.assert_close(converted(x), want, rtol=1e-5, atol=1e-5)


def test_cli_and_recipe_write_the_same_records(tmp_path):
    cli = tmp_path / "cli"
    assert main(["acm", "convert", "vit_tiny", *VIT_ARGS, "--data", "digits",
                 "--train-limit", "64", "--val-limit", "32", "--eval-limit", "32", "--seed", "2",
                 "--batch-size", "32", "--distill-epochs", "1", "--gate-epochs", "1",
                 "--finetune-epochs", "1", "--budgets", "0,0.5,1", "--latency-repeats", "1",
                 "--map-images", "2", "--no-progress", "--out", str(cli)]) == 0

    torch.manual_seed(2)  # as the CLI: seeded before the model is built
    model = frugalnn.create_model("vit_tiny", **VIT).eval()
    splits = load_splits("digits", train_limit=64, val_limit=32, test_limit=32, seed=2)
    config = ACMConfig(distill_epochs=1, gate_epochs=1, finetune_epochs=1, qs=[0, 0.5, 1],
                       batch_size=32, latency_repeats=1, map_images=2, seed=2)
    api = tmp_path / "api"
    run = run_acm(model, config, splits, api)
    for name in ("records.csv", "validation/records.csv"):
        assert (cli / name).read_text() == (api / name).read_text(), name
    point = json.loads((api / "extras" / "operating_point.json").read_text())
    assert point == run.point and point["chosen_on"] == "validation"
    assert point == json.loads((cli / "extras" / "operating_point.json").read_text())
    assert "chosen on validation" in (api / "extras" / "acm_operating_point.md").read_text()
    assert (api / "report").is_dir()


@pytest.mark.parametrize("kwargs, message", [
    ({"learners": 0}, "--learners must be positive"),
    ({"qs": [2.0]}, "q values"),
    ({"target": 0.0}, "target budget"),
    ({"kd_weight": 2.0}, "distillation weight"),
])
def test_config_is_validated(kwargs, message):
    with pytest.raises(UserError, match=message):
        ACMConfig(**kwargs).validate()


def test_val_data_sets_the_operating_point():
    splits = load_splits("digits", train_limit=32, val_limit=32, test_limit=8, seed=0)
    torch.manual_seed(0)
    model = frugalnn.create_model("vit_tiny", **VIT).eval()
    config = ACMConfig(**NO_TRAINING, qs=[0, 1], tolerance_points=100.0)
    converted = frugalnn.acm(model, config, train_data=splits.train, val_data=splits.val)
    assert converted.operating_point["chosen_on"] == "validation"
    assert converted.operating_point["budget"] == 0.0  # within 100 points: the cheapest
