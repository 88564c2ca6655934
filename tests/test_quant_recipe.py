"""``frugalnn quant`` and :func:`run_quant`: a whole int8 run directory on digits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import frugalnn
from frugalnn.cli import main
from frugalnn.data.splits import load_splits
from frugalnn.evaluation import load_summary
from frugalnn.methods.quant.recipe import QuantConfig, quantize_with_info, run_quant
from frugalnn.train.checkpoint import load_model, save_checkpoint


def _trained(tmp_path: Path) -> Path:
    """A briefly trained cnn_small on digits, saved as a frugalnn checkpoint."""
    splits = load_splits("digits", train_limit=400)
    torch.manual_seed(0)
    model = frugalnn.create_model("cnn_small", image_size=8, num_classes=10)
    frugalnn.fit(model, torch.utils.data.DataLoader(splits.train, batch_size=32, shuffle=True),
                 epochs=2, progress=False)
    return save_checkpoint(tmp_path / "base", model.eval())


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return _trained(tmp_path_factory.mktemp("quant"))


def test_cli_writes_a_static_int8_run_that_reloads(base: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    argv = ["quant", "cnn_small", "--checkpoint", str(base), "--mode", "static",
            "--data", "digits", "--train-limit", "256", "--eval-limit", "96",
            "--calibration-size", "64", "--latency-repeats", "2", "--latency-batch-sizes",
            "1,8", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    for name in ("config.json", "records.csv", "summary.json", "validation/records.csv",
                 "extras/quant_model.md", "extras/quant_model.json", "report", "checkpoint"):
        assert (out / name).exists(), name
    summary = load_summary(out)
    assert summary["method"] == "int8 static (x86)"
    extras = json.loads((out / "extras" / "quant_model.json").read_text())
    assert extras["int8"]["flops_by_precision"].keys() == {"int8"}
    assert extras["size_ratio"] > 3
    assert "int8 is" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["quantisation"]["calibration_examples"] == 64
    model = load_model(out / "checkpoint")
    splits = load_splits("digits", test_limit=8)
    x = torch.stack([splits.test[i][0] for i in range(8)])
    assert torch.equal(model(x), load_model(out / "checkpoint")(x))
    assert main(argv) == 2  # refuses to overwrite


@pytest.mark.parametrize("extra,message", [
    (["--device", "cuda"], "CPU quantised kernels"),
    (["--backend", "tensorrt"], "unknown int8 backend"),
    (["--mode", "dynamic", "--qat-epochs", "1"], "needs mode static"),
])
def test_cli_bad_input_exits_2_with_one_line(base: Path, tmp_path: Path, capsys, extra,
                                             message) -> None:
    argv = ["quant", "cnn_small", "--checkpoint", str(base), "--data", "digits",
            "--out", str(tmp_path / "r"), "--no-progress", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_qat_is_chosen_on_validation_accuracy(base: Path) -> None:
    splits = load_splits("digits", train_limit=128, val_limit=64)
    model = load_model(base)
    never = QuantConfig(mode="static", calibration_size=32, qat_epochs=1, qat_if_drop_pt=100.0)
    _, info = quantize_with_info(model, never, calibration_data=splits.train,
                                 train_data=splits.train, val_data=splits.val)
    assert info["qat"] is False and set(info["validation"]) == {"float", "ptq"}
    always = QuantConfig(mode="static", calibration_size=32, qat_epochs=1, qat_if_drop_pt=-1.0)
    q, info = quantize_with_info(model, always, calibration_data=splits.train,
                                 train_data=splits.train, val_data=splits.val)
    assert info["qat"] is True and len(info["qat_loss"]) == 1
    x = torch.stack([splits.val[i][0] for i in range(4)])
    assert q(x).shape == (4, 10)


def test_run_quant_dynamic_against_a_baseline(base: Path, tmp_path: Path) -> None:
    splits = load_splits("digits", train_limit=128, test_limit=64, val_limit=32)
    config = QuantConfig(mode="dynamic", latency_batch_sizes=(1,), latency_repeats=2)
    run = run_quant(load_model(base), config, splits, tmp_path / "dyn", progress=False,
                    report=False)
    assert (run.out / "extras" / "quant_model.md").is_file()
    assert not (run.out / "report").exists()
    assert run.comparison["int8"]["params"] == run.comparison["float"]["params"]


def test_demo_hook_runs_static_int8_through_the_recipe(base: Path, tmp_path: Path) -> None:
    from types import SimpleNamespace

    from frugalnn.evaluation import evaluate_into
    from frugalnn.methods.quant.demo import run_demo

    splits = load_splits("digits", train_limit=128, test_limit=64, val_limit=32)
    base_run = tmp_path / "baseline"
    evaluate_into(load_model(base), splits.test, base_run, val_dataset=splits.val,
                  method="baseline", latency_batch_sizes=(1,), latency_repeats=2,
                  progress=False)
    ctx = SimpleNamespace(
        train_baseline=lambda: (load_model(base), base_run), train_set=splits.train,
        val_set=splits.val, test_set=splits.test, batch_size=32, latency_batch_sizes=(1,),
        quick=True, seed=0, threads=None, progress=False,
        run_dir=lambda name: tmp_path / name)
    runs = run_demo(ctx)
    assert runs == [tmp_path / "int8-static"]
    assert load_summary(runs[0])["method"] == "int8 static (x86)"
    assert (runs[0] / "extras" / "quant_model.md").is_file()
