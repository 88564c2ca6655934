"""The ``frugalnn lowrank`` commands and the demo hook, end to end on digits."""

from __future__ import annotations

import json

import pytest

from frugalnn.cli import main
from frugalnn.evaluation import load_summary
from frugalnn.train.checkpoint import load_model


def test_compress_writes_a_run_and_refuses_to_overwrite(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    argv = ["lowrank", "compress", "cnn_small", "--method", "tt", "--target", "flops=2",
            "--data", "digits", "--finetune-epochs", "1", "--train-limit", "128",
            "--eval-limit", "64", "--latency-repeats", "2", "--latency-batch-sizes", "1,8",
            "--random-init", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    for name in ("config.json", "records.csv", "summary.json", "extras/lowrank_model.md",
                 "extras/lowrank_layers.md", "validation/records.csv", "report"):
        assert (out / name).exists(), name
    summary = load_summary(out)
    assert [round(b["budget"], 2) for b in summary["budgets"]] == [0.25, 0.5, 0.75, 1.0]
    model = load_model(out / "checkpoint")
    assert model.budget_name == "rank_fraction"
    assert "x fewer" in (out / "extras" / "lowrank_model.md").read_text()
    # random weights are said loudly: config, method name, extras (and so the report)
    assert "RANDOMLY INITIALISED" in json.loads((out / "config.json").read_text())["weights"]
    assert "RANDOM WEIGHTS" in summary["method"]
    assert "RANDOMLY" in (out / "extras" / "lowrank_random_weights.md").read_text()
    capsys.readouterr()
    assert main(argv) == 2
    assert "--force" in capsys.readouterr().err


def test_compress_without_checkpoint_is_refused(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    argv = ["lowrank", "compress", "cnn_small", "--method", "tt", "--data", "digits",
            "--out", str(out), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--checkpoint" in err and "--random-init" in err and "Traceback" not in err
    assert not out.exists()
    assert main([*argv, "--random-init", "--checkpoint", str(tmp_path)]) == 2
    assert "excludes --checkpoint" in capsys.readouterr().err


def test_cli_and_recipe_give_the_same_model_and_records(tmp_path) -> None:
    import torch

    from frugalnn.data import dataset_info
    from frugalnn.data.splits import load_splits
    from frugalnn.methods.lowrank.recipe import LowRankConfig, run_lowrank
    from frugalnn.models import create_model
    from frugalnn.models.registry import model_kwargs_for
    from frugalnn.train.checkpoint import save_checkpoint

    torch.manual_seed(3)
    base = create_model("cnn_small", **model_kwargs_for("cnn_small", dataset_info("digits"), {}))
    save_checkpoint(tmp_path / "base", base)
    cli_out, api_out = tmp_path / "cli", tmp_path / "api"
    assert main(["lowrank", "compress", "cnn_small", "--checkpoint", str(tmp_path / "base"),
                 "--method", "tucker", "--target", "flops=2", "--data", "digits",
                 "--finetune-epochs", "1", "--train-limit", "96", "--val-limit", "32",
                 "--eval-limit", "48", "--latency-repeats", "1", "--latency-batch-sizes", "1",
                 "--seed", "5", "--out", str(cli_out), "--no-progress"]) == 0
    splits = load_splits("digits", train_limit=96, val_limit=32, test_limit=48, seed=5)
    config = LowRankConfig(method="tucker", target="flops=2", finetune_epochs=1,
                           latency_batch_sizes=(1,), latency_repeats=1, seed=5)
    run = run_lowrank(load_model(tmp_path / "base"), config, splits, api_out, progress=False)
    cli_model = load_model(cli_out / "checkpoint")
    for (name, a), b in zip(cli_model.state_dict().items(), run.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    for sub in ("", "validation"):
        rows = [load_summary(d / sub)["budgets"] for d in (cli_out, api_out)]
        assert [(r["accuracy"], r["flops"]) for r in rows[0]] == \
            [(r["accuracy"], r["flops"]) for r in rows[1]]
    assert load_summary(api_out / "validation")["budgets"][0]["accuracy"] >= 0
    assert (api_out / "report").is_dir() and (api_out / "extras" / "lowrank_model.md").exists()


def test_plan_and_user_errors(capsys) -> None:
    assert main(["lowrank", "plan", "resnet20", "--method", "tucker", "--target", "vbmf"]) == 0
    assert "layers factorised" in capsys.readouterr().out
    assert main(["lowrank", "plan", "mlp", "--method", "cp"]) == 2
    assert "nothing to factorise" in capsys.readouterr().err
    assert main(["lowrank", "plan", "resnet20", "--method", "tucker", "--target", "rank=99"]) == 2
    assert "impossible" in capsys.readouterr().err
    assert main(["lowrank", "plan", "resnet20", "--method", "tt", "--target", "flops=0.5"]) == 2
    capsys.readouterr()
    assert main(["lowrank", "plan", "resnet20", "--method", "tt", "--rank-multiple", "8",
                 "--layer-target", "blocks.[0-2].*:flops=1.5"]) == 0
    out = capsys.readouterr().out
    assert "| 16,16,16 |" in out and "multiple of 8" in out
    assert main(["lowrank", "plan", "resnet20", "--method", "tt",
                 "--layer-target", "nosuch.*:flops=2"]) == 2
    assert "match no eligible layer" in capsys.readouterr().err


def test_nmf_command(tmp_path) -> None:
    out = tmp_path / "nmf"
    argv = ["lowrank", "nmf", "--model-arg", "dim=32", "--model-arg", "depth=1",
            "--model-arg", "heads=2",
            "--model-arg", "patch_size=2", "--data", "digits", "--epochs", "1", "--rank", "4",
            "--steps", "2", "--train-limit", "128", "--eval-limit", "64",
            "--latency-repeats", "2", "--latency-batch-sizes", "1", "--out", str(out),
            "--no-progress"]
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["variant"] == "nmf"
    model = load_model(out / "checkpoint")
    assert type(model.blocks[0].attn).__name__ == "NMFMixer"


@pytest.mark.slow
def test_lowrank_demo_hook(tmp_path) -> None:
    from frugalnn.demo import run_demo

    out = tmp_path / "demo"
    run_demo(out, quick=True, only=["lowrank"], strict=True, progress=False)
    info = json.loads((out / "demo.json").read_text())
    hook = next(h for h in info["hooks"] if h["hook"] == "frugalnn.methods.lowrank.demo")
    assert hook["status"] == "ran" and len(hook["runs"]) == 3
    assert (out / "lowrank-tucker" / "extras" / "lowrank_model.md").exists()


def test_gain_examples_weigh_a_tucker_whole_model_target_from_the_cli(tmp_path) -> None:
    out = tmp_path / "run"
    assert main(["lowrank", "compress", "cnn_small", "--random-init", "--method", "tucker",
                 "--target", "model-flops=1.5", "--gain-examples", "16", "--data", "digits",
                 "--finetune-epochs", "0", "--train-limit", "64", "--eval-limit", "32",
                 "--latency-batch-sizes", "none", "--out", str(out), "--no-progress"]) == 0
    layers = (out / "extras" / "lowrank_layers.md").read_text()
    notes = [line for line in layers.splitlines() if "k3x3" in line]
    assert notes and all("model-flops=1.5" in n and "output gain" in n for n in notes)
    model = load_model(out / "checkpoint")
    assert model.budget_name == "rank_fraction"
