"""The ``frugalnn moe convert`` and ``frugalnn sparsity`` commands, end to end on digits."""

from __future__ import annotations

import json

import pytest

from frugalnn.cli import main

VIT_ARGS = [
    "--model-arg", "image_size=8", "--model-arg", "patch_size=2", "--model-arg", "in_channels=1",
    "--model-arg", "dim=16", "--model-arg", "depth=1", "--model-arg", "heads=2",
]


def test_moe_convert_then_evaluate(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["moe", "convert", "vit_tiny", *VIT_ARGS, "--data", "digits", "--experts", "4",
            "--router-epochs", "1", "--router-hidden", "8", "--train-limit", "128",
            "--eval-limit", "64", "--budgets", "0.5,1", "--latency-repeats", "1",
            "--compare-topk", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    for name in ("config.json", "records.csv", "summary.json", "checkpoint/model.safetensors",
                 "extras/moe.md", "extras/moe_ffn.png", "topk/records.csv"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    assert [b["label"] for b in sorted(summary["budgets"], key=lambda b: b["budget"])] == [
        "0.5", "1"]
    # Refuses to overwrite without --force.
    assert main(argv) == 2
    assert "--force" in capsys.readouterr().err
    # The checkpoint is evaluable by the shared command.
    ev = tmp_path / "eval"
    assert main(["evaluate", str(out), "--data", "digits", "--limit", "32", "--budgets", "1",
                 "--latency-batch-sizes", "1", "--latency-repeats", "1", "--no-progress",
                 "--out", str(ev)]) == 0
    assert (ev / "records.csv").exists()


@pytest.mark.parametrize(
    "extra, message",
    [(["--experts", "1000"], "hidden neurons"), (["--experts", "2", "--budgets", "1.5"], "tau"),
     (["--experts", "2", "--finetune-epochs", "1", "--finetune-taus", "0.5,2"], "[0, 1]"),
     (["--experts", "2", "--finetune-epochs", "1", "--finetune-taus", "x"], "comma-separated"),
     (["--experts", "2", "--finetune-epochs", "1"], "needs trained routers")],
)
def test_moe_convert_bad_input(tmp_path, capsys, extra, message):
    argv = ["moe", "convert", "vit_tiny", *VIT_ARGS, "--data", "digits", "--router-epochs", "0",
            "--no-progress", "--out", str(tmp_path / "r"), *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_moe_convert_with_routed_finetuning(tmp_path):
    out = tmp_path / "ft"
    argv = ["moe", "convert", "vit_tiny", *VIT_ARGS, "--data", "digits", "--experts", "4",
            "--router-epochs", "1", "--router-hidden", "8", "--train-limit", "128",
            "--eval-limit", "32", "--budgets", "0.5,1", "--latency-repeats", "1",
            "--finetune-epochs", "1", "--finetune-taus", "0.5", "--no-progress",
            "--out", str(out)]
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["finetune_epochs"] == 1 and config["finetune_taus"] == "0.5"
    assert (out / "checkpoint" / "model.safetensors").exists()


def test_moe_convert_refuses_cnn(tmp_path, capsys):
    argv = ["moe", "convert", "cnn_small", "--model-arg", "image_size=8", "--data", "digits",
            "--experts", "2", "--no-progress", "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    assert "no feed-forward" in capsys.readouterr().err


def test_sparsity_command(tmp_path):
    out = tmp_path / "sp"
    assert main(["sparsity", "cnn_small", "--model-arg", "in_channels=1", "--model-arg",
                 "image_size=8", "--data", "digits", "--eval-limit", "50", "--out", str(out)]) == 0
    data = json.loads((out / "sparsity.json").read_text())
    assert data["examples"] == 50 and data["layers"]
    assert (out / "sparsity_per_layer.png").exists()


@pytest.mark.slow
def test_demo_hook_runs(tmp_path):
    from frugalnn.demo import run_demo

    report = run_demo(out=tmp_path / "demo", data="digits", quick=True, strict=True,
                      only=["moe"], progress=False, threads=1)
    dyn = tmp_path / "demo" / "moe-dynamic-k"
    assert report.exists()
    assert (dyn / "extras" / "moe.md").exists() and (dyn / "extras" / "sparsity.md").exists()
    assert (tmp_path / "demo" / "moe-top-k" / "records.csv").exists()
