"""benchmarks/moe_vit_cifar.py: a tiny run end to end, then ``--stage time`` re-measures
its layer timings from the cached checkpoints and leaves every accuracy figure alone."""

from __future__ import annotations

import json

import pytest
from bench_scripts import load_benchmark

TINY = ["--train-limit", "256", "--val-limit", "128", "--test-limit", "128", "--epochs", "1",
        "--dim", "32", "--depth", "1", "--heads", "2", "--experts", "4",
        "--sparsify-examples", "128", "--router-examples", "128", "--finetune-epochs", "1",
        "--finetune-examples", "128", "--finetune-taus", "0.5", "--latency-repeats", "1",
        "--batch-size", "64", "--threads", "1", "--seed", "0"]


@pytest.mark.data
def test_stage_time_replaces_only_the_layer_timings(tmp_path, data_dir, capsys):
    bench = load_benchmark("moe_vit_cifar")
    out = tmp_path / "moe.md"
    flags = [*TINY, "--data-dir", str(data_dir), "--work", str(tmp_path / "work"),
             "--out", str(out)]
    assert bench.main(flags) == 0
    first = json.loads(out.with_suffix(".json").read_text())
    assert "retimed" not in first and first["layer_timing"]["layers"]

    assert bench.main([*flags, "--stage", "time"]) == 0
    again = json.loads(out.with_suffix(".json").read_text())
    assert again["retimed"]["load_while_training"] == first["load"]
    assert again["retimed"]["trained_on"] == first["machine"]
    for key in ("dense", "runs", "point", "half", "control", "reference"):
        assert again[key] == first[key], key  # accuracy, FLOPs, operating points unchanged
    layers = again["layer_timing"]["layers"]
    assert [r["layer"] for r in layers] == [r["layer"] for r in first["layer_timing"]["layers"]]
    assert all(r["dense_ms"] > 0 and r["moe_ms"] > 0 for r in layers)
    text = out.read_text()
    assert "re-measured by `--stage time`" in text and "| - |" not in text

    # the timings belong to one run: other flags, or no run at all, are one line, exit 2
    capsys.readouterr()
    before = out.read_text()
    assert bench.main([*flags, "--stage", "time", "--epochs", "2"]) == 2
    errors = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: --stage time:")
    assert "--epochs 1 (now 2)" in errors[0] and out.read_text() == before
    assert bench.main([*flags[:-4], "--work", str(tmp_path / "none"), "--out",
                       str(tmp_path / "x.md"), "--stage", "time"]) == 2
    assert not (tmp_path / "none").exists() and not (tmp_path / "x.md").exists()
