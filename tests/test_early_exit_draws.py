"""benchmarks/early_exit_draws.py: pooling augmentation draws of the ResNet-56 early-exit run."""

from __future__ import annotations

import pytest
from bench_scripts import load_benchmark


@pytest.fixture(scope="module")
def draws():
    return load_benchmark("early_exit_draws")


def _result(seed: int | None, sdn: str, ztw: str, extra: str = "") -> str:
    seed_flag = "" if seed is None else f" --head-augment-seed {seed}"
    return (
        "## Early exits\n\n"
        f"Command: `python benchmarks/early_exit_resnet56.py --positions every:2 --batch-sizes 1 64"
        f"{seed_flag}{extra} --out /tmp/x.md`\n\n"
        f"Scale: ... (augmentation seed {100 if seed is None else seed}) ...\n\n"
        "| method | acc @25 % FLOPs | acc @50 % | acc @75 % | saving within 0.5 pt | "
        "saving within 1 pt |\n|---|---|---|---|---|---|\n"
        f"| SDN | {sdn} |\n| ZTW | {ztw} |\n| backbone | 88.88 % at 100 % FLOPs | | | | |\n\n"
        "## an older section\n\n| SDN | 1.00 % | 1.00 % | 1.00 % | 1.0 % (x) | 1.0 % (x) |\n"
    )


def test_pool_means_and_paired_gaps(draws, tmp_path):
    a = tmp_path / "a.md"
    b = tmp_path / "b.md"
    a.write_text(_result(None, "76.00 % | 87.20 % | 89.20 % | 40.0 % (acc 88.4 %, t=0.9) | "
                               "44.0 % (acc 87.9 %, t=0.9)",
                         "77.00 % | 87.00 % | 89.30 % | 41.0 % (acc 88.4 %, t=0.9) | "
                         "45.0 % (acc 87.9 %, t=0.9)"))
    b.write_text(_result(11, "76.00 % | 86.80 % | 89.20 % | 42.0 % (a) | 44.0 % (a)",
                         "76.00 % | 87.20 % | 89.10 % | 41.0 % (a) | 45.0 % (a)",
                         extra=" --latency-passes 1"))
    out = tmp_path / "pooled.md"
    assert draws.main([str(a), str(b), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# Early exits: pooled augmentation draws\n")
    assert "Command: `python " in text and "- date: " in text  # the results header
    pooled = text.split("draws (seeds", 1)[1]
    assert "seeds 100, 11" in text and "--head-augment-seed" not in pooled.split("`")[1]
    mean_sdn = ("| mean of 2 | SDN | **76.00 %** | **87.00 %** | **89.20 %** | **41.0 %** "
                "| **44.0 %** |")
    assert mean_sdn in text
    # Paired gaps: 25 %: +1.0 and 0.0; 50 %: -0.2 and +0.4; 75 %: +0.1 and -0.1 (a tie on average).
    gap_row = text.strip().splitlines()[-1]
    assert "+0.50 ± 0.71 pt (2/2 >= 0)" in gap_row
    assert "+0.10 ± 0.42 pt (1/2 >= 0)" in gap_row
    assert "+0.00 ± 0.14 pt (1/2 >= 0)" in gap_row
    assert "-0.00" not in gap_row


def test_pool_refuses_runs_with_other_model_flags(draws, tmp_path, capsys):
    a = tmp_path / "a.md"
    b = tmp_path / "b.md"
    row = "76.00 % | 87.00 % | 89.00 % | 40.0 % (a) | 44.0 % (a)"
    a.write_text(_result(1, row, row))
    b.write_text(_result(2, row, row, extra=" --head-epochs 5"))
    assert draws.main([str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--head-epochs" in err and err.count("\n") == 1


@pytest.mark.parametrize("case", ["same seed", "missing file", "no table", "one file",
                                  "no augmentation"])
def test_pool_bad_input(draws, tmp_path, capsys, case):
    row = "76.00 % | 87.00 % | 89.00 % | 40.0 % (a) | 44.0 % (a)"
    a = tmp_path / "a.md"
    a.write_text(_result(1, row, row))
    b = tmp_path / "b.md"
    b.write_text(_result(1 if case == "same seed" else 2, row, row))
    if case == "no augmentation":
        b.write_text(b.read_text().replace("augmentation seed 2", "no augmentation"))
    if case == "no table":
        b.write_text("Command: `python x.py --out y`\n\naugmentation seed 2, no table here\n")
    paths = {"missing file": [a, tmp_path / "nope.md"], "one file": [a]}.get(case, [a, b])
    assert draws.main([str(p) for p in paths]) == 2
    assert capsys.readouterr().err.startswith("error: ")
