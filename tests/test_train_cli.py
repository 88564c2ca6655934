"""``frugalnn train``: run directories, YAML configs, refusal to overwrite, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from frugalnn.cli import main
from frugalnn.data import get_dataset
from frugalnn.models import create_model
from frugalnn.train.checkpoint import load_meta, load_model, save_checkpoint

FAST = ["--data", "digits", "--train-limit", "200", "--eval-limit", "100", "--batch-size", "50",
        "--no-progress", "--threads", "1"]  # fmt: skip


def test_train_writes_run_dir_and_loadable_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--model", "mlp", "--epochs", "2", "--out", str(out),
               "--model-arg", "hidden=16", "--model-arg", "depth=1", *FAST])  # fmt: skip
    assert rc == 0
    assert capsys.readouterr().out.strip().endswith(str(out))
    config = json.loads((out / "config.json").read_text())
    assert config["options"]["epochs"] == 2
    # The dataset's shape and class count reach the model; user args win.
    assert config["model_kwargs"] == {
        "num_classes": 10, "input_shape": [1, 8, 8], "hidden": 16, "depth": 1
    }  # fmt: skip
    history = json.loads((out / "train_history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2] and "eval_acc" in history[-1]
    model = load_model(out / "checkpoint")
    assert model.blocks[0].fc.out_features == 16
    x = torch.stack([get_dataset("digits", "test")[i][0] for i in range(4)])
    weights = load_file(out / "checkpoint" / "model.safetensors")
    model2 = load_model(out / "checkpoint")
    assert torch.equal(model(x), model2(x))
    assert torch.equal(model.head.weight, weights["head.weight"])


def test_existing_run_dir_needs_force_or_resume(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--model", "mlp", "--epochs", "1", "--out", str(out), *FAST]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0
    # --resume continues: a longer schedule trains only the missing epoch.
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--no-progress"]) == 0
    assert load_meta(out / "checkpoint")["epoch"] == 2
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--lr", "0.5"]) == 2
    assert "cannot change lr" in capsys.readouterr().err


def test_force_refuses_foreign_directory(tmp_path, capsys):
    (tmp_path / "precious.txt").write_text("keep me")
    rc = main(["train", "--model", "mlp", "--out", str(tmp_path), "--force", *FAST])
    assert rc == 2 and "not a frugalnn run directory" in capsys.readouterr().err
    assert (tmp_path / "precious.txt").exists()


def test_yaml_config_with_cli_override(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        "model: mlp\ndata: digits\nepochs: 3\nlr: 0.1\nbatch-size: 50\ntrain-limit: 100\n"
        "eval_split: none\nmodel_args: {hidden: 8, depth: 1}\n"
        f"out: {tmp_path / 'from_yaml'}\n"
    )
    assert main(["train", "--config", str(cfg), "--epochs", "1", "--no-progress"]) == 0
    config = json.loads((tmp_path / "from_yaml" / "config.json").read_text())["options"]
    assert config["epochs"] == 1 and config["lr"] == 0.1 and config["model_args"]["hidden"] == 8
    history = json.loads((tmp_path / "from_yaml" / "train_history.json").read_text())
    assert len(history) == 1 and "eval_acc" not in history[0]


def test_user_errors_exit_2(tmp_path, capsys):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model: mlp\nlearning_rate: 0.1\n")
    cases = [
        (["train", "--config", str(bad_yaml), "--out", str(tmp_path / "a")], "unknown key"),
        (["train", "--model", "mlp", *FAST], "--out"),
        (["train", "--model", "nope", "--out", str(tmp_path / "b"), *FAST], "unknown model"),
        (["train", "--model", "lm_tiny", "--out", str(tmp_path / "c"), *FAST], "is for lm"),
        (["train", "--model", "mlp", "--epochs", "0", "--out", str(tmp_path / "d")], "epochs"),
        (
            [
                "train",
                "--model",
                "mlp",
                "--out",
                str(tmp_path / "e"),
                "--checkpoint",
                str(tmp_path / "missing"),
                *FAST,
            ],
            "does not exist",
        ),  # fmt: skip
        (["train", "--out", str(tmp_path / "f"), "--resume"], "nothing to resume"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_fine_tune_from_checkpoint(tmp_path):
    first = tmp_path / "first"
    assert main(["train", "--model", "mlp", "--epochs", "1", "--out", str(first),
                 "--model-arg", "hidden=12", *FAST]) == 0  # fmt: skip
    second = tmp_path / "second"
    assert main(["train", "--checkpoint", str(first / "checkpoint"), "--epochs", "1",
                 "--lr", "0.01", "--out", str(second), *FAST]) == 0  # fmt: skip
    config = json.loads((second / "config.json").read_text())
    assert config["options"]["model"] == "mlp"
    assert load_model(second / "checkpoint").blocks[0].fc.out_features == 12


def test_killed_cli_run_resumes_to_same_weights(tmp_path):
    common = ["train", "--model", "mlp", "--epochs", "2", "--checkpoint-every", "2",
              "--model-arg", "dropout=0.1", *FAST]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "full")]) == 0
    env = {**os.environ, "FRUGALNN_TEST_KILL_AFTER_STEP": "5"}
    crash = subprocess.run(
        [sys.executable, "-m", "frugalnn.cli", *common, "--out", str(tmp_path / "killed")],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert crash.returncode == 86, crash.stderr
    assert load_meta(tmp_path / "killed" / "checkpoint")["step"] == 4
    assert main(["train", "--out", str(tmp_path / "killed"), "--resume", "--no-progress"]) == 0
    a = load_file(tmp_path / "full" / "checkpoint" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "checkpoint" / "model.safetensors")
    assert all(a[k].equal(b[k]) for k in a)


@pytest.mark.data
def test_language_model_on_tinyshakespeare(tmp_path, data_dir):
    out = tmp_path / "lm"
    rc = main(["train", "--model", "lm_tiny", "--data", "tinyshakespeare", "--data-dir",
               str(data_dir), "--train-limit", "32", "--eval-limit", "16", "--epochs", "1",
               "--batch-size", "16", "--optimizer", "adamw", "--lr", "3e-3", "--model-arg",
               "dim=32", "--model-arg", "depth=1", "--model-arg", "heads=2", "--out", str(out),
               "--no-progress"])  # fmt: skip
    assert rc == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model_kwargs"]["vocab_size"] == 65 and config["model_kwargs"]["context"] == 128
    history = json.loads((out / "train_history.json").read_text())
    assert 0 < history[0]["eval_acc"] < 1 and history[0]["train_loss"] < 5.0
    model = load_model(out / "checkpoint")
    assert model(torch.zeros(1, 128, dtype=torch.long)).shape == (1, 128, 65)


@pytest.mark.data
def test_evaluate_prints_a_language_models_perplexity(tmp_path, data_dir, capsys):
    import math

    from frugalnn.evaluation import load_records

    model = create_model("lm_tiny", vocab_size=65, context=128, dim=32, depth=1, heads=2)
    ckpt = tmp_path / "ckpt"
    save_checkpoint(ckpt, model)
    out = tmp_path / "eval"
    assert main(["evaluate", str(ckpt), "--data", "tinyshakespeare", "--data-dir", str(data_dir),
                 "--eval-limit", "8", "--val-fraction", "0", "--latency-batch-sizes", "none",
                 "--no-progress", "--out", str(out)]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if "perplexity" in x]
    loss = float(load_records(out).columns["loss"].mean())
    assert len(line) == 1 and f"perplexity {math.exp(loss):.2f}" in line[0]


@pytest.mark.parametrize("device", ["mps", "gpu"])
def test_unavailable_device_is_one_line_exit_2(tmp_path, capsys, device):
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has an MPS device")
    out = tmp_path / "run"
    assert main(["train", "--model", "mlp", "--device", device, "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--device" in err and "Traceback" not in err
    assert not out.exists()


def test_model_arg_is_the_one_spelling(tmp_path, capsys):
    argv = ["train", "--model", "mlp", "--out", str(tmp_path / "run"), *FAST]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--model-args", "hidden=8"])
    assert exc.value.code == 2 and "--model-args" in capsys.readouterr().err
    assert main([*argv, "--epochs", "1", "--model-arg", "hidden=8"]) == 0
    assert main([*argv, "--force", "--epochs", "1", "--model-arg", "hidden"]) == 2
    assert "--model-arg expects KEY=VALUE" in capsys.readouterr().err


def test_trains_on_train_minus_validation(tmp_path):
    from frugalnn.data.splits import load_splits

    out = tmp_path / "run"
    argv = ["train", "--model", "mlp", "--epochs", "1", "--data", "digits", "--val-fraction",
            "0.2", "--seed", "3", "--batch-size", "64", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    splits = load_splits("digits", val_fraction=0.2, seed=3)
    assert config["val_spec"] == splits.val_spec == {
        "source": "train", "fraction": 0.2, "seed": 3, "examples": 287}  # fmt: skip
    assert config["dataset"]["train_examples"] == len(splits.train) == 1437 - 287
    assert not set(splits.train.indices) & set(splits.val.indices)
    # --train-limit draws from the examples left after the validation split
    limited = load_splits("digits", val_fraction=0.2, seed=3, train_limit=100)
    drawn = {limited.train.dataset.indices[i] for i in limited.train.indices}
    assert len(drawn) == 100 and drawn <= set(splits.train.indices)
    # --val-fraction 0 trains on the whole split and records no validation split
    assert main([*argv, "--force", "--val-fraction", "0"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["val_spec"] is None and config["dataset"]["train_examples"] == 1437
