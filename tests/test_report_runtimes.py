"""The report shows each run's model on eager PyTorch and on the runtimes it was exported to,
side by side, from ``RUN/export/<format>/timing.json``; runs without exports are unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from frugalnn.errors import UserError
from frugalnn.report import load_runs, write_report
from frugalnn.report.runtimes import load_runtimes, runtime_table
from frugalnn.runtime.deps import available

HAVE_ORT = available("onnx") and available("onnxruntime")


def _run(path: Path, method: str = "baseline") -> Path:
    """A run directory with a hand-made summary of one static point."""
    path.mkdir(parents=True)
    rows = [{"budget": "static", "label": "static", "flops": 4e6, "macs": 2e6,
             "accuracy": 0.9, "loss": 0.1, "time_per_example_ms": 0.1}]
    summary = {"method": method, "model": "toy", "budget_name": "static", "examples": 64,
               "batch_size": 8, "threads": 1, "device": "cpu", "machine": {"cores": 2},
               "budgets": rows, "latency": []}
    (path / "summary.json").write_text(json.dumps(summary))
    (path / "config.json").write_text(json.dumps({"data": "digits"}))
    return path


def _timing(run: Path, export: str, runtime: str, rows: list[tuple], *,
            with_platform: bool = True) -> None:
    """rows: (batch, budget, platform, median_ms, peak_bytes)."""
    out = run / "export" / export
    out.mkdir(parents=True)
    data = [{"batch_size": bs, "budget": b, "runtime": runtime if p != "eager" else "eager",
             "latency": {"median_ms": ms, "p10_ms": ms, "p90_ms": ms, "threads": 1},
             "peak_bytes": peak, "memory_method": "m",
             **({"platform": p} if with_platform else {})}
            for bs, b, p, ms, peak in rows]
    (out / "timing.json").write_text(json.dumps({"runtime": runtime, "rows": data,
                                                 "machine": {"loadavg": [0.5, 0.5, 0.5]}}))


def test_exported_run_lists_eager_and_its_runtimes_side_by_side(tmp_path: Path) -> None:
    import torch

    import frugalnn
    from frugalnn.cli import main
    from frugalnn.train.checkpoint import save_checkpoint

    run = _run(tmp_path / "cnn")
    torch.manual_seed(0)
    save_checkpoint(run / "checkpoint", frugalnn.create_model("cnn_small", num_classes=10))
    formats = ["torchscript"] + (["onnx"] if HAVE_ORT else [])
    for fmt in formats:
        assert main(["export", str(run), "--format", fmt, "--check-limit", "8",
                     "--time", "1,4", "--repeats", "2"]) == 0
    plain = _run(tmp_path / "plain", method="other")  # no export: no runtime rows
    md = write_report([run, plain], tmp_path / "report")
    text = md.read_text()
    assert "## Runtimes" in text
    header = next(line for line in text.splitlines() if line.startswith("| run | export"))
    want = ["eager ms", "eager peak", "torchscript ms"] + (["onnxruntime ms"] if HAVE_ORT
                                                           else [])
    assert all(w in header for w in want)
    # One row per export and batch size; runs without exports add none.
    table = text.split("## Runtimes")[1].split("\n## ")[0].splitlines()
    labels = {v.name: v.label for v in load_runs([run, plain])}
    assert len([line for line in table if line.startswith(f"| {labels['cnn']} |")]) == \
        2 * len(formats)
    assert not [line for line in table if line.startswith(f"| {labels['plain']} |")]
    frontier = json.loads((tmp_path / "report" / "frontier.json").read_text())
    timed = frontier["cnn"]["runtimes"]
    assert {r["export"] for r in timed} == set(formats)
    assert all(set(r["platforms"]) == {"eager", "torchscript" if r["export"] == "torchscript"
                                       else "onnxruntime"} for r in timed)
    assert "runtimes" not in frontier["plain"]
    views = {v.name: v for v in load_runs([run, plain])}
    assert views["cnn"].summary["runtimes"] == timed
    assert "runtimes" not in views["plain"].summary


def test_speedups_are_same_round_ratios_and_compile_gets_a_column(tmp_path: Path) -> None:
    run = _run(tmp_path / "ee", method="early_exit")
    _timing(run, "exported-program", "compile", [
        (32, 0.9, "eager", 10.0, 4096), (32, 0.9, "compile", 5.0, 2048),
        (32, 1.0, "eager", 12.0, 4096), (32, 1.0, "compile", 8.0, 2048)])
    # A file written before rows named their platform: (eager, export) pairs.
    _timing(run, "onnx", "onnxruntime", [
        (32, 0.9, "eager", 11.0, 4096), (32, 0.9, "onnxruntime", 2.75, None)],
        with_platform=False)
    rows = load_runtimes(run)
    assert [(r["export"], r["budget"]) for r in rows] == [
        ("exported-program", 0.9), ("exported-program", 1.0), ("onnx", 0.9)]
    assert rows[0]["platforms"]["compile"]["speedup"] == pytest.approx(2.0)
    assert rows[1]["platforms"]["compile"]["speedup"] == pytest.approx(1.5)
    assert rows[2]["platforms"]["onnxruntime"]["speedup"] == pytest.approx(4.0)
    header, table = runtime_table([("ee", rows)])
    assert header == ["run", "export", "batch", "budget", "eager ms", "eager peak",
                      "compile ms", "compile peak", "onnxruntime ms", "onnxruntime peak"]
    assert table[0] == ["ee", "exported-program", "32", "0.9", "10.000", "4.00 KiB",
                        "5.000 (2.00×)", "2.00 KiB", "—", "—"]
    assert table[2][-2:] == ["2.750 (4.00×)", "—"]


def test_report_without_exports_has_no_runtime_section(tmp_path: Path) -> None:
    run = _run(tmp_path / "base")
    (run / "export" / "onnx").mkdir(parents=True)  # an export without --time
    text = write_report([run], tmp_path / "report").read_text()
    assert "Runtimes" not in text
    assert load_runtimes(run) == []


def test_unreadable_timing_file_is_one_line(tmp_path: Path) -> None:
    run = _run(tmp_path / "base")
    (run / "export" / "onnx").mkdir(parents=True)
    (run / "export" / "onnx" / "timing.json").write_text("{not json")
    with pytest.raises(UserError, match="not a readable timing file") as err:
        write_report([run], tmp_path / "report")
    assert "\n" not in str(err.value)
