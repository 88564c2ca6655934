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
            "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    for name in ("config.json", "records.csv", "summary.json", "extras/lowrank_model.md",
                 "extras/lowrank_layers.md"):
        assert (out / name).exists(), name
    summary = load_summary(out)
    assert [round(b["budget"], 2) for b in summary["budgets"]] == [0.25, 0.5, 0.75, 1.0]
    model = load_model(out / "checkpoint")
    assert model.budget_name == "rank_fraction"
    assert "x fewer" in (out / "extras" / "lowrank_model.md").read_text()
    capsys.readouterr()
    assert main(argv) == 2
    assert "--force" in capsys.readouterr().err


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
