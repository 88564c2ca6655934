"""benchmarks/vit_seeds.py pools per-seed MoE / ACM / rankings JSON: figures checked against
hand counts on synthetic runs (no training)."""

from __future__ import annotations

import json

import pytest
from bench_scripts import load_benchmark

from frugalnn.errors import UserError

# A model of 100 FLOPs: 40 outside the FFNs, 60 in them, a router of 3 (run on every
# routed budget, skipped when every expert runs).
NON_FFN, FFN, ROUTER = 40.0, 60.0, 3.0


def flops(fraction: float) -> float:
    return NON_FFN + FFN if fraction == 1 else NON_FFN + fraction * FFN + ROUTER


def moe_json(seed: int, accuracy: float, speed: float) -> dict:
    run = lambda b, f, acc: {"budget": b, "ffn_fraction": f, "accuracy": acc,  # noqa: E731
                             "flops": flops(f)}
    timing = {"dense_ms": speed, "moe_ms": 1.0, "model_dense_ms": 2.0, "model_moe_ms": 1.6}
    point = run("0.5", 0.4, accuracy)
    return {"args": {"seed": seed}, "machine": {"loadavg": [1, 1, 1]}, "load": [1, 1, 1],
            "dense": {"accuracy": 0.80, "flops": flops(1)}, "control": 0.81, "reference": 0.81,
            "runs": {"dynamic": [point, run("1", 1.0, 0.80)],
                     "topk": [run("2", 0.25, 0.70), run("4", 0.5, 0.78), run("8", 1.0, 0.80)]},
            "point": point, "half": point, "layer_timing": timing, "half_timing": None}


@pytest.fixture
def bench():
    return load_benchmark("vit_seeds")


def test_moe_figures_match_hand_counts(bench, tmp_path):
    files = []
    for seed, acc, speed in ((0, 0.80, 1.4), (1, 0.79, 1.6), (2, 0.81, 1.8)):
        f = tmp_path / f"moe{seed}.json"
        f.write_text(json.dumps(moe_json(seed, acc, speed)))
        files.append(str(f))
    out = tmp_path / "seeds.md"
    assert bench.main(["--moe", *files, "--out", str(out)]) == 0
    text = out.read_text()
    # 60 % of the experts skipped; net of the 3-FLOP router (100 - 67) / 60 = 55 %
    assert "| 0 | 0.5 | 80.00 | 81.00 | 80.00 | -1.00 | 60.0 | 55.0 | 1.40 | 1.25 |" in text
    # deltas -1, -2, 0 against the control (81 %): mean -1, sd 1; speed 1.6 ± 0.2
    assert "| **mean ± sd** | 0.50 ± 0.00 | 80.00 ± 0.00 | 81.00 ± 0.00 | 80.00 ± 1.00 | " \
           "-1.00 ± 1.00 | 60.0 ± 0.0 | 55.0 ± 0.0 | 1.60 ± 0.20 | 1.25 ± 0.00 |" in text
    assert "within 1 point): 2 of 3 seeds; FFN layers ≥ 1.5x at batch 64: 2 of 3 seeds" in text
    assert "| 4 | 50.0 ± 0.0 | 78.00 ± 0.00 | -3.00 ± 0.00 |" in text


def test_acm_and_rankings(bench, tmp_path):
    files = []
    for seed, acc in ((0, 0.78), (1, 0.80), (2, 0.82)):
        work = tmp_path / f"work{seed}"
        (work / "rankings").mkdir(parents=True)
        rho = 0.5 + 0.1 * seed
        (work / "rankings" / "rankings.json").write_text(json.dumps({
            "examples": 100,
            "signals": [{"name": f"ACM: compute (q={0.4 + 0.1 * seed:g})",
                         "run": str(work / "acm")},
                        {"name": "ViT baseline: entropy", "run": str(work / "reference")},
                        {"name": "MoE: compute (k=4)", "run": str(work / "moe-ft-topk")}],
            # top-k's compute is the same for every image: no correlation (null)
            "spearman": [[1.0, rho, None], [rho, 1.0, None], [None, None, None]]}))
        f = tmp_path / f"acm{seed}.json"
        f.write_text(json.dumps({
            "args": {"seed": seed, "work": str(work)}, "machine": {"loadavg": [2, 2, 2]},
            "baseline": {"accuracy": 0.80}, "control": {"accuracy": 0.81},
            "half_compute": {"q": 0.5, "compute": 0.5, "accuracy": acc,
                             "delta_pt": 100 * (acc - 0.80),
                             "delta_vs_reference_pt": 100 * (acc - 0.81)},
            "ffn_speedup_b64": {"dense": 1.0, "q=0.5": 1.3}}))
        files.append(str(f))
    out = tmp_path / "seeds.md"
    assert bench.main(["--acm", *files, "--out", str(out)]) == 0
    text = out.read_text()
    assert "| **mean ± sd** | 0.50 ± 0.00 | 50 ± 0 | 80.00 ± 0.00 | 81.00 ± 0.00 | " \
           "80.00 ± 2.00 | +0.00 ± 2.00 | -1.00 ± 2.00 | 1.30 ± 0.00 |" in text
    assert "control): 2 of 3 seeds." in text  # -3, -1, +1 points
    # the budget in a signal's name differs per seed; the pair is still pooled
    assert "| acm: compute | reference: entropy | +0.50 | +0.60 | +0.70 | +0.60 ± 0.10 |" in text
    assert "moe-ft-topk: compute |" not in text
    assert "No correlation with moe-ft-topk: compute: the same for every image." in text


def test_bad_input_is_refused(bench, tmp_path):
    with pytest.raises(UserError, match="no such file"):
        bench.main(["--moe", str(tmp_path / "none.json"), "--out", str(tmp_path / "x.md")])
    (tmp_path / "x.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="not the JSON"):
        bench.main(["--acm", str(tmp_path / "x.json"), "--out", str(tmp_path / "x.md")])
    assert not (tmp_path / "x.md").exists()
