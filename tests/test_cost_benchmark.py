"""Smoke test of benchmarks/reference_models.py on one tiny model (no data needed)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "reference_models.py"


def test_reference_models_writes_markdown_and_json(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH.parent))  # the script imports benchmarks/_common.py
    spec = importlib.util.spec_from_file_location("reference_models", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
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
