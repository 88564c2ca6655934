"""The binary and pruning turns of ``frugalnn demo`` (quick), through their recipes."""

from __future__ import annotations

import pytest

pytest.importorskip("torch_pruning")


def test_binary_and_prune_demo_hooks(tmp_path) -> None:
    from frugalnn.demo import run_demo

    hooks = ("frugalnn.methods.binary.demo", "frugalnn.methods.prune.demo")
    report = run_demo(tmp_path / "demo", quick=True, only=["binary", "prune"], hooks=hooks,
                      strict=True, progress=False)
    text = report.read_text()
    assert "binary-xnor" in text and "pruned-flops2" in text
    assert (tmp_path / "demo" / "binary-xnor" / "extras" / "binary_model.md").is_file()
    assert (tmp_path / "demo" / "pruned-flops2" / "extras" / "prune_model.md").is_file()
