"""``frugalnn profile`` / ``frugalnn models`` through ``frugalnn.cli.main``."""

from __future__ import annotations

import json

import pytest
import torch

from frugalnn.cli import main
from frugalnn.cost.count import measure
from frugalnn.cost.profile import example_input, parse_shape
from frugalnn.errors import UserError
from frugalnn.models import create_model
from frugalnn.train.checkpoint import load_named_model


def _fails(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("frugalnn: error:")
    for needle in needles:
        assert needle in err
    return err


def test_profile_counts_match_measure_and_json(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main(["profile", "mlp", "--no-timing", "--depth", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    expected = measure(create_model("mlp").eval(), torch.randn(1, 1, 28, 28))
    assert f"{expected.params:,}" in text and "MACs per example" in text
    data = json.loads(out.read_text())
    assert data["flops_per_example"] == expected.flops
    assert data["macs_per_example"] == expected.flops / 2
    assert data["params"] == expected.params
    # an existing JSON file is not overwritten without --force
    _fails(capsys, ["profile", "mlp", "--no-timing", "--json", str(out)], "--force")
    assert main(["profile", "mlp", "--no-timing", "--json", str(out), "--force"]) == 0


def test_profile_times_batch_1_and_larger_batch(tmp_path, capsys):
    out = tmp_path / "t.json"
    argv = ["profile", "cnn_small", "--batch-size", "4", "--threads", "1", "--warmup", "0",
            "--repeats", "2", "--json", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "batch    1" in text and "batch    4" in text
    lat = json.loads(out.read_text())["latency"]
    assert set(lat) == {"1", "4"} and lat["4"]["threads"] == 1 and lat["4"]["repeats"] == 2
    assert lat["4"]["batch_size"] == 4
    assert torch.get_num_threads() == 1  # restored


def test_profile_input_shape_override(capsys):
    assert main(["profile", "cnn_small", "--input-shape", "1,8,8", "--no-timing"]) == 0
    small = capsys.readouterr().out
    assert "input (1, 8, 8)" in small


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["profile", "no_such_model"], "unknown model"),
        (["profile", "mlp", "--input-shape", "3,a"], "bad input shape"),
        (["profile", "mlp", "--input-shape", "0,4"], "bad input shape"),
        (["profile", "mlp", "--input-shape", "3,32,32", "--no-timing"], "784"),
        (["profile", "resnet20", "--input-shape", "1,32,32", "--no-timing"], "--input-shape"),
        (["profile", "mlp", "--checkpoint", "/nonexistent/ckpt"], "not found"),
        (["profile", "mlp", "--batch-size", "0"], "--batch-size"),
    ],
)
def test_profile_bad_input_is_one_line_exit_2(capsys, argv, needle):
    _fails(capsys, argv, needle)


def test_profile_corrupt_checkpoints(tmp_path, capsys):
    bad_th = tmp_path / "resnet20-bad.th"
    bad_th.write_bytes(b"not a torch file")
    _fails(capsys, ["profile", "resnet20", "--checkpoint", str(bad_th), "--no-timing"], "cannot")
    bad_dir = tmp_path / "ckpt"
    bad_dir.mkdir()
    (bad_dir / "meta.json").write_text("{broken")
    _fails(capsys, ["profile", "mlp", "--checkpoint", str(bad_dir), "--no-timing"], "ckpt")


def test_frugalnn_checkpoint_round_trip(tmp_path, capsys):
    save_checkpoint = pytest.importorskip("frugalnn.train.checkpoint").save_checkpoint
    model = create_model("mlp").eval()
    save_checkpoint(tmp_path / "ck", model)
    loaded = load_named_model("mlp", tmp_path / "ck")
    x = example_input((1, 28, 28), 3)
    assert torch.equal(loaded(x), model(x))
    assert main(["profile", "mlp", "--checkpoint", str(tmp_path / "ck"), "--no-timing"]) == 0
    _fails(capsys, ["profile", "cnn_small", "--checkpoint", str(tmp_path / "ck"), "--no-timing"],
           "holds model 'mlp'")


@pytest.mark.data
def test_pretrained_resnet_checkpoint(data_dir, capsys):
    path = sorted((data_dir / "pretrained" / "resnet-cifar10").glob("resnet20-*.th"))[0]
    model = load_named_model("resnet20", path)
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(model.conv1.weight, state["module.conv1.weight"])
    assert main(["profile", "resnet20", "--checkpoint", str(path), "--no-timing"]) == 0
    assert "269,722" in capsys.readouterr().out


def test_parse_shape():
    assert parse_shape("3,32,32") == (3, 32, 32) and parse_shape("128") == (128,)
    with pytest.raises(UserError):
        parse_shape("")


def test_models_lists_registry(capsys):
    assert main(["models", "--no-params"]) == 0
    text = capsys.readouterr().out
    for name in ("resnet20", "resnet56", "vit_tiny", "mlp", "lm_tiny"):
        assert name in text
    assert main(["models"]) == 0
    line = next(r for r in capsys.readouterr().out.splitlines() if r.startswith("resnet20 "))
    assert "269.72 K" in line and "3x32x32" in line


def test_profile_can_time_with_freed_memory_retained(capsys) -> None:
    from frugalnn.cost.allocator import retain_freed_memory

    argv = ["profile", "mlp", "--batch-size", "4", "--repeats", "2", "--warmup", "0",
            "--retain-freed-memory"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    applied = retain_freed_memory()  # already applied by the command where glibc allows
    assert ("freed memory retained" in out) == applied
    assert ("needs glibc" in out) == (not applied)
    assert "batch    4" in out


#: Devices no test machine here has, or names torch does not accept as devices.
ABSENT_DEVICES = ["mps", "gpu", "cuda:99", "meta", "", "cuda:x"]
if not torch.cuda.is_available():
    ABSENT_DEVICES.append("cuda")


@pytest.mark.parametrize("device", ABSENT_DEVICES)
def test_check_device_refuses_missing_and_malformed_devices(device) -> None:
    from frugalnn.cli.common import check_device

    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has an MPS device")
    with pytest.raises(UserError, match="--device") as err:
        check_device(device)
    assert "\n" not in str(err.value) and "available here: cpu" in str(err.value)


def test_check_device_accepts_cpu() -> None:
    from frugalnn.cli.common import check_device

    assert check_device("cpu") == "cpu" and check_device("cpu:0") == "cpu:0"


@pytest.mark.parametrize("device", ["mps", "gpu"])
def test_profile_unavailable_device_is_one_line_exit_2(capsys, device) -> None:
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has an MPS device")
    _fails(capsys, ["profile", "mlp", "--device", device], "--device", "available here")
