"""benchmarks/nas_search.py: searching against a deployment machine's latency table, then
timing the found networks there (``--deploy-table`` / ``--retime``)."""

from __future__ import annotations

import json

import pytest
from bench_scripts import load_benchmark


@pytest.mark.slow
@pytest.mark.data
def test_deploy_table_search_times_nothing_and_retime_fills_the_figures(data_dir,
                                                                        tmp_path) -> None:
    bench = load_benchmark("nas_search")
    table = tmp_path / "table.json"
    common = ["--data-dir", str(data_dir), "--space", "small", "--train-limit", "128",
              "--val-limit", "64", "--test-limit", "64", "--epochs", "1", "--warmup-epochs",
              "0", "--retrain-epochs", "1", "--targets", "0.8,0.9", "--repeats", "3",
              "--rounds", "1", "--calibrate", "2", "--batch-size", "32"]
    # The table "from the deployment machine": built by a run there (here, this machine).
    assert bench.main(common + ["--validate", "0", "--table", str(table), "--out",
                                str(tmp_path / "a.md")]) == 0
    before = table.read_text()
    run = tmp_path / "run.json"
    assert bench.main(common + ["--validate", "3", "--deploy-table", str(table),
                                "--out", str(tmp_path / "b.md"), "--json", str(run)]) == 0
    out = json.loads(run.read_text())
    assert table.read_text() == before  # used as it is, never rebuilt or extended
    assert out["latency_model"] is None  # held-out timing would be of the wrong machine
    assert all("measured_ms" not in n for n in out["nets"].values())
    assert "by_target_fraction" not in out
    assert "not timed here" in (tmp_path / "b.md").read_text()

    timed = tmp_path / "timed.json"
    assert bench.main(["--retime", str(run), "--repeats", "3", "--rounds", "1",
                       "--out", str(tmp_path / "c.md"), "--json", str(timed)]) == 0
    again = json.loads(timed.read_text())
    assert all(n["measured_ms"] > 0 for n in again["nets"].values())
    assert set(again["by_target_fraction"]) == {"0.8", "0.9"}
    assert again["trained_on"] == out["machine"]
    for name, net in out["nets"].items():  # the trained figures are carried, not recomputed
        assert again["nets"][name]["accuracy"] == net["accuracy"]
    text = (tmp_path / "c.md").read_text()
    assert "search and retraining ran on:" in text and "not timed here" not in text


@pytest.mark.parametrize("content", [None, "not json", "5", '{"nets": {}}'])
def test_retime_of_something_else_is_one_line_exit_2(tmp_path, capsys, content) -> None:
    bench = load_benchmark("nas_search")
    path = tmp_path / "run.json"
    if content is not None:
        path.write_text(content)
    assert bench.main(["--retime", str(path), "--out", str(tmp_path / "x.md")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--retime" in err
    assert not (tmp_path / "x.md").exists()
