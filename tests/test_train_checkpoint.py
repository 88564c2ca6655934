"""Checkpoints: exact round trips, tied weights, refusal of corrupt or unsafe files."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from torch import nn

from frugalnn.errors import UserError
from frugalnn.models.registry import create_model
from frugalnn.train.checkpoint import (
    load_meta,
    load_model,
    load_train_state,
    load_weights,
    save_checkpoint,
)
from frugalnn.transforms import record_transform, register_transform


def _small_mlp():
    return create_model("mlp", input_shape=(1, 8, 8), hidden=16, depth=2, num_classes=10)


def test_round_trip_gives_identical_outputs(tmp_path):
    model = _small_mlp().eval()
    x = torch.randn(5, 1, 8, 8)
    path = save_checkpoint(tmp_path / "ck", model, {"step": 7, "metrics": {"acc": 0.5}})
    loaded = load_model(path)
    assert torch.equal(model(x), loaded(x))
    meta = load_meta(path)
    assert meta["model"] == {
        "name": "mlp",
        "kwargs": {**model.frugalnn_spec["kwargs"], "input_shape": [1, 8, 8]},
    }
    assert meta["step"] == 7 and meta["metrics"] == {"acc": 0.5}
    # The file path works too.
    assert torch.equal(load_model(path / "model.safetensors")(x), model(x))


def test_overwrite_replaces_whole_checkpoint_and_leaves_no_temp_dirs(tmp_path):
    model = _small_mlp()
    save_checkpoint(
        tmp_path / "ck", model, {"step": 1}, optimizer=torch.optim.SGD(model.parameters(), 0.1)
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    save_checkpoint(tmp_path / "ck", model, {"step": 2})
    assert sorted(os.listdir(tmp_path)) == ["ck"]
    assert not (tmp_path / "ck" / "train_state.pt").exists()  # no stale file from save 1
    assert load_meta(tmp_path / "ck")["step"] == 2
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(load_model(tmp_path / "ck")(x), model.eval()(x))


def test_interrupted_swap_falls_back_to_aside_copy(tmp_path):
    model = _small_mlp()
    save_checkpoint(tmp_path / "ck", model, {"step": 3})
    os.replace(tmp_path / "ck", tmp_path / ".ck.old")  # killed between the two renames
    assert load_meta(tmp_path / "ck")["step"] == 3


def test_tied_and_non_contiguous_tensors(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(11, 6)
            self.out = nn.Linear(6, 11, bias=False)
            self.out.weight = self.emb.weight  # shared storage
            self.register_buffer("t", torch.randn(6, 4).t())  # non-contiguous

        def forward(self, ids):
            return self.out(self.emb(ids)) + self.t.sum()

    model = Tied()
    save_checkpoint(tmp_path / "ck", model, {})
    fresh = Tied()
    load_weights(fresh, tmp_path / "ck")
    ids = torch.randint(0, 11, (2, 5))
    assert torch.equal(fresh(ids), model(ids))
    assert fresh.out.weight is fresh.emb.weight


def test_transforms_are_reapplied_on_load(tmp_path):
    @register_transform("test_ckpt_widen_head")
    def widen(model, extra: int):
        model.head = nn.Linear(model.head.in_features, 10 + extra)
        record_transform(model, "test_ckpt_widen_head", {"extra": extra})
        return model

    model = widen(_small_mlp(), extra=3)
    save_checkpoint(tmp_path / "ck", model, {})
    loaded = load_model(tmp_path / "ck")
    assert loaded.head.out_features == 13
    assert loaded.frugalnn_transforms == [{"name": "test_ckpt_widen_head", "args": {"extra": 3}}]
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(loaded(x), model.eval()(x))


def test_train_state_round_trip(tmp_path):
    model = _small_mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5**t)
    model(torch.randn(4, 1, 8, 8)).sum().backward()
    opt.step()
    sched.step()
    extra = {"epoch": 2, "rng": torch.get_rng_state(), "history": json.dumps([{"a": 1}])}
    save_checkpoint(tmp_path / "ck", model, {}, optimizer=opt, scheduler=sched, extra_state=extra)
    state = load_train_state(tmp_path / "ck")
    assert state["extra"]["epoch"] == 2
    assert torch.equal(state["extra"]["rng"], torch.get_rng_state())
    opt2 = torch.optim.AdamW(_small_mlp().parameters(), lr=1e-3)
    opt2.load_state_dict(state["optimizer"])
    assert opt2.state_dict()["param_groups"] == opt.state_dict()["param_groups"]


@pytest.mark.parametrize("missing", ["model.safetensors", "meta.json"])
def test_missing_file_is_user_error(tmp_path, missing):
    save_checkpoint(tmp_path / "ck", _small_mlp(), {})
    (tmp_path / "ck" / missing).unlink()
    with pytest.raises(UserError, match="is not a frugalnn checkpoint"):
        load_model(tmp_path / "ck")


def test_not_a_checkpoint_directory(tmp_path):
    with pytest.raises(UserError, match="expected model.safetensors and meta.json"):
        load_model(tmp_path)


def test_corrupt_weights_is_user_error(tmp_path):
    save_checkpoint(tmp_path / "ck", _small_mlp(), {})
    (tmp_path / "ck" / "model.safetensors").write_bytes(b"\x10\x00garbage")
    with pytest.raises(UserError, match="corrupt"):
        load_model(tmp_path / "ck")


def test_corrupt_meta_is_user_error(tmp_path):
    save_checkpoint(tmp_path / "ck", _small_mlp(), {})
    (tmp_path / "ck" / "meta.json").write_text("{not json")
    with pytest.raises(UserError, match="unreadable"):
        load_model(tmp_path / "ck")


def test_wrong_architecture_is_user_error(tmp_path):
    save_checkpoint(tmp_path / "ck", _small_mlp(), {})
    other = create_model("mlp", input_shape=(1, 8, 8), hidden=32, depth=2)
    with pytest.raises(UserError, match="does not fit this model"):
        load_weights(other, tmp_path / "ck")


class _Boom:
    """Unpickling this calls ``_explode``, which leaves a marker file; it must never run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (_explode, (self.marker,))


def _explode(marker):  # pragma: no cover - must not run
    with open(marker, "w") as fh:
        fh.write("pickle payload executed")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_payload_is_never_executed(tmp_path):
    save_checkpoint(tmp_path / "ck", _small_mlp(), {}, extra_state={"epoch": 0})
    marker = tmp_path / "executed"
    payload = {"optimizer": None, "scheduler": None, "extra": _Boom(marker)}
    # A torch.save container with the payload inside, and a bare pickle.
    torch.save(payload, tmp_path / "ck" / "train_state.pt")
    with pytest.raises(UserError, match="corrupt or holds objects"):
        load_train_state(tmp_path / "ck")
    with open(tmp_path / "ck" / "train_state.pt", "wb") as fh:
        pickle.dump(payload, fh)
    with pytest.raises(UserError, match="corrupt or holds objects"):
        load_train_state(tmp_path / "ck")
    # The weights file cannot carry code at all: a pickle there is just corrupt.
    (tmp_path / "ck" / "model.safetensors").write_bytes(pickle.dumps(_Boom(marker)))
    with pytest.raises(UserError):
        load_model(tmp_path / "ck")
    assert not marker.exists()
