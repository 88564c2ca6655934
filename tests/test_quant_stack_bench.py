"""benchmarks/quant_stack_resnet56.py: its table, from per-seed rows (no training here)."""

from __future__ import annotations

import pytest
from bench_scripts import load_benchmark

from frugalnn.errors import UserError


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


def test_table_says_where_training_ran_when_rows_come_from_elsewhere() -> None:
    bench = load_benchmark("quant_stack_resnet56")
    a = bench.parse_args(["--data-dir", "x"])
    costs = {m: {"bytes": 1000, "flops": "fp32 1.0 M"} for m in bench.MODELS}
    lat = {64: dict.fromkeys(bench.MODELS, 4.0)}
    args = (a, _rows(), {"train": 10, "val": 5, "test": 5}, costs, lat,
            {"val": 90.0, "test": 85.0})
    here = bench.markdown(*args)
    there = bench.markdown(*args, "NVIDIA H100 (torch 2.11.0)")
    assert "Fine-tuning and accuracy" not in here
    assert "Fine-tuning and accuracy: NVIDIA H100 (torch 2.11.0)" in there
    assert "models of the same shapes" in there


@pytest.mark.slow
@pytest.mark.data
def test_accuracy_rows_then_timing_here_round_trip(data_dir, tmp_path) -> None:
    """An --accuracy-only run's JSON feeds --rows-from, which trains nothing and times
    models of the trained ones' shapes (the same costs)."""
    import json

    bench = load_benchmark("quant_stack_resnet56")
    common = ["--data-dir", str(data_dir), "--train-limit", "128", "--val-limit", "64",
              "--test-limit", "64", "--seeds", "0", "--calibration-size", "32",
              "--method", "tt", "--target", "flops=2", "--exclude", "conv1"]
    acc = tmp_path / "acc.json"
    assert bench.main(common + ["--accuracy-only", "--json", str(acc),
                                "--markdown", str(tmp_path / "acc.md")]) == 0
    record = json.loads(acc.read_text())
    assert [r["seed"] for r in record["rows"]] == [0] and record["latency_ms"] == {}
    timed = tmp_path / "timed.json"
    assert bench.main(common + ["--rows-from", str(acc), "--json", str(timed), "--repeats", "1",
                                "--passes", "1", "--batch-sizes", "2",
                                "--markdown", str(tmp_path / "timed.md")]) == 0
    again = json.loads(timed.read_text())
    assert again["rows"] == record["rows"] and again["costs"] == record["costs"]
    assert set(again["latency_ms"]["2"]) == set(bench.MODELS)
    assert "Fine-tuning and accuracy:" in (tmp_path / "timed.md").read_text()


def _record(tmp_path, name: str, seed: int, **changed) -> str:
    import json

    bench = load_benchmark("quant_stack_resnet56")
    args = vars(bench.parse_args(["--data-dir", "x"]))
    args.update(changed)
    row = _rows()[seed]
    path = tmp_path / name
    path.write_text(json.dumps({"args": args, "published": {"val": 1.0, "test": 1.0},
                                "rows": [row]}))
    return str(path)


def test_rows_from_joins_per_seed_runs_in_seed_order(tmp_path) -> None:
    bench = load_benchmark("quant_stack_resnet56")
    a = bench.parse_args(["--data-dir", "x"])
    paths = [_record(tmp_path, "s2.json", 2), _record(tmp_path, "s0.json", 0)]
    record = bench.read_rows(paths, a)
    assert [r["seed"] for r in record["rows"]] == [0, 2]
    assert record["sources"] == paths


def test_rows_from_refuses_another_protocol_or_a_repeated_seed(tmp_path) -> None:
    bench = load_benchmark("quant_stack_resnet56")
    a = bench.parse_args(["--data-dir", "x"])
    other = _record(tmp_path, "e3.json", 1, epochs=3)
    with pytest.raises(UserError, match="epochs=3, this command has 1"):
        bench.read_rows([_record(tmp_path, "s0.json", 0), other], a)
    with pytest.raises(UserError, match="seed given twice"):
        bench.read_rows([_record(tmp_path, "a.json", 0), _record(tmp_path, "b.json", 0)], a)


def test_rows_from_mismatch_is_one_line_exit_2(tmp_path, capsys) -> None:
    bench = load_benchmark("quant_stack_resnet56")
    other = _record(tmp_path, "e3.json", 1, epochs=3)
    assert bench.main(["--data-dir", str(tmp_path), "--rows-from", other]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "epochs=3" in err
