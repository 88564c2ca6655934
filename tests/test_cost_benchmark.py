"""Smoke test of benchmarks/reference_models.py on one tiny model (no data needed)."""

from __future__ import annotations

import json

from bench_scripts import load_benchmark


def test_reference_models_writes_markdown_and_json(tmp_path):
    module = load_benchmark("reference_models")
    out = tmp_path / "ref.md"
    argv = ["--models", "mlp", "--skip-accuracy", "--warmup", "0", "--repeats", "2",
            "--batch-size", "4", "--out", str(out)]
    assert module.main(argv) == 0
    text = out.read_text()
    assert "| mlp |" in text and "torch_threads: 1" in text and "latency b4" in text
    data = json.loads(out.with_suffix(".json").read_text())
    (row,) = data["models"]
    assert row["cost"]["flops"] == 2 * row["cost"]["macs"]
    assert set(row["latency"]) == {"1", "4"} and row["latency"]["4"]["repeats"] == 2
