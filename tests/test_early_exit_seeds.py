"""Early-exit benchmarks over seeds: the test-half check of ``early_exit_resnet56.py`` and
``early_exit_draws.py --across-seeds`` (pooling whole runs that differ in ``--seed``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from bench_scripts import load_benchmark

from frugalnn.methods.early_exit.offline import score as score_of


@pytest.fixture(scope="module")
def draws():
    return load_benchmark("early_exit_draws")


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("early_exit_resnet56")


def _trace(bench, n: int, seed: int):
    """A random 3-exit trace whose later exits are more often right and cost more."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    logits = torch.randn(3, n, 4, generator=g)
    for i, boost in enumerate((1.0, 2.0, 4.0)):
        logits[i, torch.arange(n), labels] += boost * torch.rand(n, generator=g)
    flops = torch.tensor([30.0, 60.0, 100.0], dtype=torch.float64)[:, None].expand(-1, n).clone()
    return bench.ExitTrace(logits, labels, flops, torch.full((n,), 100.0, dtype=torch.float64))


def test_test_halves_are_disjoint_seeded_and_cover(bench):
    a, b = bench.test_halves(101, 3)
    assert len(a) == 50 and len(b) == 51
    assert sorted(torch.cat([a, b]).tolist()) == list(range(101))
    a2, _ = bench.test_halves(101, 3)
    a3, _ = bench.test_halves(101, 4)
    assert torch.equal(a, a2) and not torch.equal(a, a3)


def test_half_check_with_half_a_as_validation_equals_the_test_half_row(bench):
    """Choosing on validation = half A (against half A's backbone) must give exactly the
    row chosen on half A; both are scored on the same other half."""
    tr = _trace(bench, 400, 0)
    choose, scored = bench.test_halves(400, 7)
    half_a = bench.trace_rows(tr, choose)
    lines, out, sizes = bench.half_check({"SDN": tr}, {"SDN": half_a},
                                         bench.plain_accuracy(half_a), seed=7)
    assert sizes["choose"] == sizes["scored"] == 200
    # (json: NaN, "below the first exit", compares equal as text)
    assert json.dumps(out["SDN"]["validation"]) == json.dumps(out["SDN"]["test half A"])
    assert out["SDN"]["test half A"]["saving_within"]["0.01"]["flops_saving"] > 0
    half_b = bench.trace_rows(tr, scored)
    assert sizes["backbone_b"] == pytest.approx(bench.plain_accuracy(half_b))
    # Scored on half B: the drop is half B's backbone accuracy minus the chosen point's.
    row = out["SDN"]["test half A"]["saving_within"]["0.01"]
    score = score_of(half_b, "maxprob", row["threshold"])
    assert row["accuracy"] == score["accuracy"]
    assert row["drop"] == pytest.approx(sizes["backbone_b"] - score["accuracy"])
    assert len(lines) == 2 + 2 + 1  # header, one row per chooser, the backbone row


def _numbers(seed: int, sdn: tuple, ztw: tuple, half: bool = True) -> dict:
    """The numbers line of one run: (acc25, acc50, acc75, save05, drop05, save1, drop1)."""
    def method(v):
        return {"accuracy_at_flops": {f: {"accuracy": a} for f, a in
                                      zip(("0.25", "0.5", "0.75"), v[:3], strict=True)},
                "saving_within": {"0.005": {"flops_saving": v[3], "drop": v[4]},
                                  "0.01": {"flops_saving": v[5], "drop": v[6]}}}
    rec = {"seed": seed, "reference_test": 0.9, "methods": {"SDN": method(sdn),
                                                            "ZTW": method(ztw)},
           "timing": {"prepared": "BatchNorm folded", "drop": 0.005, "examples": 640,
                      "passes": 3, "speedup": {"SDN b1": 1.5, "ZTW b1": 1.4 + seed / 10},
                      "flops_ratio": {"SDN": 0.6, "ZTW": 0.5}}}
    if half:
        rec["half_check"] = {m: {"validation": method(v), "test half A": method(v)}
                             for m, v in (("SDN", sdn), ("ZTW", ztw))}
        rec["half_check_sizes"] = {"choose": 5000, "scored": 5000}
    return rec


def _file(path: Path, seed: int, rec: dict, extra: str = "") -> Path:
    path.write_text(
        "# Early exits\n\nCommand: `python benchmarks/early_exit_resnet56.py --positions every:2 "
        f"--seed {seed} --head-augment-seed 10{seed} --backbone-cache /tmp/ft{seed}.st{extra} "
        f"--out /tmp/s{seed}.md`\n\n| SDN | table |\n\n"
        f"<!-- early-exit numbers: {json.dumps(rec)} -->\n")
    return path


def test_pool_seeds_per_seed_rows_mean_sd_and_paired_gaps(draws, tmp_path):
    nan = float("nan")
    files = [
        _file(tmp_path / "s0.md", 0, _numbers(0, (0.70, 0.80, 0.88, 0.40, 0.004, 0.44, 0.008),
                                              (0.72, 0.81, 0.88, 0.42, 0.006, 0.45, 0.010))),
        _file(tmp_path / "s1.md", 1, _numbers(1, (0.72, 0.82, 0.88, 0.36, 0.002, 0.40, 0.009),
                                              (0.72, 0.82, 0.89, nan, nan, 0.41, 0.012))),
    ]
    out = tmp_path / "pooled.md"
    assert draws.main([*map(str, files), "--across-seeds", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# Early exits: pooled seeds\n")
    assert "Pooled 2 seeds (0, 1)" in text
    assert "| 1 | ZTW | 90.00 % | 72.00 % | 82.00 % | 89.00 % | – | – | 41.0 % | +1.20 pt |" in text
    # SDN at 25 %: 70 and 72 -> 71.00 ± 1.41; saving within 0.5 pt 40 and 36 -> 38.0 ± 2.8.
    sdn_mean = next(line for line in text.splitlines() if line.startswith("| mean ± sd of 2 | SDN"))
    assert "71.00 ± 1.41 %" in sdn_mean and "38.0 ± 2.8 %" in sdn_mean
    ztw_mean = next(line for line in text.splitlines() if line.startswith("| mean ± sd of 2 | ZTW"))
    assert "42.0 ± nan (1 not reached) %" in ztw_mean
    gaps = next(line for line in text.splitlines() if line.startswith("| ZTW - SDN"))
    assert "+1.00 ± 1.41 pt (2/2 >= 0)" in gaps  # 25 %: +2 and 0
    assert "+2.00 ± nan pt (1/1 >= 0)" in gaps  # within 0.5 pt: one seed did not reach it
    assert "| 1 | 1.50x | 1.50x |" in text and "1.45 ± 0.07x" in text
    assert "| mean ± sd | ZTW | test half A |" in text


def test_pool_seeds_refuses_other_model_flags_same_seed_and_old_files(draws, tmp_path, capsys):
    rec = (0.7, 0.8, 0.9, 0.4, 0.0, 0.4, 0.0)
    a = _file(tmp_path / "a.md", 0, _numbers(0, rec, rec))
    b = _file(tmp_path / "b.md", 1, _numbers(1, rec, rec), extra=" --head-epochs 5")
    c = _file(tmp_path / "c.md", 0, _numbers(0, rec, rec))
    d = tmp_path / "d.md"
    d.write_text("Command: `python benchmarks/early_exit_resnet56.py --seed 3 --out x`\n")
    for pair, words in (((a, b), "--head-epochs"), ((a, c), "same --seed"),
                        ((a, d), "numbers")):
        assert draws.main([*map(str, pair), "--across-seeds"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and words in err and err.count("\n") == 1
