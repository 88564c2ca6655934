"""Checkpoints always leave one loadable copy and refuse what they cannot trust.

Defects covered: the swap window after two crashes in a row, leaked temp
directories and history temp files, ``--resume`` silently starting over on an
incomplete checkpoint, malformed or crafted ``meta.json`` (wrong types, an
enormous model), NaN weights and silent dtype casts, disk full during a save,
a checkpoint used on data of another shape or class count.
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from frugalnn.cli import main
from frugalnn.data.base import DatasetInfo
from frugalnn.errors import UserError
from frugalnn.models.registry import create_model
from frugalnn.train import checkpoint as ck
from frugalnn.train.checkpoint import (
    check_data_fit,
    checkpoint_problems,
    has_checkpoint,
    load_model,
    resolve_checkpoint,
    save_checkpoint,
)

DIGITS = DatasetInfo(10, (1, 8, 8))
TRAIN = ["train", "--model", "mlp", "--data", "digits", "--train-limit", "64", "--eval-limit",
         "32", "--no-progress"]


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=16, depth=1)


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(resolve_checkpoint(directory) / ck.WEIGHTS))


def test_two_crashes_in_a_row_during_the_swap_leave_a_loadable_checkpoint(tmp_path, monkeypatch):
    ckpt = tmp_path / "checkpoint"
    save_checkpoint(ckpt, _model(0), {"epoch": 1})
    # Crash 1: killed between the two renames (the old copy is aside, the new not in place).
    ck.os.replace(ckpt, tmp_path / ".checkpoint.old")
    assert has_checkpoint(ckpt)
    # Crash 2: the next save dies when it moves its new copy into place.
    real_replace = ck.os.replace

    def dies_on_the_swap(src, dst):
        if Path(dst) == ckpt and ".tmp" in Path(src).name:
            raise SystemExit("killed")
        return real_replace(src, dst)

    monkeypatch.setattr(ck.os, "replace", dies_on_the_swap)
    with pytest.raises(SystemExit):
        save_checkpoint(ckpt, _model(1), {"epoch": 2})
    monkeypatch.undo()
    model = load_model(ckpt)
    assert load_model(ckpt) is not None and ck.load_meta(ckpt)["epoch"] == 1
    assert torch.equal(model.state_dict()["net.1.weight"] if "net.1.weight" in
                       model.state_dict() else next(iter(model.state_dict().values())),
                       next(iter(load_model(ckpt).state_dict().values())))
    # The next save completes and leaves exactly one copy.
    save_checkpoint(ckpt, _model(2), {"epoch": 3})
    assert ck.load_meta(ckpt)["epoch"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_a_complete_temp_copy_is_found_when_the_real_name_is_gone(tmp_path):
    ckpt = tmp_path / "checkpoint"
    save_checkpoint(ckpt, _model(0), {"epoch": 4})
    ck.os.replace(ckpt, tmp_path / ".checkpoint.abc123.tmp")
    assert ck.load_meta(ckpt)["epoch"] == 4


def test_the_next_save_removes_leaked_temp_files(tmp_path):
    run = tmp_path / "run"
    ckpt = run / "checkpoint"
    save_checkpoint(ckpt, _model(0))
    (run / ".checkpoint.dead1.tmp").mkdir()  # a save killed half-way
    (run / ".checkpoint.dead1.tmp" / ck.WEIGHTS).write_bytes(b"half")
    (run / ".train_history.json.x1.tmp").write_text("[")  # a history write killed half-way
    save_checkpoint(ckpt, _model(1))
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint"]


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    ckpt = tmp_path / "checkpoint"
    save_checkpoint(ckpt, _model(0), {"epoch": 1})
    before = _weights(ckpt)

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck.torch, "save", full)
    with pytest.raises(UserError, match="no space left.*previous checkpoint .* is intact"):
        save_checkpoint(ckpt, _model(1), {"epoch": 2}, extra_state={"a": 1})
    monkeypatch.undo()
    assert ck.load_meta(ckpt)["epoch"] == 1
    after = _weights(ckpt)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def _tmpfs_available() -> str | None:
    if shutil.which("unshare") is None:
        return "no unshare(1) on this machine"
    probe = subprocess.run(["unshare", "-Urm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs "
                            "/mnt 2>/dev/null || mount -t tmpfs -o size=64k tmpfs /tmp"],
                           capture_output=True, timeout=30)
    return None if probe.returncode == 0 else "user namespaces cannot mount a tmpfs here"


@pytest.mark.slow
def test_disk_full_on_a_tiny_filesystem_is_one_line_and_keeps_the_checkpoint(tmp_path):
    why = _tmpfs_available()
    if why:
        pytest.skip(why)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    # One checkpoint of this run is ~1.2 MB: the first save fits in 2 MB, the second does not.
    train = " ".join([sys.executable, "-m", "frugalnn.cli", *TRAIN, "--epochs", "3",
                      "--out", str(mnt / "run")])
    check = (f"{sys.executable} -c \"from frugalnn.train.checkpoint import load_model, load_meta;"
             f" load_model('{mnt}/run'+'/checkpoint'); print('epoch', "
             f"load_meta('{mnt}/run/checkpoint')['epoch'])\"")
    script = (f"mount -t tmpfs -o size=2000k tmpfs {mnt} && {{ {train}; echo rc=$?; }}; {check}")
    done = subprocess.run(["unshare", "-Urm", "sh", "-c", script], capture_output=True, text=True,
                          timeout=240)
    assert "rc=2" in done.stdout, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("frugalnn: error")]
    assert len(errors) == 1 and "no space left" in errors[0] and "intact" in errors[0]
    assert "Traceback" not in done.stderr
    assert "epoch 1" in done.stdout


def test_resume_refuses_an_incomplete_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TRAIN, "--epochs", "1", "--out", str(out)]) == 0
    (out / "checkpoint" / ck.WEIGHTS).unlink()
    assert checkpoint_problems(out / "checkpoint") == [f"{ck.WEIGHTS} is missing"]
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "incomplete" in err and ck.WEIGHTS in err and err.count("\n") == 1
    assert not (out / "checkpoint" / ck.WEIGHTS).exists()  # nothing started over


def test_fit_refuses_to_start_over_on_an_incomplete_checkpoint(tmp_path):
    from torch.utils.data import DataLoader, TensorDataset

    from frugalnn.train import fit

    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / ck.META).write_text("{}")
    data = DataLoader(TensorDataset(torch.randn(8, 1, 8, 8), torch.arange(8) % 10), batch_size=4)
    with pytest.raises(UserError, match="incomplete checkpoint"):
        fit(_model(), data, epochs=1, run_dir=tmp_path, progress=False)


def _write_meta(ckpt: Path, **changes) -> None:
    meta = json.loads((ckpt / ck.META).read_text())
    meta.update(changes)
    (ckpt / ck.META).write_text(json.dumps(meta))


@pytest.fixture
def saved(tmp_path) -> Path:
    ckpt = tmp_path / "ck"
    save_checkpoint(ckpt, _model(0), {"epoch": 1})
    return ckpt


@pytest.mark.parametrize("changes", [
    {"model": "mlp"}, {"model": {"name": 3}}, {"model": {"name": "mlp", "kwargs": [1]}},
    {"transforms": "lowrank"}, {"transforms": [1, 2]}, {"epoch": "one"}, {"step": -1},
    {"metrics": [0.5]}, {"model": {"name": "mlp", "kwargs": {"hidden": "wide"}}},
    {"model": {"name": "mlp", "kwargs": {"no_such_argument": 1}}},
])
def test_malformed_meta_is_one_user_error(saved, changes):
    _write_meta(saved, **changes)
    with pytest.raises(UserError):
        load_model(saved)


def test_an_enormous_model_is_refused_before_allocation(saved):
    _write_meta(saved, model={"name": "mlp", "kwargs": {"input_shape": [1, 8, 8],
                                                        "hidden": 2_000_000, "depth": 3}})
    with pytest.raises(UserError, match="refusing to build"):
        load_model(saved)


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 300) | st.floats(allow_nan=True)
                     | st.text(max_size=5), lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)
_KWARGS = st.dictionaries(st.sampled_from(["hidden", "depth", "num_classes", "input_shape",
                                           "dropout", "x"]), _JSON, max_size=3)


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(model=st.one_of(_JSON, st.fixed_dictionaries({"name": st.sampled_from(["mlp", "nope"]),
                                                     "kwargs": _KWARGS})),
       transforms=st.one_of(_JSON, st.lists(st.dictionaries(st.text(max_size=4), _JSON),
                                            max_size=2)),
       epoch=_JSON)
def test_fuzzed_meta_loads_or_is_refused_in_one_line(saved, model, transforms, epoch):
    _write_meta(saved, model=model, transforms=transforms, epoch=epoch)
    try:
        load_model(saved)
    except UserError as exc:
        assert "\n" not in str(exc)


def test_nan_weights_are_refused_and_dtype_casts_warned(saved):
    weights = load_file(str(saved / ck.WEIGHTS))
    key = next(iter(weights))
    save_file({k: v.double() for k, v in weights.items()}, str(saved / ck.WEIGHTS))
    with pytest.warns(UserWarning, match="float64"):
        load_model(saved)
    weights[key][0] = float("nan")
    save_file(weights, str(saved / ck.WEIGHTS))
    with pytest.raises(UserError, match="NaN or infinite"):
        load_model(saved)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        weights[key][0] = 0.0
        save_file(weights, str(saved / ck.WEIGHTS))
        load_model(saved)  # same dtype: silent


def test_a_checkpoint_is_refused_on_data_of_another_shape_or_class_count(saved, tmp_path,
                                                                         capsys):
    model = load_model(saved)
    check_data_fit(model, DIGITS, saved)  # the data it was built for
    with pytest.raises(UserError, match="num_classes 10"):
        check_data_fit(model, DatasetInfo(5, (1, 8, 8)), saved)
    with pytest.raises(UserError, match="input"):
        check_data_fit(model, DatasetInfo(10, (3, 32, 32)), saved)
    # Through the CLI: a digits run evaluated on 28x28 arrays is one line, exit 2.
    out = tmp_path / "run"
    assert main([*TRAIN, "--epochs", "1", "--out", str(out)]) == 0
    assert json.loads((out / "checkpoint" / ck.META).read_text())["data"]["input_shape"] == \
        [1, 8, 8]
    x = (torch.rand(40, 1, 28, 28) * 255).to(torch.uint8).numpy()
    y = (torch.arange(40) % 10).numpy()
    import numpy as np

    np.savez(tmp_path / "other.npz", x=x, y=y)
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data", "npz", "--data-dir", str(tmp_path / "other.npz"),
                 "--out", str(tmp_path / "ev"), "--val-fraction", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "input_shape" in err and err.count("\n") == 1
    assert not (tmp_path / "ev").exists()  # the failed evaluation left nothing behind
