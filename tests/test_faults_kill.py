"""Fault injection: ``kill -9`` at random points of training and of checkpoint saving.

Each run is its own process. A run is killed (SIGKILL: no cleanup) either at a
random moment or at a random ``os.replace`` of a checkpoint save (inside the
swap window included), then resumed until it completes; its final weights must
equal an uninterrupted run's bit for bit, and a loadable checkpoint must exist
after every kill that followed the first save. Slow (many processes).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from frugalnn.train.checkpoint import has_checkpoint, load_model

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import torch
    from sklearn.datasets import load_digits
    from torch.utils.data import DataLoader, TensorDataset

    kill_at = int(os.environ.get("KILL_AT_REPLACE", "0"))
    if kill_at:  # SIGKILL this process at the kill_at-th os.replace (checkpoint saving)
        real, calls = os.replace, [0]
        def replace(src, dst):
            calls[0] += 1
            if calls[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(src, dst)
        os.replace = replace

    from frugalnn.models.registry import create_model
    from frugalnn.train import fit

    torch.set_num_threads(1)
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16
    y = torch.tensor(d.target)
    train = DataLoader(TensorDataset(x[:600], y[:600]), batch_size=50, shuffle=True)
    torch.manual_seed(123)
    model = create_model("mlp", input_shape=(1, 8, 8), hidden=32, depth=2, dropout=0.2)
    fit(model, train, epochs=3, optimizer="sgd", lr=0.05, momentum=0.9, schedule="cosine",
        run_dir=sys.argv[1], checkpoint_every=2, seed=7, progress=False)
""")


def _start(script: Path, run_dir: Path, kill_at: int = 0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": "0", "KILL_AT_REPLACE": str(kill_at)}
    env.pop("FRUGALNN_TEST_KILL_AFTER_STEP", None)
    return subprocess.Popen([sys.executable, str(script), str(run_dir)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoint" / "model.safetensors"))


def _finish(script: Path, run_dir: Path) -> None:
    proc = _start(script, run_dir)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    root = tmp_path_factory.mktemp("faults")
    script = root / "train.py"
    script.write_text(SCRIPT)
    _finish(script, root / "reference")
    return script, _weights(root / "reference")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_during_checkpoint_saving_then_resume_is_bitwise_exact(reference, tmp_path, seed):
    script, expected = reference
    rng = random.Random(seed)
    run_dir = tmp_path / "run"
    for _ in range(2):  # two kills in a row at random os.replace calls of the saves
        proc = _start(script, run_dir, kill_at=rng.randint(1, 30))
        proc.communicate(timeout=300)
        if proc.returncode == -signal.SIGKILL and (run_dir / "checkpoint").exists():
            load_model(run_dir / "checkpoint")  # a loadable copy is always there
    _finish(script, run_dir)
    assert _same(_weights(run_dir), expected)
    leftovers = [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    assert not leftovers


@pytest.mark.parametrize("seed", [3, 4])
def test_kill_at_random_moments_then_resume_is_bitwise_exact(reference, tmp_path, seed):
    script, expected = reference
    rng = random.Random(seed)
    run_dir = tmp_path / "run"
    for _ in range(3):
        proc = _start(script, run_dir)
        time.sleep(rng.uniform(1.5, 5.0))  # import takes ~1-2 s; training a few seconds
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        if has_checkpoint(run_dir / "checkpoint"):
            load_model(run_dir / "checkpoint")
    _finish(script, run_dir)
    assert _same(_weights(run_dir), expected)
