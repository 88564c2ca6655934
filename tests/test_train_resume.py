"""A run killed mid-epoch and resumed ends bitwise-equal to an uninterrupted run.

Each run is a separate Python process (as in real life); the kill is the
``FRUGALNN_TEST_KILL_AFTER_STEP`` hook, which calls ``os._exit`` in the middle
of an epoch: no cleanup, no final checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from safetensors.torch import load_file

from frugalnn.train.checkpoint import load_meta

SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    from sklearn.datasets import load_digits
    from torch.utils.data import DataLoader, TensorDataset

    from frugalnn.models.registry import create_model
    from frugalnn.train import fit

    torch.set_num_threads(1)
    run_dir, every, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16
    y = torch.tensor(d.target)
    train = DataLoader(TensorDataset(x[:600], y[:600]), batch_size=50, shuffle=True)
    test = DataLoader(TensorDataset(x[1500:], y[1500:]), batch_size=100)
    torch.manual_seed(123)  # the model's initial weights
    model = create_model("mlp", input_shape=(1, 8, 8), hidden=32, depth=2, dropout=0.2)
    fit(model, train, epochs=epochs, optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True,
        weight_decay=1e-4, schedule="cosine", warmup_epochs=1, label_smoothing=0.1,
        grad_clip=5.0, run_dir=run_dir, checkpoint_every=every or None, seed=7,
        eval_loader=test, progress=False)
    """
)


def _run(script, run_dir, every, epochs, kill_after=None):
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    env.pop("FRUGALNN_TEST_KILL_AFTER_STEP", None)
    if kill_after is not None:
        env["FRUGALNN_TEST_KILL_AFTER_STEP"] = str(kill_after)
    return subprocess.run(
        [sys.executable, str(script), str(run_dir), str(every), str(epochs)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _metrics(run_dir):
    rows = json.loads((run_dir / "train_history.json").read_text())
    keys = ("epoch", "step", "lr", "train_loss", "train_acc", "eval_loss", "eval_acc")
    return [{k: r[k] for k in keys} for r in rows]


# 600 examples / 50 = 12 steps per epoch; 3 epochs = 36 steps.
@pytest.mark.parametrize(
    ("every", "kill_after", "resumes_at_step"),
    [
        (0, 17, 12),  # killed in epoch 2, resumes from the end of epoch 1
        (5, 19, 17),  # killed in epoch 2, resumes mid-epoch (step 17 = batch 5 of epoch 2)
    ],
)
def test_killed_run_resumes_to_identical_weights(tmp_path, every, kill_after, resumes_at_step):
    script = tmp_path / "train_digits.py"
    script.write_text(SCRIPT)
    full, killed = tmp_path / "full", tmp_path / "killed"

    done = _run(script, full, every, 3)
    assert done.returncode == 0, done.stderr

    crash = _run(script, killed, every, 3, kill_after=kill_after)
    assert crash.returncode == 86, crash.stderr
    meta = load_meta(killed / "checkpoint")
    assert meta["step"] == resumes_at_step
    assert not any(p.name.endswith(".tmp") for p in killed.iterdir())

    resumed = _run(script, killed, every, 3)
    assert resumed.returncode == 0, resumed.stderr

    a = load_file(full / "checkpoint" / "model.safetensors")
    b = load_file(killed / "checkpoint" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].equal(b[name]), f"{name} differs after resume"
    assert _metrics(full) == _metrics(killed)
    assert load_meta(killed / "checkpoint")["step"] == 36
