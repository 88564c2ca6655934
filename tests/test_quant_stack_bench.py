"""benchmarks/quant_stack_resnet56.py: its table, from per-seed rows (no training here)."""

from __future__ import annotations

import pytest
from bench_scripts import load_benchmark


def _rows() -> list[dict]:
    rows = []
    for seed, (c, q) in enumerate([(88.0, 87.5), (87.0, 86.0), (89.0, 88.5)]):
        row = {"seed": seed, "observers": {"control": {"chosen": "histogram"},
                                           "low-rank": {"chosen": "minmax"}}}
        for name, acc in (("control", c), ("control + int8", c - 0.1), ("low-rank", q + 0.1),
                          ("low-rank + int8", q)):
            row[name] = {"val": acc + 1, "test": acc}
        rows.append(row)
    return rows


@pytest.mark.parametrize("timed", [True, False])
def test_table_gives_the_paired_gap_to_the_control(timed: bool) -> None:
    bench = load_benchmark("quant_stack_resnet56")
    a = bench.parse_args(["--data-dir", "x"] + ([] if timed else ["--accuracy-only"]))
    costs = {m: {"bytes": 1000 // (i + 1), "flops": "fp32 1.0 M"}
             for i, m in enumerate(bench.MODELS)}
    lat = {1: dict.fromkeys(bench.MODELS, 2.0), 64: dict.fromkeys(bench.MODELS, 4.0)}
    text = bench.markdown(a, _rows(), {"train": 10, "val": 5, "test": 5}, costs,
                          lat if timed else {}, {"val": 90.0, "test": 85.0})
    # gaps -0.5, -1.0, -0.5: mean -0.67, sd 0.29
    assert "**-0.67 ± 0.29 pt**" in text
    assert "(per seed -0.50, -1.00, -0.50)" in text
    assert ("ms @ b64" in text) is timed
    assert "| low-rank + int8 | 87.33 ± 1.26 |" in text


def test_zero_epochs_is_refused() -> None:
    bench = load_benchmark("quant_stack_resnet56")
    with pytest.raises(SystemExit):
        bench.parse_args(["--epochs", "0"])
