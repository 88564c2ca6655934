"""The NAS demo hook runs end to end on the embedded digits (quick mode)."""

from __future__ import annotations

import json

import pytest

from frugalnn.demo import run_demo
from frugalnn.evaluation import load_summary


@pytest.mark.slow
def test_nas_demo_hook(tmp_path):
    out = tmp_path / "demo"
    run_demo(out, quick=True, only=["nas"], strict=True, progress=False)
    info = json.loads((out / "demo.json").read_text())
    hook = next(h for h in info["hooks"] if h["hook"] == "frugalnn.methods.nas.demo")
    assert hook["status"] == "ran" and len(hook["runs"]) == 2
    summary = load_summary(out / "nas")
    assert summary["method"] == "nas" and summary["budgets"][0]["accuracy"] > 0
    assert "Measured latency" in (out / "nas" / "extras" / "nas_search.md").read_text()
    assert json.loads((out / "nas" / "arch.json").read_text())["ops"]
