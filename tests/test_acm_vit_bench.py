"""benchmarks/acm_vit_cifar.py: a tiny run end to end. ACM is read against the better of the
dense ViT and its same-training control (the dense ViT given ACM's stage III), and running
the same command again trains nothing and re-times the converted layers."""

from __future__ import annotations

import json

import pytest
from bench_scripts import load_benchmark

from frugalnn.evaluation import load_summary

TINY = ["--train-limit", "256", "--val-limit", "128", "--test-limit", "128", "--epochs", "1",
        "--dim", "32", "--depth", "2", "--heads", "2", "--learners", "2",
        "--acm-examples", "128", "--distill-epochs", "1", "--gate-epochs", "1",
        "--finetune-epochs", "1", "--qs", "0,0.5,1", "--latency-repeats", "1",
        "--exit-epochs", "1", "--batch-size", "64", "--threads", "1", "--seed", "0"]


@pytest.mark.data
def test_acm_is_read_against_a_same_training_control(tmp_path, data_dir):
    bench = load_benchmark("acm_vit_cifar")
    work, out, js = tmp_path / "work", tmp_path / "acm.md", tmp_path / "acm.json"
    flags = [*TINY, "--data-dir", str(data_dir), "--work", str(work), "--out", str(out),
             "--json", str(js), "--moe-checkpoint", str(tmp_path / "no-moe")]
    assert bench.main(flags) == 0
    first = json.loads(js.read_text())
    base = load_summary(work / "reference")["budgets"][0]["accuracy"]
    control = load_summary(work / "control")["budgets"][0]["accuracy"]
    assert first["baseline"]["accuracy"] == base
    assert first["control"] == {"accuracy": control}
    assert first["reference_accuracy"] == max(base, control)
    half = first["half_compute"]
    assert half["delta_vs_reference_pt"] == pytest.approx(
        100 * (half["accuracy"] - max(base, control)))
    assert 0 <= half["compute"] <= 1 and "Same-training control" in out.read_text()

    # the same command again: nothing retrained (checkpoints untouched), layers re-timed
    stamps = {p: p.stat().st_mtime_ns for p in work.rglob("*.safetensors")}
    control_summary = (work / "control" / "summary.json").read_text()
    assert bench.main(flags) == 0
    again = json.loads(js.read_text())
    assert {p: p.stat().st_mtime_ns for p in work.rglob("*.safetensors")} == stamps
    assert (work / "control" / "summary.json").read_text() == control_summary
    for key in ("baseline", "control", "reference_accuracy"):
        assert again[key] == first[key], key
    assert again["half_compute"]["accuracy"] == half["accuracy"]
