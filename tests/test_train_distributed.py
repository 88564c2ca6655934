"""``fit`` under torchrun: 2 CPU processes (gloo), DDP, sharded data, rank-0 checkpoints."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from frugalnn.train.checkpoint import load_meta

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from safetensors.torch import save_file
    from sklearn.datasets import load_digits
    from torch.utils.data import DataLoader, TensorDataset

    import frugalnn.train.loop as loop
    from frugalnn.models.registry import create_model
    from frugalnn.train import fit

    torch.set_num_threads(1)
    run_dir = sys.argv[1]
    epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    every = int(sys.argv[3]) if len(sys.argv) > 3 else None
    rank = int(os.environ["RANK"])
    writes = []
    real_save = loop.save_checkpoint
    def logged_save(*args, **kwargs):
        writes.append(rank)
        return real_save(*args, **kwargs)
    loop.save_checkpoint = logged_save

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16
    y = torch.tensor(d.target)
    train = DataLoader(TensorDataset(x[:800], y[:800]), batch_size=40, shuffle=True)
    test = DataLoader(TensorDataset(x[1500:], y[1500:]), batch_size=100)
    torch.manual_seed(rank)  # different init per rank: DDP must broadcast rank 0's
    # BatchNorm buffers must end identical too (DDP only syncs them per forward).
    model = create_model("cnn_small", image_size=8, widths=(8, 16))
    result = fit(model, train, epochs=epochs, lr=0.2, run_dir=run_dir, eval_loader=test,
                 progress=False, seed=3, checkpoint_every=every)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              os.path.join(run_dir, f"final_rank{rank}.safetensors"))
    with open(os.path.join(run_dir, f"report_rank{rank}.json"), "w") as fh:
        json.dump({"writes": writes, "history": result.history,
                   "world": torch.distributed.is_initialized()}, fh)
    # Leave the process group before exiting: exiting with gloo's threads alive can abort
    # one rank ("terminate called without an active exception") on a loaded machine, and
    # did once more in interpreter teardown after destroy_process_group; everything this
    # script reports is written and closed above, so it skips that teardown.
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(script, run_dir, *extra, kill_after=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("FRUGALNN_TEST_KILL_AFTER_STEP", None)
    if kill_after is not None:
        env["FRUGALNN_TEST_KILL_AFTER_STEP"] = str(kill_after)
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        str(script), str(run_dir), *map(str, extra),
    ]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_two_cpu_processes_train_identically(tmp_path):
    script = tmp_path / "ddp_digits.py"
    script.write_text(SCRIPT)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    done = _torchrun(script, run_dir)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    w0 = load_file(run_dir / "final_rank0.safetensors")
    w1 = load_file(run_dir / "final_rank1.safetensors")
    for name in w0:
        assert w0[name].equal(w1[name]), f"{name} differs between ranks"
    saved = load_file(run_dir / "checkpoint" / "model.safetensors")
    for name in saved:
        assert saved[name].equal(w0[name])

    r0 = json.loads((run_dir / "report_rank0.json").read_text())
    r1 = json.loads((run_dir / "report_rank1.json").read_text())
    assert r0["writes"] == [0, 0] and r1["writes"] == []  # per epoch, by rank 0 only
    assert not r0["world"] and not r1["world"]  # process group torn down
    # 800 examples / 2 ranks / 40 per batch = 10 steps per epoch; metrics reduced over ranks.
    assert [r["step"] for r in r0["history"]] == [10, 20]
    assert r0["history"] == r1["history"] or _same_but_timing(r0["history"], r1["history"])
    assert r0["history"][-1]["eval_acc"] > 0.3  # chance is 0.1
    meta = load_meta(run_dir / "checkpoint")
    assert meta["world_size"] == 2 and meta["epoch"] == 2
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == []


def _same_but_timing(a, b):
    drop = ("epoch_seconds", "samples_per_second")
    strip = [{k: v for k, v in r.items() if k not in drop} for r in a]
    return strip == [{k: v for k, v in r.items() if k not in drop} for r in b]


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_killed_distributed_run_resumes_to_identical_weights(tmp_path):
    script = tmp_path / "ddp_digits.py"
    script.write_text(SCRIPT)
    full, killed = tmp_path / "full", tmp_path / "killed"
    full.mkdir()
    killed.mkdir()
    # 10 steps per epoch, checkpoints every 4 steps; killed at step 15 of 20.
    done = _torchrun(script, full, 2, 4)
    assert done.returncode == 0, done.stderr[-3000:]
    crash = _torchrun(script, killed, 2, 4, kill_after=15)
    assert crash.returncode != 0
    assert load_meta(killed / "checkpoint")["step"] == 14
    resumed = _torchrun(script, killed, 2, 4)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for rank in (0, 1):
        a = load_file(full / f"final_rank{rank}.safetensors")
        b = load_file(killed / f"final_rank{rank}.safetensors")
        assert all(a[k].equal(b[k]) for k in a), f"rank {rank} differs after resume"
