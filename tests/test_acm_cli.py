"""``frugalnn acm convert`` end to end on the embedded digits, and the demo hook."""

from __future__ import annotations

import json

import pytest
import torch

from frugalnn.cli import main


def test_acm_convert_writes_a_loadable_run(tmp_path):
    out = tmp_path / "run"
    args = ["acm", "convert", "vit_tiny", "--model-arg", "image_size=8", "--model-arg",
            "patch_size=2", "--model-arg", "in_channels=1", "--model-arg", "dim=32",
            "--model-arg", "depth=1", "--model-arg", "heads=2", "--data", "digits",
            "--train-limit", "96", "--eval-limit", "48", "--batch-size", "32",
            "--distill-epochs", "1", "--gate-epochs", "1", "--finetune-epochs", "1",
            "--budgets", "0,0.5,1", "--latency-repeats", "1", "--map-images", "4",
            "--no-progress", "--out", str(out)]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["budget_name"] == "q"
    rows = {r["label"]: r for r in summary["budgets"]}
    assert set(rows) == {"0", "0.5", "1"}
    assert rows["0"]["flops"] < rows["1"]["flops"]
    assert rows["1"]["decisions"]["learners_per_token/blocks.0.mlp"] == 4.0
    assert rows["0"]["decisions"]["learners_per_token/blocks.0.mlp"] == 1.0
    assert (out / "extras" / "compute_map_q0.5.png").is_file()
    assert (out / "extras" / "acm_learners.md").is_file()

    from frugalnn.train.checkpoint import load_model

    model = load_model(out / "checkpoint").eval()
    assert model.budget_values() == [0.0, 0.5, 1.0]
    assert main(args) == 2  # refuses to overwrite without --force
    assert main([*args[:-2], "--learners", "0", "--out", str(tmp_path / "x")]) == 2


@pytest.mark.slow
def test_acm_demo_hook(tmp_path):
    from frugalnn.demo import run_demo

    torch.set_num_threads(1)
    report = run_demo(tmp_path / "demo", quick=True, strict=True, only=["acm"], progress=False)
    assert report.is_file()
    assert (tmp_path / "demo" / "acm" / "extras" / "compute_map_q0.5.png").is_file()
